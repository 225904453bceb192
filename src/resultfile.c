/* resultfile.c: the run result file's schema, job identity, unit-rows walk and records
 * (resultfile.h). */
#include "resultfile.h"

#include "checksum.h"
#include "contexts.h"
#include "error.h"
#include "sites.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* final_checksum until the run completes: the length of the value that replaces it */
#define FINAL_CHECKSUM_PLACEHOLDER "fnv1a64+attributes:0000000000000000"

int rf_has_iv(const RfShape *s, Intervention iv) { return (s->iv_mask >> iv) & 1u; }
size_t rf_samples_of(const RfShape *s, Intervention iv) { return iv_samples(iv, s->samples); }
int rf_has_scores(const RfShape *s) { return rf_has_iv(s, IV_SAE) && rf_has_iv(s, IV_ZERO_ABLATION); }
int rf_has_zscore(const RfShape *s) {
    return s->scope_position && s->samples > 1 && rf_has_iv(s, IV_SAE) && rf_has_iv(s, IV_EPS_RANDOM);
}

/* ---- job identity ------------------------------------------------------------------------------ */

size_t rf_job_items(const RfShape *s, const RfJob *job, RfJobItem *it) {
    size_t n = 0;
#define ITEM(nm, ...) (it[n].name = (nm), it[n].if_absent = NULL, snprintf(it[n].value, sizeof it[n].value, __VA_ARGS__), n++)
    ITEM("model_checksum", "%s", job->model_checksum);
    ITEM("n_contexts", "%zu", s->n_contexts);
    ITEM("ctx", "%zu", s->ctx);
    /* files written before this item cut a flat stream without BOS and used rows as stored */
    ITEM("context_source", "%s", job->context_source ? job->context_source : tokens_context_source(job->flat_tokens, 0));
    it[n - 1].if_absent = tokens_context_source(job->flat_tokens, 0);
    ITEM("tokens_checksum", "%s", job->tokens_checksum); /* after the counts: name the plainer difference */
    ITEM("seed", "%lld", job->seed);
    char ivs[256] = "";
    for (int iv = 0; iv < IV_COUNT; iv++)
        if (rf_has_iv(s, (Intervention)iv))
            snprintf(ivs + strlen(ivs), sizeof ivs - strlen(ivs), "%s%s", ivs[0] ? "," : "", iv_name((Intervention)iv));
    ITEM("interventions", "%s", ivs);
    ITEM("scope", "%s", s->scope_position ? "position" : "all");
    ITEM("position", "%zd", s->scope_position ? (ssize_t)s->position : (ssize_t)-1);
    ITEM("window", "%zd", s->scope_position ? (ssize_t)s->window : (ssize_t)-1);
    ITEM("samples", "%zu", s->samples);
    ITEM("bos", "%s", job->bos_include ? "include" : "exclude");
    ITEM("latent_noise_sigma", "%.17g", job->latent_noise);
    ITEM("examples", "%zu", s->n_examples);
    char sites[4000] = "";
    for (size_t i = 0; i < s->n_sites; i++)
        snprintf(sites + strlen(sites), sizeof sites - strlen(sites), "%s%s", i ? "," : "", job->sites[i].name);
    ITEM("sites", "%s", sites);
    ITEM("saes_checksum", "%s (weights, basis, normalisation factor)", job->saes_checksum);
    /* the tokens SAELens's scores leave out (issue 26.8) */
    ITEM("score_special_token_ids", "%s", job->score_special_ids ? job->score_special_ids : "");
    it[n - 1].if_absent = job->score_special_ids_before; /* before 2026-12-07: config.json's bos, eos, pad */
#undef ITEM
    return n;
}

JobHashKind rf_job_hash_kind(H5Out *h) {
    char v[128] = "";
    h5out_get_attr_str(h, "/", "job_model_checksum", v, sizeof v);
    return job_hash_kind_of(v);
}

int rf_check_same_job(H5Out *h, const char *path, const RfShape *s, const RfJob *job) {
    RfJobItem it[RF_JOB_ITEMS_MAX];
    size_t ni = rf_job_items(s, job, it);
    for (size_t i = 0; i < ni; i++) {
        char have[4096] = "", key[96];
        snprintf(key, sizeof key, "job_%s", it[i].name);
        if (h5out_get_attr_str(h, "/", key, have, sizeof have) != 0) {
            if (!it[i].if_absent)
                return sg_errorf(path, "--resume: the file has no '%s' record: not a saegap run file", key);
            snprintf(have, sizeof have, "%s", it[i].if_absent); /* a file written before the item */
        }
        if (strcmp(have, it[i].value) != 0)
            return sg_errorf(path, "--resume: this file is from a different job: %s is '%s' in the file but '%s' now",
                             it[i].name, have, it[i].value);
    }
    return 0;
}

int rf_read_layout(H5Out *h, const char *path, size_t n, size_t B, size_t n_sites, UnitLayout *layout) {
    int64_t bc = 0, bpb = 0, groups = 0;
    if (h5out_get_attr_i64(h, "/", "unit_batch_contexts", &bc) || h5out_get_attr_i64(h, "/", "unit_batches_per_block", &bpb) ||
        h5out_get_attr_i64(h, "/", "unit_site_groups", &groups) || (size_t)bc != B || bpb <= 0 || groups <= 0)
        return sg_errorf(path, "--resume: the file's unit layout is missing or differs (not this job's file)");
    schedule_layout_from(layout, n, B, n_sites, (size_t)bpb, (size_t)groups);
    return 0;
}

void rf_warn_other_kernels(H5Out *h, const char *path, const char *kernels) {
    char have[64] = "";
    if (h5out_get_attr_str(h, "/", "blis_kernels", have, sizeof have) != 0) return; /* older files */
    if (strcmp(have, kernels) != 0)
        sg_warnf("%s: its units so far were computed with BLIS kernels '%s', this run uses '%s': the units computed "
                 "now may differ in their last bits from an uninterrupted run (set BLIS_ARCH_TYPE, or resume on "
                 "the same kind of node)", path, have, kernels);
}

/* ---- the schema ----------------------------------------------------------------------------------- */

