/* Invariants of the random interventions, Philox streams and reproducible sums, checked on
 * closed-form cases through libsaegap's own functions. Named cases (check.h); exits non-zero on any failure. */
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

/* Philox4x32-10 known answer (Random123 kat_vectors): zero key and counter */
static void case_philox_known_answer(void) {
    philox4x32_ctr_t c0 = {{0, 0, 0, 0}};
    philox4x32_key_t k0 = {{0, 0}};
    philox4x32_ctr_t r0 = philox4x32(c0, k0);
    CHECK(r0.v[0] == 0x6627e8d5u && r0.v[1] == 0xe169c58du && r0.v[2] == 0xbc57ac4cu && r0.v[3] == 0x9b00dbd8u,
          "Philox4x32-10 known-answer vector differs");
    double g[2];
    RngStream s = {0};
    rng_normal(g, 2, &s);
    CHECK(isfinite(g[0]) && isfinite(g[1]), "normal draws not finite");
}

/* normal draws: moments of 1e6 draws: mean 0 +- 5e-3, variance 1 +- 1e-2; a stream is a pure
 * function of its key */
static void case_normal_streams(void) {
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
static void case_reproducible_sums(void) {
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

/* The small standard SAE the intervention cases share (made once by sae_fixture_open): weights,
 * inputs x, their reconstructions xh and latents f, a Cholesky factor, and the batch b. */
enum { D_IN = 24, D_SAE = 64, ROWS = 40 };
static struct {
    Sae sae;
    SaeScratch sw;
    float *We, *be, *Wd, *bd, *x, *xh, *f, *out, *fs, *xs;
    double mean[D_IN], chol[D_IN * D_IN], g[D_SAE], g2[D_IN];
    uint32_t ctx[ROWS], pos[ROWS];
    unsigned char active[ROWS];
    IvBatch b;
} fx;

static void sae_fixture_open(void) {
    const size_t d = D_IN, F = D_SAE, N = ROWS;
    memset(&fx.sae, 0, sizeof fx.sae);
    fx.sae.d_in = d, fx.sae.d_sae = F, fx.sae.arch = SAE_STANDARD, fx.sae.apply_b_dec_to_input = 1,
    fx.sae.norm = SAE_NORM_NONE;
    float *We = fx.We = calloc(d * F, 4), *be = fx.be = calloc(F, 4), *Wd = fx.Wd = calloc(F * d, 4),
          *bd = fx.bd = calloc(d, 4);
    unsigned seed = 7;
    for (size_t i = 0; i < d * F; i++) We[i] = (float)lcg(&seed), Wd[i] = (float)lcg(&seed);
    for (size_t i = 0; i < F; i++) be[i] = (float)(0.1 * lcg(&seed));
    for (size_t i = 0; i < d; i++) bd[i] = (float)(0.1 * lcg(&seed));
    fx.sae.W_enc = We, fx.sae.b_enc = be, fx.sae.W_dec = Wd, fx.sae.b_dec = bd;
    sae_scratch_alloc(&fx.sw, &fx.sae, N);
    fx.x = calloc(N * d, 4), fx.xh = calloc(N * d, 4), fx.f = calloc(N * F, 4), fx.out = calloc(N * d, 4);
    for (size_t i = 0; i < N * d; i++) fx.x[i] = (float)(3 * lcg(&seed));
    sae_forward(fx.f, fx.xh, &fx.sae, &fx.sw, fx.x, N);
    /* Sigma + 0.01 I with a strong first axis and dims 1,2 correlated: L by hand */
    double *chol = fx.chol;
    for (size_t i = 0; i < d; i++) chol[i * d + i] = i == 0 ? 10.0 : 1.0;
    chol[2 * d + 1] = 0.9;
    for (size_t r = 0; r < N; r++) fx.ctx[r] = (uint32_t)(r / 8), fx.pos[r] = (uint32_t)(r % 8), fx.active[r] = 1;
    fx.active[5] = 0;
    fx.fs = calloc(N * F, 4), fx.xs = calloc(N * d, 4);
    fx.b = (IvBatch){.N = N, .d = d, .d_sae = F, .x = fx.x, .x_hat = fx.xh, .f = fx.f, .mean = fx.mean,
                     .chol = fx.chol, .latent_sigma = 0.3, .sae = &fx.sae, .sae_work = &fx.sw, .context = fx.ctx,
                     .position = fx.pos, .active = fx.active, .seed = 11, .site_id = 9, .sample = 0,
                     .f_scratch = fx.fs, .x_scratch = fx.xs, .g = fx.g, .g2 = fx.g2};
}

static void sae_fixture_close(void) {
    sae_scratch_free(&fx.sw);
    free(fx.We), free(fx.be), free(fx.Wd), free(fx.bd), free(fx.x), free(fx.xh), free(fx.f), free(fx.out),
        free(fx.fs), free(fx.xs);
}

/* every intervention on the SAE: inactive rows untouched, and each one's exact invariant */
static void case_intervention_invariants(void) {
    const size_t d = D_IN, F = D_SAE, N = ROWS;
    const float *x = fx.x, *xh = fx.xh, *f = fx.f, *fs = fx.fs, *xs = fx.xs;
    const unsigned char *active = fx.active;
    float *out = fx.out;
    IvBatch b = fx.b;
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
}

/* cov_random direction is exactly L g/||L g|| with g the stream's draw */
static void case_cov_random_direction(void) {
    const size_t d = D_IN;
    const float *x = fx.x, *xh = fx.xh;
    const double *chol = fx.chol;
    const uint32_t *ctx = fx.ctx, *pos = fx.pos;
    float *out = fx.out;
    IvBatch b = fx.b;
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
static void case_cov_random_shape(void) {
    const size_t d = D_IN, N = ROWS;
    const float *x = fx.x, *xh = fx.xh;
    const unsigned char *active = fx.active;
    float *out = fx.out;
    IvBatch b = fx.b;
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
static void case_rows_independent_of_batch(void) {
    const size_t d = D_IN, F = D_SAE;
    const float *x = fx.x, *xh = fx.xh, *f = fx.f;
    const uint32_t *ctx = fx.ctx, *pos = fx.pos;
    const unsigned char *active = fx.active;
    float *out = fx.out;
    IvBatch b = fx.b;
    iv_apply(IV_EPS_RANDOM, out, &b);
    float one[24];
    IvBatch b1 = b;
    b1.N = 1, b1.x = x + 7 * d, b1.x_hat = xh + 7 * d, b1.f = f + 7 * F, b1.context = ctx + 7, b1.position = pos + 7,
    b1.active = active + 7;
    iv_apply(IV_EPS_RANDOM, one, &b1);
    CHECK(!memcmp(one, out + 7 * d, sizeof one), "eps_random depends on the batch a row is in");
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    sae_fixture_open();
    static const CheckCase CASES[] = {
        CASE(philox_known_answer),
        CASE(normal_streams),
        CASE(reproducible_sums),
        CASE(intervention_invariants),
        CASE(cov_random_direction),
        CASE(cov_random_shape),
        CASE(rows_independent_of_batch),
    };
    int rc = check_run_cases("test_interventions", CASES, CHECK_COUNT(CASES), argc, argv);
    sae_fixture_close();
    MPI_Finalize();
    return rc;
}
