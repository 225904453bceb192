/* run.c: `saegap run`, the experiment. For each batch of contexts: one clean forward pass
 * (cached), then for every SAE site: the SAE once per token, the reconstruction metrics, and
 * every intervention (x samples) as a pass restarted at the site from the cached clean state,
 * reduced block by block to KL and CE. Aggregates are reproducible sums (reprosum.h).
 * Layout and definitions: docs/output-schema.md. */
#include "run.h"

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
#include "sites.h"
#include "sitestats.h"
#include "tokens.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define LOGIT_BLOCK 64 /* rows per unembedding block: logits stay in cache (PLATFORM-NOTES) */

enum { RC_L2_IN, RC_L2_OUT, RC_EPS, RC_COS, RC_MSE, RC_L0, RC_L1, RC_COUNT };
static const char *const RECON_NAME[RC_COUNT] = {"l2_norm_in", "l2_norm_out", "eps_norm", "cossim", "mse", "l0", "l1"};

typedef struct {
    Sae sae;
    char name[128];
    size_t d, F, site_id;
    double *mean, *chol;          /* statistics pass (when needed) */
    /* aggregates over this rank's measured tokens */
    ReproSum err_sq, x_sq, xhat_sq, x_dot_xhat, l0_sum;
    ReproSum *x_sum;              /* (d) */
    int64_t measured;
    int64_t *fire;                /* (F) */
    ReproSum kl_sum[IV_COUNT], ce_sum[IV_COUNT], ce_clean_sum;
    int64_t kl_n[IV_COUNT], ce_n[IV_COUNT], ce_clean_n;
    int ds_kl[IV_COUNT], ds_ce[IV_COUNT], ds_recon[RC_COUNT], ds_zscore, ds_density;
} SiteRun;

/* Interventions whose KL gap to eps_random is correlated between sites (CONTRACT.md). */
static int is_correlated(Intervention iv) {
    return iv == IV_SAE || iv == IV_NORM_CORRECTED_SAE || iv == IV_SAE_NORM || iv == IV_ZERO_ABLATION ||
           iv == IV_MEAN_ABLATION;
}

typedef struct {
    const Options *o;
    int ds_corr[IV_COUNT][3];     /* pearson, spearman, sites */
    Gpt2Model model;
    TokenSet ts;
    SiteRun *sites;
    size_t n_sites;
    uint32_t iv_mask;
    int scope_position;
    size_t P, W, S;               /* position, window, samples */
    int bos_include;
    size_t Wk;                    /* positions recorded per context: T or W */
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
    if (o->positional)
        return sg_errorf("command line", "job files are not supported yet (got '%s'); give the options", o->positional);
    if (o->resume) return sg_errorf("--resume", "resuming is not implemented yet");
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
    if (o->basis) {
        Basis b;
        if (basis_parse(o->basis, &b)) return sg_errorf("--basis", "'%s' is not processed or raw", o->basis);
    }
    struct stat sb;
    if (stat(o->out, &sb) == 0)
        return sg_errorf(o->out, S_ISDIR(sb.st_mode) ? "--out is a directory; give a file name"
                                                     : "output file already exists; refusing to overwrite it");
    return 0;
}

static int load_saes(Run *r) {
    const Options *o = r->o;
    char **paths = NULL;
    size_t n = 0;
    if (sae_expand_paths(&paths, &n, o->sae, o->n_sae)) return -1;
    SaeLoadOptions lo = {0};
    lo.allow_model_mismatch = o->allow_model_mismatch;
    lo.norm_scaling_factor = o->norm_scaling_factor;
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
    return rc;
}

/* ---- batches: fixed by T alone, contiguous runs per rank (as dump.c) ------------------------- */

static size_t batch_contexts(size_t T) {
    size_t B = T >= 256 ? 1 : 256 / T;
    return B > 8 ? 8 : B;
}

static void my_range(size_t n, size_t B, int rank, int size, size_t *lo, size_t *hi) {
    size_t nb = (n + B - 1) / B;
    *lo = nb * (size_t)rank / (size_t)size * B;
    *hi = nb * (size_t)(rank + 1) / (size_t)size * B;
    if (*hi > n) *hi = n;
    if (*lo > n) *lo = n;
}

static int is_measured(const Run *r, int32_t tok) { return r->bos_include || tok != r->model.cfg.bos_token_id; }

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
            s->sae.norm_scaling_factor_source = "estimated: sqrt(d_in) / mean ||x|| over the run's measured tokens";
            sg_warnf("%s: expected_average_only_in factor not given; estimated %.6g from the data "
                     "(--norm-scaling-factor to set it)", s->sae.dir, s->sae.norm_scaling_factor);
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