static void root_attributes(H5Out *h, const RfShape *s, const RfJob *job, const RfProvenance *prov) {
    h5out_attr_provenance(h, prov->command_line);
    h5out_attr_str(h, "/", "model", prov->model);
    /* which tokenizer decodes the token ids (the report: analysis/vocab.py) */
    if (prov->model_architecture) h5out_attr_str(h, "/", "model_architecture", prov->model_architecture);
    h5out_attr_str(h, "/", "tokens_file", prov->tokens_file);
    h5out_attr_i64(h, "/", "bos_token_id", prov->bos_token_id);
    if (prov->score_special_ids) { /* SAELens's special tokens, left out of its scores (issue 26.8) */
        h5out_attr_str(h, "/", "score_special_token_ids", prov->score_special_ids);
        h5out_attr_str(h, "/", "score_special_token_source", prov->score_special_source);
    }
    h5out_attr_i64(h, "/", "prepend_bos", prov->prepend_bos);
    if (prov->prepend_bos_source) h5out_attr_str(h, "/", "prepend_bos_source", prov->prepend_bos_source);
    h5out_attr_i64(h, "/", "ranks", prov->ranks);
    h5out_attr_i64(h, "/", "complete", 0);
    h5out_attr_str(h, "/", "unit_checksum_covers", RF_UNIT_CK_RECORDS);
    h5out_attr_i64(h, "/", "unit_batch_contexts", (int64_t)s->layout.B);
    h5out_attr_i64(h, "/", "unit_batches_per_block", (int64_t)s->layout.batches_per_block);
    h5out_attr_i64(h, "/", "unit_site_groups", (int64_t)s->layout.n_groups);
    if (prov->blis_kernels) h5out_attr_str(h, "/", "blis_kernels", prov->blis_kernels);
    RfJobItem it[RF_JOB_ITEMS_MAX];
    size_t ni = rf_job_items(s, job, it);
    for (size_t i = 0; i < ni; i++) {
        char key[96];
        snprintf(key, sizeof key, "job_%s", it[i].name); /* exact text, compared by --resume */
        h5out_attr_str(h, "/", key, it[i].value);
        /* numbers as numbers where CONTRACT lists them */
        if (!strcmp(it[i].name, "n_contexts") || !strcmp(it[i].name, "ctx") || !strcmp(it[i].name, "seed") ||
            !strcmp(it[i].name, "position") || !strcmp(it[i].name, "window") || !strcmp(it[i].name, "samples"))
            h5out_attr_i64(h, "/", it[i].name, atoll(it[i].value));
        else if (!strcmp(it[i].name, "latent_noise_sigma"))
            h5out_attr_f64(h, "/", it[i].name, atof(it[i].value));
        else
            h5out_attr_str(h, "/", it[i].name, it[i].value);
    }
}

static void site_attributes(H5Out *h, const char *g, const Sae *a) {
    h5out_attr_str(h, g, "sae_path", a->dir);
    h5out_attr_str(h, g, "hook_name", a->hook_name);
    h5out_attr_str(h, g, "sae_model_name", a->model_name);
    h5out_attr_str(h, g, "architecture", sae_arch_name(a->arch));
    h5out_attr_i64(h, g, "d_in", (int64_t)a->d_in);
    h5out_attr_i64(h, g, "d_sae", (int64_t)a->d_sae);
    if (a->arch == SAE_TOPK || a->arch == SAE_GROUPMAX) h5out_attr_i64(h, g, "k", (int64_t)a->k);
    h5out_attr_str(h, g, "cfg_generation", sae_format_name(a->format));
    h5out_attr_str(h, g, "normalize_activations", sae_norm_name(a->norm));
    h5out_attr_i64(h, g, "apply_b_dec_to_input", a->apply_b_dec_to_input);
    h5out_attr_str(h, g, "basis", basis_name(a->basis));
    h5out_attr_str(h, g, "basis_source", a->basis_source);
    /* the cfg's own keys (-1: it has none) and the convention taken (contexts.h) */
    h5out_attr_i64(h, g, "prepend_bos", a->has_prepend_bos ? a->prepend_bos : -1);
    h5out_attr_i64(h, g, "context_size", a->context_size ? (int64_t)a->context_size : -1);
    h5out_attr_str(h, g, "context_convention", contexts_of_sae(a).source);
    for (int f = 0; f < SG_BASIS_FLAG_COUNT; f++) {
        char key[64];
        snprintf(key, sizeof key, "basis_%s", basis_flag_name(f));
        h5out_attr_i64(h, g, key, (a->basis & basis_flag_bit(f)) != 0);
    }
    if (a->norm == SAE_NORM_EXPECTED_AVERAGE) {
        h5out_attr_f64(h, g, "norm_scaling_factor", a->norm_scaling_factor);
        h5out_attr_str(h, g, "norm_scaling_factor_source", a->norm_scaling_factor_source);
    }
}

/* ---- the schema, as a table ------------------------------------------------------------------ */

/* What a dataset repeats over: once, per site, per site and intervention, per site and recon
 * metric, per intervention (correlations). */
typedef enum { EACH_FILE, EACH_SITE, EACH_SITE_IV, EACH_SITE_METRIC, EACH_IV } Each;
/* Its dimensions, from the shape (D_SAMPLES is left out when an intervention draws once). */
typedef enum { D_END, D_CONTEXTS, D_CTX, D_UNITS, D_WK, D_SAMPLES, D_WINDOW, D_LATENTS, D_BLOCKS, D_SUMS2, D_COUNTS,
               D_SITES, D_EXAMPLES, D_TOPK } Dim;
/* Which checksum covers it: a unit's (in the unit-rows walk's order) or the final one. */
typedef enum { CK_NONE, CK_UNIT, CK_FINAL } Checksum;

/* Which part of the file it belongs to: the parts are created in this order (and, inside a
 * part, site by site, each site's datasets by intervention or metric, then its own), which
 * keeps the file's layout as it has always been. */
typedef enum { PART_MAIN, PART_SITES, PART_CORRELATION, PART_EXAMPLES, PART_COUNT } Part;

typedef struct {
    Part part;
    const char *path;           /* %s: the site, then the intervention or metric (EACH_IV: the intervention) */
    H5OutType type;
    int strings;                /* fixed-length strings, one per site (h5out_dataset_strings) */
    Each each;
    Dim dims[3];
    Checksum checksum;
    RfRowsKind rows;            /* CK_UNIT: which buffer of a batch it holds */
    int (*when)(const RfShape *s, int iv); /* NULL: always */
    size_t handle;              /* offset of its handle in ResultFile (EACH_FILE, EACH_IV) or RfSiteSets */
    size_t stride;              /* bytes between the handles of consecutive interventions or metrics */
    int added;                  /* new since files were written: --resume creates it in such a file */
} DatasetSpec;

static int when_iv(const RfShape *s, int iv) { return rf_has_iv(s, (Intervention)iv); }
static int when_zscore(const RfShape *s, int iv) { return (void)iv, rf_has_zscore(s); }
static int when_correlated(const RfShape *s, int iv) {
    return rf_has_iv(s, (Intervention)iv) && iv_is_correlated((Intervention)iv) && rf_has_iv(s, IV_EPS_RANDOM);
}
static int when_examples(const RfShape *s, int iv) { return (void)iv, s->n_examples > 0; }
static int when_example_iv(const RfShape *s, int iv) {
    return s->n_examples > 0 && iv_writes_examples((Intervention)iv) && rf_has_iv(s, (Intervention)iv);
}

