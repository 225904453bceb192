/* resultfile.h: the `saegap run` result file (layout: docs/output-schema.md, CONTRACT.md).
 *
 * The one place that knows the file's dataset and attribute names:
 *   - the schema, created (or, with --resume, opened and checked) from an RfShape;
 *   - the job identity that --resume compares item by item;
 *   - the unit-rows walk: the row sets a unit writes, in the order they are written and
 *     folded into the unit's checksum. `run` writes through it, `verify` reads through it,
 *     so the two cannot drift apart;
 *   - the per-unit records, done flags and checksums; the aggregate attributes; the
 *     correlation matrices; which datasets the final checksum covers.
 * HDF5 itself is behind h5out.h; this module decides what goes where. */
#ifndef SAEGAP_RESULTFILE_H
#define SAEGAP_RESULTFILE_H

#include "checksum.h"
#include "h5out.h"
#include "interventions.h"
#include "reprosum.h"
#include "sae.h"
#include "schedule.h"
#include "sitemetrics.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define RF_EXAMPLE_TOPK 25 /* top next-token log-probs kept per example context */

/* What the schema follows from: the job's sizes and options. */
typedef struct {
    size_t n_contexts, ctx, n_sites;
    uint32_t iv_mask;
    size_t samples;             /* draws of each random intervention */
    int scope_position;
    size_t position, window;    /* --scope position */
    size_t Wk;                  /* positions recorded per context: ctx, or window */
    size_t n_examples, example_pos;
    UnitLayout layout;
} RfShape;

size_t rf_samples_of(const RfShape *s, Intervention iv); /* samples for random ones, else 1 */
int rf_has_iv(const RfShape *s, Intervention iv);
int rf_has_zscore(const RfShape *s);
int rf_has_scores(const RfShape *s); /* sae and zero_ablation: SAELens's kl_div_score and ce_loss_score */ /* sae_kl_zscore: --scope position, samples > 1, sae and eps_random */

/* One site as the schema sees it. */
typedef struct {
    const char *name;
    const Sae *sae;             /* its attributes (NULL: none written) */
    size_t n_sums;              /* columns of its aggregate record (sitemetrics.h) */
} RfSite;

/* Dataset handles of one site. */
typedef struct {
    int kl[IV_COUNT], ce[IV_COUNT], recon[RC_COUNT], zscore, density;
    int rec_sums, rec_counts, rec_fire;
    int ex_lp[IV_COUNT], ex_kl[IV_COUNT]; /* examples: -1 where the intervention writes none */
    size_t n_sums, F;
} RfSiteSets;

typedef struct {
    H5Out *h;
    RfShape shape;
    int tokens, clean_ce, done, unit_checksum, ex_contexts, ex_position, ex_clean_ids, ex_clean_lp;
    int sched_rank, sched_run, sched_seconds, sched_wait; /* schedule/unit_* */
    int32_t run_index;          /* this run's index among the runs on the file (0: the first) */
    int corr[IV_COUNT][3];      /* pearson, spearman, sites; -1 when not written */
    RfSiteSets *sites;
    int ck_records;             /* unit checksums cover the unit's aggregate records too */
} ResultFile;

/* The job's identity: every item is written as attribute job_<name> and compared by --resume. */
/* if_absent: what a file written before the item existed did (compared in its place), or NULL. */
typedef struct { const char *name; char value[4096]; const char *if_absent; } RfJobItem;
#define RF_JOB_ITEMS_MAX 32
typedef struct {
    const char *model_checksum, *tokens_checksum;
    long long seed;
    int bos_include;
    double latent_noise;
    const RfSite *sites;
    const char *saes_checksum;  /* of every SAE's weights, basis and normalisation factor */
    const char *score_special_ids;        /* SAELens's special tokens, "0,1,2,3,106,107" */
    const char *score_special_ids_before; /* what a file without that record used: config.json's bos, eos, pad */
    const char *context_source; /* tokens_context_source: how the contexts were made */
    int flat_tokens;            /* the token file is a flat stream (files before context_source cut it without BOS) */
} RfJob;
size_t rf_job_items(const RfShape *s, const RfJob *job, RfJobItem *items);

/* Collective. Creates every dataset of the schema (or opens them when h is resuming) and, on
 * a new file, the root and site attributes. Works on an h5out_dry() handle (size only). */
typedef struct {
    const char *command_line, *model, *tokens_file;
    const char *model_architecture; /* config.json's class: GPT2LMHeadModel, GPTNeoXForCausalLM */
    const char *blis_kernels; /* BLIS's kernels: a result's last bits depend on them */
    int64_t bos_token_id;
    const char *score_special_ids, *score_special_source; /* SAELens's special tokens and where they came from */
    int ranks;
    int prepend_bos;                /* contexts.h: the rule that applied, and why */
    const char *prepend_bos_source;
} RfProvenance;
void rf_create(ResultFile *rf, H5Out *h, const RfShape *s, const RfSite *sites, const RfJob *job,
               const RfProvenance *prov);
void rf_free(ResultFile *rf);

/* --resume: 0 when the file records this job (every item equal); -1 with a pending error naming
 * the first item that differs. Then reads the stored unit layout into *layout (B must match). */
int rf_check_same_job(H5Out *h, const char *path, const RfShape *s, const RfJob *job);
/* The hash an existing file's job identity was recorded with (checksum.h). */
JobHashKind rf_job_hash_kind(H5Out *h);
int rf_read_layout(H5Out *h, const char *path, size_t n, size_t B, size_t n_sites, UnitLayout *layout);
/* --resume: a warning when the file's units were computed with other BLIS kernels (the values
 * of the units computed now may then differ in their last bits from an uninterrupted run). */
void rf_warn_other_kernels(H5Out *h, const char *path, const char *kernels);

