/* interventions.c: the intervention table and formulas (see interventions.h). */
#include "interventions.h"

#include "error.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

typedef void (*IvRowFn)(float *out, IvBatch *b, size_t r);

static double dot(const float *a, const float *b, size_t d) {
    double s = 0;
    for (size_t i = 0; i < d; i++) s += (double)a[i] * b[i];
    return s;
}

static RngStream stream(const IvBatch *b, Intervention iv, size_t r) {
    return (RngStream){b->seed, b->site_id, (uint32_t)iv, b->context[r], b->position[r], b->sample};
}

/* g/||g|| for a fresh draw of d normals */
static void unit_normal(double *g, size_t d, const RngStream *s) {
    rng_normal(g, d, s);
    double n = 0;
    for (size_t i = 0; i < d; i++) n += g[i] * g[i];
    n = sqrt(n);
    for (size_t i = 0; i < d; i++) g[i] /= n;
}

static void row_sae(float *out, IvBatch *b, size_t r) {
    memcpy(out, b->x_hat + r * b->d, b->d * sizeof(float));
}

static void row_norm_corrected_sae(float *out, IvBatch *b, size_t r) {
    const float *x = b->x + r * b->d, *xh = b->x_hat + r * b->d;
    double nx = sqrt(dot(x, x, b->d)), nh = sqrt(dot(xh, xh, b->d));
    double s = nh > 0 ? nx / nh : 1.0;
    for (size_t i = 0; i < b->d; i++) out[i] = (float)(xh[i] * s);
}

static void row_sae_norm(float *out, IvBatch *b, size_t r) {
    const float *x = b->x + r * b->d, *xh = b->x_hat + r * b->d;
    double nx = sqrt(dot(x, x, b->d)), nh = sqrt(dot(xh, xh, b->d));
    double s = nx > 0 ? nh / nx : 1.0;
    for (size_t i = 0; i < b->d; i++) out[i] = (float)(x[i] * s);
}

/* x + eps * dir, eps = ||x_hat - x|| */
static void add_at_error_norm(float *out, const IvBatch *b, size_t r, const double *dir) {
    const float *x = b->x + r * b->d, *xh = b->x_hat + r * b->d;
    double eps = 0;
    for (size_t i = 0; i < b->d; i++) eps += ((double)xh[i] - x[i]) * ((double)xh[i] - x[i]);
    eps = sqrt(eps);
    for (size_t i = 0; i < b->d; i++) out[i] = (float)(x[i] + eps * dir[i]);
}

static void row_eps_random(float *out, IvBatch *b, size_t r) {
    RngStream s = stream(b, IV_EPS_RANDOM, r);
    unit_normal(b->g, b->d, &s);
    add_at_error_norm(out, b, r, b->g);
}

/* (c u + sqrt(1 - c^2) o) * scale, o a random unit vector orthogonal to u */
static void theta_direction(float *out, IvBatch *b, size_t r, Intervention iv, int true_norm) {
    const float *x = b->x + r * b->d, *xh = b->x_hat + r * b->d;
    size_t d = b->d;
    double nx = sqrt(dot(x, x, d)), nh = sqrt(dot(xh, xh, d));
    double c = nx > 0 && nh > 0 ? dot(x, xh, d) / (nx * nh) : 1.0;
    if (c > 1) c = 1;
    if (c < -1) c = -1;
    RngStream s = stream(b, iv, r);
    rng_normal(b->g, d, &s);
    double gu = 0;
    for (size_t i = 0; i < d; i++) gu += b->g[i] * (nx > 0 ? x[i] / nx : 0);
    double no = 0;
    for (size_t i = 0; i < d; i++) {
        b->g[i] -= gu * (nx > 0 ? x[i] / nx : 0);
        no += b->g[i] * b->g[i];
    }
    no = sqrt(no);
    double scale = true_norm ? nx : nh, sn = sqrt(1 - c * c);
    for (size_t i = 0; i < d; i++) {
        double u = nx > 0 ? x[i] / nx : 0;
        out[i] = (float)((c * u + sn * b->g[i] / no) * scale);
    }
}