#define IN_FILE(f) offsetof(ResultFile, f), 0, 0
#define IN_SITE(f) offsetof(RfSiteSets, f), sizeof(int), 0
#define IN_CORR(k) offsetof(ResultFile, corr) + (k) * sizeof(int), 3 * sizeof(int), 0
#define IN_FILE_ADDED(f) offsetof(ResultFile, f), 0, 1 /* added since files were written */
static const DatasetSpec SCHEMA[] = {
    {PART_MAIN, "tokens", H5OUT_I32, 0, EACH_FILE, {D_CONTEXTS, D_CTX}, CK_FINAL, 0, NULL, IN_FILE(tokens)},
    {PART_MAIN, "clean/ce", H5OUT_F32, 0, EACH_FILE, {D_CONTEXTS, D_CTX}, CK_UNIT, RF_ROWS_CLEAN_CE, NULL, IN_FILE(clean_ce)},
    {PART_MAIN, "progress/unit_done", H5OUT_I32, 0, EACH_FILE, {D_UNITS}, CK_NONE, 0, NULL, IN_FILE(done)},
    {PART_MAIN, "progress/unit_checksum", H5OUT_I64, 0, EACH_FILE, {D_UNITS}, CK_NONE, 0, NULL, IN_FILE(unit_checksum)},
    /* who computed each unit and how long it took and waited (rf_write_unit_schedule) */
    {PART_MAIN, "schedule/unit_rank", H5OUT_I32, 0, EACH_FILE, {D_UNITS}, CK_FINAL, 0, NULL, IN_FILE_ADDED(sched_rank)},
    {PART_MAIN, "schedule/unit_run", H5OUT_I32, 0, EACH_FILE, {D_UNITS}, CK_FINAL, 0, NULL, IN_FILE_ADDED(sched_run)},
    {PART_MAIN, "schedule/unit_seconds", H5OUT_F64, 0, EACH_FILE, {D_UNITS}, CK_FINAL, 0, NULL, IN_FILE_ADDED(sched_seconds)},
    {PART_MAIN, "schedule/unit_wait_seconds", H5OUT_F64, 0, EACH_FILE, {D_UNITS}, CK_FINAL, 0, NULL, IN_FILE_ADDED(sched_wait)},
    {PART_SITES, "sites/%s/kl/%s", H5OUT_F32, 0, EACH_SITE_IV, {D_CONTEXTS, D_WK, D_SAMPLES}, CK_UNIT, RF_ROWS_KL, when_iv, IN_SITE(kl)},
    {PART_SITES, "sites/%s/ce/%s", H5OUT_F32, 0, EACH_SITE_IV, {D_CONTEXTS, D_WK, D_SAMPLES}, CK_UNIT, RF_ROWS_CE, when_iv, IN_SITE(ce)},
    {PART_SITES, "sites/%s/sae_kl_zscore", H5OUT_F32, 0, EACH_SITE, {D_CONTEXTS, D_WINDOW}, CK_UNIT, RF_ROWS_ZSCORE, when_zscore,
     IN_SITE(zscore)},
    {PART_SITES, "sites/%s/recon/%s", H5OUT_F32, 0, EACH_SITE_METRIC, {D_CONTEXTS, D_CTX}, CK_UNIT, RF_ROWS_RECON, NULL,
     IN_SITE(recon)},
    {PART_SITES, "sites/%s/feature_density", H5OUT_F64, 0, EACH_SITE, {D_LATENTS}, CK_FINAL, 0, NULL, IN_SITE(density)},
    /* per-block aggregate records: what --resume and the final sums read */
    {PART_SITES, "progress/%s/sums", H5OUT_I64, 0, EACH_SITE, {D_BLOCKS, D_SUMS2}, CK_FINAL, 0, NULL, IN_SITE(rec_sums)},
    {PART_SITES, "progress/%s/counts", H5OUT_I64, 0, EACH_SITE, {D_BLOCKS, D_COUNTS}, CK_FINAL, 0, NULL, IN_SITE(rec_counts)},
    {PART_SITES, "progress/%s/fire", H5OUT_I32, 0, EACH_SITE, {D_BLOCKS, D_LATENTS}, CK_FINAL, 0, NULL, IN_SITE(rec_fire)},
    {PART_CORRELATION, "correlation/%s_minus_eps_random/pearson", H5OUT_F64, 0, EACH_IV, {D_SITES, D_SITES}, CK_FINAL, 0,
     when_correlated, IN_CORR(0)},
    {PART_CORRELATION, "correlation/%s_minus_eps_random/spearman", H5OUT_F64, 0, EACH_IV, {D_SITES, D_SITES}, CK_FINAL, 0,
     when_correlated, IN_CORR(1)},
    {PART_CORRELATION, "correlation/%s_minus_eps_random/sites", H5OUT_I32, 1, EACH_IV, {D_SITES}, CK_FINAL, 0, when_correlated,
     IN_CORR(2)},
    {PART_EXAMPLES, "examples/contexts", H5OUT_I32, 0, EACH_FILE, {D_EXAMPLES}, CK_FINAL, 0, when_examples, IN_FILE(ex_contexts)},
    {PART_EXAMPLES, "examples/position", H5OUT_I32, 0, EACH_FILE, {D_EXAMPLES}, CK_FINAL, 0, when_examples, IN_FILE(ex_position)},
    {PART_EXAMPLES, "examples/clean/token_ids", H5OUT_I32, 0, EACH_FILE, {D_EXAMPLES, D_TOPK}, CK_FINAL, 0, when_examples,
     IN_FILE(ex_clean_ids)},
    {PART_EXAMPLES, "examples/clean/logprobs", H5OUT_F32, 0, EACH_FILE, {D_EXAMPLES, D_TOPK}, CK_FINAL, 0, when_examples,
     IN_FILE(ex_clean_lp)},
    {PART_EXAMPLES, "examples/%s/%s/logprobs", H5OUT_F32, 0, EACH_SITE_IV, {D_EXAMPLES, D_TOPK}, CK_FINAL, 0, when_example_iv,
     IN_SITE(ex_lp)},
    {PART_EXAMPLES, "examples/%s/%s/kl", H5OUT_F32, 0, EACH_SITE_IV, {D_EXAMPLES}, CK_FINAL, 0, when_example_iv, IN_SITE(ex_kl)},
};
#define N_SCHEMA (sizeof SCHEMA / sizeof SCHEMA[0])

