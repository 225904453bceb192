/* run.c: `saegap run`, the experiment. Work is cut into units (schedule.h); for each batch
 * of a unit's contexts: one clean forward pass (cached, reused by every site of the unit),
 * then for every SAE site of the unit: the SAE once per token, the reconstruction metrics,
 * and every intervention (x samples) as a pass restarted at the site from the cached clean
 * state, reduced block by block to KL and CE. Each unit writes its rows, then its aggregate
 * record, then its done flag: a killed run resumes at the first unit not done, and the
 * aggregates are exact sums of the records (reprosum.h), so nothing depends on who computed
 * what. Layout and definitions: docs/output-schema.md. */
#include "run.h"

#include "checksum.h"
#include "correlate.h"
#include "error.h"
#include "forward.h"
#include "gemm.h"
#include "h5out.h"
#include "interventions.h"
#include "metrics.h"
#include "model.h"
#include "reprosum.h"
#include "sae.h"
#include "schedule.h"
#include "sites.h"
#include "sitestats.h"
#include "tokens.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define LOGIT_BLOCK 64 /* rows per unembedding block: logits stay in cache (PLATFORM-NOTES) */

enum { RC_L2_IN, RC_L2_OUT, RC_EPS, RC_COS, RC_MSE, RC_L0, RC_L1, RC_COUNT };
static const char *const RECON_NAME[RC_COUNT] = {"l2_norm_in", "l2_norm_out", "eps_norm", "cossim", "mse", "l0", "l1"};

/* Aggregate record of one (block, site): sums then counts (docs/output-schema.md). */
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

/* What an aggregate slot sums, for the message when it overflows. */
static void aggregate_name(char *buf, size_t cap, size_t k) {
    static const char *const BASE[AG_KL0] = {"||x - x_hat||^2 (explained_variance)", "||x||^2 (explained_variance)",
                                             "||x_hat||^2 (relative_reconstruction_bias)",
                                             "<x, x_hat> (relative_reconstruction_bias)", "l0 (mean_l0)",
                                             "clean CE (mean_ce_clean)"};
    static const char *const SCORE[5] = {"kl_div_with_sae", "ce_loss_with_sae", "kl_div_with_ablation",
                                         "ce_loss_with_ablation", "ce_loss_without_sae"};
    if (k < AG_KL0) snprintf(buf, cap, "%s", BASE[k]);
    else if (k < AG_CE0) snprintf(buf, cap, "kl/%s (mean_kl_%s)", iv_name((Intervention)(k - AG_KL0)), iv_name((Intervention)(k - AG_KL0)));
    else if (k < AG_SCORE) snprintf(buf, cap, "ce/%s (mean_ce_%s)", iv_name((Intervention)(k - AG_CE0)), iv_name((Intervention)(k - AG_CE0)));
    else if (k < AG_X_SUM) snprintf(buf, cap, "%s (the SAELens scores)", SCORE[k - AG_SCORE]);
    else snprintf(buf, cap, "x, dimension %zu (explained_variance)", k - AG_X_SUM);
}

/* A sum the exact accumulator cannot hold ends the run naming the site and the metric, before
 * a poisoned record reaches the file. */
static void check_sums(const ReproSum *sums, size_t n, const char *site) {
    size_t k = repro_first_overflow(sums, n);
    if (k == n) return;
    char what[160];
    aggregate_name(what, sizeof what, k);
    sg_fatal(site, "the sum of %s overflows the exact accumulator (values beyond about 1e25: check the model's and "
                   "the SAE's weights)", what);
}

static volatile sig_atomic_t g_stop_signal = 0;
static void on_term(int sig) { (void)sig; g_stop_signal = 1; }

typedef struct {
    Sae sae;
    char name[128];
    size_t d, F, site_id, n_sums;
    double *mean, *chol;          /* statistics pass (when needed) */
    ReproSum *sums;               /* (n_sums) this unit's record */
    int64_t counts[CN_COUNT];
    int32_t *fire;                /* (F) */
    int ds_kl[IV_COUNT], ds_ce[IV_COUNT], ds_recon[RC_COUNT], ds_zscore, ds_density;
    int ds_rec_sums, ds_rec_counts, ds_rec_fire;
    int ds_ex_lp[IV_COUNT], ds_ex_kl[IV_COUNT]; /* /examples/<site>/<iv>, sae and eps_random */
} SiteRun;

#define EXAMPLE_TOPK 25

/* Interventions whose KL gap to eps_random is correlated between sites (CONTRACT.md). */
static int is_correlated(Intervention iv) {
    return iv == IV_SAE || iv == IV_NORM_CORRECTED_SAE || iv == IV_SAE_NORM || iv == IV_ZERO_ABLATION ||
           iv == IV_MEAN_ABLATION;
}

typedef struct {
    const Options *o;
    int ds_corr[IV_COUNT][3];     /* pearson, spearman, sites */
    size_t n_examples, example_pos; /* --examples: first K contexts, at this position */
    int ds_ex_clean_ids, ds_ex_clean_lp;
    int ds_tokens, ds_clean_ce, ds_done, ds_unit_checksum;
    Gpt2Model model;
    TokenSet ts;
    SiteRun *sites;
    size_t n_sites;
    uint32_t iv_mask;
    int scope_position;
    size_t P, W, S;               /* position, window, samples */
    int bos_include;
    int scores;                   /* sae and zero_ablation run: SAELens's scores are computed */
    size_t Wk;                    /* positions recorded per context: T or W */
    size_t B;                     /* contexts per forward batch */
    UnitLayout layout;
    char tokens_checksum[64], model_checksum[64];
    char out_partial[OUT_PARTIAL_MAX]; /* "<out>.creating": the new file until its schema is on disk */
    uint64_t file_bytes;          /* a new result's size (datasets + metadata reserve): check_space */
} Run;

static int has_iv(const Run *r, Intervention iv) { return (r->iv_mask >> iv) & 1u; }
static size_t samples_of(const Run *r, Intervention iv) { return iv_is_random(iv) ? r->S : 1; }

/* ---- checks before any file is written ------------------------------------------------------ */

static int check_options(Run *r) {
    const Options *o = r->o;
    if (!o->model) return sg_errorf("command line", "run needs --model DIR");
    if (!o->n_sae) return sg_errorf("command line", "run needs at least one --sae DIR");
    if (!o->tokens) return sg_errorf("command line", "run needs --tokens FILE");
    if (!o->out) return sg_errorf("command line", "run needs --out FILE.h5");
    if (o->positional) return sg_errorf("command line", "unexpected argument '%s'", o->positional);
    if (o->sites) return sg_errorf("--sites", "run takes its sites from the SAEs' cfg (hook), not from --sites");
    if (iv_parse_list(&r->iv_mask, o->interventions ? o->interventions : "all")) return -1;
    r->scope_position = 0;
    if (o->scope && !strcmp(o->scope, "position")) r->scope_position = 1;
    else if (o->scope && strcmp(o->scope, "all")) return sg_errorf("--scope", "'%s' is not all or position", o->scope);
    if (r->scope_position && o->position < 0) return sg_errorf("--scope", "--scope position needs --position P");
    if (!r->scope_position && (o->position >= 0 || o->window >= 0))
        return sg_errorf("--position", "--position and --window need --scope position");
    r->P = o->position >= 0 ? (size_t)o->position : 0;
    r->W = o->window > 0 ? (size_t)o->window : 16;
    r->S = o->samples > 0 ? (size_t)o->samples : 1;
    if (r->S > 65535) return sg_errorf("--samples", "at most 65535 samples");
    r->bos_include = 0;
    if (o->bos && !strcmp(o->bos, "include")) r->bos_include = 1;
    else if (o->bos && strcmp(o->bos, "exclude")) return sg_errorf("--bos", "'%s' is not include or exclude", o->bos);
    if (o->norm_scaling_factor && sae_norm_factors_check(o->norm_scaling_factor)) return -1;
    if (o->basis) {
        Basis b;
        if (basis_parse(o->basis, &b)) return sg_errorf("--basis", "'%s' is not processed, raw or a '+'-joined set of "
                                                        "center_writing_weights, fold_ln, fold_value_biases", o->basis);
    }
    struct stat sb;
    if (stat(o->out, &sb) == 0) {
        if (S_ISDIR(sb.st_mode)) return sg_errorf(o->out, "--out is a directory; give a file name");
        if (!o->resume) return sg_errorf(o->out, "output file already exists; refusing to overwrite it (--resume continues it)");
    } else if (lstat(o->out, &sb) == 0 && S_ISLNK(sb.st_mode)) {
        char target[4096] = "";
        ssize_t n = readlink(o->out, target, sizeof target - 1);
        if (n > 0) target[n] = 0;
        return sg_errorf(o->out, "--out is a symbolic link to '%s', which does not exist; give a file name", target);
    } else {
        /* the folder must exist and be writable: found now, not after the whole computation */
        char dir[4096];
        snprintf(dir, sizeof dir, "%s", o->out);
        char *slash = strrchr(dir, '/');
        if (!slash) snprintf(dir, sizeof dir, ".");
        else if (slash == dir) dir[1] = 0;
        else *slash = 0;
        if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
            return sg_errorf(o->out, "the folder '%s' of --out does not exist", dir);
        if (access(dir, W_OK | X_OK) != 0)
            return sg_errorf(o->out, "cannot write in the folder '%s' of --out: %s", dir, strerror(errno));
    }
    return 0;
}