/* ---- the unit-rows walk -------------------------------------------------------------------- */

typedef enum { RF_ROWS_CLEAN_CE, RF_ROWS_KL, RF_ROWS_CE, RF_ROWS_ZSCORE, RF_ROWS_RECON } RfRowsKind;
typedef struct {
    RfRowsKind kind;
    int which;                  /* the intervention (KL, CE) or the recon metric */
    long site;                  /* -1 for clean/ce */
    size_t c0, nb;              /* the batch: contexts [c0, c0 + nb) */
    size_t per_context;         /* float32 values per context */
    size_t index;               /* 0 for the first row set of a batch (clean) or of a site */
    int spec;                   /* the schema entry (resultfile.c) */
    const RfShape *shape;
    char name[320];             /* dataset path */
} RfRows;
/* Calls visit for every row set unit `unit` writes, in order: per batch of its block, clean/ce
 * (first site group only), then for each site of its group: kl and ce of every intervention in
 * enum order, the z-score, the recon metrics. Stops at the first non-zero return, returned. */
typedef int (*RfVisit)(void *ctx, const RfRows *rows);
int rf_unit_walk(const RfShape *s, const char *const *site_names, size_t unit, RfVisit visit, void *ctx);
int rf_rows_ds(const ResultFile *rf, const RfRows *rows); /* the dataset handle of a row set */

/* ---- per-unit progress ----------------------------------------------------------------------- */

/* Independent. The site's aggregate record of a block: sums (packed, reprosum.h), counts,
 * latent firing counts; folded into the unit's *checksum after its rows (rf->ck_records). */
void rf_write_record(ResultFile *rf, size_t site, size_t block, const ReproSum *sums, const int64_t *counts,
                     const int32_t *fire, uint64_t *checksum);
void rf_read_record(ResultFile *rf, size_t site, size_t block, ReproSum *sums, int64_t *counts, int32_t *fire);
/* How the units were shared out (not results: no unit checksum covers them). */
#define RF_UNIT_QUEUE "rank 0 answers two-sided requests between its GEMMs"
void rf_write_unit_schedule(ResultFile *rf, size_t unit, int rank, double seconds, double wait_seconds);
/* Collective. The run that completes the file: its ranks and, summed over them, seconds computing
 * units, waiting for one, the longest wait, seconds after the rank's last unit until all ended. */
void rf_write_schedule_summary(ResultFile *rf, int ranks, const double v[4]);
void rf_mark_done(ResultFile *rf, size_t unit, uint64_t checksum); /* checksum, then the done flag */
void rf_read_done(ResultFile *rf, int32_t *done);                  /* n_units flags */

/* What a unit's checksum covers: its rows in the walk's order, then (files that record
 * unit_checksum_covers = RF_UNIT_CK_RECORDS, written since the attribute exists) the aggregate
 * records of its sites for its block. Older files: the rows only. */
#define RF_UNIT_CK_RECORDS "rows,records"
int rf_unit_ck_records(H5Out *h);
/* Names the units whose flag is set, the first 8 of them ("3, 17, ..."), into buf; how many. */
size_t rf_list_units(char *buf, size_t cap, const int32_t *flag, size_t n);
/* A finished unit's checksum recomputed from the file: with rf, through the handles this run has
 * open (every rank may call; independent reads); without, datasets looked up by name (verify).
 * 0, or -1 when a dataset is missing, of another shape or unreadable. */
int rf_unit_reread(H5Out *h, const ResultFile *rf, const RfShape *s, const char *const *site_names, size_t unit,
                   int records, uint64_t *sum);

/* ---- reading a result without the job (verify, info) -------------------------------------- */

typedef struct {
    RfShape shape;
    int64_t complete;
    char sites[4096];           /* job_sites, cut into names */
    char *names[256];
} RfFileJob;
/* The shape and site names from the root attributes. 0, or -1 with `why` (a sentence saying
 * which attribute is missing or out of range). */
int rf_read_file_job(H5Out *h, RfFileJob *j, char *why, size_t cap);
/* n_units done flags and unit checksums (checksums may be NULL): 0; -1 when the progress
 * datasets are missing or of another length; -2 when unreadable. Allocates *done (*checksums). */
int rf_read_progress(H5Out *h, size_t n_units, int32_t **done, int64_t **checksums);
/* `saegap info` of a run result: its provenance, job and state, printed to out. 1 (nothing
 * printed) when h is not a run result. */
int rf_describe(H5Out *h, const char *path, FILE *out);

/* ---- the end ---------------------------------------------------------------------------------- */

/* Collective. The site's aggregate attributes (every rank the same values). */
void rf_write_site_summary(ResultFile *rf, size_t site, const char *site_name, const SiteSummary *v, int scores);
void rf_write_density(ResultFile *rf, size_t site, const double *density); /* rank 0 */
/* The correlation datasets of intervention iv (rank 0) and their token count (collective). */
void rf_write_correlation(ResultFile *rf, Intervention iv, const double *pearson, const double *spearman,
                          const char *const *site_names, long tokens, int rank);
/* Collective. final_checksum over the datasets written after the units, then complete = 1. */
void rf_complete(ResultFile *rf, const char *path, MPI_Comm comm, int rank);
/* Whether the file's final_checksum matches its datasets again (verify). The checksum's scope:
 * tokens, progress/ (not unit_done/unit_checksum), correlation/, examples/, feature densities.
 * NOT_RECORDED: written by the versions that stored a checksum of nothing (resultfile.c). */
typedef enum { RF_FINAL_OK, RF_FINAL_MISMATCH, RF_FINAL_NOT_RECORDED } RfFinalCheck;
RfFinalCheck rf_final_checksum_check(H5Out *h);

#endif
