/* unembed.c: the intervened passes' unembedding fused with their KL and CE (unembed.h). */
#include "unembed.h"

#include "error.h"
#include "forward.h"
#include "gemm.h"

#include <math.h>
#include <stdlib.h>

void unembed_scratch_alloc(UnembedScratch *s, size_t R_max) {
    s->block = sg_xcalloc(R_max * METRICS_VOCAB_BLOCK, sizeof(float));
    s->acc = sg_xcalloc(R_max, sizeof *s->acc);
    s->R_max = R_max;
}

void unembed_scratch_free(UnembedScratch *s) {
    free(s->block), free(s->acc);
    s->block = NULL, s->acc = NULL, s->R_max = 0;
}

void unembed_kl_ce(const UnembedOut *out, UnembedScratch *s, const Gpt2Model *m, const UnembedClean *clean,
                   const UnembedRows *rows) {
    const size_t R = rows->R, D = m->cfg.n_embd, V = m->cfg.vocab_size, Vp = m->vocab_padded, nsel = rows->nsel;
    if (R > s->R_max) sg_fatal("unembed", "%zu rows, but the scratch was planned for %zu", R, s->R_max);
    const long nr = (long)R;
    const int threads = gemm_get_threads();
    const float cap = (float)m->cfg.final_softcap;
    for (size_t r = 0; r < R; r++) {
        metrics_row_start(&s->acc[r]);
        if (rows->sel && rows->sel[r] >= 0) /* an id outside the vocabulary (none: fewer than nsel) stays NaN */
            for (size_t e = 0; e < nsel; e++) out->sel_logits[r * nsel + e] = NAN;
    }
    for (size_t v0 = 0; v0 < V; v0 += METRICS_VOCAB_BLOCK) {
        const size_t n = V - v0 < METRICS_VOCAB_BLOCK ? V - v0 : METRICS_VOCAB_BLOCK;
        /* block (R, np) = h (R, D) @ wte_padded[v0, v0 + np)^T. The GEMM's width is a multiple
         * of 64 (the padded vocabulary's zero rows): BLIS splits the columns among its threads,
         * and on a ragged width the split, hence which kernel sums a column, moved the last
         * bits with the thread count (measured) */
        const size_t np = Vp - v0 < METRICS_VOCAB_BLOCK ? Vp - v0 : METRICS_VOCAB_BLOCK;
        gemm_xwt(s->block, rows->h, m->wte_padded + v0 * D, R, D, np);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
        for (long ri = 0; ri < nr; ri++) {
            const size_t r = (size_t)ri, c = rows->clean_row[r];
            float *li = s->block + r * np;
            sg_softcap(li, n, cap); /* Gemma-2's final soft-cap, before the log-sum-exp */
            MetricsRowAcc *a = &s->acc[r];
            metrics_row_block(a, li, clean->logits + c * V + v0, clean->p + c * V + v0, n);
            const int32_t nx = clean->next[c];
            if (nx >= 0 && (size_t)nx >= v0 && (size_t)nx < v0 + n) a->next_logit = li[(size_t)nx - v0];
            if (rows->sel && rows->sel[r] >= 0) {
                const int32_t *ids = rows->sel_ids + (size_t)rows->sel[r] * nsel;
                for (size_t e = 0; e < nsel; e++)
                    if (ids[e] >= 0 && (size_t)ids[e] >= v0 && (size_t)ids[e] < v0 + n)
                        out->sel_logits[r * nsel + e] = li[(size_t)ids[e] - v0];
            }
        }
    }
    for (size_t r = 0; r < R; r++) {
        const size_t c = rows->clean_row[r];
        metrics_row_finish(&out->kl[r], &out->ce[r], &out->lse[r], &s->acc[r], clean->lse[c], clean->p_sum[c],
                           clean->next[c] >= 0);
    }
}