static int load_saes(Run *r) {
    const Options *o = r->o;
    char **paths = NULL;
    size_t n = 0;
    if (sae_expand_paths(&paths, &n, o->sae, o->n_sae)) return -1;
    SaeLoadOptions lo = {0};
    lo.allow_model_mismatch = o->allow_model_mismatch;
    if (o->basis) {
        lo.has_override = 1;
        basis_parse(o->basis, &lo.basis);
    }
    r->sites = sg_xcalloc(n, sizeof *r->sites);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        SiteRun *s = &r->sites[i];
        rc = sae_load(&s->sae, paths[i], &r->model, r->model.cfg.name, &lo);
        if (rc) break;
        r->n_sites = i + 1;
        site_name(s->name, sizeof s->name, s->sae.site);
        for (size_t j = 0; j < i; j++)
            if (!strcmp(r->sites[j].name, s->name)) {
                rc = sg_errorf(paths[i], "a second SAE for site %s (already given by %s); one SAE per site", s->name,
                               r->sites[j].sae.dir);
                break;
            }
        s->d = s->sae.d_in, s->F = s->sae.d_sae, s->site_id = site_index(s->sae.site);
    }
    for (size_t i = 0; i < n; i++) free(paths[i]);
    free(paths);
    if (rc == 0 && o->norm_scaling_factor)
        rc = sae_norm_factors_apply(&r->sites[0].sae, sizeof *r->sites, r->n_sites, o->norm_scaling_factor);
    return rc;
}

/* ---- batches: fixed by T alone, so the numbers never depend on the split ------------------- */

static size_t batch_contexts(size_t T) {
    size_t B = T >= 256 ? 1 : 256 / T;
    return B > 8 ? 8 : B;
}

static int is_measured(const Run *r, int32_t tok) { return r->bos_include || tok != r->model.cfg.bos_token_id; }

/* static split of batches (statistics pass: its sums are exact, so any split gives the same) */
static void my_range(size_t n, size_t B, int rank, int size, size_t *lo, size_t *hi) {
    size_t nb = (n + B - 1) / B;
    *lo = nb * (size_t)rank / (size_t)size * B;
    *hi = nb * (size_t)(rank + 1) / (size_t)size * B;
    if (*hi > n) *hi = n;
    if (*lo > n) *lo = n;
}

/* ---- statistics pass ---------------------------------------------------------------------------- */

static int statistics_pass(Run *r, MPI_Comm comm, int rank, int size) {
    int need_mean = has_iv(r, IV_MEAN_ABLATION) || has_iv(r, IV_COV_RANDOM), need_cov = has_iv(r, IV_COV_RANDOM);
    int any = need_mean;
    for (size_t i = 0; i < r->n_sites; i++)
        any |= r->sites[i].sae.norm == SAE_NORM_EXPECTED_AVERAGE && r->sites[i].sae.norm_scaling_factor == 0;
    if (!any) return 0;
    const size_t n = r->ts.n, T = r->ts.ctx, B = batch_contexts(T);
    SiteStats *st = sg_xcalloc(r->n_sites, sizeof *st);
    size_t maxd = 0;
    for (size_t i = 0; i < r->n_sites; i++) {
        sitestats_init(&st[i], r->sites[i].d, need_cov);
        maxd = r->sites[i].d > maxd ? r->sites[i].d : maxd;
    }
    Activations a;
    acts_alloc(&a, &r->model.cfg, B, T);
    float *x = sg_xcalloc(B * T * maxd, sizeof(float));
    unsigned char *mask = sg_xcalloc(B * T, 1);
    size_t lo, hi;
    my_range(n, B, rank, size, &lo, &hi);
    if (rank == 0 && !sg_quiet()) fprintf(stderr, "saegap run: statistics pass (mean%s) over %zu contexts\n",
                                          need_cov ? ", covariance" : "", n);
    for (size_t c0 = lo; c0 < hi; c0 += B) {
        size_t nb = hi - c0 < B ? hi - c0 : B, N = nb * T;
        gpt2_forward(&a, &r->model, r->ts.ids + c0 * T, nb, T);
        for (size_t j = 0; j < N; j++) mask[j] = (unsigned char)is_measured(r, r->ts.ids[c0 * T + j]);
        for (size_t i = 0; i < r->n_sites; i++) {
            site_read(x, &a, &r->model, r->sites[i].sae.site, r->sites[i].sae.basis, 0, N);
            sitestats_add(&st[i], x, mask, N);
        }
    }
    int rc = 0;
    for (size_t i = 0; i < r->n_sites; i++) {
        SiteRun *s = &r->sites[i];
        sitestats_reduce(&st[i], comm);
        s->mean = sg_xcalloc(s->d, sizeof(double));
        if (need_cov) s->chol = sg_xcalloc(s->d * s->d, sizeof(double));
        double mean_norm = 0;
        if (rc == 0) rc = sitestats_finish(&st[i], s->name, s->mean, s->chol, &mean_norm);
        if (rc == 0 && s->sae.norm == SAE_NORM_EXPECTED_AVERAGE && s->sae.norm_scaling_factor == 0) {
            s->sae.norm_scaling_factor = sqrt((double)s->d) / mean_norm;
            snprintf(s->sae.norm_scaling_factor_source, sizeof s->sae.norm_scaling_factor_source,
                     "estimated: sqrt(d_in) / mean ||x|| over the run's measured tokens");
            sg_warnf("%s: expected_average_only_in factor not given; estimated %.6g from the data "
                     "(--norm-scaling-factor %s=FACTOR to set it)", s->sae.dir, s->sae.norm_scaling_factor, s->name);
        }
        sitestats_free(&st[i]);
    }
    free(st);
    free(x);
    free(mask);
    acts_free(&a);
    return rc;
}

/* ---- the result file's schema --------------------------------------------------------------- */


static void create_correlation_schema(Run *r, H5Out *h) {
    for (int iv = 0; iv < IV_COUNT; iv++) {
        r->ds_corr[iv][0] = -1;
        if (!has_iv(r, (Intervention)iv) || !is_correlated((Intervention)iv) || !has_iv(r, IV_EPS_RANDOM)) continue;
        char p[128];
        uint64_t kk[2] = {r->n_sites, r->n_sites};
        snprintf(p, sizeof p, "correlation/%s_minus_eps_random/pearson", iv_name((Intervention)iv));
        r->ds_corr[iv][0] = h5out_dataset(h, p, H5OUT_F64, 2, kk);
        snprintf(p, sizeof p, "correlation/%s_minus_eps_random/spearman", iv_name((Intervention)iv));
        r->ds_corr[iv][1] = h5out_dataset(h, p, H5OUT_F64, 2, kk);
        snprintf(p, sizeof p, "correlation/%s_minus_eps_random/sites", iv_name((Intervention)iv));
        r->ds_corr[iv][2] = h5out_dataset_strings(h, p, r->n_sites);
    }
}

static void write_correlations(Run *r, H5Out *h, MPI_Comm comm, int rank) {
    size_t K = r->n_sites;
    int *ds_iv = sg_xcalloc(K, sizeof(int)), *ds_eps = sg_xcalloc(K, sizeof(int));
    double *pear = sg_xcalloc(K * K, sizeof(double)), *spear = sg_xcalloc(K * K, sizeof(double));
    const char **names = sg_xcalloc(K, sizeof(char *));
    for (size_t k = 0; k < K; k++) names[k] = r->sites[k].name;
    for (int iv = 0; iv < IV_COUNT; iv++) {
        if (r->ds_corr[iv][0] < 0) continue;
        for (size_t k = 0; k < K; k++) ds_iv[k] = r->sites[k].ds_kl[iv], ds_eps[k] = r->sites[k].ds_kl[IV_EPS_RANDOM];
        CorrInput in = {.n = r->ts.n, .Wk = r->Wk, .S_iv = samples_of(r, (Intervention)iv),
                        .S_eps = samples_of(r, IV_EPS_RANDOM), .K = K, .ds_iv = ds_iv, .ds_eps = ds_eps};
        long used = correlate_gap(pear, spear, h, &in, comm);
        if (rank == 0) {
            h5out_write_rows(h, r->ds_corr[iv][0], 0, K, pear);
            h5out_write_rows(h, r->ds_corr[iv][1], 0, K, spear);
            h5out_write_strings(h, r->ds_corr[iv][2], names, K);
        }
        char g[128];
        snprintf(g, sizeof g, "correlation/%s_minus_eps_random", iv_name((Intervention)iv));
        h5out_attr_i64(h, g, "tokens", used);
    }
    free(ds_iv), free(ds_eps), free(pear), free(spear), free(names);
}

#define FNV_INIT FNV1A_INIT

/* The job's identity, compared item by item on --resume (CONTRACT: refuse another job). */
typedef struct { const char *name; char value[4096]; } JobItem;