static int *handle_of(ResultFile *rf, const DatasetSpec *d, size_t site, int which) {
    char *base = d->each == EACH_FILE || d->each == EACH_IV ? (char *)rf : (char *)&rf->sites[site];
    return (int *)(base + d->handle + (size_t)which * d->stride);
}

static size_t dim_value(const RfShape *s, const RfSiteSets *ss, Dim d, int iv) {
    switch (d) {
    case D_CONTEXTS: return s->n_contexts;
    case D_CTX: return s->ctx;
    case D_UNITS: return s->layout.n_units;
    case D_WK: return s->Wk;
    case D_SAMPLES: return rf_samples_of(s, (Intervention)iv);
    case D_WINDOW: return s->window;
    case D_LATENTS: return ss->F;
    case D_BLOCKS: return s->layout.n_blocks;
    case D_SUMS2: return 2 * ss->n_sums;
    case D_COUNTS: return CN_COUNT;
    case D_SITES: return s->n_sites;
    case D_EXAMPLES: return s->n_examples;
    case D_TOPK: return RF_EXAMPLE_TOPK;
    default: return 0;
    }
}

/* The dataset's path for (site, which): which is the intervention or the recon metric. */
static void spec_path(char *buf, size_t cap, const DatasetSpec *d, const char *site, int which) {
    switch (d->each) {
    case EACH_FILE: snprintf(buf, cap, "%s", d->path); break;
    case EACH_SITE: snprintf(buf, cap, d->path, site); break;
    case EACH_SITE_IV: snprintf(buf, cap, d->path, site, iv_name((Intervention)which)); break;
    case EACH_SITE_METRIC: snprintf(buf, cap, d->path, site, recon_name(which)); break;
    case EACH_IV: snprintf(buf, cap, d->path, iv_name((Intervention)which)); break;
    }
}

static size_t each_count(Each e) { return e == EACH_SITE_IV || e == EACH_IV ? IV_COUNT : e == EACH_SITE_METRIC ? RC_COUNT : 1; }

static void create_dataset(ResultFile *rf, H5Out *h, const DatasetSpec *d, size_t site, const char *site_name, int which) {
    const RfShape *s = &rf->shape;
    int *handle = handle_of(rf, d, site, which);
    *handle = -1;
    if (d->when && !d->when(s, which)) return;
    char path[320];
    spec_path(path, sizeof path, d, site_name, which);
    uint64_t dims[3];
    int nd = 0;
    for (int k = 0; k < 3 && d->dims[k] != D_END; k++) {
        uint64_t v = dim_value(s, &rf->sites[site], d->dims[k], which);
        if (d->dims[k] == D_SAMPLES && v == 1) continue; /* one draw: [n, Wk] */
        dims[nd++] = v;
    }
    *handle = d->strings ? h5out_dataset_strings(h, path, dims[0])
              : d->added   ? h5out_dataset_added(h, path, d->type, nd, dims)
                           : h5out_dataset(h, path, d->type, nd, dims);
}

/* Every attribute the end of the run writes exists from the start, with a placeholder of its
 * type (NaN, -1, a checksum of zeros): the end then rewrites values in place, and the file's
 * metadata does not grow after the units. So nothing written after them needs new space on
 * disk, which a full disk could refuse, leaving the units behind metadata that no longer
 * reads (a file system without fallocate cannot hold space back for it). */
static void end_of_run_placeholders(ResultFile *rf, H5Out *h, const RfSite *sites) {
    SiteSummary nan;
    double *v = (double *)&nan;
    for (size_t i = 0; i < sizeof nan / sizeof(double); i++) v[i] = __builtin_nan("");
    nan.dead_latents = nan.measured_tokens = -1; /* integers */
    for (size_t i = 0; i < rf->shape.n_sites; i++) rf_write_site_summary(rf, i, sites[i].name, &nan, rf_has_scores(&rf->shape));
    for (int iv = 0; iv < IV_COUNT; iv++)
        if (rf->corr[iv][0] >= 0) {
            char g[128];
            snprintf(g, sizeof g, "correlation/%s_minus_eps_random", iv_name((Intervention)iv));
            h5out_attr_i64(h, g, "tokens", -1);
        }
    h5out_attr_str(h, "/", "final_checksum", FINAL_CHECKSUM_PLACEHOLDER);
}

static const char *const SCHEDULE_F64[] = {"schedule_seconds_computing", "schedule_seconds_waiting",
                                           "schedule_longest_wait_seconds", "schedule_seconds_after_units"};
#define N_SCHEDULE_F64 (sizeof SCHEDULE_F64 / sizeof SCHEDULE_F64[0])

/* This run's index among the runs that worked on the file (schedule/unit_run), and the
 * placeholders of the schedule summary that the end of the run rewrites in place. A resumed
 * file written before they existed gains them here, before any unit runs. */
static void schedule_begin(ResultFile *rf, H5Out *h, int fresh) {
    int64_t runs = 0;
    if (!fresh && h5out_get_attr_i64(h, "/", "schedule_runs", &runs) != 0) runs = 1; /* at least the first */
    if (runs < 0 || runs > INT32_MAX - 1) runs = 1;
    rf->run_index = (int32_t)runs;
    h5out_attr_i64(h, "/", "schedule_runs", runs + 1);
    char have[128];
    if (fresh || h5out_get_attr_str(h, "/", "unit_queue", have, sizeof have) != 0)
        h5out_attr_str(h, "/", "unit_queue", RF_UNIT_QUEUE);
    int64_t v;
    if (fresh || h5out_get_attr_i64(h, "/", "schedule_ranks", &v) != 0) h5out_attr_i64(h, "/", "schedule_ranks", -1);
    for (size_t k = 0; k < N_SCHEDULE_F64; k++) {
        double d;
        if (fresh || h5out_get_attr_f64(h, "/", SCHEDULE_F64[k], &d) != 0)
            h5out_attr_f64(h, "/", SCHEDULE_F64[k], __builtin_nan(""));
    }
}

void rf_write_unit_schedule(ResultFile *rf, size_t unit, int rank, double seconds, double wait_seconds) {
    int32_t r = rank;
    h5out_write_rows(rf->h, rf->sched_rank, unit, 1, &r);
    h5out_write_rows(rf->h, rf->sched_run, unit, 1, &rf->run_index);
    h5out_write_rows(rf->h, rf->sched_seconds, unit, 1, &seconds);
    h5out_write_rows(rf->h, rf->sched_wait, unit, 1, &wait_seconds);
}

