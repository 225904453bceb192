/* sae.c: an SAE folder opened through its format's row (sae_formats.h: SAELens's cfg
 * generations, sparsify, Gemma Scope), the site and basis rules every format shares, the node
 * block of its weights, and encode/decode (see sae.h). */
#include "sae.h"

#include "error.h"
#include "gemm.h"
#include "nodeblock.h"
#include "sae_formats.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- the folder, through its format ---------------------------------------------------------- */

/* The SAE's site: what its format records or the explicit --sae-hook; when both are given they
 * must agree. 0, or -1 with a pending error naming dir. */
static int take_hook(Sae *s, const char *dir, const SaeFormatSite *fs, const char *explicit_hook) {
    if (fs->hook && explicit_hook && strcmp(fs->hook, explicit_hook) != 0)
        return sg_errorf(dir, "%s says the SAE's site is %s, --sae-hook says %s; they must agree", fs->where, fs->hook,
                         explicit_hook);
    const char *hook = explicit_hook ? explicit_hook : fs->hook;
    if (!hook) return sg_errorf(dir, "%s", fs->missing);
    s->hook_name = sg_xstrdup(hook);
    return 0;
}

/* The site exists in the model and matches d_in (m NULL: any, for `saegap info`). */
static int check_site(Sae *s, const char *dir, const Gpt2Model *m) {
    if (site_parse(&s->site, s->hook_name, m ? &m->cfg : NULL, dir) != 0) return -1;
    if (s->site.kind == SG_SITE_EMBED || s->site.kind == SG_SITE_POS_EMBED)
        return sg_errorf(dir, "SAEs on %s are not supported (intervened passes start inside a block)", s->hook_name);
    size_t width = m ? site_width(s->site, &m->cfg) : s->d_in;
    if (s->d_in != width)
        return sg_errorf(dir, "d_in %zu does not match the width %zu of %s in this model", s->d_in, width, s->hook_name);
    return 0;
}

/* "gpt2-small" (TransformerLens) and "gpt2" / "openai-community/gpt2" (Hugging Face) name the same model. */
static void canonical_model_name(char *out, size_t cap, const char *name) {
    const char *slash = strrchr(name, '/');
    snprintf(out, cap, "%s", slash ? slash + 1 : name);
    for (char *p = out; *p; p++) *p = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
    if (!strcmp(out, "gpt2-small")) snprintf(out, cap, "gpt2");
}

/* Refuses an SAE trained on another model unless the user says otherwise (a format that names
 * no model leaves model_name ""). */
static int check_model_name(const Sae *s, const char *dir, const char *model_name, const SaeLoadOptions *opt) {
    if (!s->model_name[0] || !model_name || !model_name[0] || opt->allow_model_mismatch) return 0;
    char a[256], b[256];
    canonical_model_name(a, sizeof a, s->model_name);
    canonical_model_name(b, sizeof b, model_name);
    if (strcmp(a, b) != 0)
        return sg_errorf(dir, "cfg model_name \"%s\" does not match the model \"%s\" (--allow-model-mismatch to run anyway)",
                         s->model_name, model_name);
    return 0;
}

/* --basis overrides the format's basis, recording both. */
static void apply_basis_override(Sae *s, const SaeLoadOptions *opt) {
    s->cfg_basis = s->basis;
    if (opt->has_override) {
        s->basis = opt->basis;
        char from_cfg[sizeof s->basis_source];
        snprintf(from_cfg, sizeof from_cfg, "%s", s->basis_source);
        snprintf(s->basis_source, sizeof s->basis_source, "--basis %s (the cfg implies %s: %.*s)", basis_name(s->basis),
                 basis_name(s->cfg_basis), (int)sizeof from_cfg - 128, from_cfg);
    }
}

/* The SAE as its folder describes it, every format through the same steps: detection, the
 * site rule and --sae-hook, the format's reading, the site against the model (m NULL: any), what
 * needs the site, the model name, the format's basis, then --basis. 0 or -1 with a pending error. */
