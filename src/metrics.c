/* metrics.c: KL(clean || intervened) and CE per token (see metrics.h). */
#include "metrics.h"

#include <math.h>

double metrics_lse(const float *l, size_t V) {
    float mx = l[0];
    for (size_t v = 1; v < V; v++) mx = l[v] > mx ? l[v] : mx;
    double s = 0;
    for (size_t v = 0; v < V; v++) s += exp((double)l[v] - mx);
    return mx + log(s);
}

void metrics_clean(double *lse, float *p, double *p_sum, const float *logits, size_t n, size_t V) {
    for (size_t r = 0; r < n; r++) {
        const float *l = logits + r * V;
        lse[r] = metrics_lse(l, V);
        double s = 0;
        for (size_t v = 0; v < V; v++) {
            p[r * V + v] = (float)exp((double)l[v] - lse[r]);
            s += p[r * V + v];
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
        double acc = 0;
        for (size_t v = 0; v < V; v++) acc += (double)p[v] * ((double)lc[v] - li[v]);
        double k = acc + (lse_i - lse_clean[r]) * p_sum[r];
        /* identical distributions can round to -1e-12; anything more negative is left visible */
        kl[r] = k < 0 && k > -1e-9 ? 0.0 : k;
        ce[r] = next[r] >= 0 ? lse_i - li[next[r]] : NAN;
    }
}