void rf_write_schedule_summary(ResultFile *rf, int ranks, const double v[4]) {
    h5out_attr_i64(rf->h, "/", "schedule_ranks", ranks);
    for (size_t k = 0; k < N_SCHEDULE_F64; k++) h5out_attr_f64(rf->h, "/", SCHEDULE_F64[k], v[k]);
}

void rf_create(ResultFile *rf, H5Out *h, const RfShape *s, const RfSite *sites, const RfJob *job,
               const RfProvenance *prov) {
    memset(rf, 0, sizeof *rf);
    rf->h = h;
    rf->shape = *s;
    rf->sites = sg_xcalloc(s->n_sites ? s->n_sites : 1, sizeof *rf->sites);
    for (size_t i = 0; i < s->n_sites; i++)
        rf->sites[i].n_sums = sites[i].n_sums, rf->sites[i].F = sites[i].sae ? sites[i].sae->d_sae : 0;
    const int fresh = !h5out_resuming(h);
    if (fresh) root_attributes(h, s, job, prov);
    rf->ck_records = fresh || rf_unit_ck_records(h); /* a resumed file's units go on as it began them */
    static const Each site_order[] = {EACH_SITE_IV, EACH_SITE_METRIC, EACH_SITE};
    for (Part part = PART_MAIN; part < PART_COUNT; part++) {
        for (size_t k = 0; k < N_SCHEMA; k++)
            if (SCHEMA[k].part == part && SCHEMA[k].each == EACH_FILE) create_dataset(rf, h, &SCHEMA[k], 0, NULL, 0);
        for (size_t i = 0; i < s->n_sites; i++) {
            for (size_t o = 0; o < sizeof site_order / sizeof site_order[0]; o++)
                for (int w = 0; w < (int)each_count(site_order[o]); w++)
                    for (size_t k = 0; k < N_SCHEMA; k++)
                        if (SCHEMA[k].part == part && SCHEMA[k].each == site_order[o])
                            create_dataset(rf, h, &SCHEMA[k], i, sites[i].name, w);
            if (part == PART_SITES && fresh && sites[i].sae) {
                char g[256];
                snprintf(g, sizeof g, "sites/%s", sites[i].name);
                site_attributes(h, g, sites[i].sae);
            }
        }
        for (int w = 0; w < IV_COUNT; w++)
            for (size_t k = 0; k < N_SCHEMA; k++)
                if (SCHEMA[k].part == part && SCHEMA[k].each == EACH_IV) create_dataset(rf, h, &SCHEMA[k], 0, NULL, w);
    }
    if (fresh) end_of_run_placeholders(rf, h, sites);
    schedule_begin(rf, h, fresh);
    if (fresh && s->n_examples && sg_rank() == 0) { /* which contexts and position the examples are */
        int32_t *v = sg_xcalloc(s->n_examples, sizeof(int32_t));
        for (size_t k = 0; k < s->n_examples; k++) v[k] = (int32_t)k;
        h5out_write_rows(h, rf->ex_contexts, 0, s->n_examples, v);
        for (size_t k = 0; k < s->n_examples; k++) v[k] = (int32_t)s->example_pos;
        h5out_write_rows(h, rf->ex_position, 0, s->n_examples, v);
        free(v);
    }
}

void rf_free(ResultFile *rf) {
    free(rf->sites);
    rf->sites = NULL;
}

/* ---- the unit-rows walk -------------------------------------------------------------------- */

static int visit_spec(RfVisit visit, void *ctx, RfRows *r, int k, const char *site, int which) {
    const DatasetSpec *d = &SCHEMA[k];
    r->spec = k, r->kind = d->rows, r->which = which;
    spec_path(r->name, sizeof r->name, d, site, which);
    r->per_context = 1;
    for (int j = 1; j < 3 && d->dims[j] != D_END; j++) {
        switch (d->dims[j]) {
        case D_CTX: r->per_context *= r->shape->ctx; break;
        case D_WK: r->per_context *= r->shape->Wk; break;
        case D_SAMPLES: r->per_context *= rf_samples_of(r->shape, (Intervention)which); break;
        case D_WINDOW: r->per_context *= r->shape->window; break;
        default: sg_fatal("resultfile", "dimension %d in a unit's rows", (int)d->dims[j]);
        }
    }
    int rc = visit(ctx, r);
    r->index++;
    return rc;
}

/* The order: per batch, the per-file unit datasets (first site group only); then per site, the
 * per-intervention ones (every intervention in enum order, the table's order within it), the
 * per-site ones, the per-metric ones. */
int rf_unit_walk(const RfShape *s, const char *const *site_names, size_t unit, RfVisit visit, void *ctx) {
    size_t block, group, c0, c1, s0, s1;
    unit_parts(&s->layout, unit, &block, &group);
    block_contexts(&s->layout, block, &c0, &c1);
    group_sites(&s->layout, group, &s0, &s1);
    const size_t B = s->layout.B;
    int rc = 0;
    for (size_t c = c0; c < c1 && rc == 0; c += B) {
        RfRows r;
        memset(&r, 0, sizeof r);
        r.shape = s, r.c0 = c, r.nb = c1 - c < B ? c1 - c : B;
        r.site = -1;
        for (size_t k = 0; k < N_SCHEMA && rc == 0 && group == 0; k++)
            if (SCHEMA[k].checksum == CK_UNIT && SCHEMA[k].each == EACH_FILE) rc = visit_spec(visit, ctx, &r, (int)k, NULL, 0);
        for (size_t si = s0; si < s1 && rc == 0; si++) {
            r.site = (long)si, r.index = 0;
            static const Each order[] = {EACH_SITE_IV, EACH_SITE, EACH_SITE_METRIC};
            for (size_t o = 0; o < sizeof order / sizeof order[0] && rc == 0; o++) {
                int n_which = order[o] == EACH_SITE_IV ? IV_COUNT : order[o] == EACH_SITE_METRIC ? RC_COUNT : 1;
                for (int w = 0; w < n_which && rc == 0; w++)
                    for (size_t k = 0; k < N_SCHEMA && rc == 0; k++) {
                        const DatasetSpec *d = &SCHEMA[k];
                        if (d->checksum != CK_UNIT || d->each != order[o] || (d->when && !d->when(s, w))) continue;
                        rc = visit_spec(visit, ctx, &r, (int)k, site_names[si], w);
                    }
            }
        }
    }
    return rc;
}

int rf_rows_ds(const ResultFile *rf, const RfRows *r) {
    return *handle_of((ResultFile *)rf, &SCHEMA[r->spec], r->site < 0 ? 0 : (size_t)r->site, r->which);
}

/* ---- per-unit progress ------------------------------------------------------------------------- */

