/* run.c: `saegap run`, the experiment, top to bottom: check the options, load the model, the
 * tokens and the SAEs, open (or resume) the result file, the statistics pass, the queue loop
 * over units, the aggregates and correlations, signals.
 *
 * Work is cut into units (schedule.h). A unit's batches are computed by sweep.c and written
 * through resultfile.c's unit-rows walk (which verify re-reads): its rows, then its aggregate
 * records, then its done flag. A killed run resumes at the first unit not done, and the
 * aggregates are exact sums of the records (reprosum.h), so nothing depends on who computed
 * what. Layout and definitions: docs/output-schema.md. */
#include "run.h"

#include "checksum.h"
#include "contexts.h"
#include "correlate.h"
#include "error.h"
#include "gemm.h"
#include "h5out.h"
#include "interventions.h"
#include "model.h"
#include "nodeblock.h"
#include "outfile.h"
#include "reprosum.h"
#include "resultfile.h"
#include "sae.h"
#include "safetensors.h"
#include "schedule.h"
#include "sitemetrics.h"
#include "sites.h"
#include "sitestats.h"
#include "sweep.h"
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

static volatile sig_atomic_t g_stop_signal = 0;
static void on_term(int sig) { (void)sig; g_stop_signal = 1; }

typedef struct {
    const Options *o;
    Gpt2Model model;
    TokenSet ts;
    ContextRule contexts;         /* how the contexts are made (contexts.h) */
    SiteRun *sites;
    size_t n_sites;
    uint32_t iv_mask;
    int scope_position;
    size_t P, W, S;               /* position, window, samples */
    int bos_include;
    int has_basis;                /* --basis overrides the SAEs' cfgs */
    Basis basis;
    RfShape shape;                /* the result file's shape (set once the inputs are loaded) */
    SweepJob job;                 /* what the compute path reads */
    ResultFile rf;
    RfSite *rf_sites;
    const char **site_names;
    char tokens_checksum[64], model_checksum[64], saes_checksum[64];
    char special_ids[4096], special_ids_before[128]; /* SAELens's special tokens: now, and the rule before */
    RfJob identity;
    char out_partial[OUT_PARTIAL_MAX]; /* "<out>.creating": the new file until its schema is on disk */
    uint64_t file_bytes;          /* a new result's size (datasets + metadata reserve): check_space */
    MPI_Comm comm;
    double seconds_computing;     /* this rank's, in run_unit */
    double rank_budget;           /* --rank-memory, bytes: picks the batch (sweep_pick_batch) */
    size_t file_batch;            /* --resume: the existing file's unit_batch_contexts (0: none) */
    unsigned char *keep;          /* (L) the layers the clean cache keeps (site_keep_layers) */
    int rank;
} Run;


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
    SweepChoices ch;
    if (cli_sweep_choices(o, &ch)) return -1;
    r->scope_position = ch.scope_position, r->P = ch.position, r->W = ch.window, r->S = ch.samples;
    r->bos_include = ch.bos_include, r->has_basis = ch.has_basis, r->basis = ch.basis;
    if (o->norm_scaling_factor && sae_norm_factors_check(o->norm_scaling_factor)) return -1;
    if (cli_rank_memory(o, &r->rank_budget)) return -1;
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
    const char **hooks = NULL;
    if (sae_expand_paths(&paths, &n, &hooks, o->sae, o->n_sae_hook ? o->sae_hook : NULL, o->n_sae)) return -1;
    SaeLoadOptions lo = {0};
    lo.allow_model_mismatch = o->allow_model_mismatch;
    lo.has_override = r->has_basis, lo.basis = r->basis;
    r->sites = sg_xcalloc(n, sizeof *r->sites);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        SiteRun *s = &r->sites[i];
        lo.hook = hooks[i];
        rc = sae_open(&s->sae, paths[i], &r->model, r->model.cfg.name, &lo);
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
    free(hooks);
    if (rc == 0 && o->norm_scaling_factor)
        rc = sae_norm_factors_apply(&r->sites[0].sae, sizeof *r->sites, r->n_sites, o->norm_scaling_factor);
    return rc;
}

/* ---- batches: fixed by T alone, so the numbers never depend on the split ------------------- */

/* ---- statistics pass ---------------------------------------------------------------------------- */

