/* metrics.h: per-token KL and CE from logits, reduced block by block (pure functions). */
#ifndef SAEGAP_METRICS_H
#define SAEGAP_METRICS_H

#include <stddef.h>
#include <stdint.h>

/* From clean logits (n, V): log-sum-exp (double) and probabilities p = exp(l - lse) (n, V),
 * cached once per batch and shared by every intervention. */
void metrics_clean(double *lse, float *p, double *p_sum, const float *logits, size_t n, size_t V);

/* kl[r] = sum_v p(v) (log p(v) - log q(v)) with q from logits_iv; ce[r] = -log q(next[r])
 * (NaN when next[r] < 0). Accumulated in double. */
void metrics_kl_ce(double *kl, double *ce, const float *logits_clean, const float *p_clean, const double *lse_clean,
                   const double *p_sum, const float *logits_iv, const int32_t *next, size_t n, size_t V);

/* metrics_kl_ce on `threads` threads (OpenMP, BLIS's own thread team; 1 = this thread only). Rows are independent and
 * each row is reduced by one thread in the same order, so the values do not depend on the
 * thread count. The vocabulary reduction is most of the run time of models with a small d_model
 * and a large vocabulary: this is what makes --threads-per-rank pay for it as for the GEMMs. */
void metrics_kl_ce_threads(int threads, double *kl, double *ce, const float *logits_clean, const float *p_clean,
                           const double *lse_clean, const double *p_sum, const float *logits_iv,
                           const int32_t *next, size_t n, size_t V);

/* log-sum-exp of one row, double */
double metrics_lse(const float *logits, size_t V);

#endif
