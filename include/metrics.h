/* metrics.h: per-token KL and CE from logits, reduced block by block (pure functions). */
#ifndef SAEGAP_METRICS_H
#define SAEGAP_METRICS_H

#include <stddef.h>
#include <stdint.h>

/* From clean logits (n, V): log-sum-exp (double) and probabilities p = exp(l - lse) (n, V),
 * cached once per batch and shared by every intervention. */
void metrics_clean(double *lse, float *p, double *p_sum, const float *logits, size_t n, size_t V);

/* The vocabulary block of the fused unembedding (unembed.c) and of metrics_kl_ce: the values
 * depend on it (the order of the sums), so both use this one. 2048 columns of logits per row stay
 * in L1/L2 for the reduction, and BLIS's GEMM over them runs at its full rate (bench/). */
enum { METRICS_VOCAB_BLOCK = 2048 };

/* kl[r] = sum_v p(v) (log p(v) - log q(v)) with q from logits_iv; ce[r] = -log q(next[r])
 * (NaN when next[r] < 0). Accumulated in double, by the block reduction below. */
void metrics_kl_ce(double *kl, double *ce, const float *logits_clean, const float *p_clean, const double *lse_clean,
                   const double *p_sum, const float *logits_iv, const int32_t *next, size_t n, size_t V);

/* One intervened row's reduction over the vocabulary taken block by block (unembed.c: the
 * unembedding is computed a block of the vocabulary at a time for all rows of a pass, so no row's
 * logits are ever whole in memory): an online log-sum-exp (running maximum, and the sum of
 * exp(l - max) rescaled when the maximum grows) and sum p (lc - li), both in double. The blocks
 * must be added in the same order for the same bits; the values agree with metrics_kl_ce to
 * ~1e-12 relative (tests/c/test_metrics.c). */
typedef struct {
    float max;         /* running maximum of the intervened logits (-inf before any block) */
    double sum;        /* sum of exp(li - max) over the blocks so far */
    double dot;        /* sum of p (lc - li) over the blocks so far */
    double next_logit; /* the intervened logit of the next token, once its block was added */
} MetricsRowAcc;

void metrics_row_start(MetricsRowAcc *a);
/* adds entries [0, n) of one block: intervened logits li, clean logits lc, clean probabilities p */
void metrics_row_block(MetricsRowAcc *a, const float *li, const float *lc, const float *p, size_t n);
/* kl (clamped as metrics_kl_ce's), ce (NaN without a next token) and the intervened log-sum-exp */
void metrics_row_finish(double *kl, double *ce, double *lse_iv, const MetricsRowAcc *a, double lse_clean,
                        double p_sum, int has_next);

/* log-sum-exp of one row, double */
double metrics_lse(const float *logits, size_t V);

#endif