static int statistics_pass(Run *r, MPI_Comm comm, int rank, int size) {
    int need_mean = iv_any(r->iv_mask, iv_needs_mean), need_cov = iv_any(r->iv_mask, iv_needs_cov);
    int any = need_mean;
    for (size_t i = 0; i < r->n_sites; i++)
        any |= r->sites[i].sae.norm == SAE_NORM_EXPECTED_AVERAGE && r->sites[i].sae.norm_scaling_factor == 0;
    if (!any) return 0;
    const size_t n = r->ts.n, T = r->ts.ctx, B = r->job.B; /* the units' batch: the same clean passes */
    SiteStats *st = sg_xcalloc(r->n_sites, sizeof *st);
    size_t maxd = 0;
    for (size_t i = 0; i < r->n_sites; i++) {
        sitestats_init(&st[i], r->sites[i].d, need_cov);
        maxd = r->sites[i].d > maxd ? r->sites[i].d : maxd;
    }
    Activations a;
    acts_alloc_kept(&a, &r->model.cfg, B, T, r->keep);
    /* the layers up to the deepest site: a site reads nothing computed after it */
    Site *sites = sg_xcalloc(r->n_sites, sizeof *sites);
    for (size_t i = 0; i < r->n_sites; i++) sites[i] = r->sites[i].sae.site;
    const size_t end = site_layers_needed(sites, r->n_sites);
    free(sites);
    float *x = sg_xcalloc(B * T * maxd, sizeof(float));
    unsigned char *mask = sg_xcalloc(B * T, 1);
    size_t lo, hi;
    schedule_static_range(n, B, rank, size, &lo, &hi);
    if (rank == 0 && !sg_quiet()) fprintf(stderr, "saegap run: statistics pass (mean%s) over %zu contexts\n",
                                          need_cov ? ", covariance" : "", n);
    for (size_t c0 = lo; c0 < hi; c0 += B) {
        size_t nb = hi - c0 < B ? hi - c0 : B, N = nb * T;
        gpt2_forward_until(&a, &r->model, r->ts.ids + c0 * T, nb, T, end);
        for (size_t j = 0; j < N; j++) mask[j] = (unsigned char)sweep_is_measured(&r->job, r->ts.ids[c0 * T + j]);
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

/* ---- the job's shape and identity --------------------------------------------------------- */

/* What --resume compares: the model's, tokens' and SAEs' bytes (with each SAE's basis and
 * normalisation factor), hashed with `kind` (checksum.h: XXH3 for new files, FNV-1a to resume
 * files written before), and the options. */
static void hash_update(void *h, const void *data, size_t n) { job_hash_update(h, data, n); }

static void job_identity(Run *r, JobHashKind kind) {
    JobHash h;
    job_hash_init(&h, kind);
    /* the files' pages released as hashed: converted weights live in the node block, and F32
     * ones used in place fault back from the page cache (safetensors.h) */
    if (r->model.st.n_shards) /* a sharded checkpoint: its files' bytes in the index's order */
        for (size_t i = 0; i < r->model.st.n_shards; i++)
            safetensors_hash_release(hash_update, &h, r->model.st.shards[i].map, r->model.st.shards[i].map_size);
    else
        safetensors_hash_release(hash_update, &h, r->model.st.map, r->model.st.map_size);
    job_hash_final(&h, r->model_checksum);
    job_hash_init(&h, kind);
    job_hash_update(&h, r->ts.ids, r->ts.n * r->ts.ctx * sizeof(int32_t));
    job_hash_final(&h, r->tokens_checksum);
    job_hash_init(&h, kind);
    for (size_t i = 0; i < r->n_sites; i++) {
        const Sae *a = &r->sites[i].sae;
        const SaeWeightsFile w = sae_weights_file(a); /* the weights file its format names */
        safetensors_hash_release(hash_update, &h, w.bytes, w.size); /* pages released as read */
        job_hash_update(&h, basis_name(a->basis), strlen(basis_name(a->basis)));
        job_hash_update(&h, &a->norm_scaling_factor, sizeof a->norm_scaling_factor);
    }
    job_hash_final(&h, r->saes_checksum);
    /* SAELens's special tokens; a file written before they were recorded used config.json's bos,
     * eos and pad ids (the same text as the fallback's when the folder has no tokenizer files) */
    const Gpt2Config *c = &r->model.cfg;
    model_special_text(c, r->special_ids, sizeof r->special_ids);
    Gpt2Config before = {.vocab_size = c->vocab_size};
    const long cand[3] = {c->bos_token_id, c->eos_token_id, c->pad_token_id};
    for (int i = 0; i < 3; i++)
        if (cand[i] >= 0 && !model_is_special(&before, cand[i])) {
            size_t k = before.n_special++;
            for (; k > 0 && before.special_ids[k - 1] > cand[i]; k--) before.special_ids[k] = before.special_ids[k - 1];
            before.special_ids[k] = cand[i];
        }
    model_special_text(&before, r->special_ids_before, sizeof r->special_ids_before);
    r->identity = (RfJob){.model_checksum = r->model_checksum, .tokens_checksum = r->tokens_checksum,
                          .seed = r->o->seed, .bos_include = r->bos_include, .latent_noise = r->o->latent_noise,
                          .sites = r->rf_sites, .saes_checksum = r->saes_checksum,
                          .score_special_ids = r->special_ids, .score_special_ids_before = r->special_ids_before,
                          .context_source = tokens_source(&r->ts),
                          .flat_tokens = r->ts.flat};
}

/* --resume of an existing file: its batch (unit_batch_contexts), which the statistics pass and
 * the units must use whatever --rank-memory says now; 0 when there is no file or no such
 * attribute (open_output then refuses the file by name). Collective. */
static size_t resumed_batch(const Options *o, MPI_Comm comm, int rank) {
    long long B = 0;
    struct stat sb;
    if (rank == 0 && o->resume && stat(o->out, &sb) == 0) {
        H5Out *h = h5out_open_readonly(o->out);
        int64_t v = 0;
        if (h && h5out_get_attr_i64(h, "/", "unit_batch_contexts", &v) == 0 && v > 0) B = v;
        if (h) h5out_close(h);
        sg_error_clear(); /* open_output says what is wrong with the file */
    }
    SG_MPI(MPI_Bcast(&B, 1, MPI_LONG_LONG, 0, comm), "broadcasting the resumed file's batch");
    return (size_t)B;
}

/* Everything the result file and the compute path follow from, once the inputs are loaded. */
static void describe_job(Run *r) {
    const Options *o = r->o;
    RfShape *s = &r->shape;
    memset(s, 0, sizeof *s);
    s->n_contexts = r->ts.n, s->ctx = r->ts.ctx, s->n_sites = r->n_sites;
    s->iv_mask = r->iv_mask, s->samples = r->S;
    s->scope_position = r->scope_position, s->position = r->P, s->window = r->W;
    s->Wk = r->scope_position ? r->W : r->ts.ctx;
    s->n_examples = o->examples > 0 ? (size_t)o->examples : 0;
    if (s->n_examples > r->ts.n) s->n_examples = r->ts.n;
    s->example_pos = r->scope_position ? r->P : r->ts.ctx / 2;
    /* the batch: the largest that fits the rank memory budget, on any number of ranks; a
     * resumed file's own (its units were computed with it) */
    const Gpt2Config *c = &r->model.cfg;
    r->keep = sg_xcalloc(c->n_layer ? c->n_layer : 1, 1);
    Site *sites = sg_xcalloc(r->n_sites, sizeof *sites);
    SweepSize z = {.cfg = c, .vocab_padded = r->model.vocab_padded, .T = r->ts.ctx, .Wk = s->Wk, .window = s->window,
                   .samples = s->samples, .keep = r->keep};
    const int need_mean = iv_any(r->iv_mask, iv_needs_mean), need_cov = iv_any(r->iv_mask, iv_needs_cov);
    for (size_t i = 0; i < r->n_sites; i++) {
        sites[i] = r->sites[i].sae.site;
        z.max_d = r->sites[i].d > z.max_d ? r->sites[i].d : z.max_d;
        z.max_F = r->sites[i].F > z.max_F ? r->sites[i].F : z.max_F;
        z.fixed += sweep_site_fixed_bytes(r->sites[i].d, r->sites[i].F, need_mean, need_cov);
    }
    site_keep_layers(r->keep, sites, r->n_sites, c);
    free(sites);
    int fits = 1;
    s->layout.B = sweep_pick_batch(&z, r->rank_budget, &fits);
    if (r->file_batch && r->file_batch != s->layout.B)
        sg_warnf("%s: --resume keeps the file's batch of %zu context(s) (--rank-memory %.0f MB would pick %zu): the units "
                 "computed now match the file's", o->out, r->file_batch, r->rank_budget / 1e6, s->layout.B);
    if (r->file_batch) s->layout.B = r->file_batch;
    else if (!fits)
        sg_warnf("--rank-memory %.0f MB: one context of %zu tokens needs about %.0f MB per rank; running with 1 context "
                 "per batch, over the budget", r->rank_budget / 1e6, r->ts.ctx, sweep_rank_bytes(&z, 1, 1) / 1e6);
    if (!sg_quiet() && r->rank == 0)
        fprintf(stderr, "saegap run: %zu context(s) per forward batch%s, about %.0f MB of buffers per rank (rank memory "
                        "budget %.0f MB)\n", s->layout.B, r->file_batch ? " (the resumed file's)" : "",
                sweep_rank_bytes(&z, s->layout.B, gemm_get_threads()) / 1e6, r->rank_budget / 1e6);
    r->rf_sites = sg_xcalloc(r->n_sites, sizeof *r->rf_sites);
    r->site_names = sg_xcalloc(r->n_sites, sizeof *r->site_names);
    for (size_t i = 0; i < r->n_sites; i++) {
        SiteRun *site = &r->sites[i];
        record_alloc(&site->rec, site->d, site->F);
        r->rf_sites[i] = (RfSite){.name = site->name, .sae = &site->sae, .n_sums = site->rec.n_sums};
        r->site_names[i] = site->name;
    }
    job_identity(r, JOB_HASH_XXH3);
    r->job = (SweepJob){.model = &r->model, .ts = &r->ts, .sites = r->sites, .n_sites = r->n_sites, .shape = &r->shape,
                        .B = s->layout.B, .keep = r->keep, .bos_include = r->bos_include,
                        .scores = rf_has_scores(&r->shape), .latent_noise = o->latent_noise,
                        .seed = (uint64_t)o->seed, .stop = &g_stop_signal};
    if (r->job.scores && r->model.cfg.special_from_config)
        sg_warnf("%s has no tokenizer files (tokenizer.json, tokenizer_config.json, special_tokens_map.json): SAELens's "
                 "scores leave out config.json's bos, eos and pad ids (%s) only, where SAELens leaves out every special "
                 "token of the tokenizer (attribute score_special_token_source)", o->model,
                 r->special_ids[0] ? r->special_ids : "none");
}

/* Creates (or, resuming, opens) the schema through h: the real file or a dry run. */
static void create_schema(Run *r, H5Out *h, int size) {
    RfProvenance prov = {.command_line = r->o->command_line, .model = r->o->model, .tokens_file = r->o->tokens,
                         .model_architecture = r->model.cfg.architecture, .blis_kernels = gemm_kernels(),
                         .bos_token_id = r->model.cfg.bos_token_id, .score_special_ids = r->special_ids,
                         .score_special_source = r->model.cfg.special_source, .ranks = size,
                         .prepend_bos = r->contexts.prepend_bos, .prepend_bos_source = r->contexts.prepend_bos_source};
    rf_free(&r->rf);
    rf_create(&r->rf, h, &r->shape, r->rf_sites, &r->identity, &prov);
}

/* ---- one unit ---------------------------------------------------------------------------------- */

typedef struct {
    Run *r;
    Work *w;
    uint64_t checksum;            /* FNV-1a of the unit's rows, in the walk's order (verify re-reads it) */
} UnitWriter;

/* The rows of an example context under intervention iv (sae, eps_random), when the file has them. */
static void write_site_examples(Run *r, Work *w, size_t si, size_t c0, size_t nb) {
    for (int iv = 0; iv < IV_COUNT; iv++) {
        int ds_lp = r->rf.sites[si].ex_lp[iv], ds_kl = r->rf.sites[si].ex_kl[iv];
        if (ds_lp < 0) continue;
        for (size_t b = 0; b < nb && c0 + b < r->shape.n_examples; b++) {
            if (!w->ex_set[iv][b]) continue;
            h5out_write_rows(r->rf.h, ds_lp, c0 + b, 1, w->ex_lp[iv] + b * RF_EXAMPLE_TOPK);
            h5out_write_rows(r->rf.h, ds_kl, c0 + b, 1, &w->ex_kl[iv][b]);
        }
    }
}

/* The unit-rows walk's visitor: computes a batch when its first row set comes, then writes each
 * row set and folds it into the unit's checksum. -1: a stop was requested. */
static int write_unit_rows(void *ctx, const RfRows *rows) {
    UnitWriter *u = ctx;
    Run *r = u->r;
    Work *w = u->w;
    const float *data = NULL;
    if (rows->kind == RF_ROWS_CLEAN_CE || rows->index == 0) sweep_clean_batch(&r->job, w, rows->c0, rows->nb);
    if (rows->kind == RF_ROWS_CLEAN_CE) {
        data = w->ce_clean_out;
        if (rows->c0 < r->shape.n_examples) {
            size_t ne = r->shape.n_examples - rows->c0 < rows->nb ? r->shape.n_examples - rows->c0 : rows->nb;
            h5out_write_rows(r->rf.h, r->rf.ex_clean_ids, rows->c0, ne, w->ex_ids);
            h5out_write_rows(r->rf.h, r->rf.ex_clean_lp, rows->c0, ne, w->ex_lp_clean);
        }
    } else {
        if (rows->index == 0) {
            if (sweep_site_batch(&r->job, w, (size_t)rows->site, rows->c0, rows->nb) != 0) return -1;
            write_site_examples(r, w, (size_t)rows->site, rows->c0, rows->nb);
        }
        switch (rows->kind) {
        case RF_ROWS_KL: data = w->kl_out[rows->which]; break;
        case RF_ROWS_CE: data = w->ce_out[rows->which]; break;
        case RF_ROWS_ZSCORE: data = w->zscore; break;
        case RF_ROWS_RECON: data = w->recon + (size_t)rows->which * rows->nb * r->ts.ctx; break;
        default: sg_fatal("saegap run", "unknown row set %s", rows->name);
        }
    }
    h5out_write_rows(r->rf.h, rf_rows_ds(&r->rf, rows), rows->c0, rows->nb, data);
    u->checksum = fnv1a(u->checksum, data, rows->nb * rows->per_context * sizeof(float));
    return 0;
}

/* One unit: its rows, then its aggregate records, then its done flag. -1: abandoned (stop). */
static int run_unit(Run *r, Work *w, size_t unit, double wait_seconds) {
    double t0 = MPI_Wtime();
    size_t block, group, s0, s1;
    unit_parts(&r->shape.layout, unit, &block, &group);
    group_sites(&r->shape.layout, group, &s0, &s1);
    for (size_t si = s0; si < s1; si++) record_clear(&r->sites[si].rec);
    UnitWriter u = {.r = r, .w = w, .checksum = FNV1A_INIT};
    if (rf_unit_walk(&r->shape, r->site_names, unit, write_unit_rows, &u) != 0) return -1;
    for (size_t si = s0; si < s1; si++) record_check_sums(r->sites[si].rec.sums, r->sites[si].rec.n_sums, r->sites[si].name);
    for (size_t si = s0; si < s1; si++)
        rf_write_record(&r->rf, si, block, r->sites[si].rec.sums, r->sites[si].rec.counts, r->sites[si].rec.fire,
                        &u.checksum);
    double seconds = MPI_Wtime() - t0;
    r->seconds_computing += seconds;
    rf_write_unit_schedule(&r->rf, unit, sg_rank(), seconds, wait_seconds);
    rf_mark_done(&r->rf, unit, u.checksum);
    return 0;
}

static void poll_queue(void *q) { queue_poll(q); }

/* Collective: the schedule's figures summed over the ranks, into the file, and a line for the
 * log (waiting for a unit as a share of the rank-seconds of the unit loop). */
static void schedule_summary(Run *r, const UnitQueue *q, double after_units, int rank, int size) {
    double v[4] = {r->seconds_computing, q->seconds_waiting, q->longest_wait, after_units};
    SG_MPI(MPI_Allreduce(MPI_IN_PLACE, v, 2, MPI_DOUBLE, MPI_SUM, r->comm),
           "summing the schedule's figures");
    SG_MPI(MPI_Allreduce(MPI_IN_PLACE, v + 2, 1, MPI_DOUBLE, MPI_MAX, r->comm), "the longest wait for a unit");
    SG_MPI(MPI_Allreduce(MPI_IN_PLACE, v + 3, 1, MPI_DOUBLE, MPI_SUM, r->comm), "summing the time after the units");
    rf_write_schedule_summary(&r->rf, size, v);
    double total = v[0] + v[1] + v[3];
    if (rank == 0 && !sg_quiet() && total > 0)
        fprintf(stderr, "saegap run: %d rank(s): computing units %.1f%% of the rank-seconds, waiting for a unit %.2f%% "
                        "(longest wait %.2f s), after their last unit %.1f%%\n",
                size, 100 * v[0] / total, 100 * v[1] / total, v[2], 100 * v[3] / total);
}

/* Tests only: SAEGAP_TEST_HOLD=MOMENT:FILE holds every rank at MOMENT ("after_units") until FILE
 * exists, so that the disk-full tests can fill the disk at that moment, not about then. */
static void test_hold(const char *moment, MPI_Comm comm, int rank) {
    const char *v = getenv("SAEGAP_TEST_HOLD");
    size_t n = strlen(moment);
    if (!v || strncmp(v, moment, n) != 0 || v[n] != ':') return;
    if (rank == 0) {
        fprintf(stderr, "saegap run: held at %s until %s exists (SAEGAP_TEST_HOLD)\n", moment, v + n + 1);
        const struct timespec ten_ms = {0, 10 * 1000 * 1000};
        while (access(v + n + 1, F_OK) != 0) nanosleep(&ten_ms, NULL);
    }
    SG_MPI(MPI_Barrier(comm), "holding at %s", moment);
}

/* ---- finished units, read back --------------------------------------------------------------- */

/* Collective. Every rank re-reads its share of the units marked done (done[u] == 1) and compares
 * each with the checksum the unit recorded; a unit that fails is set back to pending in done[],
 * the same on every rank. Returns how many failed; names up to 8 of them in `list`. */
static size_t recheck_finished_units(Run *r, int32_t *done, MPI_Comm comm, int rank, int size, char *list, size_t cap) {
    size_t n = r->shape.layout.n_units, k = 0, n_bad;
    int64_t *ck = sg_xcalloc(n, sizeof *ck);
    int32_t *bad = sg_xcalloc(n, sizeof *bad);
    if (rank == 0) h5out_read_rows(r->rf.h, r->rf.unit_checksum, 0, n, ck);
    SG_MPI(MPI_Bcast(ck, (int)n, MPI_INT64_T, 0, comm), "broadcasting the unit checksums");
    for (size_t u = 0; u < n; u++) {
        if (done[u] != 1 || k++ % (size_t)size != (size_t)rank) continue;
        uint64_t sum = 0;
        bad[u] = rf_unit_reread(r->rf.h, &r->rf, &r->shape, r->site_names, u, r->rf.ck_records, &sum) != 0 ||
                 (int64_t)sum != ck[u];
    }
    SG_MPI(MPI_Allreduce(MPI_IN_PLACE, bad, (int)n, MPI_INT32_T, MPI_MAX, comm), "gathering the unit checks");
    n_bad = rf_list_units(list, cap, bad, n);
    for (size_t u = 0; u < n; u++)
        if (bad[u]) done[u] = 0;
    free(ck), free(bad);
    return n_bad;
}

/* Collective, after every unit ran: each must read back as done and as written (a write the
 * file system lost, or a collective write error reported to another rank only, shows here)
 * before anything is computed from them. 0, or -1 with the error agreed. */
static int check_units_written(Run *r, MPI_Comm comm, int rank, int size) {
    size_t n = r->shape.layout.n_units, not_done = 0;
    int32_t *done = sg_xcalloc(n, sizeof *done);
    if (rank == 0) rf_read_done(&r->rf, done);
    SG_MPI(MPI_Bcast(done, (int)n, MPI_INT32_T, 0, comm), "broadcasting the done flags");
    for (size_t u = 0; u < n; u++) not_done += done[u] != 1;
    char list[160];
    size_t bad = recheck_finished_units(r, done, comm, rank, size, list, sizeof list);
    free(done);
    int rc = 0;
    if (rank == 0 && (bad || not_done))
        rc = sg_errorf(r->o->out, "%zu unit(s) do not read back as written%s%s%s (lost writes: a full disk or a failing "
                       "file system?); the file stays incomplete: saegap verify tells, and the same command with "
                       "--resume recomputes them", bad + not_done, bad ? " (units " : "", bad ? list : "", bad ? ")" : "");
    return sg_agree(comm, rc);
}

/* ---- aggregates: exact sums of every block's record ------------------------------------------ */

static void finish_site(Run *r, size_t si, MPI_Comm comm, int rank) {
    SiteRun *s = &r->sites[si];
    /* rank 0 reads the records and derives the means; every rank writes the same attributes */
    SiteSummary v;
    memset(&v, 0, sizeof v);
    double *density = rank == 0 ? sg_xcalloc(s->F, sizeof(double)) : NULL;
    if (rank == 0) {
        size_t n_sums = s->rec.n_sums;
        ReproSum *tot = sg_xcalloc(n_sums, sizeof(ReproSum)), *one = sg_xcalloc(n_sums, sizeof(ReproSum));
        int64_t cnt[CN_COUNT] = {0}, c[CN_COUNT], *fire = sg_xcalloc(s->F, sizeof(int64_t));
        int32_t *f = sg_xcalloc(s->F, sizeof(int32_t));
        for (size_t b = 0; b < r->shape.layout.n_blocks; b++) {
            rf_read_record(&r->rf, si, b, one, c, f);
            for (size_t i = 0; i < n_sums; i++) repro_merge(&tot[i], one[i]);
            for (int i = 0; i < CN_COUNT; i++) cnt[i] += c[i];
            for (size_t i = 0; i < s->F; i++) fire[i] += f[i];
        }
        record_check_sums(tot, n_sums, s->name);
        site_summary(&v, density, tot, cnt, fire, s->d, s->F);
        free(tot), free(one), free(fire), free(f);
    }
    SG_MPI(MPI_Bcast(&v, (int)(sizeof v / sizeof(double)), MPI_DOUBLE, 0, comm), "broadcasting aggregates");
    rf_write_site_summary(&r->rf, si, s->name, &v, r->job.scores);
    if (rank == 0) rf_write_density(&r->rf, si, density);
    free(density);
    if (rank == 0 && !sg_quiet() && rf_has_iv(&r->shape, IV_SAE) && rf_has_iv(&r->shape, IV_EPS_RANDOM))
        fprintf(stderr, "  %-28s explained variance %.3f, L0 %.1f, KL sae %.4g / eps_random %.4g = %.3g\n", s->name,
                v.explained_variance, v.mean_l0, v.mean_kl[IV_SAE], v.mean_kl[IV_EPS_RANDOM],
                v.mean_kl[IV_SAE] / v.mean_kl[IV_EPS_RANDOM]);
}

static void write_correlations(Run *r, MPI_Comm comm, int rank) {
    size_t K = r->n_sites;
    int *ds_iv = sg_xcalloc(K, sizeof(int)), *ds_eps = sg_xcalloc(K, sizeof(int));
    double *pear = sg_xcalloc(K * K, sizeof(double)), *spear = sg_xcalloc(K * K, sizeof(double));
    for (int iv = 0; iv < IV_COUNT; iv++) {
        if (r->rf.corr[iv][0] < 0) continue;
        for (size_t k = 0; k < K; k++) ds_iv[k] = r->rf.sites[k].kl[iv], ds_eps[k] = r->rf.sites[k].kl[IV_EPS_RANDOM];
        CorrInput in = {.n = r->ts.n, .Wk = r->shape.Wk, .S_iv = rf_samples_of(&r->shape, (Intervention)iv),
                        .S_eps = rf_samples_of(&r->shape, IV_EPS_RANDOM), .K = K, .ds_iv = ds_iv, .ds_eps = ds_eps};
        long used = correlate_gap(pear, spear, r->rf.h, &in, comm);
        rf_write_correlation(&r->rf, (Intervention)iv, pear, spear, r->site_names, used, rank);
    }
    free(ds_iv), free(ds_eps), free(pear), free(spear);
}

/* ---- the command -------------------------------------------------------------------------------- */

static void run_free(Run *r) {
    for (size_t i = 0; i < r->n_sites; i++) {
        SiteRun *s = &r->sites[i];
        sae_free(&s->sae);
        free(s->mean), free(s->chol);
        record_free(&s->rec);
    }
    free(r->sites);
    free(r->rf_sites);
    free(r->site_names);
    free(r->keep);
    rf_free(&r->rf);
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
 * resumes an existing file (out_reserve covers that). */
static int check_space(Run *r, MPI_Comm comm, int size) {
    struct stat sb;
    int resume_existing = r->o->resume && stat(r->o->out, &sb) == 0;
    SG_MPI(MPI_Bcast(&resume_existing, 1, MPI_INT, 0, comm), "broadcasting whether the output exists");
    if (resume_existing) return 0;
    schedule_layout(&r->shape.layout, r->ts.n, r->job.B, r->n_sites, size);
    H5Out *dry = h5out_dry();
    create_schema(r, dry, size);
    r->file_bytes = h5out_dry_bytes(dry) + result_slack(r);
    h5out_close(dry);
    return out_check_space(r->o->out, r->file_bytes, comm);
}

/* Rank 0: MPI-IO's lock file of this run, if it made one (ranks on several nodes), goes with
 * an error that ends the run (outfile.h); a normal close removes it itself. */
static void note_mpiio_lock(const char *opened, int rank) {
    if (rank != 0) return;
    char lock[OUT_MPIIO_LOCK_MAX];
    out_mpiio_lock_of_this_run(opened, lock);
    sg_fatal_removes_lock(lock);
}

/* Opens the result file: a new one, or (--resume) the existing one of the same job. Rank 0
 * holds the writer lock for the whole run. Sets *lock_fd on rank 0. NULL after an error. */
static H5Out *open_output(Run *r, MPI_Comm comm, int rank, int size, int *lock_fd) {
    const Options *o = r->o;
    struct stat sb;
    int exists = stat(o->out, &sb) == 0, rc = 0;
    SG_MPI(MPI_Bcast(&exists, 1, MPI_INT, 0, comm), "broadcasting whether the output exists");
    H5Out *h = NULL;
    if (out_partial_path(o->out, r->out_partial, sizeof r->out_partial)) rc = -1;
    if (sg_agree(comm, rc)) return NULL;
    if (exists && o->resume) {
        if (rank == 0) {
            *lock_fd = out_lock_acquire(o->out);
            rc = *lock_fd < 0 ? -1 : 0;
            if (rc == 0) out_remove_stale_mpiio_locks(o->out);
        }
        if (sg_agree(comm, rc)) return NULL;
        h = h5out_open(o->out, comm);
        if (sg_agree(comm, h ? 0 : -1)) return NULL;
        note_mpiio_lock(o->out, rank);
        if (rf_job_hash_kind(h) != JOB_HASH_XXH3) job_identity(r, rf_job_hash_kind(h)); /* an older file */
        rc = rf_check_same_job(h, o->out, &r->shape, &r->identity);
        if (rc == 0) rc = rf_read_layout(h, o->out, r->ts.n, r->job.B, r->n_sites, &r->shape.layout);
        if (sg_agree(comm, rc)) { h5out_close(h); return NULL; }
        rf_warn_other_kernels(h, o->out, gemm_kernels());
        return h;
    }
    /* A new file is written as OUT.creating until its schema is on disk (see h5out.h). An OUT
     * that exists without --resume was refused by check_options; one that appears since is
     * refused when the new file is named, in out_publish. */
    schedule_layout(&r->shape.layout, r->ts.n, r->job.B, r->n_sites, size);
    if (check_space(r, comm, size)) return NULL;
    if (rank == 0) {
        *lock_fd = out_partial_claim(o->out, r->out_partial);
        rc = *lock_fd < 0 ? -1 : 0;
        if (rc == 0) out_remove_stale_mpiio_locks(o->out);
    }
    if (sg_agree(comm, rc)) return NULL;
    h = h5out_create_claimed(r->out_partial, comm);
    if (sg_agree(comm, h ? 0 : -1)) {
        drop_partial(r, rank, lock_fd);
        return NULL;
    }
    note_mpiio_lock(r->out_partial, rank);
    /* after H5Fcreate (which truncates the file), before HDF5 writes: creation cannot meet a
     * full disk */
    if (rank == 0 && out_partial_reserve(r->out_partial, o->out, r->file_bytes) != 0)
        abandon_file(r, 0);
    return h;
}

static int run_command_body(const Options *o, MPI_Comm comm) {
    int rank, size;
    SG_MPI(MPI_Comm_rank(comm, &rank), "rank");
    SG_MPI(MPI_Comm_size(comm, &size), "size");
    Run r;
    memset(&r, 0, sizeof r);
    r.o = o;
    r.comm = comm;
    if (sg_agree(comm, check_options(&r))) return 1;
    if (sg_agree(comm, model_open(&r.model, o->model))) return 1;
    MPI_Comm node = nodeblock_node_comm(comm); /* derived and converted weights: once per node */
    model_place(&r.model, node);
    const Gpt2Config *c = &r.model.cfg;
    /* the SAEs first: their cfgs say how the contexts are cut (contexts.h) */
    int rc = load_saes(&r);
    if (rc == 0)
        rc = contexts_resolve(&r.contexts, &r.sites[0].sae, sizeof *r.sites, r.n_sites, o->prepend_bos,
                              o->ctx > 0 ? (size_t)o->ctx : 0, (int32_t)c->bos_token_id, tokens_is_flat(o->tokens));
    if (rc == 0) rc = tokens_load_cut(&r.ts, o->tokens, &r.contexts.cut, o->contexts > 0 ? (size_t)o->contexts : 0);
    if (rc == 0) rc = tokens_check(&r.ts, o->tokens, c->vocab_size, c->n_positions);
    if (rc == 0) contexts_check_rows(&r.contexts, &r.ts, o->tokens);
    if (rc == 0 && r.scope_position && r.P + r.W > r.ts.ctx)
        rc = sg_errorf("--position", "position %zu + window %zu exceeds the context length %zu", r.P, r.W, r.ts.ctx);
    if (sg_agree(comm, rc)) rc = -1;
    else
        for (size_t i = 0; i < r.n_sites; i++) sae_place(&r.sites[i].sae, node);
    SG_MPI(MPI_Comm_free(&node), "freeing the node communicator"); /* the weights' windows keep theirs */
    if (rc) { run_free(&r); return 1; }
    r.file_batch = resumed_batch(o, comm, rank);
    r.rank = rank;
    describe_job(&r);
    if (check_space(&r, comm, size)) { run_free(&r); return 1; }

    if (sg_agree(comm, statistics_pass(&r, comm, rank, size))) { run_free(&r); return 1; }
    /* the unit loop's memory and queue before the file exists: a failure to start leaves no file */
    Work w;
    work_alloc(&w, &r.job);
    UnitQueue q;
    queue_open(&q, comm);
    int lock_fd = -1;
    H5Out *h = open_output(&r, comm, rank, size, &lock_fd);
    if (!h) {
        queue_close(&q);
        work_free(&w);
        run_free(&r);
        return 1;
    }
    create_schema(&r, h, size);
    const int resuming = h5out_resuming(h);
    if (!resuming && rank == 0) h5out_write_rows(h, r.rf.tokens, 0, r.ts.n, r.ts.ids);
    /* a resumed file may rewrite units and aggregates: not complete until rf_complete says so */
    if (resuming) h5out_attr_i64(h, "/", "complete", 0);
    h5out_flush(h); /* schema on disk before any unit runs: a kill cannot damage metadata */
    /* every byte the run will write is backed by the file system now: a disk that fills up
     * later cannot cost a unit or the file's metadata */
    const char *on_disk = resuming ? o->out : r.out_partial;
    int reserved = 0;
    if (rank == 0) {
        if (out_reserve(on_disk, result_slack(&r), o->out) != 0) abandon_file(&r, resuming);
        reserved = 1;
    }
    if (!resuming && out_publish(r.out_partial, o->out, comm) == 0) h5out_renamed(h, o->out);
    else if (!resuming) {
        /* OUT appeared meanwhile: leave it alone, drop this run's partial file */
        h5out_close(h);
        drop_partial(&r, rank, &lock_fd);
        queue_close(&q);
        work_free(&w);
        run_free(&r);
        return 1;
    }

    /* pending units: those without a done flag, block-major */
    size_t n_units = r.shape.layout.n_units, n_pending = 0;
    int32_t *done = sg_xcalloc(n_units, sizeof(int32_t));
    if (resuming) {
        if (rank == 0) rf_read_done(&r.rf, done);
        SG_MPI(MPI_Bcast(done, (int)n_units, MPI_INT32_T, 0, comm), "broadcasting the done flags");
        /* check before trusting: a finished unit whose data fail their checksum is run again */
        char list[160];
        size_t bad = recheck_finished_units(&r, done, comm, rank, size, list, sizeof list);
        if (bad)
            sg_warnf("%s: %zu finished unit(s) fail their checksum (units %s): computing them again", o->out, bad, list);
    }
    size_t *pending = sg_xcalloc(n_units, sizeof(size_t));
    for (size_t u = 0; u < n_units; u++)
        if (done[u] != 1) pending[n_pending++] = u;
    free(done);
    if (rank == 0 && !sg_quiet())
        fprintf(stderr, "saegap run: %zu contexts x %zu tokens, %zu site(s), %zu units (%zu pending%s), %d rank(s) x %d "
                        "BLIS thread(s), BLIS kernels '%s'\n",
                r.ts.n, r.ts.ctx, r.n_sites, n_units, n_pending, resuming ? ", resumed" : "", size, gemm_get_threads(),
                gemm_kernels());

    queue_start(&q, n_pending);
    gemm_set_poll(poll_queue, &q); /* rank 0 answers requests for units while it computes */
    double t_start = MPI_Wtime(), last = t_start, t_last_unit = t_start;
    int stopped = 0;
    for (long k; !stopped && (k = queue_next(&q)) >= 0;) {
        if (run_unit(&r, &w, pending[k], q.last_wait) != 0) stopped = 1;
        t_last_unit = MPI_Wtime();
        if (g_stop_signal) stopped = 1;
        if (stopped) queue_request_stop(&q);
        double now = MPI_Wtime();
        if (rank == 0 && !sg_quiet() && (now - last > 10 || (size_t)k + 1 == n_pending)) {
            double el = now - t_start, frac = (double)q.next / (double)n_pending;
            fprintf(stderr, "saegap run: %zu/%zu pending units handed out, %.0f s elapsed, ETA %.0f s\n", q.next,
                    n_pending, el, el / frac * (1 - frac));
            last = now;
        }
    }
    queue_close(&q); /* rank 0 answers the last requests */
    gemm_set_poll(NULL, NULL);
    work_free(&w);
    /* every rank leaves the loop; then all learn whether anyone stopped */
    int any_stop = stopped || g_stop_signal;
    SG_MPI(MPI_Allreduce(MPI_IN_PLACE, &any_stop, 1, MPI_INT, MPI_MAX, comm), "agreeing on a stop");
    const double after_units = MPI_Wtime() - t_last_unit;
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
        SG_MPI(MPI_Barrier(comm), "barrier after the units");
        if (rank == 0 && !sg_quiet())
            fprintf(stderr, "saegap run: units done in %.1f s; reading them back, then aggregates and correlations\n",
                    MPI_Wtime() - t_start);
        test_hold("after_units", comm, rank);
        if (check_units_written(&r, comm, rank, size) != 0) status = 1;
        else {
            schedule_summary(&r, &q, after_units, rank, size);
            for (size_t i = 0; i < r.n_sites; i++) finish_site(&r, i, comm, rank);
            write_correlations(&r, comm, rank);
            h5out_flush(h);
            SG_MPI(MPI_Barrier(comm), "barrier before completing the file");
            rf_complete(&r.rf, o->out, comm, rank);
        }
    }
    h5out_close(h);
    sg_fatal_removes_lock(NULL);
    if (reserved) out_release_reserve(o->out); /* the slack past the end, back */
    if (rank == 0) out_lock_release(lock_fd);
    if (rank == 0 && !sg_quiet() && status == 0)
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