static size_t job_items(const Run *r, JobItem *it) {
    const Options *o = r->o;
    size_t n = 0;
#define ITEM(nm, ...) (it[n].name = (nm), snprintf(it[n].value, sizeof it[n].value, __VA_ARGS__), n++)
    ITEM("model_checksum", "%s", r->model_checksum);
    ITEM("n_contexts", "%zu", r->ts.n);
    ITEM("ctx", "%zu", r->ts.ctx);
    ITEM("tokens_checksum", "%s", r->tokens_checksum); /* after the counts: name the plainer difference */
    ITEM("seed", "%lld", o->seed);
    char ivs[256] = "";
    for (int iv = 0; iv < IV_COUNT; iv++)
        if (has_iv(r, (Intervention)iv))
            snprintf(ivs + strlen(ivs), sizeof ivs - strlen(ivs), "%s%s", ivs[0] ? "," : "", iv_name((Intervention)iv));
    ITEM("interventions", "%s", ivs);
    ITEM("scope", "%s", r->scope_position ? "position" : "all");
    ITEM("position", "%zd", r->scope_position ? (ssize_t)r->P : (ssize_t)-1);
    ITEM("window", "%zd", r->scope_position ? (ssize_t)r->W : (ssize_t)-1);
    ITEM("samples", "%zu", r->S);
    ITEM("bos", "%s", r->bos_include ? "include" : "exclude");
    ITEM("latent_noise_sigma", "%.17g", o->latent_noise);
    ITEM("examples", "%zu", r->n_examples);
    char sites[4000] = "";
    uint64_t h = FNV_INIT;
    for (size_t i = 0; i < r->n_sites; i++) {
        const Sae *a = &r->sites[i].sae;
        snprintf(sites + strlen(sites), sizeof sites - strlen(sites), "%s%s", i ? "," : "", r->sites[i].name);
        h = fnv1a(h, a->st.map, a->st.map_size);
        h = fnv1a(h, basis_name(a->basis), strlen(basis_name(a->basis)));
        h = fnv1a(h, &a->norm_scaling_factor, sizeof a->norm_scaling_factor);
    }
    ITEM("sites", "%s", sites);
    ITEM("saes_checksum", "fnv1a64:%016llx (weights, basis, normalisation factor)", (unsigned long long)h);
#undef ITEM
    return n;
}

static void create_schema(Run *r, H5Out *h, int size) {
    const Options *o = r->o;
    const size_t n = r->ts.n, T = r->ts.ctx;
    const int fresh = !h5out_resuming(h);
    if (fresh) {
        h5out_attr_provenance(h, o->command_line);
        h5out_attr_str(h, "/", "model", o->model);
        h5out_attr_str(h, "/", "tokens_file", o->tokens);
        h5out_attr_i64(h, "/", "bos_token_id", r->model.cfg.bos_token_id);
        h5out_attr_i64(h, "/", "ranks", size);
        h5out_attr_i64(h, "/", "complete", 0);
        h5out_attr_i64(h, "/", "unit_batch_contexts", (int64_t)r->layout.B);
        h5out_attr_i64(h, "/", "unit_batches_per_block", (int64_t)r->layout.batches_per_block);
        h5out_attr_i64(h, "/", "unit_site_groups", (int64_t)r->layout.n_groups);
        JobItem it[32];
        size_t ni = job_items(r, it);
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
    uint64_t nt[2] = {n, T};
    r->ds_tokens = h5out_dataset(h, "tokens", H5OUT_I32, 2, nt);
    r->ds_clean_ce = h5out_dataset(h, "clean/ce", H5OUT_F32, 2, nt);
    uint64_t nu[1] = {r->layout.n_units}, nbk[2];
    r->ds_done = h5out_dataset(h, "progress/unit_done", H5OUT_I32, 1, nu);
    r->ds_unit_checksum = h5out_dataset(h, "progress/unit_checksum", H5OUT_I64, 1, nu);
    for (size_t i = 0; i < r->n_sites; i++) {
        SiteRun *s = &r->sites[i];
        char g[256], p[320];
        snprintf(g, sizeof g, "sites/%s", s->name);
        for (int iv = 0; iv < IV_COUNT; iv++) {
            s->ds_kl[iv] = s->ds_ce[iv] = -1;
            if (!has_iv(r, (Intervention)iv)) continue;
            size_t S = samples_of(r, (Intervention)iv);
            uint64_t dims[3] = {n, r->Wk, S};
            snprintf(p, sizeof p, "%s/kl/%s", g, iv_name((Intervention)iv));
            s->ds_kl[iv] = h5out_dataset(h, p, H5OUT_F32, S > 1 ? 3 : 2, dims);
            snprintf(p, sizeof p, "%s/ce/%s", g, iv_name((Intervention)iv));
            s->ds_ce[iv] = h5out_dataset(h, p, H5OUT_F32, S > 1 ? 3 : 2, dims);
        }
        for (int m = 0; m < RC_COUNT; m++) {
            snprintf(p, sizeof p, "%s/recon/%s", g, RECON_NAME[m]);
            s->ds_recon[m] = h5out_dataset(h, p, H5OUT_F32, 2, nt);
        }
        s->ds_zscore = -1;
        if (r->scope_position && r->S > 1 && has_iv(r, IV_SAE) && has_iv(r, IV_EPS_RANDOM)) {
            uint64_t dims[2] = {n, r->W};
            snprintf(p, sizeof p, "%s/sae_kl_zscore", g);
            s->ds_zscore = h5out_dataset(h, p, H5OUT_F32, 2, dims);
        }
        uint64_t fd[1] = {s->F};
        snprintf(p, sizeof p, "%s/feature_density", g);
        s->ds_density = h5out_dataset(h, p, H5OUT_F64, 1, fd);
        /* per-block aggregate records (progress: what --resume and the final sums read) */
        nbk[0] = r->layout.n_blocks;
        nbk[1] = 2 * s->n_sums;
        snprintf(p, sizeof p, "progress/%s/sums", s->name);
        s->ds_rec_sums = h5out_dataset(h, p, H5OUT_I64, 2, nbk);
        nbk[1] = CN_COUNT;
        snprintf(p, sizeof p, "progress/%s/counts", s->name);
        s->ds_rec_counts = h5out_dataset(h, p, H5OUT_I64, 2, nbk);
        nbk[1] = s->F;
        snprintf(p, sizeof p, "progress/%s/fire", s->name);
        s->ds_rec_fire = h5out_dataset(h, p, H5OUT_I32, 2, nbk);
        if (!fresh) continue;
        const Sae *a = &s->sae;
        h5out_attr_str(h, g, "sae_path", a->dir);
        h5out_attr_str(h, g, "hook_name", a->hook_name);
        h5out_attr_str(h, g, "sae_model_name", a->model_name);
        h5out_attr_str(h, g, "architecture", sae_arch_name(a->arch));
        h5out_attr_i64(h, g, "d_in", (int64_t)a->d_in);
        h5out_attr_i64(h, g, "d_sae", (int64_t)a->d_sae);
        if (a->arch == SAE_TOPK) h5out_attr_i64(h, g, "k", (int64_t)a->k);
        h5out_attr_str(h, g, "cfg_generation", sae_generation_name(a->generation));
        h5out_attr_str(h, g, "normalize_activations", sae_norm_name(a->norm));
        h5out_attr_i64(h, g, "apply_b_dec_to_input", a->apply_b_dec_to_input);
        h5out_attr_str(h, g, "basis", basis_name(a->basis));
        h5out_attr_str(h, g, "basis_source", a->basis_source);
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
    create_correlation_schema(r, h);
    r->ds_ex_clean_ids = r->ds_ex_clean_lp = -1;
    for (size_t i = 0; i < r->n_sites; i++)
        for (int iv = 0; iv < IV_COUNT; iv++) r->sites[i].ds_ex_lp[iv] = r->sites[i].ds_ex_kl[iv] = -1;
    if (r->n_examples) {
        uint64_t k1[1] = {r->n_examples}, k2[2] = {r->n_examples, EXAMPLE_TOPK};
        int ds_c = h5out_dataset(h, "examples/contexts", H5OUT_I32, 1, k1);
        int ds_p = h5out_dataset(h, "examples/position", H5OUT_I32, 1, k1);
        r->ds_ex_clean_ids = h5out_dataset(h, "examples/clean/token_ids", H5OUT_I32, 2, k2);
        r->ds_ex_clean_lp = h5out_dataset(h, "examples/clean/logprobs", H5OUT_F32, 2, k2);
        for (size_t i = 0; i < r->n_sites; i++) {
            SiteRun *s = &r->sites[i];
            for (int iv = 0; iv < IV_COUNT; iv++) {
                if ((iv != IV_SAE && iv != IV_EPS_RANDOM) || !has_iv(r, (Intervention)iv)) continue;
                char p[320];
                snprintf(p, sizeof p, "examples/%s/%s/logprobs", s->name, iv_name((Intervention)iv));
                s->ds_ex_lp[iv] = h5out_dataset(h, p, H5OUT_F32, 2, k2);
                snprintf(p, sizeof p, "examples/%s/%s/kl", s->name, iv_name((Intervention)iv));
                s->ds_ex_kl[iv] = h5out_dataset(h, p, H5OUT_F32, 1, k1);
            }
        }
        if (fresh && sg_rank() == 0) {
            int32_t *v = sg_xcalloc(r->n_examples, sizeof(int32_t));
            for (size_t k = 0; k < r->n_examples; k++) v[k] = (int32_t)k;
            h5out_write_rows(h, ds_c, 0, r->n_examples, v);
            for (size_t k = 0; k < r->n_examples; k++) v[k] = (int32_t)r->example_pos;
            h5out_write_rows(h, ds_p, 0, r->n_examples, v);
            free(v);
        }
    }
}

/* --resume: the file must record this very job; name the first item that differs. */
static int check_same_job(Run *r, H5Out *h) {
    JobItem it[32];
    size_t ni = job_items(r, it);
    for (size_t i = 0; i < ni; i++) {
        char have[4096] = "", key[96];
        snprintf(key, sizeof key, "job_%s", it[i].name);
        if (h5out_get_attr_str(h, "/", key, have, sizeof have) != 0)
            return sg_errorf(r->o->out, "--resume: the file has no '%s' record: not a saegap run file", key);
        if (strcmp(have, it[i].value) != 0)
            return sg_errorf(r->o->out, "--resume: this file is from a different job: %s is '%s' in the file but '%s' now",
                             it[i].name, have, it[i].value);
    }
    return 0;
}

/* ---- one batch ---------------------------------------------------------------------------------- */

typedef struct {
    H5Out *h;
    Activations clean, work;
    size_t cached_c0, cached_nb;  /* the batch the clean cache holds (nb 0: none) */
    float *logits_clean;  /* (N, V) */
    float *p_clean;       /* (N, V) */
    double *lse_clean, *p_sum; /* (N) */
    float *logits_block;  /* (LOGIT_BLOCK, Vp) */
    int32_t *next;        /* (N) next token or -1 */
    unsigned char *measured, *active, *score_active; /* (N) */
    uint32_t *context, *position;     /* (N) */
    float *x, *x_hat, *f, *out, *x_scratch, *f_scratch; /* (N, d) / (N, F) */
    double *g, *g2;
    float *kl_out[IV_COUNT], *ce_out[IV_COUNT]; /* (nb, Wk, S) */
    float *zscore;           /* (nb, W) */
    float *recon;            /* (RC_COUNT, N) */
    float *ce_clean_out;     /* (N) */
    SaeScratch *sae_work;    /* per site */
    int32_t *ex_ids;         /* (B, 25) clean top ids of example contexts in the cached batch */
    float *ex_lp;            /* (B, 25) */
    uint64_t checksum;       /* FNV-1a of everything this unit wrote, in write order */
} Work;

static void work_alloc(Work *w, const Run *r, H5Out *h) {
    const Gpt2Config *c = &r->model.cfg;
    const size_t T = r->ts.ctx, B = r->B, N = B * T, V = c->vocab_size, Vp = r->model.vocab_padded;
    size_t maxd = 0, maxF = 0;
    for (size_t i = 0; i < r->n_sites; i++) {
        maxd = r->sites[i].d > maxd ? r->sites[i].d : maxd;
        maxF = r->sites[i].F > maxF ? r->sites[i].F : maxF;
    }
    memset(w, 0, sizeof *w);
    w->h = h;
    acts_alloc(&w->clean, c, B, T);
    acts_alloc(&w->work, c, B, T);
    w->logits_clean = sg_xcalloc(N * V, sizeof(float));
    w->p_clean = sg_xcalloc(N * V, sizeof(float));
    w->lse_clean = sg_xcalloc(N, sizeof(double));
    w->p_sum = sg_xcalloc(N, sizeof(double));
    w->logits_block = sg_xcalloc(LOGIT_BLOCK * Vp, sizeof(float));
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
        w->kl_out[iv] = sg_xcalloc(B * r->Wk * r->S, sizeof(float));
        w->ce_out[iv] = sg_xcalloc(B * r->Wk * r->S, sizeof(float));
    }
    w->zscore = sg_xcalloc(B * r->W, sizeof(float));
    w->recon = sg_xcalloc(RC_COUNT * N, sizeof(float));
    w->ce_clean_out = sg_xcalloc(N, sizeof(float));
    w->sae_work = sg_xcalloc(r->n_sites, sizeof *w->sae_work);
    for (size_t i = 0; i < r->n_sites; i++) sae_scratch_alloc(&w->sae_work[i], &r->sites[i].sae, N);
    w->ex_ids = sg_xcalloc(B * EXAMPLE_TOPK, sizeof(int32_t));
    w->ex_lp = sg_xcalloc(B * EXAMPLE_TOPK, sizeof(float));
}

static void work_free(Work *w, const Run *r) {
    acts_free(&w->clean);
    acts_free(&w->work);
    void *ptrs[] = {w->logits_clean, w->p_clean, w->lse_clean, w->p_sum, w->logits_block, w->next, w->measured,
                    w->active, w->score_active, w->context, w->position, w->x, w->x_hat, w->out, w->x_scratch, w->f, w->f_scratch,
                    w->g, w->g2, w->zscore, w->recon, w->ce_clean_out, w->ex_ids, w->ex_lp};
    for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) free(ptrs[i]);
    for (int iv = 0; iv < IV_COUNT; iv++) free(w->kl_out[iv]), free(w->ce_out[iv]);
    for (size_t i = 0; i < r->n_sites; i++) sae_scratch_free(&w->sae_work[i]);
    free(w->sae_work);
}

