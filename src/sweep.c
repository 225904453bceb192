/* sweep.c: the compute path of one batch: clean pass, SAE, interventions, KL/CE (sweep.h). */
#include "sweep.h"

#include "error.h"
#include "gemm.h"
#include "metrics.h"
#include "schedule.h"
#include "sites.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* --bos: every token, or all but BOS-id tokens */
static int measured(const Gpt2Config *c, int bos_include, int32_t tok) {
    return bos_include || tok != c->bos_token_id;
}

int sweep_is_measured(const SweepJob *j, int32_t tok) { return measured(&j->model->cfg, j->bos_include, tok); }

/* SAELens's ignore_tokens: get_special_token_ids(model.tokenizer), every special id of the
 * tokenizer (model.h: cfg.special_ids, read from the folder's tokenizer files) */
static int is_special(const Gpt2Config *c, int32_t tok) { return model_is_special(c, tok); }

/* Whether a score pass replaces the site at a token: SAELens's zero-ablation at every position;
 * its SAE pass at every position but the special tokens, and at every position at attn.hook_z,
 * whose all_head_replacement_hook substitutes them all. */
static int score_replaces(const Gpt2Config *c, SiteKind kind, int score, int32_t tok) {
    return score == SC_KL_ZERO || kind == SG_SITE_ATTN_Z || !is_special(c, tok);
}

int sweep_score_is_pass(const Gpt2Config *c, int bos_include, int scope_position, SiteKind kind, int score,
                        const int32_t *ids, size_t N) {
    if (scope_position) return 0; /* the intervention replaces position P only */
    for (size_t r = 0; r < N; r++)
        if (measured(c, bos_include, ids[r]) != score_replaces(c, kind, score, ids[r])) return 0;
    return 1;
}

double sweep_rank_bytes(const SweepSize *z, size_t B, int threads) {
    const Gpt2Config *c = z->cfg;
    const double N = (double)(B * z->T), R = SWEEP_STACK * N, V = (double)c->vocab_size, Vp = (double)z->vocab_padded;
    const double d = (double)z->max_d, F = (double)z->max_F, Bd = (double)B;
    double bytes = z->fixed;
    bytes += acts_bytes(c, B, z->T, z->keep, 1, threads);                  /* the clean cache */
    bytes += acts_bytes(c, SWEEP_STACK * B, z->T, NULL, 0, threads);       /* the work pass */
    bytes += 4 * N * Vp + 4 * N * V + 16 * N;                              /* clean logits, p, lse, p_sum */
    bytes += R * (24 + 8 + 4.0 * RF_EXAMPLE_TOPK) + R * (4.0 * METRICS_VOCAB_BLOCK + sizeof(MetricsRowAcc));
    bytes += 15 * N + 4 * 4 * N * d + 2 * 4 * N * F + 8 * (d > F ? d : F) + 8 * d; /* rows, x.., f.., g, g2 */
    bytes += IV_COUNT * (2 * 4 * Bd * (double)(z->Wk * z->samples) + 4 * Bd * RF_EXAMPLE_TOPK + 5 * Bd);
    bytes += 4 * Bd * (double)z->window + 4 * RC_COUNT * N + 4 * N + 8 * Bd * RF_EXAMPLE_TOPK;
    bytes += 4 * N * d + 2 * 4 * N * F + 16 * N;                           /* the SAE workspace */
    return bytes;
}

double sweep_site_fixed_bytes(size_t d, size_t F, int need_mean, int need_cov) {
    return (need_mean ? 8.0 * (double)d : 0) + (need_cov ? 8.0 * (double)d * (double)d : 0) +
           (double)sizeof(ReproSum) * (double)record_sums(d) + 4.0 * (double)F;
}

size_t sweep_pick_batch(const SweepSize *z, double budget, int *fits) {
    size_t B = schedule_batch_contexts(z->T);
    /* one thread: the threads' small buffers must not change the batch */
    while (B > 1 && sweep_rank_bytes(z, B, 1) > budget) B--;
    *fits = sweep_rank_bytes(z, B, 1) <= budget;
    return B;
}