static uint64_t fnv1a_file(const Safetensors *st) {
    uint64_t h = 1469598103934665603ull;
    const unsigned char *p = st->map;
    for (size_t i = 0; i < st->map_size; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

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

static void create_schema(Run *r, H5Out *h, int size) {
    const Options *o = r->o;
    const size_t n = r->ts.n, T = r->ts.ctx;
    char buf[512], created[32];
    time_t now = time(NULL);
    strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    h5out_attr_str(h, "/", "saegap_version", SAEGAP_VERSION);
    h5out_attr_str(h, "/", "command_line", o->command_line);
    h5out_attr_str(h, "/", "created", created);
    h5out_attr_str(h, "/", "model", o->model);
    snprintf(buf, sizeof buf, "fnv1a64:%016llx", (unsigned long long)fnv1a_file(&r->model.st));
    h5out_attr_str(h, "/", "model_checksum", buf);
    h5out_attr_str(h, "/", "tokens_file", o->tokens);
    h5out_attr_i64(h, "/", "n_contexts", (int64_t)n);
    h5out_attr_i64(h, "/", "ctx", (int64_t)T);
    h5out_attr_i64(h, "/", "seed", o->seed);
    h5out_attr_str(h, "/", "bos", r->bos_include ? "include" : "exclude");
    h5out_attr_i64(h, "/", "bos_token_id", r->model.cfg.bos_token_id);
    h5out_attr_str(h, "/", "scope", r->scope_position ? "position" : "all");
    h5out_attr_i64(h, "/", "position", r->scope_position ? (int64_t)r->P : -1);
    h5out_attr_i64(h, "/", "window", r->scope_position ? (int64_t)r->W : -1);
    h5out_attr_i64(h, "/", "samples", (int64_t)r->S);
    h5out_attr_f64(h, "/", "latent_noise_sigma", o->latent_noise);
    buf[0] = '\0';
    for (int iv = 0; iv < IV_COUNT; iv++)
        if (has_iv(r, (Intervention)iv))
            snprintf(buf + strlen(buf), sizeof buf - strlen(buf), "%s%s", buf[0] ? "," : "", iv_name((Intervention)iv));
    h5out_attr_str(h, "/", "interventions", buf);
    h5out_attr_i64(h, "/", "ranks", size);
    h5out_attr_i64(h, "/", "complete", 0);

    uint64_t nt[2] = {n, T};
    h5out_dataset(h, "tokens", H5OUT_I32, 2, nt);
    h5out_dataset(h, "clean/ce", H5OUT_F32, 2, nt);
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
        if (a->norm == SAE_NORM_EXPECTED_AVERAGE) {
            h5out_attr_f64(h, g, "norm_scaling_factor", a->norm_scaling_factor);
            h5out_attr_str(h, g, "norm_scaling_factor_source", a->norm_scaling_factor_source);
        }
    }
    create_correlation_schema(r, h);
}

/* ---- one batch ---------------------------------------------------------------------------------- */

typedef struct {
    H5Out *h;
    Activations clean, work;
    float *logits_clean;  /* (N, V) */
    float *p_clean;       /* (N, V) */
    double *lse_clean, *p_sum; /* (N) */
    float *logits_block;  /* (LOGIT_BLOCK, Vp) */
    int32_t *next;        /* (N) next token or -1 */
    unsigned char *measured, *active; /* (N) */
    uint32_t *context, *position;     /* (N) */
    float *x, *x_hat, *f, *out, *x_scratch, *f_scratch; /* (N, d) / (N, F) */
    double *g, *g2;
    float *kl_out[IV_COUNT], *ce_out[IV_COUNT]; /* (nb, Wk, S) */
    float *zscore;           /* (nb, W) */
    float *recon;            /* (RC_COUNT, N) */
    float *ce_clean_out;     /* (N) */
    SaeScratch *sae_work;    /* per site */
} Work;

static void work_alloc(Work *w, const Run *r, H5Out *h) {
    const Gpt2Config *c = &r->model.cfg;
    const size_t T = r->ts.ctx, B = batch_contexts(T), N = B * T, V = c->vocab_size, Vp = r->model.vocab_padded;
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
}

static void work_free(Work *w, const Run *r) {
    acts_free(&w->clean);
    acts_free(&w->work);
    void *ptrs[] = {w->logits_clean, w->p_clean, w->lse_clean, w->p_sum, w->logits_block, w->next, w->measured,
                    w->active, w->context, w->position, w->x, w->x_hat, w->out, w->x_scratch, w->f, w->f_scratch,
                    w->g, w->g2, w->zscore, w->recon, w->ce_clean_out};
    for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) free(ptrs[i]);
    for (int iv = 0; iv < IV_COUNT; iv++) free(w->kl_out[iv]), free(w->ce_out[iv]);
    for (size_t i = 0; i < r->n_sites; i++) sae_scratch_free(&w->sae_work[i]);
    free(w->sae_work);
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

/* logits (n, V) of rows [row0, row0+n), n <= LOGIT_BLOCK, into dst through the padded block */
static void logits_rows(float *dst, Work *w, const Activations *a, const Gpt2Model *m, size_t row0, size_t n) {
    gpt2_logits(w->logits_block, a, m, row0, n);
    if (dst != w->logits_block) memcpy(dst, w->logits_block, n * m->cfg.vocab_size * sizeof(float));
}

static void site_metrics(Run *r, Work *w, SiteRun *s, size_t N) {
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
            repro_add(&s->x_sum[i], x[i]);
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
        repro_add(&s->err_sq, ee), repro_add(&s->x_sq, xx), repro_add(&s->xhat_sq, hh);
        repro_add(&s->x_dot_xhat, xh_dot), repro_add(&s->l0_sum, (double)l0);
        s->measured++;
    }
    (void)r;
}