/* Writes rows and folds their bytes into the unit's checksum (saegap verify recomputes it). */
static void put_rows(Work *w, int ds, size_t c0, size_t nb, const float *data, size_t floats_per_context) {
    h5out_write_rows(w->h, ds, c0, nb, data);
    w->checksum = fnv1a(w->checksum, data, nb * floats_per_context * sizeof(float));
}

/* The intervened pass reads, besides what it recomputes, the site's own buffer and the
 * restart layer's residual inputs: reset exactly those from the clean pass. */
static void restore_from_clean(Work *w, Site site, size_t layer, size_t L) {
    Activations *c = &w->clean, *a = &w->work;
    a->B = c->B, a->T = c->T;
    size_t ND = c->B * c->T * c->D;
    size_t W = site.kind == SG_SITE_MLP_POST ? 4 * c->D : c->D;
    memcpy(site_buffer(a, site), site_buffer(c, site), c->B * c->T * W * sizeof(float));
    if (layer < L) {
        memcpy(a->resid + layer * ND, c->resid + layer * ND, ND * sizeof(float));
        memcpy(a->resid_mid + layer * ND, c->resid_mid + layer * ND, ND * sizeof(float));
    }
}

/* logits (n, V) of rows [row0, row0+n), n <= LOGIT_BLOCK, through the padded block */
static void logits_rows(float *dst, Work *w, const Activations *a, const Gpt2Model *m, size_t row0, size_t n) {
    gpt2_logits(w->logits_block, a, m, row0, n);
    if (dst != w->logits_block) memcpy(dst, w->logits_block, n * m->cfg.vocab_size * sizeof(float));
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

static void clean_batch(Run *r, Work *w, size_t c0, size_t nb) {
    if (w->cached_nb == nb && w->cached_c0 == c0) return; /* reused by every site of the block */
    const Gpt2Model *m = &r->model;
    const size_t T = r->ts.ctx, N = nb * T, V = m->cfg.vocab_size;
    const int32_t *ids = r->ts.ids + c0 * T;
    gpt2_forward(&w->clean, m, ids, nb, T);
    for (size_t j = 0; j < N; j++) {
        size_t t = j % T;
        w->next[j] = t + 1 < T ? ids[j + 1] : -1;
        w->measured[j] = (unsigned char)is_measured(r, ids[j]);
        w->active[j] = (unsigned char)(w->measured[j] && (!r->scope_position || t == r->P));
        w->context[j] = (uint32_t)(c0 + j / T), w->position[j] = (uint32_t)t;
    }
    for (size_t r0 = 0; r0 < N; r0 += LOGIT_BLOCK) {
        size_t nr = N - r0 < LOGIT_BLOCK ? N - r0 : LOGIT_BLOCK;
        logits_rows(w->logits_clean + r0 * V, w, &w->clean, m, r0, nr);
    }
    metrics_clean(w->lse_clean, w->p_clean, w->p_sum, w->logits_clean, N, V);
    for (size_t j = 0; j < N; j++)
        w->ce_clean_out[j] =
            w->next[j] >= 0 && w->measured[j] ? (float)(w->lse_clean[j] - w->logits_clean[j * V + w->next[j]]) : NAN;
    w->cached_c0 = c0, w->cached_nb = nb;
    /* --examples: the clean top-25 at the example position of each example context here */
    for (size_t b = 0; b < nb; b++) {
        size_t c = c0 + b, j = b * T + r->example_pos;
        if (c >= r->n_examples) continue;
        int32_t *ids = w->ex_ids + b * EXAMPLE_TOPK;
        top_ids(ids, w->logits_clean + j * V, V, EXAMPLE_TOPK);
        for (int k = 0; k < EXAMPLE_TOPK; k++)
            w->ex_lp[b * EXAMPLE_TOPK + k] = (float)(w->logits_clean[j * V + ids[k]] - w->lse_clean[j]);
    }
}

static void site_metrics(Work *w, SiteRun *s, size_t N) {
    const size_t d = s->d, F = s->F;
    for (size_t j = 0; j < N; j++) {
        float *rc = w->recon;
        if (!w->measured[j]) {
            for (int k = 0; k < RC_COUNT; k++) rc[k * N + j] = NAN;
            continue;
        }
        const float *x = w->x + j * d, *xh = w->x_hat + j * d, *f = w->f + j * F;
        double xx = 0, hh = 0, xh_dot = 0, ee = 0, l1 = 0;
        int64_t l0 = 0;
        for (size_t i = 0; i < d; i++) {
            xx += (double)x[i] * x[i], hh += (double)xh[i] * xh[i], xh_dot += (double)x[i] * xh[i];
            ee += ((double)xh[i] - x[i]) * ((double)xh[i] - x[i]);
            repro_add_checked(&s->sums[AG_X_SUM + i], x[i]);
        }
        for (size_t i = 0; i < F; i++) {
            if (f[i] > 0) l0++, s->fire[i]++;
            l1 += fabs((double)f[i]);
        }
        rc[RC_L2_IN * N + j] = (float)sqrt(xx);
        rc[RC_L2_OUT * N + j] = (float)sqrt(hh);
        rc[RC_EPS * N + j] = (float)sqrt(ee);
        rc[RC_COS * N + j] = xx > 0 && hh > 0 ? (float)(xh_dot / sqrt(xx * hh)) : NAN;
        rc[RC_MSE * N + j] = (float)(ee / (double)d);
        rc[RC_L0 * N + j] = (float)l0;
        rc[RC_L1 * N + j] = (float)l1;
        repro_add_checked(&s->sums[AG_ERR_SQ], ee), repro_add_checked(&s->sums[AG_X_SQ], xx), repro_add_checked(&s->sums[AG_XHAT_SQ], hh);
        repro_add_checked(&s->sums[AG_X_DOT_XHAT], xh_dot), repro_add_checked(&s->sums[AG_L0], (double)l0);
        s->counts[CN_MEASURED]++;
    }
}

/* SAELens's ignore_tokens: the tokenizer's pad, eos and bos ids */
static int is_special(const Run *r, int32_t tok) {
    const Gpt2Config *c = &r->model.cfg;
    return tok == c->bos_token_id || tok == c->eos_token_id || tok == c->pad_token_id;
}

/* SAELens's SAE pass leaves special tokens clean, except at attn.hook_z, whose
 * all_head_replacement_hook substitutes every position. With --scope all and BOS excluded,
 * saegap's sae pass is that pass elsewhere: its values are reused, no pass of its own. */
static int sae_pass_is_saelens(const Run *r, const SiteRun *s) {
    return !r->scope_position && !r->bos_include && s->sae.site.kind != SG_SITE_ATTN_Z;
}

/* One of SAELens's score passes on the cached batch: x_rep written at the rows with active != 0,
 * KL and CE of every row whose token is not special added to score slots kl_slot and kl_slot+1. */
static void score_pass(Run *r, Work *w, SiteRun *s, const float *x_rep, const unsigned char *active, int kl_slot,
                       size_t c0, size_t nb) {
    const Gpt2Model *m = &r->model;
    const size_t T = r->ts.ctx, N = nb * T, V = m->cfg.vocab_size;
    const int32_t *ids = r->ts.ids + c0 * T;
    size_t layer;
    ForwardStage stage = site_restart(s->sae.site, &layer);
    restore_from_clean(w, s->sae.site, layer, m->cfg.n_layer);
    site_write(&w->work, m, s->sae.site, s->sae.basis, x_rep, active, N);
    gpt2_forward_from(&w->work, m, layer, stage);
    for (size_t r0 = 0; r0 < N; r0 += LOGIT_BLOCK) {
        size_t nr = N - r0 < LOGIT_BLOCK ? N - r0 : LOGIT_BLOCK;
        double kl[LOGIT_BLOCK], ce[LOGIT_BLOCK];
        logits_rows(w->logits_block, w, &w->work, m, r0, nr);
        metrics_kl_ce_threads(gemm_get_threads(), kl, ce, w->logits_clean + r0 * V, w->p_clean + r0 * V,
                              &w->lse_clean[r0], &w->p_sum[r0], w->logits_block, &w->next[r0], nr, V);
        for (size_t q = 0; q < nr; q++) {
            size_t j = r0 + q;
            if (is_special(r, ids[j])) continue;
            repro_add_checked(&s->sums[AG_SCORE + kl_slot], kl[q]), s->counts[CN_SCORE + kl_slot]++;
            if (w->next[j] >= 0) repro_add_checked(&s->sums[AG_SCORE + kl_slot + 1], ce[q]), s->counts[CN_SCORE + kl_slot + 1]++;
        }
    }
}

/* SAELens's scores need the zero-ablation pass of every position, and, unless the sae pass
 * already is SAELens's, the SAE pass with special tokens clean and the clean CE over every
 * position (docs/output-schema.md). */
static void score_passes(Run *r, Work *w, SiteRun *s, size_t c0, size_t nb) {
    const size_t T = r->ts.ctx, N = nb * T;
    const int32_t *ids = r->ts.ids + c0 * T;
    unsigned char *active = w->score_active;
    memset(active, 1, N);
    memset(w->out, 0, N * s->d * sizeof(float));
    score_pass(r, w, s, w->out, active, SC_KL_ZERO, c0, nb);
    if (sae_pass_is_saelens(r, s)) return;
    const int every_position = s->sae.site.kind == SG_SITE_ATTN_Z;
    for (size_t j = 0; j < N; j++) {
        active[j] = (unsigned char)(every_position || !is_special(r, ids[j]));
        if (!is_special(r, ids[j]) && w->next[j] >= 0) {
            repro_add_checked(&s->sums[AG_SCORE + SC_CE_CLEAN], w->lse_clean[j] - w->logits_clean[j * r->model.cfg.vocab_size + w->next[j]]);
            s->counts[CN_SCORE + SC_CE_CLEAN]++;
        }
    }
    score_pass(r, w, s, w->x_hat, active, SC_KL_SAE, c0, nb);
}

/* One site on the cached batch: returns 0, or -1 when a stop was requested mid-way. */
static int site_batch(Run *r, Work *w, size_t si, size_t c0, size_t nb) {
    const Gpt2Model *m = &r->model;
    const size_t T = r->ts.ctx, N = nb * T, V = m->cfg.vocab_size, L = m->cfg.n_layer;
    SiteRun *s = &r->sites[si];
    const Sae *sae = &s->sae;
    site_read(w->x, &w->clean, m, sae->site, sae->basis, 0, N);
    sae_forward(w->f, w->x_hat, sae, &w->sae_work[si], w->x, N);
    site_metrics(w, s, N);
    const size_t t0 = r->scope_position ? r->P : 0, Wk = r->Wk; /* recorded rows: [t0, t0 + Wk) */
    for (size_t b = 0; b < nb; b++)
        for (size_t t = t0; t < t0 + Wk; t++) {
            size_t j = b * T + t;
            if (w->measured[j] && w->next[j] >= 0)
                repro_add_checked(&s->sums[AG_CE_CLEAN], w->ce_clean_out[j]), s->counts[CN_CE_CLEAN]++;
        }
    IvBatch ib = {.N = N, .d = s->d, .d_sae = s->F, .x = w->x, .x_hat = w->x_hat, .f = w->f, .mean = s->mean,
                  .chol = s->chol, .latent_sigma = r->o->latent_noise, .sae = sae, .sae_work = &w->sae_work[si],
                  .context = w->context, .position = w->position, .active = w->active,
                  .seed = (uint64_t)r->o->seed, .site_id = (uint32_t)s->site_id, .f_scratch = w->f_scratch,
                  .x_scratch = w->x_scratch, .g = w->g, .g2 = w->g2};
    size_t layer;
    ForwardStage stage = site_restart(sae->site, &layer);
    for (int ivi = 0; ivi < IV_COUNT; ivi++) {
        Intervention iv = (Intervention)ivi;
        if (!has_iv(r, iv)) continue;
        if (g_stop_signal) return -1;
        const size_t S = samples_of(r, iv);
        float *kl_out = w->kl_out[iv], *ce_out = w->ce_out[iv];
        for (size_t smp = 0; smp < S; smp++) {
            ib.sample = (uint32_t)smp;
            iv_apply(iv, w->out, &ib);
            restore_from_clean(w, sae->site, layer, L);
            site_write(&w->work, m, sae->site, sae->basis, w->out, w->active, N);
            gpt2_forward_from(&w->work, m, layer, stage);
            for (size_t b = 0; b < nb; b++)
                for (size_t r0 = b * T + t0; r0 < b * T + t0 + Wk; r0 += LOGIT_BLOCK) {
                    size_t nr = b * T + t0 + Wk - r0;
                    if (nr > LOGIT_BLOCK) nr = LOGIT_BLOCK;
                    logits_rows(w->logits_block, w, &w->work, m, r0, nr);
                    /* the block's rows on the rank's threads (unmeasured rows too: cheaper than
                     * splitting the block); then the records in row order */
                    double kl_blk[LOGIT_BLOCK], ce_blk[LOGIT_BLOCK];
                    metrics_kl_ce_threads(gemm_get_threads(), kl_blk, ce_blk, w->logits_clean + r0 * V,
                                          w->p_clean + r0 * V, &w->lse_clean[r0], &w->p_sum[r0], w->logits_block,
                                          &w->next[r0], nr, V);
                    for (size_t q = 0; q < nr; q++) {
                        size_t j = r0 + q, o = (b * Wk + (j - b * T - t0)) * S + smp;
                        if (!w->measured[j]) {
                            kl_out[o] = ce_out[o] = NAN;
                            continue;
                        }
                        double kl = kl_blk[q], ce = ce_blk[q];
                        kl_out[o] = (float)kl, ce_out[o] = (float)ce;
                        size_t c = c0 + b;
                        if (smp == 0 && c < r->n_examples && j - b * T == r->example_pos && s->ds_ex_lp[iv] >= 0) {
                            const float *li = w->logits_block + q * V;
                            double lse_i = metrics_lse(li, V);
                            float lp[EXAMPLE_TOPK], klf = (float)kl;
                            for (int k = 0; k < EXAMPLE_TOPK; k++)
                                lp[k] = (float)(li[w->ex_ids[b * EXAMPLE_TOPK + k]] - lse_i);
                            h5out_write_rows(w->h, s->ds_ex_lp[iv], c, 1, lp);
                            h5out_write_rows(w->h, s->ds_ex_kl[iv], c, 1, &klf);
                        }
                        repro_add_checked(&s->sums[AG_KL0 + iv], kl), s->counts[CN_KL0 + iv]++;
                        if (w->next[j] >= 0) repro_add_checked(&s->sums[AG_CE0 + iv], ce), s->counts[CN_CE0 + iv]++;
                    }
                }
        }
        put_rows(w, s->ds_kl[iv], c0, nb, kl_out, Wk * S);
        put_rows(w, s->ds_ce[iv], c0, nb, ce_out, Wk * S);
    }
    if (r->scores) {
        if (g_stop_signal) return -1;
        score_passes(r, w, s, c0, nb);
    }
    if (s->ds_zscore >= 0) {
        /* (KL_sae - mean_s KL_eps_random) / std_s KL_eps_random, ddof 1 */
        const size_t S = r->S;
        for (size_t q = 0; q < nb * r->W; q++) {
            const float *e = w->kl_out[IV_EPS_RANDOM] + q * S;
            double mean = 0, var = 0;
            for (size_t k = 0; k < S; k++) mean += e[k];
            mean /= (double)S;
            for (size_t k = 0; k < S; k++) var += (e[k] - mean) * (e[k] - mean);
            double sd = sqrt(var / (double)(S - 1));
            w->zscore[q] = sd > 0 ? (float)((w->kl_out[IV_SAE][q] - mean) / sd) : NAN;
        }
        put_rows(w, s->ds_zscore, c0, nb, w->zscore, r->W);
    }
    for (int k = 0; k < RC_COUNT; k++) put_rows(w, s->ds_recon[k], c0, nb, w->recon + (size_t)k * N, T);
    return 0;
}

/* One unit: its rows, then its aggregate records, then its done flag. -1: abandoned (stop). */
static int run_unit(Run *r, Work *w, size_t unit) {
    size_t block, group, c0, c1, s0, s1;
    unit_parts(&r->layout, unit, &block, &group);
    block_contexts(&r->layout, block, &c0, &c1);
    group_sites(&r->layout, group, &s0, &s1);
    for (size_t si = s0; si < s1; si++) {
        SiteRun *s = &r->sites[si];
        memset(s->sums, 0, s->n_sums * sizeof(ReproSum));
        memset(s->counts, 0, sizeof s->counts);
        memset(s->fire, 0, s->F * sizeof(int32_t));
    }
    w->checksum = FNV_INIT;
    for (size_t c = c0; c < c1; c += r->B) {
        size_t nb = c1 - c < r->B ? c1 - c : r->B;
        clean_batch(r, w, c, nb);
        if (group == 0) put_rows(w, r->ds_clean_ce, c, nb, w->ce_clean_out, r->ts.ctx);
        if (group == 0 && c < r->n_examples) {
            size_t ne = r->n_examples - c < nb ? r->n_examples - c : nb;
            h5out_write_rows(w->h, r->ds_ex_clean_ids, c, ne, w->ex_ids);
            h5out_write_rows(w->h, r->ds_ex_clean_lp, c, ne, w->ex_lp);
        }
        for (size_t si = s0; si < s1; si++)
            if (site_batch(r, w, si, c, nb) != 0) return -1;
    }
    for (size_t si = s0; si < s1; si++) check_sums(r->sites[si].sums, r->sites[si].n_sums, r->sites[si].name);
    for (size_t si = s0; si < s1; si++) {
        SiteRun *s = &r->sites[si];
        int64_t *pairs = sg_xcalloc(2 * s->n_sums, sizeof(int64_t));
        for (size_t i = 0; i < s->n_sums; i++) {
            unsigned __int128 u = (unsigned __int128)s->sums[i];
            pairs[2 * i] = (int64_t)(uint64_t)u, pairs[2 * i + 1] = (int64_t)(uint64_t)(u >> 64);
        }
        h5out_write_rows(w->h, s->ds_rec_sums, block, 1, pairs);
        h5out_write_rows(w->h, s->ds_rec_counts, block, 1, s->counts);
        h5out_write_rows(w->h, s->ds_rec_fire, block, 1, s->fire);
        free(pairs);
    }
    int64_t ck = (int64_t)w->checksum;
    int32_t one = 1;
    h5out_write_rows(w->h, r->ds_unit_checksum, unit, 1, &ck);
    h5out_write_rows(w->h, r->ds_done, unit, 1, &one);
    return 0;
}

/* ---- aggregates: exact sums of every block's record ------------------------------------------ */

static void finish_site(Run *r, H5Out *h, SiteRun *s, MPI_Comm comm, int rank) {
    /* rank 0 reads the records and derives the attributes; every rank writes the same values */
    enum { A_EV, A_RRB, A_L0, A_CE_CLEAN, A_KLS, A_CES, A_DEAD, A_MEAS, A_KL0, A_CE0 = A_KL0 + IV_COUNT,
           A_SC = A_CE0 + IV_COUNT, A_COUNT = A_SC + SC_COUNT };
    double v[A_COUNT];
    memset(v, 0, sizeof v);
    double *density = rank == 0 ? sg_xcalloc(s->F, sizeof(double)) : NULL;
    if (rank == 0) {
        size_t nbk = r->layout.n_blocks;
        ReproSum *tot = sg_xcalloc(s->n_sums, sizeof(ReproSum));
        int64_t cnt[CN_COUNT] = {0}, *fire = sg_xcalloc(s->F, sizeof(int64_t));
        int64_t *pairs = sg_xcalloc(2 * s->n_sums, sizeof(int64_t)), c[CN_COUNT];
        int32_t *f = sg_xcalloc(s->F, sizeof(int32_t));
        for (size_t b = 0; b < nbk; b++) {
            h5out_read_rows(h, s->ds_rec_sums, b, 1, pairs);
            h5out_read_rows(h, s->ds_rec_counts, b, 1, c);
            h5out_read_rows(h, s->ds_rec_fire, b, 1, f);
            for (size_t i = 0; i < s->n_sums; i++)
                repro_merge(&tot[i], (ReproSum)(((unsigned __int128)(uint64_t)pairs[2 * i + 1] << 64) | (uint64_t)pairs[2 * i]));
            for (int i = 0; i < CN_COUNT; i++) cnt[i] += c[i];
            for (size_t i = 0; i < s->F; i++) fire[i] += f[i];
        }
        check_sums(tot, s->n_sums, s->name);
        double Nm = (double)cnt[CN_MEASURED], mean_sq = 0;
        for (size_t i = 0; i < s->d; i++) {
            double mu = repro_value(tot[AG_X_SUM + i]) / Nm;
            mean_sq += mu * mu;
        }
        /* explained variance, mean-centred: 1 - sum||x - x_hat||^2 / sum_d sum_t (x_d - mean_d)^2 */
        v[A_EV] = 1.0 - repro_value(tot[AG_ERR_SQ]) / (repro_value(tot[AG_X_SQ]) - Nm * mean_sq);
        v[A_RRB] = repro_value(tot[AG_XHAT_SQ]) / repro_value(tot[AG_X_DOT_XHAT]);
        v[A_L0] = repro_value(tot[AG_L0]) / Nm;
        v[A_CE_CLEAN] = repro_value(tot[AG_CE_CLEAN]) / (double)cnt[CN_CE_CLEAN];
        v[A_MEAS] = Nm;
        for (int i = 0; i < IV_COUNT; i++) {
            v[A_KL0 + i] = repro_value(tot[AG_KL0 + i]) / (double)cnt[CN_KL0 + i];
            v[A_CE0 + i] = repro_value(tot[AG_CE0 + i]) / (double)cnt[CN_CE0 + i];
        }
        for (int k = 0; k < SC_COUNT; k++)
            v[A_SC + k] = repro_value(tot[AG_SCORE + k]) / (double)cnt[CN_SCORE + k];
        if (sae_pass_is_saelens(r, s)) { /* the sae pass and the clean CE are SAELens's own */
            v[A_SC + SC_KL_SAE] = v[A_KL0 + IV_SAE], v[A_SC + SC_CE_SAE] = v[A_CE0 + IV_SAE];
            v[A_SC + SC_CE_CLEAN] = v[A_CE_CLEAN];
        }
        v[A_KLS] = (v[A_SC + SC_KL_ZERO] - v[A_SC + SC_KL_SAE]) / v[A_SC + SC_KL_ZERO];
        v[A_CES] = (v[A_SC + SC_CE_ZERO] - v[A_SC + SC_CE_SAE]) / (v[A_SC + SC_CE_ZERO] - v[A_SC + SC_CE_CLEAN]);
        for (size_t i = 0; i < s->F; i++) {
            density[i] = (double)fire[i] / Nm;
            v[A_DEAD] += fire[i] == 0;
        }
        free(tot), free(fire), free(pairs), free(f);
    }
    if (MPI_Bcast(v, A_COUNT, MPI_DOUBLE, 0, comm) != MPI_SUCCESS) sg_fatal("MPI", "broadcasting aggregates failed");
    char g[256], key[64];
    snprintf(g, sizeof g, "sites/%s", s->name);
    h5out_attr_f64(h, g, "explained_variance", v[A_EV]);
    h5out_attr_f64(h, g, "relative_reconstruction_bias", v[A_RRB]);
    h5out_attr_f64(h, g, "mean_l0", v[A_L0]);
    h5out_attr_i64(h, g, "measured_tokens", (int64_t)v[A_MEAS]);
    h5out_attr_i64(h, g, "dead_latents", (int64_t)v[A_DEAD]);
    h5out_attr_f64(h, g, "mean_ce_clean", v[A_CE_CLEAN]);
    for (int i = 0; i < IV_COUNT; i++) {
        if (!has_iv(r, (Intervention)i)) continue;
        snprintf(key, sizeof key, "mean_kl_%s", iv_name((Intervention)i));
        h5out_attr_f64(h, g, key, v[A_KL0 + i]);
        snprintf(key, sizeof key, "mean_ce_%s", iv_name((Intervention)i));
        h5out_attr_f64(h, g, key, v[A_CE0 + i]);
    }
    if (r->scores) {
        /* SAELens's names for SAELens's numbers (sae_lens/evals.py) */
        static const char *const SC_NAME[SC_COUNT] = {"kl_div_with_sae", "ce_loss_with_sae", "kl_div_with_ablation",
                                                      "ce_loss_with_ablation", "ce_loss_without_sae"};
        h5out_attr_f64(h, g, "kl_div_score", v[A_KLS]);
        h5out_attr_f64(h, g, "ce_loss_score", v[A_CES]);
        for (int k = 0; k < SC_COUNT; k++) h5out_attr_f64(h, g, SC_NAME[k], v[A_SC + k]);
    }
    if (rank == 0) h5out_write_rows(h, s->ds_density, 0, s->F, density);
    free(density);
    if (rank == 0 && !sg_quiet() && has_iv(r, IV_SAE) && has_iv(r, IV_EPS_RANDOM))
        fprintf(stderr, "  %-28s explained variance %.3f, L0 %.1f, KL sae %.4g / eps_random %.4g = %.3g\n", s->name,
                v[A_EV], v[A_L0], v[A_KL0 + IV_SAE], v[A_KL0 + IV_EPS_RANDOM], v[A_KL0 + IV_SAE] / v[A_KL0 + IV_EPS_RANDOM]);
}

/* ---- the command -------------------------------------------------------------------------------- */

static void run_free(Run *r) {
    for (size_t i = 0; i < r->n_sites; i++) {
        SiteRun *s = &r->sites[i];
        sae_free(&s->sae);
        free(s->mean), free(s->chol), free(s->sums), free(s->fire);
    }
    free(r->sites);
    tokens_free(&r->ts);
    model_free(&r->model);
}

/* Rank 0, after a failure before the new file got its final name: remove it, release the lock. */
static void drop_partial(const Run *r, int rank, int *lock_fd) {
    if (rank != 0) return;
    unlink(r->out_partial);
    out_lock_release(*lock_fd);
    *lock_fd = -1;
}

/* Rank 0, when the disk cannot hold the open result: closing an HDF5 file writes to it, and a
 * collective write that fails on a full disk can leave the ranks waiting on each other inside
 * HDF5. So end every rank now (sg_fatal), after removing a file that holds no unit yet; a
 * resumed file is left as its last flush wrote it. */
_Noreturn static void abandon_file(const Run *r, int resuming) {
    if (!resuming) unlink(r->out_partial);
    char msg[SG_ERROR_MAX];
    snprintf(msg, sizeof msg, "%s", sg_error_message());
    sg_fatal("saegap run", "%s%s", msg, resuming ? " (the file is as before this run: free space, then --resume)" : "");
}

/* Bytes past the file's end that the metadata written at the end needs (attributes, the final
 * checksum): reserved with the file, so that finishing never meets a full disk. */
static uint64_t result_slack(const Run *r) { return ((uint64_t)4 << 20) + ((uint64_t)256 << 10) * r->n_sites; }

/* A new result's datasets are all allocated at creation, so its size is known before it
 * exists: refuse a disk that cannot hold it before any work (a disk that fills up during
 * creation would otherwise fail inside HDF5's collective writes). Collective; 0 when the run
 * resumes an existing file (h5out_reserve covers that). */
static int check_space(Run *r, MPI_Comm comm, int size) {
    struct stat sb;
    int resume_existing = r->o->resume && stat(r->o->out, &sb) == 0;
    if (MPI_Bcast(&resume_existing, 1, MPI_INT, 0, comm) != MPI_SUCCESS) sg_fatal("MPI", "broadcast failed");
    if (resume_existing) return 0;
    schedule_layout(&r->layout, r->ts.n, r->B, r->n_sites, size);
    H5Out *dry = h5out_dry();
    create_schema(r, dry, size);
    r->file_bytes = h5out_dry_bytes(dry) + result_slack(r);
    h5out_close(dry);
    return h5out_check_space(r->o->out, r->file_bytes, comm);
}

/* Opens the result file: a new one, or (--resume) the existing one of the same job. Rank 0
 * holds the writer lock for the whole run. Sets *lock_fd on rank 0. NULL after an error. */
static H5Out *open_output(Run *r, MPI_Comm comm, int rank, int size, int *lock_fd) {
    const Options *o = r->o;
    struct stat sb;
    int exists = stat(o->out, &sb) == 0, rc = 0;
    if (MPI_Bcast(&exists, 1, MPI_INT, 0, comm) != MPI_SUCCESS) sg_fatal("MPI", "broadcast failed");
    H5Out *h = NULL;
    if (out_partial_path(o->out, r->out_partial, sizeof r->out_partial)) rc = -1;
    if (sg_agree(comm, rc)) return NULL;
    if (exists && o->resume) {
        if (rank == 0) {
            *lock_fd = out_lock_acquire(o->out);
            rc = *lock_fd < 0 ? -1 : 0;
        }
        if (sg_agree(comm, rc)) return NULL;
        h = h5out_open(o->out, comm);
        if (sg_agree(comm, h ? 0 : -1)) return NULL;
        rc = check_same_job(r, h);
        int64_t bc = 0, bpb = 0, groups = 0;
        if (rc == 0 && (h5out_get_attr_i64(h, "/", "unit_batch_contexts", &bc) ||
                        h5out_get_attr_i64(h, "/", "unit_batches_per_block", &bpb) ||
                        h5out_get_attr_i64(h, "/", "unit_site_groups", &groups) || (size_t)bc != r->B))
            rc = sg_errorf(o->out, "--resume: the file's unit layout is missing or differs (not this job's file)");
        if (sg_agree(comm, rc)) { h5out_close(h); return NULL; }
        schedule_layout_from(&r->layout, r->ts.n, r->B, r->n_sites, (size_t)bpb, (size_t)groups);
        return h;
    }
    /* A new file is written as OUT.creating until its schema is on disk (see h5out.h). An OUT
     * that exists without --resume was refused by check_options; one that appears since is
     * refused when the new file is named, in h5out_publish. */
    schedule_layout(&r->layout, r->ts.n, r->B, r->n_sites, size);
    if (check_space(r, comm, size)) return NULL;
    if (rank == 0) {
        *lock_fd = out_partial_claim(o->out, r->out_partial);
        rc = *lock_fd < 0 ? -1 : 0;
    }
    if (sg_agree(comm, rc)) return NULL;
    h = h5out_create_claimed(r->out_partial, comm);
    if (sg_agree(comm, h ? 0 : -1)) {
        drop_partial(r, rank, lock_fd);
        return NULL;
    }
    /* after H5Fcreate (which truncates the file), before HDF5 writes: creation cannot meet a
     * full disk */
    if (rank == 0 && out_partial_reserve(r->out_partial, o->out, r->file_bytes) != 0)
        abandon_file(r, 0);
    return h;
}

static void checksum_inputs(Run *r) {
    snprintf(r->model_checksum, sizeof r->model_checksum, "fnv1a64:%016llx",
             (unsigned long long)fnv1a(FNV_INIT, r->model.st.map, r->model.st.map_size));
    snprintf(r->tokens_checksum, sizeof r->tokens_checksum, "fnv1a64:%016llx",
             (unsigned long long)fnv1a(FNV_INIT, r->ts.ids, r->ts.n * r->ts.ctx * sizeof(int32_t)));
}

static int run_command_body(const Options *o, MPI_Comm comm) {
    int rank, size;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    Run r;
    memset(&r, 0, sizeof r);
    r.o = o;
    if (sg_agree(comm, check_options(&r))) return 1;
    if (sg_agree(comm, model_load(&r.model, o->model))) return 1;
    const Gpt2Config *c = &r.model.cfg;
    int rc = tokens_load(&r.ts, o->tokens, o->ctx > 0 ? (size_t)o->ctx : 0, o->contexts > 0 ? (size_t)o->contexts : 0);
    if (rc == 0) rc = tokens_check(&r.ts, o->tokens, c->vocab_size, c->n_positions);
    if (rc == 0 && r.scope_position && r.P + r.W > r.ts.ctx)
        rc = sg_errorf("--position", "position %zu + window %zu exceeds the context length %zu", r.P, r.W, r.ts.ctx);
    if (rc == 0) rc = load_saes(&r);
    if (sg_agree(comm, rc)) { run_free(&r); return 1; }
    r.Wk = r.scope_position ? r.W : r.ts.ctx;
    r.scores = has_iv(&r, IV_SAE) && has_iv(&r, IV_ZERO_ABLATION);
    r.B = batch_contexts(r.ts.ctx);
    r.n_examples = o->examples > 0 ? (size_t)o->examples : 0;
    if (r.n_examples > r.ts.n) r.n_examples = r.ts.n;
    r.example_pos = r.scope_position ? r.P : r.ts.ctx / 2;
    for (size_t i = 0; i < r.n_sites; i++) {
        SiteRun *s = &r.sites[i];
        s->n_sums = AG_X_SUM + s->d;
        s->sums = sg_xcalloc(s->n_sums, sizeof(ReproSum));
        s->fire = sg_xcalloc(s->F, sizeof(int32_t));
    }
    checksum_inputs(&r);
    if (check_space(&r, comm, size)) { run_free(&r); return 1; }

    if (sg_agree(comm, statistics_pass(&r, comm, rank, size))) { run_free(&r); return 1; }
    int lock_fd = -1;
    H5Out *h = open_output(&r, comm, rank, size, &lock_fd);
    if (!h) { run_free(&r); return 1; }
    create_schema(&r, h, size);
    const int resuming = h5out_resuming(h);
    if (!resuming && rank == 0) h5out_write_rows(h, r.ds_tokens, 0, r.ts.n, r.ts.ids);
    h5out_flush(h); /* schema on disk before any unit runs: a kill cannot damage metadata */
    /* every byte the run will write is backed by the file system now: a disk that fills up
     * later cannot cost a unit or the file's metadata */
    if (rank == 0 && h5out_reserve(h, result_slack(&r), o->out) != 0) abandon_file(&r, resuming);
    if (!resuming && h5out_publish(h, o->out, comm) != 0) {
        /* OUT appeared meanwhile: leave it alone, drop this run's partial file */
        h5out_close(h);
        drop_partial(&r, rank, &lock_fd);
        run_free(&r);
        return 1;
    }

    /* pending units: those without a done flag, block-major */
    size_t n_units = r.layout.n_units, n_pending = 0;
    int32_t *done = sg_xcalloc(n_units, sizeof(int32_t));
    if (resuming) {
        if (rank == 0) h5out_read_rows(h, r.ds_done, 0, n_units, done);
        if (MPI_Bcast(done, (int)n_units, MPI_INT32_T, 0, comm) != MPI_SUCCESS) sg_fatal("MPI", "broadcast failed");
    }
    size_t *pending = sg_xcalloc(n_units, sizeof(size_t));
    for (size_t u = 0; u < n_units; u++)
        if (done[u] != 1) pending[n_pending++] = u;
    free(done);
    if (rank == 0 && !sg_quiet())
        fprintf(stderr, "saegap run: %zu contexts x %zu tokens, %zu site(s), %zu units (%zu pending%s), %d rank(s) x %d "
                        "BLIS thread(s)\n",
                r.ts.n, r.ts.ctx, r.n_sites, n_units, n_pending, resuming ? ", resumed" : "", size, gemm_get_threads());

    Work w;
    work_alloc(&w, &r, h);
    UnitQueue q;
    queue_open(&q, n_pending, comm);
    double t_start = MPI_Wtime(), last = t_start;
    size_t my_units = 0;
    int stopped = 0;
    for (long k; !stopped && (k = queue_next(&q)) >= 0;) {
        if (run_unit(&r, &w, pending[k]) != 0) stopped = 1;
        else my_units++;
        if (g_stop_signal) stopped = 1;
        if (stopped) queue_request_stop(&q);
        double now = MPI_Wtime();
        if (rank == 0 && !sg_quiet() && (now - last > 10 || (size_t)k + 1 == n_pending)) {
            double el = now - t_start, frac = (double)(k + 1) / (double)n_pending;
            fprintf(stderr, "saegap run: ~%ld/%zu pending units handed out, %.0f s elapsed, ETA %.0f s\n", k + 1,
                    n_pending, el, el / frac * (1 - frac));
            last = now;
        }
    }
    work_free(&w, &r);
    /* every rank leaves the loop; then all learn whether anyone stopped */
    int any_stop = stopped || g_stop_signal;
    if (MPI_Allreduce(MPI_IN_PLACE, &any_stop, 1, MPI_INT, MPI_MAX, comm) != MPI_SUCCESS)
        sg_fatal("MPI", "agreeing on a stop failed");
    queue_close(&q);
    free(pending);
    int status = 0;
    if (any_stop) {
        h5out_flush(h);
        if (rank == 0)
            fprintf(stderr, "saegap run: interrupted by a signal; %s is resumable (same command with --resume); the "
                            "ranks exit with status %d (a launcher that was itself signalled, e.g. mpirun sent TERM, "
                            "reports its own status, usually 1: saegap verify tells)\n", o->out, SAEGAP_EXIT_INTERRUPTED);
        status = SAEGAP_EXIT_INTERRUPTED;
    } else {
        h5out_flush(h);
        if (MPI_Barrier(comm) != MPI_SUCCESS) sg_fatal("MPI", "barrier after the units failed");
        if (rank == 0 && !sg_quiet())
            fprintf(stderr, "saegap run: units done in %.1f s; aggregates and correlations\n", MPI_Wtime() - t_start);
        for (size_t i = 0; i < r.n_sites; i++) finish_site(&r, h, &r.sites[i], comm, rank);
        write_correlations(&r, h, comm, rank);
        h5out_flush(h);
        if (MPI_Barrier(comm) != MPI_SUCCESS) sg_fatal("MPI", "barrier before completing %s failed", o->out);
        char ck[64] = "";
        if (rank == 0) snprintf(ck, sizeof ck, "fnv1a64:%016llx", (unsigned long long)h5out_checksum_final(h, r.o->out));
        if (MPI_Bcast(ck, sizeof ck, MPI_CHAR, 0, comm) != MPI_SUCCESS) sg_fatal("MPI", "broadcast failed");
        h5out_attr_str(h, "/", "final_checksum", ck);
        h5out_attr_i64(h, "/", "complete", 1);
    }
    h5out_close(h);
    if (rank == 0) out_lock_release(lock_fd);
    if (rank == 0 && !sg_quiet() && !any_stop)
        fprintf(stderr, "saegap run: wrote %s in %.1f s\n", o->out, MPI_Wtime() - t_start);
    run_free(&r);
    return status;
}

/* Installs on_term for sig, keeping the previous action in *old (when not NULL). */
static void catch_stop(int sig, struct sigaction *old) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, old);
}

void run_catch_early_stop(void) { catch_stop(SIGUSR1, NULL); }

/* SIGTERM (Slurm's warning before the time limit): finish or abandon the current unit, flush,
 * exit with SAEGAP_EXIT_INTERRUPTED so the job script can requeue with --resume. SIGUSR1 does the
 * same: Open MPI's mpirun and Slurm's srun forward it unchanged to every rank on every node,
 * whereas a TERM sent to either launcher becomes a kill of the ranks. Caught for the whole
 * command: a signal that arrives while the inputs load is honoured at the first unit (after
 * the file exists, so that it is resumable). */
int run_command(const Options *o, MPI_Comm comm) {
    struct sigaction old_term, old_int, old_usr1;
    catch_stop(SIGTERM, &old_term);
    catch_stop(SIGINT, &old_int);
    catch_stop(SIGUSR1, &old_usr1);
    int status = run_command_body(o, comm);
    sigaction(SIGTERM, &old_term, NULL);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGUSR1, &old_usr1, NULL);
    g_stop_signal = 0; /* a library caller's next run starts afresh */
    return status;
}
