/* metrics.c: KL(clean || intervened) and CE per token (see metrics.h). */
#include "metrics.h"

#include "fastexp.h"
#include "gemm.h"

#include <math.h>

/* The row's maximum. Sixteen independent running maxima: one chain through a single mx was
 * latency-bound (a quarter of a run's time, measured with perf); these vectorise. A maximum
 * does not depend on the order it is taken in, so the value is the same as the plain loop's. */
static float row_max(const float *l, size_t V) {
    enum { LANES = 16 };
    float m[LANES];
    for (int k = 0; k < LANES; k++) m[k] = l[0];
    size_t v = 0;
    for (; v + LANES <= V; v += LANES)
        for (int k = 0; k < LANES; k++) m[k] = l[v + k] > m[k] ? l[v + k] : m[k];
    float mx = m[0];
    for (int k = 1; k < LANES; k++) mx = m[k] > mx ? m[k] : mx;
    for (; v < V; v++) mx = l[v] > mx ? l[v] : mx;
    return mx;
}

/* exp of (l - max) <= 0 in float (sg_expf, within 2 ulp: fastexp.h), summed in double: the
 * log-sum-exp is accurate to ~1e-7 absolute, far inside what float32 logits carry, at a fraction
 * of double exp's cost (it runs over the whole vocabulary for every token and intervention).
 * The exps of a block go through a buffer so the loop vectorises; the sum runs in eight lanes of
 * a fixed order (element v into lane v % 8), whatever the vector width. */
SG_VECTOR_CLONES double metrics_lse(const float *l, size_t V) {
    enum { BLOCK = 512 };
    const float mx = row_max(l, V);
    double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    float e[BLOCK];
    for (size_t v0 = 0; v0 < V; v0 += BLOCK) {
        const size_t n = V - v0 < BLOCK ? V - v0 : BLOCK;
#pragma omp simd
        for (size_t i = 0; i < n; i++) e[i] = sg_expf(l[v0 + i] - mx);
        size_t i = 0;
        for (; i + 8 <= n; i += 8)
            for (int k = 0; k < 8; k++) s[k] += e[i + k];
        for (; i < n; i++) s[i % 8] += e[i];
    }
    return mx + log(((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])));
}

void metrics_clean(double *lse, float *p, double *p_sum, const float *logits, size_t n, size_t V) {
    /* rows on the rank's threads (the OpenMP team BLIS uses, see metrics_kl_ce_threads); each
     * row's values are computed on their own */
    const long rows = (long)n;
#pragma omp parallel for num_threads(gemm_get_threads()) schedule(static)
    for (long r = 0; r < rows; r++) {
        const float *l = logits + (size_t)r * V;
        float *pr = p + (size_t)r * V;
        lse[r] = metrics_lse(l, V);
        double s = 0;
        for (size_t v = 0; v < V; v++) {
            pr[v] = (float)exp((double)l[v] - lse[r]);
            s += pr[v];
        }
        p_sum[r] = s;
    }
}

void metrics_kl_ce(double *kl, double *ce, const float *logits_clean, const float *p_clean, const double *lse_clean,
                   const double *p_sum, const float *logits_iv, const int32_t *next, size_t n, size_t V) {
    for (size_t r = 0; r < n; r++) {
        const float *lc = logits_clean + r * V, *li = logits_iv + r * V, *p = p_clean + r * V;
        double lse_i = metrics_lse(li, V);
        /* sum p (lc - lse_c - li + lse_i) */
        double a[4] = {0, 0, 0, 0};
        size_t v = 0;
        for (; v + 4 <= V; v += 4)
            for (int k = 0; k < 4; k++) a[k] += (double)p[v + k] * ((double)lc[v + k] - li[v + k]);
        for (; v < V; v++) a[0] += (double)p[v] * ((double)lc[v] - li[v]);
        double k = ((a[0] + a[1]) + (a[2] + a[3])) + (lse_i - lse_clean[r]) * p_sum[r];
        /* identical distributions can round to -1e-12; anything more negative is left visible */
        kl[r] = k < 0 && k > -1e-9 ? 0.0 : k;
        ce[r] = next[r] >= 0 ? lse_i - li[next[r]] : NAN;
    }
}

void metrics_kl_ce_threads(int threads, double *kl, double *ce, const float *logits_clean, const float *p_clean,
                           const double *lse_clean, const double *p_sum, const float *logits_iv,
                           const int32_t *next, size_t n, size_t V) {
    /* OpenMP, not pthreads: BLIS (libblis-mt) runs its GEMMs on libgomp's thread team, whose
     * threads spin for a while after each GEMM; a second set of threads would compete with them
     * for the same cores (measured: a fifth of the time in libgomp's spin). This loop reuses
     * that team. Static schedule of whole rows: each row's value is independent of the split. */
    const long rows = (long)n;
#pragma omp parallel for num_threads(threads > 0 ? threads : 1) schedule(static) if (threads > 1 && rows > 1)
    for (long r = 0; r < rows; r++)
        metrics_kl_ce(kl + r, ce + r, logits_clean + (size_t)r * V, p_clean + (size_t)r * V, lse_clean + r, p_sum + r,
                      logits_iv + (size_t)r * V, next + r, 1, V);
}