static void run_batch(Run *r, Work *w, size_t c0, size_t nb) {
    const Gpt2Model *m = &r->model;
    const size_t T = r->ts.ctx, N = nb * T, V = m->cfg.vocab_size, L = m->cfg.n_layer;
    const int32_t *ids = r->ts.ids + c0 * T;
    gpt2_forward(&w->clean, m, ids, nb, T);
    for (size_t j = 0; j < N; j++) {
        size_t t = j % T;
        w->next[j] = t + 1 < T ? ids[j + 1] : -1;
        w->measured[j] = (unsigned char)is_measured(r, ids[j]);
        w->active[j] = (unsigned char)(w->measured[j] && (!r->scope_position || t == r->P));
        w->context[j] = (uint32_t)(c0 + j / T), w->position[j] = (uint32_t)t;
    }
    /* clean logits of every row, cached for all interventions of all sites */
    for (size_t r0 = 0; r0 < N; r0 += LOGIT_BLOCK) {
        size_t nr = N - r0 < LOGIT_BLOCK ? N - r0 : LOGIT_BLOCK;
        logits_rows(w->logits_clean + r0 * V, w, &w->clean, m, r0, nr);
    }
    metrics_clean(w->lse_clean, w->p_clean, w->p_sum, w->logits_clean, N, V);
    for (size_t j = 0; j < N; j++)
        w->ce_clean_out[j] = w->next[j] >= 0 && w->measured[j] ? (float)(w->lse_clean[j] - w->logits_clean[j * V + w->next[j]]) : NAN;
    h5out_write_rows(w->h, 1, c0, nb, w->ce_clean_out); /* dataset 1 = clean/ce */

    const size_t t0 = r->scope_position ? r->P : 0, Wk = r->Wk; /* recorded rows: [t0, t0 + Wk) */
    for (size_t si = 0; si < r->n_sites; si++) {
        SiteRun *s = &r->sites[si];
        const Sae *sae = &s->sae;
        site_read(w->x, &w->clean, m, sae->site, sae->basis, 0, N);
        sae_forward(w->f, w->x_hat, sae, &w->sae_work[si], w->x, N);
        site_metrics(r, w, s, N);
        for (size_t b = 0; b < nb; b++)
            for (size_t t = t0; t < t0 + Wk; t++) {
                size_t j = b * T + t;
                if (w->measured[j] && w->next[j] >= 0) repro_add(&s->ce_clean_sum, w->ce_clean_out[j]), s->ce_clean_n++;
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
                        for (size_t q = 0; q < nr; q++) {
                            size_t j = r0 + q, o = (b * Wk + (j - b * T - t0)) * S + smp;
                            if (!w->measured[j]) {
                                kl_out[o] = ce_out[o] = NAN;
                                continue;
                            }
                            double kl, ce;
                            metrics_kl_ce(&kl, &ce, w->logits_clean + j * V, w->p_clean + j * V, &w->lse_clean[j],
                                          &w->p_sum[j], w->logits_block + q * V, &w->next[j], 1, V);
                            kl_out[o] = (float)kl, ce_out[o] = (float)ce;
                            repro_add(&s->kl_sum[iv], kl), s->kl_n[iv]++;
                            if (w->next[j] >= 0) repro_add(&s->ce_sum[iv], ce), s->ce_n[iv]++;
                        }
                    }
            }
            h5out_write_rows(w->h, s->ds_kl[iv], c0, nb, kl_out);
            h5out_write_rows(w->h, s->ds_ce[iv], c0, nb, ce_out);
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
            h5out_write_rows(w->h, s->ds_zscore, c0, nb, w->zscore);
        }
        for (int k = 0; k < RC_COUNT; k++) h5out_write_rows(w->h, s->ds_recon[k], c0, nb, w->recon + (size_t)k * N);
    }
}

