/* unembed.h: the intervened passes' unembedding fused with their KL and CE.
 *
 * A stack of intervened passes has SWEEP_STACK x B x T rows. Their logits are never whole in
 * memory: for each block of METRICS_VOCAB_BLOCK vocabulary entries, one GEMM gives that block's
 * logits for every row (BLIS packs each block of the unembedding matrix once for all rows, and
 * the GEMM has 1024 rows instead of one copy's 256: measured 1.25x the rate), and the rows'
 * running reductions (metrics.h: online log-sum-exp, sum p (lc - li)) take it while it is in
 * cache. Values do not depend on the thread count: each row's blocks are added in order. */
#ifndef SAEGAP_UNEMBED_H
#define SAEGAP_UNEMBED_H

#include "metrics.h"
#include "model.h"

#include <stddef.h>
#include <stdint.h>

/* The clean batch every intervened row is compared with. */
typedef struct {
    const float *logits, *p;   /* (n, V) clean logits and probabilities (metrics_clean) */
    const double *lse, *p_sum; /* (n) */
    const int32_t *next;       /* (n) next token, -1 at a context's last position */
} UnembedClean;

/* The rows of one call and what is asked of each. */
typedef struct {
    const float *h;            /* (R, D) final-LayerNorm output of the intervened rows */
    size_t R;
    const uint32_t *clean_row; /* (R) the clean row each row is compared with */
    const int32_t *sel;        /* (R) -1, or the row of sel_ids whose logits this row reports */
    const int32_t *sel_ids;    /* (., nsel) vocabulary ids (--examples: the clean top-25) */
    size_t nsel;
} UnembedRows;

/* Per-row results: KL(clean || row), CE of the next token (NaN without one), the row's
 * log-sum-exp, and the logits at its sel ids (sel_logits (R, nsel), rows with sel >= 0 only). */
typedef struct {
    double *kl, *ce, *lse;
    float *sel_logits;
} UnembedOut;

/* Working memory for up to R_max rows: one block of logits and each row's running state. */
typedef struct {
    float *block;        /* (R_max, METRICS_VOCAB_BLOCK) */
    MetricsRowAcc *acc;  /* (R_max) */
    size_t R_max;
} UnembedScratch;

void unembed_scratch_alloc(UnembedScratch *s, size_t R_max);
void unembed_scratch_free(UnembedScratch *s);

/* Runs on the rank's OpenMP team (gemm_get_threads()), the team BLIS's GEMMs use. */
void unembed_kl_ce(const UnembedOut *out, UnembedScratch *s, const Gpt2Model *m, const UnembedClean *clean,
                   const UnembedRows *rows);

#endif
