/* Invariants of the random interventions, Philox streams and reproducible sums, checked on
 * closed-form cases through libsaegap's own functions. Exits non-zero on any failure. */
#include "interventions.h"
#include "reprosum.h"
#include "rng.h"
#include "sae.h"

#include "check.h"

#include <Random123/philox.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double norm(const float *v, size_t d) {
    double s = 0;
    for (size_t i = 0; i < d; i++) s += (double)v[i] * v[i];
    return sqrt(s);
}
static double dist(const float *a, const float *b, size_t d) {
    double s = 0;
    for (size_t i = 0; i < d; i++) s += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    return sqrt(s);
}
static double cosine(const float *a, const float *b, size_t d) {
    double s = 0;
    for (size_t i = 0; i < d; i++) s += (double)a[i] * b[i];
    return s / (norm(a, d) * norm(b, d));
}
static double rel(double a, double b) { return fabs(a - b) / fmax(fabs(b), 1e-30); }

static double lcg(unsigned *s) { *s = *s * 1103515245u + 12345u; return ((*s >> 8) & 0xffff) / 65536.0 - 0.5; }

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    /* Philox4x32-10 known answer (Random123 kat_vectors): zero key and counter */
    {
        philox4x32_ctr_t c0 = {{0, 0, 0, 0}};
        philox4x32_key_t k0 = {{0, 0}};
        philox4x32_ctr_t r0 = philox4x32(c0, k0);
        CHECK(r0.v[0] == 0x6627e8d5u && r0.v[1] == 0xe169c58du && r0.v[2] == 0xbc57ac4cu && r0.v[3] == 0x9b00dbd8u,
              "Philox4x32-10 known-answer vector differs");
        double g[2];
        RngStream s = {0};
        rng_normal(g, 2, &s);
        CHECK(isfinite(g[0]) && isfinite(g[1]), "normal draws not finite");
        /* moments of 1e6 draws: mean 0 +- 5e-3, variance 1 +- 1e-2 */
        size_t n = 1000000;
        double *v = malloc(n * sizeof *v), m = 0, q = 0;
        RngStream t = {42, 3, 4, 5, 6, 7};
        rng_normal(v, n, &t);
        for (size_t i = 0; i < n; i++) m += v[i], q += v[i] * v[i];
        m /= (double)n, q = q / (double)n - m * m;
        CHECK(fabs(m) < 5e-3 && fabs(q - 1) < 1e-2, "N(0,1) moments off: mean %g var %g", m, q);
        /* a stream is a pure function of its key: the first 10 of 1e6 equal a fresh 10 */
        double w[10];
        rng_normal(w, 10, &t);
        CHECK(!memcmp(w, v, sizeof w), "stream depends on how many elements were asked for");
        t.sample = 8;
        rng_normal(w, 10, &t);
        CHECK(memcmp(w, v, sizeof w) != 0, "different sample gives the same draws");
        free(v);
    }
    /* reproducible sums: any order, bit-identical; close to the exact sum */
    {
        enum { n = 10000 };
        static double vals[n];
        unsigned s = 1;
        long double exact = 0;
        for (int i = 0; i < n; i++) vals[i] = lcg(&s) * pow(10, (i % 7) - 3), exact += vals[i];
        ReproSum a = 0, b = 0;
        for (int i = 0; i < n; i++) repro_add(&a, vals[i]);
        for (int i = n - 1; i >= 0; i--) repro_add(&b, vals[i]);
        CHECK(a == b, "reproducible sum depends on order");
        CHECK(fabs(repro_value(a) - (double)exact) < 1e-8, "reproducible sum %.17g vs exact %.17Lg", repro_value(a), exact);
    }
    /* interventions on a small standard SAE */
    const size_t d = 24, F = 64, N = 40;
    Sae sae;
    memset(&sae, 0, sizeof sae);
    sae.d_in = d, sae.d_sae = F, sae.arch = SAE_STANDARD, sae.apply_b_dec_to_input = 1, sae.norm = SAE_NORM_NONE;
    float *We = calloc(d * F, 4), *be = calloc(F, 4), *Wd = calloc(F * d, 4), *bd = calloc(d, 4);
    unsigned seed = 7;
    for (size_t i = 0; i < d * F; i++) We[i] = (float)lcg(&seed), Wd[i] = (float)lcg(&seed);
    for (size_t i = 0; i < F; i++) be[i] = (float)(0.1 * lcg(&seed));
    for (size_t i = 0; i < d; i++) bd[i] = (float)(0.1 * lcg(&seed));
    sae.W_enc = We, sae.b_enc = be, sae.W_dec = Wd, sae.b_dec = bd;
    SaeScratch sw;
    sae_scratch_alloc(&sw, &sae, N);
    float *x = calloc(N * d, 4), *xh = calloc(N * d, 4), *f = calloc(N * F, 4), *out = calloc(N * d, 4);
    for (size_t i = 0; i < N * d; i++) x[i] = (float)(3 * lcg(&seed));
    sae_forward(f, xh, &sae, &sw, x, N);
    double mean[24] = {0}, chol[24 * 24] = {0};
    /* Sigma + 0.01 I with a strong first axis and dims 1,2 correlated: L by hand */
    for (size_t i = 0; i < d; i++) chol[i * d + i] = i == 0 ? 10.0 : 1.0;
    chol[2 * d + 1] = 0.9;
    uint32_t ctx[40], pos[40];
    unsigned char active[40];
    for (size_t r = 0; r < N; r++) ctx[r] = (uint32_t)(r / 8), pos[r] = (uint32_t)(r % 8), active[r] = 1;
    active[5] = 0;
    float *fs = calloc(N * F, 4), *xs = calloc(N * d, 4);
    double g[64], g2[24];
    IvBatch b = {.N = N, .d = d, .d_sae = F, .x = x, .x_hat = xh, .f = f, .mean = mean, .chol = chol,
                 .latent_sigma = 0.3, .sae = &sae, .sae_work = &sw, .context = ctx, .position = pos,
                 .active = active, .seed = 11, .site_id = 9, .sample = 0, .f_scratch = fs, .x_scratch = xs,
                 .g = g, .g2 = g2};
    for (int iv = 0; iv < IV_COUNT; iv++) {
        for (size_t i = 0; i < N * d; i++) out[i] = -12345.0f;
        iv_apply((Intervention)iv, out, &b);
        CHECK(out[5 * d] == -12345.0f, "%s wrote an inactive row", iv_name((Intervention)iv));
        for (size_t r = 0; r < N; r++) {
            if (!active[r]) continue;
            const float *xr = x + r * d, *hr = xh + r * d, *o = out + r * d;
            double eps = dist(xr, hr, d);
            switch ((Intervention)iv) {
            case IV_EPS_RANDOM:
            case IV_COV_RANDOM:
                CHECK(rel(dist(o, xr, d), eps) < 1e-5, "%s: ||out - x|| %g != eps %g", iv_name(iv), dist(o, xr, d), eps);
                break;
            case IV_THETA_RANDOM:
            case IV_THETA_RANDOM_TRUE_NORM:
                CHECK(fabs(cosine(o, xr, d) - cosine(hr, xr, d)) < 1e-5, "%s: cosine %g != %g", iv_name(iv),
                      cosine(o, xr, d), cosine(hr, xr, d));
                CHECK(rel(norm(o, d), iv == IV_THETA_RANDOM ? norm(hr, d) : norm(xr, d)) < 1e-5, "%s: norm", iv_name(iv));
                break;
            case IV_NORM_CORRECTED_SAE:
                CHECK(rel(norm(o, d), norm(xr, d)) < 1e-6 && cosine(o, hr, d) > 1 - 1e-6, "norm_corrected_sae");
                break;
            case IV_SAE_NORM:
                CHECK(rel(norm(o, d), norm(hr, d)) < 1e-6 && cosine(o, xr, d) > 1 - 1e-6, "sae_norm");
                break;
            case IV_LATENT_NOISE: {
                size_t l0 = 0, l0p = 0, same_support = 1;
                for (size_t j = 0; j < F; j++) {
                    l0 += f[r * F + j] > 0, l0p += fs[r * F + j] > 0;
                    same_support &= (f[r * F + j] > 0) == (fs[r * F + j] > 0);
                }
                CHECK(l0 == l0p && same_support, "latent_noise: L0 %zu -> %zu", l0, l0p);
                CHECK(dist(o, hr, d) > 0, "latent_noise changed nothing");
            } break;
            case IV_SAE_EPS_RANDOM: {
                double delta = dist(xs + r * d, hr, d);
                CHECK(rel(dist(o, hr, d), delta) < 1e-5, "sae_eps_random: ||out - x_hat|| %g != %g", dist(o, hr, d), delta);
            } break;
            default: break;
            }
        }
    }
    /* cov_random direction is exactly L g/||L g|| with g the stream's draw */
    {
        iv_apply(IV_COV_RANDOM, out, &b);
        size_t r = 3;
        double gg[24], lg[24], n2 = 0;
        RngStream s = {11, 9, IV_COV_RANDOM, ctx[r], pos[r], 0};
        rng_normal(gg, d, &s);
        for (size_t i = 0; i < d; i++) {
            lg[i] = 0;
            for (size_t j = 0; j <= i; j++) lg[i] += chol[i * d + j] * gg[j];
            n2 += lg[i] * lg[i];
        }
        double eps = dist(x + r * d, xh + r * d, d), maxerr = 0;
        for (size_t i = 0; i < d; i++) {
            double want = x[r * d + i] + eps * lg[i] / sqrt(n2);
            maxerr = fmax(maxerr, fabs(out[r * d + i] - want));
        }
        CHECK(maxerr < 1e-5 * (norm(x + r * d, d) + eps), "cov_random differs from x + eps L g/||L g|| by %g", maxerr);
    }
    /* the shape of cov_random's directions follows Sigma: 4000 draws, the strong axis 0
     * dominates and dims 1, 2 (positively correlated in Sigma) co-vary positively */
    {
        double m00 = 0, m33 = 0, m12 = 0, m13 = 0;
        size_t draws = 0;
        for (uint32_t smp = 0; smp < 100; smp++) {
            b.sample = smp;
            iv_apply(IV_COV_RANDOM, out, &b);
            for (size_t r = 0; r < N; r++) {
                if (!active[r]) continue;
                double eps = dist(x + r * d, xh + r * d, d), v[24];
                for (size_t i = 0; i < d; i++) v[i] = ((double)out[r * d + i] - x[r * d + i]) / eps;
                m00 += v[0] * v[0], m33 += v[3] * v[3], m12 += v[1] * v[2], m13 += v[1] * v[3];
                draws++;
            }
        }
        m00 /= (double)draws, m33 /= (double)draws, m12 /= (double)draws, m13 /= (double)draws;
        CHECK(m00 > 20 * m33, "cov_random: E[v0^2] %g not >> E[v3^2] %g for Sigma_00 = 100 Sigma_33", m00, m33);
        CHECK(m12 > 0.5 * m33 && fabs(m13) < 0.2 * m33, "cov_random: E[v1 v2] %g, E[v1 v3] %g vs E[v3^2] %g", m12, m13, m33);
        b.sample = 0;
    }
    /* rows do not depend on their batch: row 7 alone gives the same numbers */
    {
        iv_apply(IV_EPS_RANDOM, out, &b);
        float one[24];
        IvBatch b1 = b;
        b1.N = 1, b1.x = x + 7 * d, b1.x_hat = xh + 7 * d, b1.f = f + 7 * F, b1.context = ctx + 7, b1.position = pos + 7,
        b1.active = active + 7;
        iv_apply(IV_EPS_RANDOM, one, &b1);
        CHECK(!memcmp(one, out + 7 * d, sizeof one), "eps_random depends on the batch a row is in");
    }
    sae_scratch_free(&sw);
    free(We), free(be), free(Wd), free(bd), free(x), free(xh), free(f), free(out), free(fs), free(xs);
    MPI_Finalize();
    if (failures) fprintf(stderr, "%d check(s) failed\n", failures);
    else printf("test_interventions: all checks passed\n");
    return failures ? 1 : 0;
}