/* ---- aggregates ------------------------------------------------------------------------------- */

static void reduce_and_write_site(Run *r, H5Out *h, SiteRun *s, MPI_Comm comm, int rank) {
    ReproSum sc[6] = {s->err_sq, s->x_sq, s->xhat_sq, s->x_dot_xhat, s->l0_sum, s->ce_clean_sum};
    repro_allreduce(sc, 6, comm);
    repro_allreduce(s->x_sum, s->d, comm);
    repro_allreduce(s->kl_sum, IV_COUNT, comm);
    repro_allreduce(s->ce_sum, IV_COUNT, comm);
    int64_t counts[2 + 2 * IV_COUNT];
    counts[0] = s->measured, counts[1] = s->ce_clean_n;
    for (int i = 0; i < IV_COUNT; i++) counts[2 + i] = s->kl_n[i], counts[2 + IV_COUNT + i] = s->ce_n[i];
    if (MPI_Allreduce(MPI_IN_PLACE, counts, 2 + 2 * IV_COUNT, MPI_INT64_T, MPI_SUM, comm) != MPI_SUCCESS ||
        MPI_Allreduce(MPI_IN_PLACE, s->fire, (int)s->F, MPI_INT64_T, MPI_SUM, comm) != MPI_SUCCESS)
        sg_fatal("MPI", "reducing the aggregates of %s failed", s->name);
    double Nm = (double)counts[0];
    char g[256], key[64];
    snprintf(g, sizeof g, "sites/%s", s->name);
    /* explained variance, mean-centred: 1 - sum||x - x_hat||^2 / sum_d sum_t (x_d - mean_d)^2 */
    double mean_sq = 0;
    for (size_t i = 0; i < s->d; i++) {
        double mu = repro_value(s->x_sum[i]) / Nm;
        mean_sq += mu * mu;
    }
    double total_var = repro_value(sc[1]) - Nm * mean_sq;
    h5out_attr_f64(h, g, "explained_variance", 1.0 - repro_value(sc[0]) / total_var);
    h5out_attr_f64(h, g, "relative_reconstruction_bias", repro_value(sc[2]) / repro_value(sc[3]));
    h5out_attr_f64(h, g, "mean_l0", repro_value(sc[4]) / Nm);
    h5out_attr_i64(h, g, "measured_tokens", counts[0]);
    double mean_kl[IV_COUNT], mean_ce[IV_COUNT];
    for (int i = 0; i < IV_COUNT; i++) {
        if (!has_iv(r, (Intervention)i)) continue;
        mean_kl[i] = repro_value(s->kl_sum[i]) / (double)counts[2 + i];
        mean_ce[i] = repro_value(s->ce_sum[i]) / (double)counts[2 + IV_COUNT + i];
        snprintf(key, sizeof key, "mean_kl_%s", iv_name((Intervention)i));
        h5out_attr_f64(h, g, key, mean_kl[i]);
        snprintf(key, sizeof key, "mean_ce_%s", iv_name((Intervention)i));
        h5out_attr_f64(h, g, key, mean_ce[i]);
    }
    double ce_clean = repro_value(sc[5]) / (double)counts[1];
    h5out_attr_f64(h, g, "mean_ce_clean", ce_clean);
    if (has_iv(r, IV_SAE) && has_iv(r, IV_ZERO_ABLATION)) {
        h5out_attr_f64(h, g, "kl_div_score", (mean_kl[IV_ZERO_ABLATION] - mean_kl[IV_SAE]) / mean_kl[IV_ZERO_ABLATION]);
        h5out_attr_f64(h, g, "ce_loss_score",
                       (mean_ce[IV_ZERO_ABLATION] - mean_ce[IV_SAE]) / (mean_ce[IV_ZERO_ABLATION] - ce_clean));
    }
    double *density = sg_xcalloc(s->F, sizeof(double));
    int64_t dead = 0;
    for (size_t i = 0; i < s->F; i++) {
        density[i] = (double)s->fire[i] / Nm;
        dead += s->fire[i] == 0;
    }
    h5out_attr_i64(h, g, "dead_latents", dead);
    /* feature_density: every rank has the same values; rank 0 writes them */
    if (rank == 0) h5out_write_rows(h, s->ds_density, 0, s->F, density);
    free(density);
}