void work_alloc(Work *w, const SweepJob *j) {
    const Gpt2Config *c = &j->model->cfg;
    const RfShape *sh = j->shape;
    const size_t T = j->ts->ctx, B = j->B, N = B * T, V = c->vocab_size, Vp = j->model->vocab_padded;
    size_t maxd = 0, maxF = 0;
    for (size_t i = 0; i < j->n_sites; i++) {
        maxd = j->sites[i].d > maxd ? j->sites[i].d : maxd;
        maxF = j->sites[i].F > maxF ? j->sites[i].F : maxF;
    }
    memset(w, 0, sizeof *w);
    acts_alloc_kept(&w->clean, c, B, T, j->keep); /* the layers the sites read */
    acts_alloc(&w->work, c, SWEEP_STACK * B, T, 0); /* read only at its end: one layer's buffers */
    w->logits_clean = sg_xcalloc(N * Vp, sizeof(float));
    w->p_clean = sg_xcalloc(N * V, sizeof(float));
    w->lse_clean = sg_xcalloc(N, sizeof(double));
    w->p_sum = sg_xcalloc(N, sizeof(double));
    const size_t R = SWEEP_STACK * N; /* the rows of a stack of passes */
    w->kl_rows = sg_xcalloc(R, sizeof(double));
    w->ce_rows = sg_xcalloc(R, sizeof(double));
    w->lse_rows = sg_xcalloc(R, sizeof(double));
    w->clean_row = sg_xcalloc(R, sizeof(uint32_t));
    w->sel = sg_xcalloc(R, sizeof(int32_t));
    w->sel_logits = sg_xcalloc(R * RF_EXAMPLE_TOPK, sizeof(float));
    unembed_scratch_alloc(&w->unembed, R);
    w->next = sg_xcalloc(N, sizeof(int32_t));
    w->measured = sg_xcalloc(N, 1);
    w->active = sg_xcalloc(N, 1);
    w->score_active = sg_xcalloc(N, 1);
    w->context = sg_xcalloc(N, sizeof(uint32_t));
    w->position = sg_xcalloc(N, sizeof(uint32_t));
    w->x = sg_xcalloc(N * maxd, sizeof(float));
    w->x_hat = sg_xcalloc(N * maxd, sizeof(float));
    w->out = sg_xcalloc(N * maxd, sizeof(float));
    w->x_scratch = sg_xcalloc(N * maxd, sizeof(float));
    w->f = sg_xcalloc(N * maxF, sizeof(float));
    w->f_scratch = sg_xcalloc(N * maxF, sizeof(float));
    w->g = sg_xcalloc(maxd > maxF ? maxd : maxF, sizeof(double));
    w->g2 = sg_xcalloc(maxd, sizeof(double));
    for (int iv = 0; iv < IV_COUNT; iv++) {
        w->kl_out[iv] = sg_xcalloc(B * sh->Wk * sh->samples, sizeof(float));
        w->ce_out[iv] = sg_xcalloc(B * sh->Wk * sh->samples, sizeof(float));
        w->ex_lp[iv] = sg_xcalloc(B * RF_EXAMPLE_TOPK, sizeof(float));
        w->ex_kl[iv] = sg_xcalloc(B, sizeof(float));
        w->ex_set[iv] = sg_xcalloc(B, 1);
    }
    w->zscore = sg_xcalloc(B * sh->window, sizeof(float));
    w->passes = sg_xcalloc(IV_COUNT * sh->samples + 2, sizeof *w->passes);
    w->recon = sg_xcalloc(RC_COUNT * N, sizeof(float));
    w->ce_clean_out = sg_xcalloc(N, sizeof(float));
    sae_scratch_alloc_dims(&w->sae_work, maxd, maxF, N); /* sites run one at a time */
    w->ex_ids = sg_xcalloc(B * RF_EXAMPLE_TOPK, sizeof(int32_t));
    w->ex_lp_clean = sg_xcalloc(B * RF_EXAMPLE_TOPK, sizeof(float));
}

