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

/* sum of exp(l - mx) over n entries: each exp (of a value <= 0) in float (sg_expf, within 2
 * ulp: fastexp.h), summed in double: accurate to ~1e-7 absolute, far inside what float32 logits
 * carry, at a fraction of double exp's cost (it runs over the whole vocabulary for every token
 * and intervention). The exps of a chunk go through a buffer so the loop vectorises; the sum runs
 * in eight lanes of a fixed order (element i of a chunk into lane i % 8), whatever the vector
 * width. Inlined into each caller's vector clones. */
static inline __attribute__((always_inline)) double exp_sum(const float *l, size_t n, float mx) {
    enum { CHUNK = 512 };
    float e[CHUNK];
    double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (size_t v0 = 0; v0 < n; v0 += CHUNK) {
        const size_t m = n - v0 < CHUNK ? n - v0 : CHUNK;
#pragma omp simd
        for (size_t i = 0; i < m; i++) e[i] = sg_expf(l[v0 + i] - mx);
        size_t i = 0;
        for (; i + 8 <= m; i += 8)
            for (int k = 0; k < 8; k++) s[k] += e[i + k];
        for (; i < m; i++) s[i % 8] += e[i];
    }
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

SG_VECTOR_CLONES double metrics_lse(const float *l, size_t V) {
    const float mx = row_max(l, V);
    return mx + log(exp_sum(l, V, mx));
}

void metrics_clean(double *lse, float *p, double *p_sum, const float *logits, size_t n, size_t V) {
    /* rows on the rank's threads (the OpenMP team BLIS uses, as unembed.c's reduction); each
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
    /* the fused unembedding's reduction (unembed.c), on whole rows: the same blocks, the same bits */
    for (size_t r = 0; r < n; r++) {
        const float *lc = logits_clean + r * V, *li = logits_iv + r * V, *p = p_clean + r * V;
        MetricsRowAcc a;
        metrics_row_start(&a);
        for (size_t v0 = 0; v0 < V; v0 += METRICS_VOCAB_BLOCK) {
            const size_t m = V - v0 < METRICS_VOCAB_BLOCK ? V - v0 : METRICS_VOCAB_BLOCK;
            metrics_row_block(&a, li + v0, lc + v0, p + v0, m);
        }
        if (next[r] >= 0) a.next_logit = li[next[r]];
        double lse_i;
        metrics_row_finish(&kl[r], &ce[r], &lse_i, &a, lse_clean[r], p_sum[r], next[r] >= 0);
    }
}

void metrics_row_start(MetricsRowAcc *a) {
    a->max = -INFINITY, a->sum = 0, a->dot = 0, a->next_logit = NAN;
}

SG_VECTOR_CLONES void metrics_row_block(MetricsRowAcc *a, const float *li, const float *lc, const float *p, size_t n) {
    if (n == 0) return;
    const float mb = row_max(li, n);
    if (mb > a->max) { /* rescale what was summed against the old maximum; exp(-inf) = 0 at the first block */
        a->sum *= exp((double)a->max - (double)mb);
        a->max = mb;
    }
    const float mx = a->max;
    double d[4] = {0, 0, 0, 0};
    size_t v = 0;
    for (; v + 4 <= n; v += 4)
        for (int k = 0; k < 4; k++) d[k] += (double)p[v + k] * ((double)lc[v + k] - li[v + k]);
    for (; v < n; v++) d[0] += (double)p[v] * ((double)lc[v] - li[v]);
    a->sum += exp_sum(li, n, mx); /* the same lanes as metrics_lse */
    a->dot += (d[0] + d[1]) + (d[2] + d[3]);
}

void metrics_row_finish(double *kl, double *ce, double *lse_iv, const MetricsRowAcc *a, double lse_clean,
                        double p_sum, int has_next) {
    const double lse_i = (double)a->max + log(a->sum);
    const double k = a->dot + (lse_i - lse_clean) * p_sum;
    *kl = k < 0 && k > -1e-9 ? 0.0 : k; /* as metrics_kl_ce */
    *ce = has_next ? lse_i - a->next_logit : NAN;
    *lse_iv = lse_i;
}