void rf_write_record(ResultFile *rf, size_t site, size_t block, const ReproSum *sums, const int64_t *counts,
                     const int32_t *fire, uint64_t *checksum) {
    RfSiteSets *ss = &rf->sites[site];
    int64_t *pairs = sg_xcalloc(2 * ss->n_sums, sizeof(int64_t));
    repro_pack(pairs, sums, ss->n_sums);
    h5out_write_rows(rf->h, ss->rec_sums, block, 1, pairs);
    h5out_write_rows(rf->h, ss->rec_counts, block, 1, counts);
    h5out_write_rows(rf->h, ss->rec_fire, block, 1, fire);
    if (rf->ck_records) { /* the order rf_unit_reread folds them in */
        *checksum = fnv1a(*checksum, pairs, 2 * ss->n_sums * sizeof(int64_t));
        *checksum = fnv1a(*checksum, counts, CN_COUNT * sizeof(int64_t));
        *checksum = fnv1a(*checksum, fire, ss->F * sizeof(int32_t));
    }
    free(pairs);
}

size_t rf_list_units(char *buf, size_t cap, const int32_t *flag, size_t n) {
    size_t count = 0;
    buf[0] = 0;
    for (size_t u = 0; u < n; u++) {
        if (!flag[u]) continue;
        if (count < 8) snprintf(buf + strlen(buf), cap - strlen(buf), "%s%zu", count ? ", " : "", u);
        else if (count == 8) snprintf(buf + strlen(buf), cap - strlen(buf), ", ...");
        count++;
    }
    return count;
}

/* ---- a finished unit's checksum, recomputed from the file ------------------------------------ */

int rf_unit_ck_records(H5Out *h) {
    char v[64] = "";
    return h5out_get_attr_str(h, "/", "unit_checksum_covers", v, sizeof v) == 0 && !strcmp(v, RF_UNIT_CK_RECORDS);
}

typedef struct {
    H5Out *h;
    const ResultFile *rf;       /* the handles of a file this run has open; NULL: by name */
    unsigned char *buf;
    size_t cap;
    uint64_t sum;
} UnitReread;

/* Folds rows [row0, row0 + nrows) of dataset ds (elem bytes a value) into u->sum. per_row: the
 * values a row must hold (0: as stored). -1 when missing, of another shape or unreadable. */
static int fold_ds(UnitReread *u, int ds, size_t row0, size_t nrows, size_t per_row, size_t elem) {
    int nd;
    uint64_t dims[8];
    if (ds < 0 || h5out_dims(u->h, ds, &nd, dims) != 0 || nd < 1) return -1;
    size_t per = 1, bytes = 0;
    for (int i = 1; i < nd; i++)
        if (sg_mul_overflow(per, dims[i], &per)) return -1;
    if ((per_row && per != per_row) || row0 > dims[0] || nrows > dims[0] - row0 || sg_mul_overflow(nrows, per, &bytes) ||
        sg_mul_overflow(bytes, elem, &bytes))
        return -1;
    if (bytes > u->cap) {
        u->buf = sg_xrealloc(u->buf, bytes);
        u->cap = bytes;
    }
    if (h5out_try_read_rows(u->h, ds, row0, nrows, u->buf) != 0) return -1;
    u->sum = fnv1a(u->sum, u->buf, bytes);
    return 0;
}

static int spec_ds(UnitReread *u, const DatasetSpec *d, size_t site, const char *site_name, int which) {
    if (u->rf) return *handle_of((ResultFile *)u->rf, d, site, which);
    char name[320];
    int nd;
    uint64_t dims[8];
    spec_path(name, sizeof name, d, site_name, which);
    return h5out_find_dataset(u->h, name, d->type, &nd, dims);
}

static int reread_rows(void *ctx, const RfRows *rows) {
    UnitReread *u = ctx;
    int ds, nd;
    uint64_t dims[8];
    if (u->rf) ds = rf_rows_ds(u->rf, rows);
    else ds = h5out_find_dataset(u->h, rows->name, H5OUT_F32, &nd, dims); /* the walk names it */
    return fold_ds(u, ds, rows->c0, rows->nb, rows->per_context, sizeof(float));
}

static const DatasetSpec *record_spec(size_t handle) {
    for (size_t k = 0; k < N_SCHEMA; k++)
        if (SCHEMA[k].each == EACH_SITE && SCHEMA[k].handle == handle) return &SCHEMA[k];
    sg_fatal("resultfile", "no record dataset at offset %zu", handle);
}

int rf_unit_reread(H5Out *h, const ResultFile *rf, const RfShape *s, const char *const *site_names, size_t unit,
                   int records, uint64_t *sum) {
    UnitReread u = {.h = h, .rf = rf, .sum = FNV1A_INIT};
    int rc = rf_unit_walk(s, site_names, unit, reread_rows, &u);
    if (rc == 0 && records) {
        size_t block, group, s0, s1;
        unit_parts(&s->layout, unit, &block, &group);
        group_sites(&s->layout, group, &s0, &s1);
        const size_t rec[] = {offsetof(RfSiteSets, rec_sums), offsetof(RfSiteSets, rec_counts), offsetof(RfSiteSets, rec_fire)};
        for (size_t si = s0; si < s1 && rc == 0; si++)
            for (size_t k = 0; k < 3 && rc == 0; k++) {
                const DatasetSpec *d = record_spec(rec[k]);
                rc = fold_ds(&u, spec_ds(&u, d, si, site_names[si], 0), block, 1, 0, d->type == H5OUT_I32 ? 4 : 8);
            }
    }
    free(u.buf);
    *sum = u.sum;
    return rc == 0 ? 0 : -1;
}

void rf_read_record(ResultFile *rf, size_t site, size_t block, ReproSum *sums, int64_t *counts, int32_t *fire) {
    RfSiteSets *ss = &rf->sites[site];
    int64_t *pairs = sg_xcalloc(2 * ss->n_sums, sizeof(int64_t));
    h5out_read_rows(rf->h, ss->rec_sums, block, 1, pairs);
    h5out_read_rows(rf->h, ss->rec_counts, block, 1, counts);
    h5out_read_rows(rf->h, ss->rec_fire, block, 1, fire);
    repro_unpack(sums, pairs, ss->n_sums);
    free(pairs);
}

void rf_mark_done(ResultFile *rf, size_t unit, uint64_t checksum) {
    int64_t ck = (int64_t)checksum;
    int32_t one = 1;
    h5out_write_rows(rf->h, rf->unit_checksum, unit, 1, &ck);
    h5out_write_rows(rf->h, rf->done, unit, 1, &one);
}