void work_free(Work *w) {
    acts_free(&w->clean);
    acts_free(&w->work);
    void *ptrs[] = {w->logits_clean, w->p_clean, w->lse_clean, w->p_sum, w->kl_rows, w->ce_rows, w->lse_rows,
                    w->clean_row, w->sel, w->sel_logits, w->next, w->measured,
                    w->active, w->score_active, w->context, w->position, w->x, w->x_hat, w->out, w->x_scratch, w->f,
                    w->f_scratch, w->g, w->g2, w->zscore, w->recon, w->ce_clean_out, w->ex_ids, w->ex_lp_clean, w->passes};
    for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) free(ptrs[i]);
    for (int iv = 0; iv < IV_COUNT; iv++) free(w->kl_out[iv]), free(w->ce_out[iv]), free(w->ex_lp[iv]), free(w->ex_kl[iv]), free(w->ex_set[iv]);
    sae_scratch_free(&w->sae_work);
    unembed_scratch_free(&w->unembed);
}

/* KL, CE and log-sum-exp of every row of the work pass's R = copies x copy_rows rows (copy k
 * holds positions [P, P + Tq) of each context of the batch), against their clean rows, and the
 * logits of the example rows at the clean top-25: the unembedding fused with the reduction, in
 * vocabulary blocks over all the stack's rows at once (unembed.h). */
static void stack_kl_ce(const SweepJob *j, Work *w, size_t copies, size_t c0) {
    const RfShape *sh = j->shape;
    const size_t T = j->ts->ctx, P = w->work.P, Tq = w->work.T, copy_rows = w->work.B / copies * Tq;
    const size_t R = copies * copy_rows;
    for (size_t q = 0; q < R; q++) {
        const size_t i = q % copy_rows, b = i / Tq, t = P + i % Tq;
        w->clean_row[q] = (uint32_t)(b * T + t);
        w->sel[q] = t == sh->example_pos && c0 + b < sh->n_examples ? (int32_t)b : -1;
    }
    const UnembedClean clean = {w->logits_clean, w->p_clean, w->lse_clean, w->p_sum, w->next};
    const UnembedRows rows = {w->work.lnf, R, w->clean_row, w->sel, w->ex_ids, RF_EXAMPLE_TOPK};
    const UnembedOut out = {w->kl_rows, w->ce_rows, w->lse_rows, w->sel_logits};
    unembed_kl_ce(&out, &w->unembed, j->model, &clean, &rows);
}

/* ids (k) of the k largest logits, descending (ties: lower id first) */
static void top_ids(int32_t *ids, const float *logits, size_t V, size_t k) {
    for (size_t i = 0; i < k; i++) ids[i] = -1;
    for (size_t v = 0; v < V; v++) {
        size_t pos = k;
        while (pos > 0 && (ids[pos - 1] < 0 || logits[v] > logits[ids[pos - 1]])) pos--;
        if (pos >= k) continue;
        memmove(ids + pos + 1, ids + pos, (k - pos - 1) * sizeof *ids);
        ids[pos] = (int32_t)v;
    }
}

void sweep_clean_batch(const SweepJob *j, Work *w, size_t c0, size_t nb) {
    if (w->cached_nb == nb && w->cached_c0 == c0) return; /* reused by every site of the block */
    const Gpt2Model *m = j->model;
    const RfShape *sh = j->shape;
    const size_t T = j->ts->ctx, N = nb * T, V = m->cfg.vocab_size;
    const int32_t *ids = j->ts->ids + c0 * T;
    gpt2_forward(&w->clean, m, ids, nb, T);
    for (size_t r = 0; r < N; r++) {
        size_t t = r % T;
        w->next[r] = t + 1 < T ? ids[r + 1] : -1;
        w->measured[r] = (unsigned char)sweep_is_measured(j, ids[r]);
        w->active[r] = (unsigned char)(w->measured[r] && (!sh->scope_position || t == sh->position));
        w->context[r] = (uint32_t)(c0 + r / T), w->position[r] = (uint32_t)t;
    }
    gpt2_logits(w->logits_clean, &w->clean, m, 0, N); /* one GEMM of the batch's rows */
    metrics_clean(w->lse_clean, w->p_clean, w->p_sum, w->logits_clean, N, V);
    for (size_t r = 0; r < N; r++)
        w->ce_clean_out[r] =
            w->next[r] >= 0 && w->measured[r] ? (float)(w->lse_clean[r] - w->logits_clean[r * V + w->next[r]]) : NAN;
    w->cached_c0 = c0, w->cached_nb = nb;
    /* --examples: the clean top-25 at the example position of each example context here */
    for (size_t b = 0; b < nb; b++) {
        size_t c = c0 + b, r = b * T + sh->example_pos;
        if (c >= sh->n_examples) continue;
        int32_t *top = w->ex_ids + b * RF_EXAMPLE_TOPK;
        top_ids(top, w->logits_clean + r * V, V, RF_EXAMPLE_TOPK);
        for (int k = 0; k < RF_EXAMPLE_TOPK; k++)
            w->ex_lp_clean[b * RF_EXAMPLE_TOPK + k] = (float)(w->logits_clean[r * V + top[k]] - w->lse_clean[r]);
    }
}

