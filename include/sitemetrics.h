/* sitemetrics.h: a site's per-token reconstruction metrics, the aggregate record they and the
 * KL/CE values are summed into (one per block and site, exact: reprosum.h), and the means
 * derived from the records at the end (explained variance, SAELens's scores, ...).
 * Definitions: docs/output-schema.md. */
#ifndef SAEGAP_SITEMETRICS_H
#define SAEGAP_SITEMETRICS_H

#include "interventions.h"
#include "reprosum.h"

#include <stddef.h>
#include <stdint.h>

/* Per-token reconstruction metrics: datasets sites/<site>/recon/<name>. */
enum { RC_L2_IN, RC_L2_OUT, RC_EPS, RC_COS, RC_MSE, RC_L0, RC_L1, RC_COUNT };
const char *recon_name(int metric);

/* The aggregate record of one (block, site): sums, then counts. */
enum { AG_ERR_SQ, AG_X_SQ, AG_XHAT_SQ, AG_X_DOT_XHAT, AG_L0, AG_CE_CLEAN, AG_KL0, AG_CE0 = AG_KL0 + IV_COUNT,
       AG_SCORE = AG_CE0 + IV_COUNT, /* + SC_COUNT sums of SAELens's score passes */
       AG_X_SUM = AG_SCORE + 5 };     /* + d sums of x */
enum { CN_MEASURED, CN_CE_CLEAN, CN_KL0, CN_CE0 = CN_KL0 + IV_COUNT, CN_SCORE = CN_CE0 + IV_COUNT,
       CN_COUNT = CN_SCORE + 5 };
/* SAELens's kl_div_score and ce_loss_score (sae_lens/evals.py get_recons_loss): means over the
 * tokens that are not special, of the SAE pass with special tokens left clean and of the
 * zero-ablation pass that zeroes the site at every position, BOS included. */
enum { SC_KL_SAE, SC_CE_SAE, SC_KL_ZERO, SC_CE_ZERO, SC_CE_CLEAN, SC_COUNT };
_Static_assert(SC_COUNT == AG_X_SUM - AG_SCORE && SC_COUNT == CN_COUNT - CN_SCORE, "score slots");
const char *score_name(int slot); /* SAELens's names: kl_div_with_sae, ... */

static inline size_t record_sums(size_t d) { return AG_X_SUM + d; }

/* A site's running record (this unit's, or the totals). */
typedef struct {
    ReproSum *sums;   /* record_sums(d) */
    int64_t counts[CN_COUNT];
    int32_t *fire;    /* (F) tokens each latent fired on */
    size_t d, F, n_sums;
} SiteRecord;
void record_alloc(SiteRecord *r, size_t d, size_t F);
void record_clear(SiteRecord *r);
void record_free(SiteRecord *r);

/* Rows j of (N) with measured[j]: the 7 recon metrics into recon (RC_COUNT, N) (NaN where not
 * measured), and their sums into the record. x, x_hat (N, d), f (N, F). */
void recon_rows(float *recon, SiteRecord *rec, const float *x, const float *x_hat, const float *f,
                const unsigned char *measured, size_t N);

/* (KL_sae - mean_s KL_eps_random) / std_s KL_eps_random (ddof 1) for n rows of S samples. */
void zscore_rows(float *z, const float *kl_sae, const float *kl_eps, size_t n, size_t S);

/* A sum the exact accumulator cannot hold ends the run naming the site and the metric, before
 * a poisoned record reaches the file. */
void record_check_sums(const ReproSum *sums, size_t n, const char *site);

/* The means of a site over the whole run, from its summed records. */
typedef struct {
    double explained_variance, relative_reconstruction_bias, mean_l0, mean_ce_clean;
    double kl_div_score, ce_loss_score, dead_latents, measured_tokens;
    double mean_kl[IV_COUNT], mean_ce[IV_COUNT], score[SC_COUNT];
} SiteSummary;
void site_summary(SiteSummary *v, double *density, const ReproSum *tot, const int64_t *cnt, const int64_t *fire,
                  size_t d, size_t F);

#endif