static int describe(Sae *s, const char *dir, const Gpt2Model *m, const char *model_name, const SaeLoadOptions *opt) {
    char cfg_path[4096];
    cJSON *cfg = NULL;
    SaeFormat format;
    if (sae_format_detect(dir, &format, &cfg, cfg_path, sizeof cfg_path)) return -1;
    const SaeFormatOps *f = sae_format_row(format);
    const SaeFormatIn in = {format, dir, cfg, cfg_path, m, opt};
    SaeFormatSite site = {0};
    s->format = format;
    int rc = f->site(&in, &site) || take_hook(s, dir, &site, opt->hook) || f->read(s, &in) ||
             check_site(s, dir, m) || f->settle(s, &in) || check_model_name(s, dir, model_name, opt) ||
             f->basis(s, &in);
    if (!rc) apply_basis_override(s, opt);
    cJSON_Delete(cfg);
    return rc ? -1 : 0;
}

const char *sae_description(const Sae *s) { return sae_format_row(s->format)->description; }

SaeWeightsFile sae_weights_file(const Sae *s) { return sae_format_row(s->format)->weights_file(s); }

/* ---- --norm-scaling-factor ------------------------------------------------------------------ */

static int parse_factor(const char *text, size_t len, double *out) {
    char buf[64];
    if (len == 0 || len >= sizeof buf) return -1;
    memcpy(buf, text, len);
    buf[len] = 0;
    char *end = NULL;
    errno = 0;
    double v = strtod(buf, &end);
    if (errno || !end || *end || !(v > 0) || v > 1e30) return -1;
    *out = v;
    return 0;
}

/* Calls visit(site, site_len, factor) for each SITE=S item; a bare "S" is site_len 0. */
static int each_factor(const char *spec, int (*visit)(void *, const char *, size_t, double), void *ctx) {
    const char *p = spec;
    if (!strchr(spec, '=')) {
        double v;
        if (parse_factor(spec, strlen(spec), &v))
            return sg_errorf("--norm-scaling-factor", "'%s' is not a positive number or SITE=FACTOR,...", spec);
        return visit(ctx, spec, 0, v);
    }
    for (;;) {
        size_t len = strcspn(p, ","), site_len = strcspn(p, "=");
        double v;
        if (site_len == 0 || site_len >= len || parse_factor(p + site_len + 1, len - site_len - 1, &v))
            return sg_errorf("--norm-scaling-factor", "'%.*s' is not SITE=FACTOR with a positive FACTOR", (int)len, p);
        if (visit(ctx, p, site_len, v)) return -1;
        if (!p[len]) return 0;
        p += len + 1;
    }
}

static int visit_nothing(void *ctx, const char *site, size_t len, double v) { (void)ctx, (void)site, (void)len, (void)v; return 0; }

int sae_norm_factors_check(const char *spec) { return each_factor(spec, visit_nothing, NULL); }

typedef struct { Sae *saes; size_t stride, n; } FactorTargets;

static Sae *sae_at(const FactorTargets *t, size_t i) { return (Sae *)((char *)t->saes + i * t->stride); }

static int visit_apply(void *ctx, const char *site, size_t len, double v) {
    FactorTargets *t = ctx;
    int matched = 0;
    for (size_t i = 0; i < t->n; i++) {
        Sae *s = sae_at(t, i);
        char name[128];
        site_name(name, sizeof name, s->site);
        if (len && (strlen(name) != len || strncmp(name, site, len) != 0)) continue;
        matched = 1;
        if (s->norm != SAE_NORM_EXPECTED_AVERAGE) {
            if (!len) continue; /* one factor for all: it concerns only the SAEs that use it */
            return sg_errorf("--norm-scaling-factor", "%s: the SAE %s normalises by %s, not expected_average_only_in",
                             name, s->dir, sae_norm_name(s->norm));
        }
        s->norm_scaling_factor = v;
        if (len) snprintf(s->norm_scaling_factor_source, sizeof s->norm_scaling_factor_source,
                          "--norm-scaling-factor %s=%.17g", name, v);
        else snprintf(s->norm_scaling_factor_source, sizeof s->norm_scaling_factor_source, "--norm-scaling-factor %.17g", v);
    }
    if (len && !matched)
        return sg_errorf("--norm-scaling-factor", "site '%.*s' is not the site of any --sae of this run", (int)len, site);
    return 0;
}

int sae_norm_factors_apply(Sae *saes, size_t stride, size_t n, const char *spec) {
    FactorTargets t = {saes, stride, n};
    return each_factor(spec, visit_apply, &t);
}


int sae_read_cfg(Sae *s, const char *dir, const char *hook) {
    memset(s, 0, sizeof *s);
    SaeLoadOptions opt = {0};
    opt.allow_model_mismatch = 1;
    opt.hook = hook;
    s->dir = sg_xstrdup(dir);
    if (describe(s, dir, NULL, NULL, &opt)) {
        sae_free(s);
        return -1;
    }
    return 0;
}