void rf_read_done(ResultFile *rf, int32_t *done) { h5out_read_rows(rf->h, rf->done, 0, rf->shape.layout.n_units, done); }

/* ---- reading a result without the job ------------------------------------------------------ */

int rf_read_file_job(H5Out *h, RfFileJob *j, char *why, size_t cap) {
    memset(j, 0, sizeof *j);
    int64_t n = 0, T = 0, S = 0, B = 0, bpb = 0, G = 0, Wk = 0;
    char ivs[512] = "", scope[32] = "";
    if (h5out_get_attr_i64(h, "/", "complete", &j->complete) || h5out_get_attr_i64(h, "/", "n_contexts", &n) ||
        h5out_get_attr_i64(h, "/", "ctx", &T) || h5out_get_attr_i64(h, "/", "samples", &S) ||
        h5out_get_attr_i64(h, "/", "unit_batch_contexts", &B) || h5out_get_attr_i64(h, "/", "unit_batches_per_block", &bpb) ||
        h5out_get_attr_i64(h, "/", "unit_site_groups", &G) ||
        h5out_get_attr_str(h, "/", "job_sites", j->sites, sizeof j->sites) ||
        h5out_get_attr_str(h, "/", "job_interventions", ivs, sizeof ivs) ||
        h5out_get_attr_str(h, "/", "job_scope", scope, sizeof scope)) {
        snprintf(why, cap, "the saegap run attributes are missing (not a run file, or its metadata is damaged)");
        return -1;
    }
    int position = !strcmp(scope, "position");
    if (position && h5out_get_attr_i64(h, "/", "window", &Wk)) {
        snprintf(why, cap, "attribute window is missing");
        return -1;
    }
    if (!position) Wk = T;
    if (n <= 0 || T <= 0 || B <= 0 || bpb <= 0 || G <= 0 || S <= 0) {
        snprintf(why, cap, "the unit layout attributes are not positive");
        return -1;
    }
    RfShape *s = &j->shape;
    if (iv_parse_list(&s->iv_mask, ivs)) {
        sg_error_clear();
        snprintf(why, cap, "unknown interventions '%s'", ivs);
        return -1;
    }
    size_t K = 0; /* sites, in run order */
    for (char *save = NULL, *t = strtok_r(j->sites, ",", &save); t && K < 256; t = strtok_r(NULL, ",", &save))
        j->names[K++] = t;
    if (K == 0) { /* a layout of no unit would verify as complete */
        snprintf(why, cap, "attribute job_sites names no site");
        return -1;
    }
    s->n_contexts = (size_t)n, s->ctx = (size_t)T, s->n_sites = K, s->samples = (size_t)S;
    s->scope_position = position, s->window = (size_t)Wk, s->Wk = (size_t)Wk;
    schedule_layout_from(&s->layout, (size_t)n, (size_t)B, K, (size_t)bpb, (size_t)G);
    return 0;
}

int rf_read_progress(H5Out *h, size_t n_units, int32_t **done, int64_t **checksums) {
    int nd;
    uint64_t dims[8], dims2[8];
    int ds_done = h5out_find_dataset(h, "progress/unit_done", H5OUT_I32, &nd, dims);
    int ds_ck = checksums ? h5out_find_dataset(h, "progress/unit_checksum", H5OUT_I64, &nd, dims2) : 0;
    if (ds_done < 0 || ds_ck < 0 || dims[0] != n_units || (checksums && dims2[0] != n_units)) return -1;
    *done = sg_xcalloc(n_units, sizeof(int32_t));
    if (checksums) *checksums = sg_xcalloc(n_units, sizeof(int64_t));
    if (h5out_try_read_rows(h, ds_done, 0, n_units, *done) ||
        (checksums && h5out_try_read_rows(h, ds_ck, 0, n_units, *checksums))) {
        free(*done), *done = NULL;
        if (checksums) free(*checksums), *checksums = NULL;
        return -2;
    }
    return 0;
}

int rf_describe(H5Out *h, const char *path, FILE *out) {
    char sites[4096] = "";
    int64_t v = 0;
    if (h5out_get_attr_str(h, "/", "job_sites", sites, sizeof sites) != 0) return 1;
    fprintf(out, "%s: saegap run result\n", path);
    static const char *const keys[] = {"saegap_version", "created", "model", "model_checksum", "tokens_file", "scope",
                                       "bos", "interventions"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        char val[1024] = "?";
        h5out_get_attr_str(h, "/", keys[i], val, sizeof val);
        fprintf(out, "  %-15s %s\n", keys[i], val);
    }
    static const char *const nums[] = {"n_contexts", "ctx", "seed", "samples", "ranks"};
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++)
        if (h5out_get_attr_i64(h, "/", nums[i], &v) == 0) fprintf(out, "  %-15s %lld\n", nums[i], (long long)v);
    fprintf(out, "  %-15s %s\n", "sites", sites);
    int64_t complete = 0;
    h5out_get_attr_i64(h, "/", "complete", &complete);
    int nd;
    uint64_t dims[8];
    int ds = h5out_find_dataset(h, "progress/unit_done", H5OUT_I32, &nd, dims);
    if (ds >= 0) {
        int32_t *done = sg_xcalloc(dims[0], sizeof(int32_t));
        size_t n_done = 0;
        if (h5out_try_read_rows(h, ds, 0, dims[0], done) == 0)
            for (uint64_t u = 0; u < dims[0]; u++) n_done += done[u] == 1;
        free(done);
        fprintf(out, "  %-15s %s (%zu of %llu units done; saegap verify checks the data)\n", "state",
                complete == 1 ? "complete" : "incomplete", n_done, (unsigned long long)dims[0]);
    }
    int64_t ranks = -1;
    double f[N_SCHEDULE_F64];
    int have = h5out_get_attr_i64(h, "/", "schedule_ranks", &ranks) == 0 && ranks > 0;
    for (size_t k = 0; k < N_SCHEDULE_F64; k++) have = have && h5out_get_attr_f64(h, "/", SCHEDULE_F64[k], &f[k]) == 0;
    double total = have ? f[0] + f[1] + f[3] : 0;
    if (total > 0) /* the run that completed the file; schedule/unit_* per unit */
        fprintf(out, "  %-15s %lld rank(s): computing %.1f%% of the rank-seconds, waiting for a unit %.2f%% (longest "
                     "%.2f s), after their last unit %.1f%%\n", "schedule", (long long)ranks, 100 * f[0] / total,
                100 * f[1] / total, f[2], 100 * f[3] / total);
    return 0;
}

/* ---- the end ------------------------------------------------------------------------------------- */