/* ---- the command -------------------------------------------------------------------------------- */

static void run_free(Run *r) {
    for (size_t i = 0; i < r->n_sites; i++) {
        SiteRun *s = &r->sites[i];
        sae_free(&s->sae);
        free(s->mean), free(s->chol), free(s->x_sum), free(s->fire);
    }
    free(r->sites);
    tokens_free(&r->ts);
    model_free(&r->model);
}

int run_command(const Options *o, MPI_Comm comm) {
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
    for (size_t i = 0; i < r.n_sites; i++) {
        r.sites[i].x_sum = sg_xcalloc(r.sites[i].d, sizeof(ReproSum));
        r.sites[i].fire = sg_xcalloc(r.sites[i].F, sizeof(int64_t));
    }
    if (sg_agree(comm, statistics_pass(&r, comm, rank, size))) { run_free(&r); return 1; }

    H5Out *h = h5out_create(o->out, comm);
    if (sg_agree(comm, h ? 0 : -1)) { run_free(&r); return 1; }
    create_schema(&r, h, size);
    h5out_flush(h);

    const size_t n = r.ts.n, T = r.ts.ctx, B = batch_contexts(T);
    if (rank == 0) h5out_write_rows(h, 0, 0, n, r.ts.ids); /* dataset 0 = tokens */
    Work w;
    work_alloc(&w, &r, h);
    size_t lo, hi;
    my_range(n, B, rank, size, &lo, &hi);
    double t_start = MPI_Wtime(), last = t_start;
    if (rank == 0 && !sg_quiet())
        fprintf(stderr, "saegap run: %zu contexts x %zu tokens, %zu site(s), %d rank(s), %d BLIS thread(s) each\n", n, T,
                r.n_sites, size, gemm_get_threads());
    for (size_t c0 = lo; c0 < hi; c0 += B) {
        size_t nb = hi - c0 < B ? hi - c0 : B;
        run_batch(&r, &w, c0, nb);
        double now = MPI_Wtime();
        if (rank == 0 && !sg_quiet() && (now - last > 10 || c0 + nb == hi)) {
            double done = (double)(c0 + nb - lo), total = (double)(hi - lo), el = now - t_start;
            fprintf(stderr, "saegap run: rank 0 %zu/%zu contexts, %.0f s elapsed, ETA %.0f s\n", c0 + nb - lo, hi - lo,
                    el, el / done * (total - done));
            last = now;
        }
    }
    work_free(&w, &r);
    for (size_t i = 0; i < r.n_sites; i++) reduce_and_write_site(&r, h, &r.sites[i], comm, rank);
    /* every rank's KL rows must be on disk before any rank reads them back */
    h5out_flush(h);
    if (MPI_Barrier(comm) != MPI_SUCCESS) sg_fatal("MPI", "barrier before the correlations failed");
    write_correlations(&r, h, comm, rank);
    if (MPI_Barrier(comm) != MPI_SUCCESS) sg_fatal("MPI", "barrier before completing %s failed", o->out);
    h5out_attr_i64(h, "/", "complete", 1);
    h5out_close(h);
    if (rank == 0 && !sg_quiet()) {
        fprintf(stderr, "saegap run: wrote %s in %.1f s\n", o->out, MPI_Wtime() - t_start);
        for (size_t i = 0; i < r.n_sites; i++) {
            SiteRun *s = &r.sites[i];
            if (has_iv(&r, IV_SAE) && has_iv(&r, IV_EPS_RANDOM) && s->kl_n[IV_SAE] > 0)
                fprintf(stderr, "  %-28s KL sae / eps_random = %.3g\n", s->name,
                        repro_value(s->kl_sum[IV_SAE]) / repro_value(s->kl_sum[IV_EPS_RANDOM]));
        }
    }
    run_free(&r);
    return 0;
}