/* ---- weights ------------------------------------------------------------------------------- */

int sae_open(Sae *s, const char *dir, const Gpt2Model *m, const char *model_name, const SaeLoadOptions *opt) {
    memset(s, 0, sizeof *s);
    s->dir = sg_xstrdup(dir);
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) sg_errorf(dir, "SAE folder does not exist");
    else if (!describe(s, dir, m, model_name, opt) && !sae_format_row(s->format)->open_weights(s)) return 0;
    sae_free(s);
    return -1;
}

void sae_place(Sae *s, MPI_Comm node) {
    const SaeFormatOps *f = sae_format_row(s->format);
    const size_t floats = f->floats(s);
    const char *prev_alloc = sg_alloc_for(f->weights_file(s).path);
    int fill, part, parts;
    float *block = nodeblock_alloc(&s->block, node, floats * sizeof(float), f->zeroed_from(s), &fill);
    nodeblock_share(&s->block, &part, &parts);
    f->place(s, block, fill, part, parts);
    nodeblock_ready(&s->block);
    free(s->pending);
    s->pending = NULL, s->n_pending = 0;
    /* small (d_sae) derived vectors: every rank its own */
    if (s->scaling_factor) {
        int all_ones = 1;
        for (size_t i = 0; i < s->d_sae; i++) all_ones &= s->scaling_factor[i] == 1.0f;
        if (all_ones) s->scaling_factor = NULL;
    }
    if (s->arch == SAE_GATED) {
        s->exp_r_mag = sg_xcalloc(s->d_sae, sizeof(float));
        for (size_t i = 0; i < s->d_sae; i++) s->exp_r_mag[i] = expf(s->r_mag[i]);
    }
    if (s->arch == SAE_TOPK && s->rescale_acts_by_decoder_norm) {
        s->dec_norm = sg_xcalloc(s->d_sae, sizeof(float));
        for (size_t i = 0; i < s->d_sae; i++) {
            double acc = 0;
            for (size_t j = 0; j < s->d_in; j++) acc += (double)s->W_dec[i * s->d_in + j] * s->W_dec[i * s->d_in + j];
            s->dec_norm[i] = (float)sqrt(acc);
        }
    }
    sg_alloc_for(prev_alloc);
}

int sae_load(Sae *s, const char *dir, const Gpt2Model *m, const char *model_name, const SaeLoadOptions *opt) {
    if (sae_open(s, dir, m, model_name, opt)) return -1;
    sae_place(s, MPI_COMM_NULL);
    return 0;
}