void rf_write_site_summary(ResultFile *rf, size_t site, const char *site_name, const SiteSummary *v, int scores) {
    H5Out *h = rf->h;
    (void)site;
    char g[256], key[64];
    snprintf(g, sizeof g, "sites/%s", site_name);
    h5out_attr_f64(h, g, "explained_variance", v->explained_variance);
    h5out_attr_f64(h, g, "relative_reconstruction_bias", v->relative_reconstruction_bias);
    h5out_attr_f64(h, g, "mean_l0", v->mean_l0);
    h5out_attr_i64(h, g, "measured_tokens", (int64_t)v->measured_tokens);
    h5out_attr_i64(h, g, "dead_latents", (int64_t)v->dead_latents);
    h5out_attr_f64(h, g, "mean_ce_clean", v->mean_ce_clean);
    for (int i = 0; i < IV_COUNT; i++) {
        if (!rf_has_iv(&rf->shape, (Intervention)i)) continue;
        snprintf(key, sizeof key, "mean_kl_%s", iv_name((Intervention)i));
        h5out_attr_f64(h, g, key, v->mean_kl[i]);
        snprintf(key, sizeof key, "mean_ce_%s", iv_name((Intervention)i));
        h5out_attr_f64(h, g, key, v->mean_ce[i]);
    }
    if (scores) {
        /* SAELens's names for SAELens's numbers (sae_lens/evals.py) */
        h5out_attr_f64(h, g, "kl_div_score", v->kl_div_score);
        h5out_attr_f64(h, g, "ce_loss_score", v->ce_loss_score);
        for (int k = 0; k < SC_COUNT; k++) h5out_attr_f64(h, g, score_name(k), v->score[k]);
    }
}

void rf_write_density(ResultFile *rf, size_t site, const double *density) {
    h5out_write_rows(rf->h, rf->sites[site].density, 0, rf->sites[site].F, density);
}

void rf_write_correlation(ResultFile *rf, Intervention iv, const double *pearson, const double *spearman,
                          const char *const *site_names, long tokens, int rank) {
    size_t K = rf->shape.n_sites;
    if (rank == 0) {
        h5out_write_rows(rf->h, rf->corr[iv][0], 0, K, pearson);
        h5out_write_rows(rf->h, rf->corr[iv][1], 0, K, spearman);
        h5out_write_strings(rf->h, rf->corr[iv][2], site_names, K);
    }
    char g[128];
    snprintf(g, sizeof g, "correlation/%s_minus_eps_random", iv_name(iv));
    h5out_attr_i64(rf->h, g, "tokens", tokens);
}

/* name matches pattern, where each %s stands for one path segment's worth of characters
 * (at least one, no '/'). */
static int path_matches(const char *pat, const char *name) {
    if (!*pat) return !*name;
    if (pat[0] == '%' && pat[1] == 's') {
        for (const char *p = name; *p && *p != '/'; p++)
            if (path_matches(pat + 2, p + 1)) return 1;
        return 0;
    }
    return *pat == *name && path_matches(pat + 1, name + 1);
}

static int in_final_checksum(const char *name) {
    for (size_t k = 0; k < N_SCHEMA; k++)
        if (SCHEMA[k].checksum == CK_FINAL && path_matches(SCHEMA[k].path, name)) return 1;
    return 0;
}

/* The result attributes the final checksum covers since it has its "+attributes" prefix: every
 * attribute of every object (the per-site aggregates and scores, the mean KLs, the correlations'
 * token counts, the job and provenance), except the two written after it. */
static int in_final_attributes(const char *object, const char *attr) {
    return !(!strcmp(object, ".") && (!strcmp(attr, "final_checksum") || !strcmp(attr, "complete")));
}

#define FINAL_PREFIX_DATASETS "fnv1a64:"              /* datasets only: files written before */
#define FINAL_PREFIX_ATTRIBUTES "fnv1a64+attributes:" /* datasets and result attributes */

/* The final checksum in the form `recorded` has (datasets only for files written before the
 * attributes were covered; NULL: the current form). */
static int final_checksum(H5Out *h, const char *recorded, char out[64]) {
    uint64_t sum = 0;
    int attrs = !recorded || !strncmp(recorded, FINAL_PREFIX_ATTRIBUTES, strlen(FINAL_PREFIX_ATTRIBUTES));
    if (h5out_checksum_final(h, in_final_checksum, attrs ? in_final_attributes : NULL, &sum) != 0) return -1;
    snprintf(out, 64, "%s%016llx", attrs ? FINAL_PREFIX_ATTRIBUTES : FINAL_PREFIX_DATASETS, (unsigned long long)sum);
    return 0;
}

/* saegap 0.1.0 from commit 3411ebc to this fix computed the final checksum with a file size of
 * 0, found every dataset "not stored" and wrote this value whatever the file held. */
#define FINAL_CHECKSUM_NOT_COMPUTED "fnv1a64:0000000000000000"

RfFinalCheck rf_final_checksum_check(H5Out *h) {
    char want[64] = "", got[64];
    if (h5out_get_attr_str(h, "/", "final_checksum", want, sizeof want) != 0) return RF_FINAL_MISMATCH;
    if (strcmp(want, FINAL_CHECKSUM_NOT_COMPUTED) == 0) return RF_FINAL_NOT_RECORDED;
    if (final_checksum(h, want, got) != 0) return RF_FINAL_MISMATCH;
    return strcmp(want, got) == 0 ? RF_FINAL_OK : RF_FINAL_MISMATCH;
}

void rf_complete(ResultFile *rf, const char *path, MPI_Comm comm, int rank) {
    char ck[64] = "";
    if (rank == 0 && final_checksum(rf->h, NULL, ck) != 0) ck[0] = '\0';
    SG_MPI(MPI_Bcast(ck, sizeof ck, MPI_CHAR, 0, comm), "broadcasting the final checksum");
    if (!ck[0]) /* the datasets were just written by this run: not a user's error */
        sg_fatal(path, "cannot read back the datasets written after the units to checksum them; the file "
                 "stays incomplete (--resume finishes it)");
    h5out_attr_str(rf->h, "/", "final_checksum", ck);
    h5out_flush(rf->h);
    /* complete = 1 only over a file whose final checksum reads back as written */
    int ok = rank == 0 ? rf_final_checksum_check(rf->h) == RF_FINAL_OK : 1;
    SG_MPI(MPI_Bcast(&ok, 1, MPI_INT, 0, comm), "broadcasting the final check");
    if (!ok)
        sg_fatal(path, "the datasets and attributes written after the units do not read back as written (a lost "
                 "write?); the file stays incomplete (saegap verify tells; --resume finishes it)");
    h5out_attr_i64(rf->h, "/", "complete", 1);
}