/* One of SAELens's score passes, run in the stack at work_row0 (a full pass: row r of the batch
 * is work row work_row0 + r): KL and CE of every row whose token is not special added to score
 * slots kl_slot and kl_slot + 1. */
static void record_score(const SweepJob *j, Work *w, SiteRun *s, int kl_slot, size_t work_row0, size_t c0, size_t nb) {
    const size_t T = j->ts->ctx, N = nb * T;
    const int32_t *ids = j->ts->ids + c0 * T;
    ReproSum *sums = s->rec.sums;
    for (size_t r = 0; r < N; r++) {
        if (is_special(&j->model->cfg, ids[r])) continue;
        const size_t q = work_row0 + r;
        repro_add_checked(&sums[AG_SCORE + kl_slot], w->kl_rows[q]), s->rec.counts[CN_SCORE + kl_slot]++;
        if (w->next[r] >= 0)
            repro_add_checked(&sums[AG_SCORE + kl_slot + 1], w->ce_rows[q]), s->rec.counts[CN_SCORE + kl_slot + 1]++;
    }
}

/* SAELens's scores need its zero-ablation pass, its SAE pass and the clean CE over the
 * non-special tokens (docs/output-schema.md). A score pass that is, in this batch, the sae or
 * zero_ablation intervention's pass (the same value written at the same rows:
 * sweep_score_is_pass) is not run again: score_of[iv] names the score that intervention's pass
 * also records (exact: rows never interact). The others are added to the site's list; the clean
 * CE is summed here. */
static size_t add_score_passes(const SweepJob *j, Work *w, SiteRun *s, PassId *passes, int *score_of, size_t c0,
                               size_t nb) {
    const Gpt2Config *c = &j->model->cfg;
    const size_t T = j->ts->ctx, N = nb * T;
    const int32_t *ids = j->ts->ids + c0 * T;
    const struct { int score; Intervention iv; } SCORES[2] = {{SC_KL_ZERO, IV_ZERO_ABLATION}, {SC_KL_SAE, IV_SAE}};
    size_t n = 0;
    for (int k = 0; k < 2; k++)
        if (sweep_score_is_pass(c, j->bos_include, j->shape->scope_position, s->sae.site.kind, SCORES[k].score, ids, N))
            score_of[SCORES[k].iv] = SCORES[k].score;
        else
            passes[n++] = (PassId){IV_SAE, 0, SCORES[k].score};
    for (size_t r = 0; r < N; r++)
        if (!is_special(c, ids[r]) && w->next[r] >= 0) {
            repro_add_checked(&s->rec.sums[AG_SCORE + SC_CE_CLEAN],
                              w->lse_clean[r] - w->logits_clean[r * c->vocab_size + w->next[r]]);
            s->rec.counts[CN_SCORE + SC_CE_CLEAN]++;
        }
    return n;
}

/* The first position a pass changes: --scope position's interventions change position P only. */
static size_t pass_start(const SweepJob *j, PassId pass) {
    return pass.score < 0 && j->shape->scope_position ? j->shape->position : 0;
}