static void row_theta_random(float *out, IvBatch *b, size_t r) { theta_direction(out, b, r, IV_THETA_RANDOM, 0); }
static void row_theta_random_true_norm(float *out, IvBatch *b, size_t r) {
    theta_direction(out, b, r, IV_THETA_RANDOM_TRUE_NORM, 1);
}

static void row_zero(float *out, IvBatch *b, size_t r) {
    (void)r;
    memset(out, 0, b->d * sizeof(float));
}

static void row_mean(float *out, IvBatch *b, size_t r) {
    (void)r;
    for (size_t i = 0; i < b->d; i++) out[i] = (float)b->mean[i];
}

static void row_cov_random(float *out, IvBatch *b, size_t r) {
    size_t d = b->d;
    RngStream s = stream(b, IV_COV_RANDOM, r);
    rng_normal(b->g, d, &s);
    double n = 0;
    for (size_t i = 0; i < d; i++) { /* (L g)_i = sum_{j<=i} L_ij g_j */
        double acc = 0;
        for (size_t j = 0; j <= i; j++) acc += b->chol[i * d + j] * b->g[j];
        b->g2[i] = acc;
        n += acc * acc;
    }
    n = sqrt(n);
    for (size_t i = 0; i < d; i++) b->g2[i] /= n;
    add_at_error_norm(out, b, r, b->g2);
}

/* x_scratch (N, d) = decode(f'), f'_i = f_i * exp(sigma g_i) on active latents: positive
 * factors keep every active latent active and every inactive one at 0 (L0 exactly kept). */
static void latent_noise_decode(IvBatch *b) {
    size_t F = b->d_sae;
    for (size_t r = 0; r < b->N; r++) {
        const float *f = b->f + r * F;
        float *fp = b->f_scratch + r * F;
        if (!b->active[r]) { memcpy(fp, f, F * sizeof(float)); continue; }
        RngStream s = stream(b, IV_LATENT_NOISE, r);
        rng_normal(b->g, F, &s); /* one normal per latent index: independent of which are active */
        for (size_t j = 0; j < F; j++) fp[j] = f[j] > 0 ? (float)(f[j] * exp(b->latent_sigma * b->g[j])) : 0.0f;
    }
    sae_decode(b->x_scratch, b->sae, b->sae_work, b->f_scratch, b->N);
}

/* One row per intervention, one column per property; nothing outside this table decides them.
 *  random:     draws per token (--samples), each from its own Philox stream
 *  correlated: its KL gap to eps_random is correlated between sites (CONTRACT.md)
 *  examples:   written under /examples with --examples
 *  decode:     decodes a perturbed latent code (a second SAE decode per row)
 *  mean, cov:  reads the site mean / the covariance's Cholesky factor (the statistics pass) */
static const struct {
    const char *name;
    int random, correlated, examples, decode, mean, cov;
    IvRowFn row; /* NULL: batched, see iv_apply */
} IVS[IV_COUNT] = {
    /*                                                   rand corr ex  dec mean cov */
    [IV_SAE] =                    {"sae",                    0, 1, 1, 0, 0, 0, row_sae},
    [IV_NORM_CORRECTED_SAE] =     {"norm_corrected_sae",     0, 1, 0, 0, 0, 0, row_norm_corrected_sae},
    [IV_SAE_NORM] =               {"sae_norm",               0, 1, 0, 0, 0, 0, row_sae_norm},
    [IV_EPS_RANDOM] =             {"eps_random",             1, 0, 1, 0, 0, 0, row_eps_random},
    [IV_THETA_RANDOM] =           {"theta_random",           1, 0, 0, 0, 0, 0, row_theta_random},
    [IV_THETA_RANDOM_TRUE_NORM] = {"theta_random_true_norm", 1, 0, 0, 0, 0, 0, row_theta_random_true_norm},
    [IV_ZERO_ABLATION] =          {"zero_ablation",          0, 1, 0, 0, 0, 0, row_zero},
    [IV_MEAN_ABLATION] =          {"mean_ablation",          0, 1, 0, 0, 1, 0, row_mean},
    [IV_LATENT_NOISE] =           {"latent_noise",           1, 0, 0, 1, 0, 0, NULL},
    [IV_SAE_EPS_RANDOM] =         {"sae_eps_random",         1, 0, 0, 1, 0, 0, NULL},
    [IV_COV_RANDOM] =             {"cov_random",             1, 0, 0, 0, 1, 1, row_cov_random},
};
_Static_assert(IV_COUNT == 11, "CONTRACT.md names 11 interventions; update IVS with the enum");