void sae_free(Sae *s) {
    safetensors_close(&s->st);
    npz_close(&s->npz);
    free(s->pending);
    nodeblock_free(&s->block);
    free(s->exp_r_mag);
    free(s->dec_norm);
    free(s->dir);
    free(s->hook_name);
    free(s->model_name);
    memset(s, 0, sizeof *s);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int sae_expand_paths(char ***out, size_t *n_out, const char ***hooks_out, const char *const *args,
                     const char *const *hooks, size_t n_args) {
    char **list = NULL;
    const char **hook_list = NULL;
    size_t n = 0;
    for (size_t a = 0; a < n_args; a++) {
        struct stat sb;
        const char *hook = hooks && hooks[a] && strcmp(hooks[a], "-") != 0 ? hooks[a] : NULL;
        if (stat(args[a], &sb) != 0 || !S_ISDIR(sb.st_mode)) {
            sg_errorf(args[a], "SAE folder does not exist");
            goto fail;
        }
        if (sae_format_folder(args[a])) {
            list = sg_xrealloc(list, (n + 1) * sizeof *list);
            hook_list = sg_xrealloc(hook_list, (n + 1) * sizeof *hook_list);
            hook_list[n] = hook;
            list[n++] = sg_xstrdup(args[a]);
            continue;
        }
        if (hook) {
            sg_errorf(args[a], "--sae-hook %s names one SAE's site, but this is not an SAE folder (no cfg.json or "
                               "params.npz): give the SAE's own folder", hook);
            goto fail;
        }
        DIR *d = opendir(args[a]);
        if (!d) { sg_errorf(args[a], "cannot list: %s", strerror(errno)); goto fail; }
        size_t before = n;
        for (struct dirent *e; (e = readdir(d));) {
            if (e->d_name[0] == '.') continue;
            char p[4096];
            if ((size_t)snprintf(p, sizeof p, "%s/%s", args[a], e->d_name) >= sizeof p) continue;
            if (stat(p, &sb) == 0 && S_ISDIR(sb.st_mode) && sae_format_folder(p)) {
                list = sg_xrealloc(list, (n + 1) * sizeof *list);
                hook_list = sg_xrealloc(hook_list, (n + 1) * sizeof *hook_list);
                hook_list[n] = NULL;
                list[n++] = sg_xstrdup(p);
            }
        }
        closedir(d);
        if (n == before) { sg_errorf(args[a], "has no cfg.json or params.npz and no subfolder with one: not an SAE folder"); goto fail; }
        qsort(list + before, n - before, sizeof *list, cmp_str);
    }
    *out = list;
    *n_out = n;
    if (hooks_out) *hooks_out = hook_list;
    else free(hook_list);
    return 0;
fail:
    for (size_t i = 0; i < n; i++) free(list[i]);
    free(list);
    free(hook_list);
    return -1;
}

/* ---- encode / decode ----------------------------------------------------------------------- */

void sae_scratch_alloc(SaeScratch *w, const Sae *s, size_t N_max) {
    sae_scratch_alloc_dims(w, s->d_in, s->d_sae, N_max);
}

void sae_scratch_alloc_dims(SaeScratch *w, size_t d_in, size_t d_sae, size_t N_max) {
    size_t ni, nf;
    if (sg_mul_overflow(N_max, d_in, &ni) || sg_mul_overflow(N_max, d_sae, &nf))
        sg_fatal("SAE", "workspace of %zu rows x d_sae %zu overflows", N_max, d_sae);
    w->N_max = N_max;
    w->xin = sg_xcalloc(ni, sizeof(float));
    w->z = sg_xcalloc(nf, sizeof(float));
    w->fdec = sg_xcalloc(nf, sizeof(float));
    w->row_a = sg_xcalloc(N_max, sizeof(double));
    w->row_b = sg_xcalloc(N_max, sizeof(double));
}

void sae_scratch_free(SaeScratch *w) {
    free(w->xin);
    free(w->z);
    free(w->fdec);
    free(w->row_a);
    free(w->row_b);
    memset(w, 0, sizeof *w);
}

/* sparsify's groupmax (fused_encoder.py): the d_sae latents, ReLU'd, split into k contiguous
 * groups of d_sae / k; each group keeps its largest (torch.max: the first on ties), the rest are
 * zero. A group with no positive pre-activation keeps 0. */
static void groupmax(float *f, const float *z, size_t n, size_t k) {
    const size_t g = n / k;
    memset(f, 0, n * sizeof(float));
    for (size_t grp = 0; grp < k; grp++) {
        const float *zg = z + grp * g;
        size_t best = 0;
        for (size_t j = 1; j < g; j++)
            if (zg[j] > zg[best]) best = j;
        f[grp * g + best] = zg[best] > 0 ? zg[best] : 0.0f;
    }
}

/* Keeps the k largest of v (ties to the lower index) in idx, using a small min-heap. */
static void topk_indices(size_t *idx, const float *v, size_t n, size_t k) {
    size_t h = 0;
#define LESS(a, b) (v[a] < v[b] || (v[a] == v[b] && (a) > (b)))
    for (size_t i = 0; i < n; i++) {
        if (h < k) {
            size_t c = h++;
            idx[c] = i;
            while (c > 0 && LESS(idx[c], idx[(c - 1) / 2])) {
                size_t p = (c - 1) / 2, t = idx[p];
                idx[p] = idx[c], idx[c] = t, c = p;
            }
        } else if (LESS(idx[0], i)) {
            idx[0] = i;
            size_t c = 0;
            for (;;) {
                size_t l = 2 * c + 1, r = l + 1, m = c;
                if (l < k && LESS(idx[l], idx[m])) m = l;
                if (r < k && LESS(idx[r], idx[m])) m = r;
                if (m == c) break;
                size_t t = idx[m];
                idx[m] = idx[c], idx[c] = t, c = m;
            }
        }
    }
#undef LESS
}

void sae_forward(float *f, float *x_hat, const Sae *s, SaeScratch *w, const float *x, size_t N) {
    if (N > w->N_max) sg_fatal(s->dir, "SAE batch of %zu rows exceeds the planned %zu", N, w->N_max);
    const size_t I = s->d_in, F = s->d_sae;
    /* normalisation in; row_a/row_b keep what decode must undo */
    for (size_t n = 0; n < N; n++) {
        const float *xr = x + n * I;
        float *o = w->xin + n * I;
        double a = 1.0, b = 0.0, c = 1.0; /* xin = (x - b) * a; decode: x_hat * c + b */
        if (s->norm == SAE_NORM_CONSTANT_NORM_RESCALE) {
            double ss = 0;
            for (size_t i = 0; i < I; i++) ss += (double)xr[i] * xr[i];
            a = ss > 0 ? sqrt((double)I) / sqrt(ss) : 1.0;
            c = 1.0 / a;
        } else if (s->norm == SAE_NORM_LAYER_NORM) {
            double mean = 0, var = 0;
            for (size_t i = 0; i < I; i++) mean += xr[i];
            mean /= (double)I;
            for (size_t i = 0; i < I; i++) var += ((double)xr[i] - mean) * ((double)xr[i] - mean);
            double std = sqrt(var / (double)(I > 1 ? I - 1 : 1)); /* unbiased, as torch.std */
            /* SAELens: in (x - mean) / (std + 1e-5), out x * std + mean (no eps on the way out) */
            b = mean, a = 1.0 / (std + 1e-5), c = std;
        } else if (s->norm == SAE_NORM_EXPECTED_AVERAGE) {
            a = s->norm_scaling_factor;
            c = 1.0 / a;
        }
        w->row_a[n] = c, w->row_b[n] = b;
        for (size_t i = 0; i < I; i++) {
            double v = ((double)xr[i] - b) * a;
            if (s->apply_b_dec_to_input) v -= s->b_dec[i];
            o[i] = (float)v;
        }
    }
    /* pre-activations */
    gemm_linear(w->z, w->xin, s->W_enc, s->arch == SAE_GATED ? NULL : s->b_enc, N, I, F, s->enc_out_in);
    for (size_t n = 0; n < N; n++) {
        float *z = w->z + n * F, *fr = f + n * F;
        switch (s->arch) {
        case SAE_STANDARD:
            for (size_t j = 0; j < F; j++) fr[j] = z[j] > 0 ? z[j] : 0.0f;
            break;
        case SAE_JUMPRELU:
            for (size_t j = 0; j < F; j++) fr[j] = z[j] > s->threshold[j] && z[j] > 0 ? z[j] : 0.0f;
            break;
        case SAE_GATED:
            for (size_t j = 0; j < F; j++) {
                float mag = z[j] * s->exp_r_mag[j] + s->b_mag[j];
                fr[j] = z[j] + s->b_gate[j] > 0 && mag > 0 ? mag : 0.0f;
            }
            break;
        case SAE_TOPK: {
            if (s->dec_norm)
                for (size_t j = 0; j < F; j++) z[j] *= s->dec_norm[j];
            size_t kk = s->k;
            size_t tmp_stack[256];
            size_t *id = kk <= 256 ? tmp_stack : sg_xcalloc(kk, sizeof *id);
            topk_indices(id, z, F, kk);
            memset(fr, 0, F * sizeof(float));
            for (size_t j = 0; j < kk; j++) fr[id[j]] = z[id[j]] > 0 ? z[id[j]] : 0.0f;
            if (id != tmp_stack) free(id);
        } break;
        case SAE_GROUPMAX:
            groupmax(fr, z, F, s->k);
            break;
        case SAE_ARCH_COUNT: break;
        }
    }
    sae_decode(x_hat, s, w, f, N);
}

void sae_decode(float *x_hat, const Sae *s, SaeScratch *w, const float *f, size_t N) {
    const size_t I = s->d_in, F = s->d_sae;
    const float *code = f;
    if (s->scaling_factor || s->dec_norm) {
        for (size_t n = 0; n < N; n++)
            for (size_t j = 0; j < F; j++) {
                float v = f[n * F + j];
                if (s->dec_norm) v /= s->dec_norm[j];
                if (s->scaling_factor) v *= s->scaling_factor[j];
                w->fdec[n * F + j] = v;
            }
        code = w->fdec;
    }
    gemm_xw_bias(x_hat, code, s->W_dec, s->b_dec, N, F, I);
    if (s->norm == SAE_NORM_NONE) return;
    for (size_t n = 0; n < N; n++) {
        double c = w->row_a[n], b = w->row_b[n];
        for (size_t i = 0; i < I; i++) x_hat[n * I + i] = (float)((double)x_hat[n * I + i] * c + b);
    }
}