/* Writes one pass's site value into the work stack's copy that starts at work_row0: the
 * intervention's, or a score pass's (zero at every position; the SAE's at every non-special position, every position at
 * attn.hook_z, whose all_head_replacement_hook substitutes them all). */
static void write_pass(const SweepJob *j, Work *w, SiteRun *s, IvBatch *ib, PassId pass, size_t work_row0, size_t c0,
                       size_t nb) {
    const Gpt2Model *m = j->model;
    const size_t T = j->ts->ctx, N = nb * T;
    if (pass.score < 0) {
        ib->sample = pass.sample;
        iv_apply(pass.iv, w->out, ib);
        site_write(&w->work, m, s->sae.site, s->sae.basis, w->out, w->active, work_row0, N);
        return;
    }
    unsigned char *active = w->score_active;
    const int32_t *ids = j->ts->ids + c0 * T;
    for (size_t r = 0; r < N; r++) active[r] = (unsigned char)score_replaces(&m->cfg, s->sae.site.kind, pass.score, ids[r]);
    if (pass.score == SC_KL_ZERO) memset(w->out, 0, N * s->d * sizeof(float));
    site_write(&w->work, m, s->sae.site, s->sae.basis, pass.score == SC_KL_ZERO ? w->out : w->x_hat, active, work_row0, N);
}

/* KL and CE of one (intervention, sample) pass whose rows start at work_row0 in the work
 * buffers (stack_kl_ce computed them): into kl_out/ce_out, the site's sums and the examples.
 * The recorded rows: positions [t0, t0 + Wk) of each context (all of them at --scope all). */
static void record_pass(const SweepJob *j, Work *w, SiteRun *s, PassId pass, size_t work_row0, size_t nb) {
    const RfShape *sh = j->shape;
    const size_t T = j->ts->ctx;
    const Intervention iv = pass.iv;
    const size_t S = rf_samples_of(sh, iv), smp = pass.sample;
    const size_t t0 = sh->scope_position ? sh->position : 0, Wk = sh->Wk; /* recorded rows: [t0, t0 + Wk) */
    ReproSum *sums = s->rec.sums;
    float *kl_out = w->kl_out[iv], *ce_out = w->ce_out[iv];
    /* clean row b x T + t is work row work_row0 + b x Tq + (t - P) (a suffix pass holds positions
     * [P, P + Tq) of each context) */
    const size_t P = w->work.P, Tq = w->work.T;
    for (size_t b = 0; b < nb; b++)
        for (size_t t = t0; t < t0 + Wk; t++) {
            const size_t r = b * T + t, q = work_row0 + b * Tq + (t - P), o = (b * Wk + (t - t0)) * S + smp;
            if (!w->measured[r]) {
                kl_out[o] = ce_out[o] = NAN;
                continue;
            }
            double kl = w->kl_rows[q], ce = w->ce_rows[q];
            kl_out[o] = (float)kl, ce_out[o] = (float)ce;
            /* --examples: this intervention's log-probs of the clean top-25 */
            if (smp == 0 && iv_writes_examples(iv) && w->sel[q] >= 0) {
                for (int e = 0; e < RF_EXAMPLE_TOPK; e++)
                    w->ex_lp[iv][b * RF_EXAMPLE_TOPK + e] =
                        (float)(w->sel_logits[q * RF_EXAMPLE_TOPK + (size_t)e] - w->lse_rows[q]);
                w->ex_kl[iv][b] = (float)kl, w->ex_set[iv][b] = 1;
            }
            repro_add_checked(&sums[AG_KL0 + iv], kl), s->rec.counts[CN_KL0 + iv]++;
            if (w->next[r] >= 0) repro_add_checked(&sums[AG_CE0 + iv], ce), s->rec.counts[CN_CE0 + iv]++;
        }
}