const char *iv_name(Intervention iv) { return IVS[iv].name; }
int iv_is_random(Intervention iv) { return IVS[iv].random; }
size_t iv_samples(Intervention iv, size_t samples) { return IVS[iv].random ? samples : 1; }
int iv_is_correlated(Intervention iv) { return IVS[iv].correlated; }
int iv_writes_examples(Intervention iv) { return IVS[iv].examples; }
int iv_needs_decode(Intervention iv) { return IVS[iv].decode; }
int iv_needs_mean(Intervention iv) { return IVS[iv].mean; }
int iv_needs_cov(Intervention iv) { return IVS[iv].cov; }

int iv_any(uint32_t mask, int (*property)(Intervention)) {
    for (int iv = 0; iv < IV_COUNT; iv++)
        if ((mask >> iv & 1u) && property((Intervention)iv)) return 1;
    return 0;
}

int iv_parse_list(uint32_t *mask, const char *list) {
    *mask = 0;
    if (!strcmp(list, "all")) {
        *mask = (1u << IV_COUNT) - 1;
        return 0;
    }
    const char *p = list;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        int found = 0;
        for (int i = 0; i < IV_COUNT; i++)
            if (strlen(IVS[i].name) == len && !strncmp(IVS[i].name, p, len)) { *mask |= 1u << i; found = 1; }
        if (!found) {
            char names[512] = "";
            for (int i = 0; i < IV_COUNT; i++)
                snprintf(names + strlen(names), sizeof names - strlen(names), "%s, ", IVS[i].name);
            return sg_errorf("--interventions", "unknown intervention '%.*s' (%sor all)", (int)len, p, names);
        }
        p += len;
        if (*p == ',') p++;
    }
    if (!*mask) return sg_errorf("--interventions", "empty list");
    return 0;
}

void iv_apply(Intervention iv, float *out, IvBatch *b) {
    size_t d = b->d;
    if (IVS[iv].decode) {
        latent_noise_decode(b);
        for (size_t r = 0; r < b->N; r++) {
            if (!b->active[r]) continue;
            if (iv == IV_LATENT_NOISE) {
                memcpy(out + r * d, b->x_scratch + r * d, d * sizeof(float));
                continue;
            }
            /* x_hat + ||x_hat' - x_hat|| * g/||g|| */
            const float *xh = b->x_hat + r * d, *xp = b->x_scratch + r * d;
            double delta = 0;
            for (size_t i = 0; i < d; i++) delta += ((double)xp[i] - xh[i]) * ((double)xp[i] - xh[i]);
            delta = sqrt(delta);
            RngStream s = stream(b, IV_SAE_EPS_RANDOM, r);
            unit_normal(b->g, d, &s);
            for (size_t i = 0; i < d; i++) out[r * d + i] = (float)(xh[i] + delta * b->g[i]);
        }
        return;
    }
    for (size_t r = 0; r < b->N; r++)
        if (b->active[r]) IVS[iv].row(out + r * d, b, r);
}
