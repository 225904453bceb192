/* sweep.h: the compute path of `saegap run` for one batch of contexts. No file I/O here:
 * results land in the Work buffers (planned once by work_alloc, as acts_alloc plans the
 * forward pass's), and run.c writes them through resultfile.h.
 *
 * sweep_clean_batch: one clean forward pass (cached: reused by every site of the unit), its
 *   logits, the clean CE and the examples' clean top-25.
 * sweep_site_batch: for one SAE site, on the cached batch: the SAE once per token, the recon
 *   metrics, and every intervention (x samples) as a pass restarted at the site from the clean
 *   state, reduced block by block to KL and CE; then SAELens's score passes and the z-score.
 *   Sums go into the site's record (sitemetrics.h). */
#ifndef SAEGAP_SWEEP_H
#define SAEGAP_SWEEP_H

#include "forward.h"
#include "interventions.h"
#include "model.h"
#include "resultfile.h"
#include "sae.h"
#include "sitemetrics.h"
#include "tokens.h"
#include "unembed.h"

#include <signal.h>
#include <stddef.h>
#include <stdint.h>


/* One SAE site of the job. */
typedef struct {
    Sae sae;
    char name[128];
    size_t d, F, site_id;
    double *mean, *chol;          /* statistics pass (when needed) */
    SiteRecord rec;               /* this unit's record */
} SiteRun;

/* What the compute path reads of the job. */
typedef struct {
    const Gpt2Model *model;
    const TokenSet *ts;
    SiteRun *sites;
    size_t n_sites;
    const RfShape *shape;         /* interventions, samples, scope, window, examples */
    size_t B;                     /* contexts per forward batch */
    const unsigned char *keep;    /* (L) the clean cache's kept layers (site_keep_layers) */
    int bos_include;
    int scores;                   /* sae and zero_ablation run: SAELens's scores are computed */
    double latent_noise;
    uint64_t seed;
    volatile sig_atomic_t *stop;  /* set by a signal: abandon the batch */
} SweepJob;

/* What a rank's buffers are sized by (work_alloc): plan.c fills it from the cfgs, run.c from
 * the loaded job, so both count the same bytes and pick the same batch. */
typedef struct {
    const Gpt2Config *cfg;
    size_t vocab_padded, T, Wk, window, samples;
    size_t max_d, max_F;          /* the largest site width and SAE width */
    const unsigned char *keep;    /* (L) layers the clean cache keeps (site_keep_layers) */
    double fixed;                 /* bytes that do not grow with the batch: each site's statistics
                                     (mean, covariance factor) and record */
} SweepSize;
/* A rank's private bytes for its buffers at a batch of B contexts (clean cache, work pass,
 * clean logits and probabilities, the stack's rows, the SAE workspace, per-batch results), plus
 * z->fixed; `threads`: BLIS threads per rank (the suffix pass's per-thread buffers). */
double sweep_rank_bytes(const SweepSize *z, size_t B, int threads);
/* SweepSize.fixed's share of one site of width d and SAE width F: its mean and covariance factor
 * (when the interventions need them) and its record. */
double sweep_site_fixed_bytes(size_t d, size_t F, int need_mean, int need_cov);
/* The batch (contexts per forward batch) for a per-rank memory budget in bytes: the largest B
 * up to schedule_batch_contexts(T) whose sweep_rank_bytes at one thread fit, at least 1. A job
 * and a budget give one batch, on any number of ranks and threads (the values depend on the
 * batch: it is stored in the file, unit_batch_contexts, and --resume keeps the file's). *fits:
 * 0 when even one context exceeds the budget. */
size_t sweep_pick_batch(const SweepSize *z, double budget, int *fits);

/* Whether a token is measured (BOS only with --bos include). */
int sweep_is_measured(const SweepJob *j, int32_t tok);
/* Whether SAELens's score pass `score` (SC_KL_ZERO or SC_KL_SAE) of a batch's N tokens is the
 * zero_ablation or sae intervention's pass of that batch: the same value at the same rows (at
 * --scope all, when the measured tokens are exactly the ones the score pass replaces). Then
 * sweep.c runs it once for both; plan.c counts it once. */
int sweep_score_is_pass(const Gpt2Config *c, int bos_include, int scope_position, SiteKind kind, int score,
                        const int32_t *ids, size_t N);

/* Passes restarted at a site run this many at a time as one pass (the work buffers hold that
 * many copies of the batch): the GEMMs get SWEEP_STACK x B x T rows, so BLIS packs each weight
 * matrix once for all of them. Rows never interact, so the values do not depend on it. Suffix
 * passes (--scope position, positions [P, T) only) run SWEEP_STACK x T / (T - P) at a time. */
enum { SWEEP_STACK = 4 };

/* One intervened pass of a site: which intervention, which sample; or (score >= 0) one of
 * SAELens's score passes, SC_KL_ZERO or SC_KL_SAE (sitemetrics.h). */
typedef struct {
    Intervention iv;
    uint32_t sample;
    int score;
} PassId;

typedef struct {
    Activations clean, work;  /* work: SWEEP_STACK x B contexts, one layer's buffers */
    PassId *passes;           /* (IV_COUNT x samples + 2) the site's passes in order */
    size_t cached_c0, cached_nb;  /* the batch the clean cache holds (nb 0: none) */
    float *logits_clean;  /* (N, V) (planned as (N, Vp): the GEMM's rows are compacted in place) */
    float *p_clean;       /* (N, V) */
    double *lse_clean, *p_sum; /* (N) */
    /* a stack of passes' rows (R <= SWEEP_STACK x N), through the fused unembedding */
    double *kl_rows, *ce_rows, *lse_rows; /* (R) KL and CE against their clean rows, log-sum-exp */
    uint32_t *clean_row;  /* (R) the clean row of each */
    int32_t *sel;         /* (R) the example context whose clean top-25 the row reports, or -1 */
    float *sel_logits;    /* (R, 25) the row's logits at those ids */
    UnembedScratch unembed;
    int32_t *next;        /* (N) next token or -1 */
    unsigned char *measured, *active, *score_active; /* (N) */
    uint32_t *context, *position;     /* (N) */
    float *x, *x_hat, *f, *out, *x_scratch, *f_scratch; /* (N, d) / (N, F) */
    double *g, *g2;
    /* outputs of the last site batch */
    float *kl_out[IV_COUNT], *ce_out[IV_COUNT]; /* (nb, Wk, S) */
    float *zscore;           /* (nb, W) */
    float *recon;            /* (RC_COUNT, N) */
    float *ex_lp[IV_COUNT];  /* (B, 25) example contexts' top-25 log-probs under the intervention */
    float *ex_kl[IV_COUNT];  /* (B) their KL */
    unsigned char *ex_set[IV_COUNT]; /* (B) 1 where the example row was measured (else not written) */
    /* outputs of the last clean batch */
    float *ce_clean_out;     /* (N) */
    int32_t *ex_ids;         /* (B, 25) clean top ids of example contexts in the cached batch */
    float *ex_lp_clean;      /* (B, 25) */
    SaeScratch sae_work;     /* one for every site: a site's SAE state lives within its batch */
} Work;

void work_alloc(Work *w, const SweepJob *j);
void work_free(Work *w);

void sweep_clean_batch(const SweepJob *j, Work *w, size_t c0, size_t nb);
/* 0, or -1 when a stop was requested mid-way (the batch is abandoned). */
int sweep_site_batch(const SweepJob *j, Work *w, size_t si, size_t c0, size_t nb);

#endif