int sweep_site_batch(const SweepJob *j, Work *w, size_t si, size_t c0, size_t nb) {
    const Gpt2Model *m = j->model;
    const RfShape *sh = j->shape;
    const size_t T = j->ts->ctx, N = nb * T;
    SiteRun *s = &j->sites[si];
    const Sae *sae = &s->sae;
    ReproSum *sums = s->rec.sums;
    site_read(w->x, &w->clean, m, sae->site, sae->basis, 0, N);
    sae_forward(w->f, w->x_hat, sae, &w->sae_work, w->x, N);
    recon_rows(w->recon, &s->rec, w->x, w->x_hat, w->f, w->measured, N);
    const size_t t0 = sh->scope_position ? sh->position : 0, Wk = sh->Wk; /* recorded rows: [t0, t0 + Wk) */
    for (size_t b = 0; b < nb; b++)
        for (size_t t = t0; t < t0 + Wk; t++) {
            size_t r = b * T + t;
            if (w->measured[r] && w->next[r] >= 0)
                repro_add_checked(&sums[AG_CE_CLEAN], w->ce_clean_out[r]), s->rec.counts[CN_CE_CLEAN]++;
        }
    IvBatch ib = {.N = N, .d = s->d, .d_sae = s->F, .x = w->x, .x_hat = w->x_hat, .f = w->f, .mean = s->mean,
                  .chol = s->chol, .latent_sigma = j->latent_noise, .sae = sae, .sae_work = &w->sae_work,
                  .context = w->context, .position = w->position, .active = w->active,
                  .seed = j->seed, .site_id = (uint32_t)s->site_id, .f_scratch = w->f_scratch,
                  .x_scratch = w->x_scratch, .g = w->g, .g2 = w->g2};
    /* every (intervention, sample) pass of the site, then SAELens's score passes, run
     * SWEEP_STACK at a time as one pass */
    PassId *passes = w->passes;
    size_t n_passes = 0;
    for (int ivi = 0; ivi < IV_COUNT; ivi++)
        if (rf_has_iv(sh, (Intervention)ivi)) {
            memset(w->ex_set[ivi], 0, j->B);
            for (size_t smp = 0; smp < rf_samples_of(sh, (Intervention)ivi); smp++)
                passes[n_passes++] = (PassId){(Intervention)ivi, (uint32_t)smp, -1};
        }
    int score_of[IV_COUNT]; /* the score an intervention's pass also records, or -1 */
    for (int ivi = 0; ivi < IV_COUNT; ivi++) score_of[ivi] = -1;
    if (j->scores) n_passes += add_score_passes(j, w, s, passes + n_passes, score_of, c0, nb);
    for (size_t p0 = 0, copies; p0 < n_passes; p0 += copies) {
        if (*j->stop) return -1;
        /* a stack of passes that restart at the same position: the interventions at --scope
         * position change only position P and are read in the window [P, P + Wk), so their passes
         * compute those positions only (a suffix pass); the score passes change every position */
        const size_t P = pass_start(j, passes[p0]), Tq = P > 0 ? sh->Wk : T;
        /* the work buffers hold SWEEP_STACK x B x T rows: a suffix pass's copies are shorter */
        const size_t max_copies = SWEEP_STACK * T / Tq;
        for (copies = 1; copies < max_copies && p0 + copies < n_passes && pass_start(j, passes[p0 + copies]) == P;)
            copies++;
        size_t layer;
        ForwardStage stage = site_restart_from_clean(&w->work, &w->clean, sae->site, &m->cfg, copies, P, Tq, &layer);
        const size_t copy_rows = nb * w->work.T;
        for (size_t k = 0; k < copies; k++) write_pass(j, w, s, &ib, passes[p0 + k], k * copy_rows, c0, nb);
        gpt2_forward_from(&w->work, m, layer, stage);
        stack_kl_ce(j, w, copies, c0);
        for (size_t k = 0; k < copies; k++) {
            const PassId pass = passes[p0 + k];
            if (pass.score >= 0) {
                record_score(j, w, s, pass.score, k * copy_rows, c0, nb);
                continue;
            }
            record_pass(j, w, s, pass, k * copy_rows, nb);
            if (score_of[pass.iv] >= 0 && pass.sample == 0) record_score(j, w, s, score_of[pass.iv], k * copy_rows, c0, nb);
        }
    }
    if (rf_has_zscore(sh)) zscore_rows(w->zscore, w->kl_out[IV_SAE], w->kl_out[IV_EPS_RANDOM], nb * sh->window, sh->samples);
    return 0;
}
