/* sae.c: SAELens cfg generations (sparsify's cfg in sae_sparsify.c), weights, and
 * encode/decode (see sae.h). */
#include "sae.h"

#include "error.h"
#include "nodeblock.h"
#include "gemm.h"
#include "textfile.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

static const char *const ARCH_NAME[SAE_ARCH_COUNT] = {"standard", "jumprelu", "topk", "gated", "groupmax"};
static const char *const NORM_NAME[SAE_NORM_COUNT] = {"none", "constant_norm_rescale", "layer_norm",
                                                      "expected_average_only_in"};
static const char *const GEN_NAME[SAE_CFG_COUNT] = {"legacy", "flat", "v6", "sparsify", "gemma_scope"};

const char *sae_arch_name(SaeArch a) { return ARCH_NAME[a]; }
const char *sae_norm_name(SaeNorm n) { return NORM_NAME[n]; }
const char *sae_generation_name(SaeCfgGeneration g) { return GEN_NAME[g]; }

/* ---- cfg.json ----------------------------------------------------------------------------- */


static const cJSON *get(const cJSON *o, const char *key) {
    return o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
}

/* Looks in v6's metadata first, then at the top level. */
static const cJSON *get_meta(const cJSON *root, const cJSON *meta, const char *key) {
    const cJSON *j = get(meta, key);
    return j && !cJSON_IsNull(j) ? j : get(root, key);
}

/* Largest d_in, d_sae or k accepted: an int, far above any SAE (SAELens's largest have 2^24
 * latents), so every product of two stays exact in size_t and in BLIS's dimensions. */
#define SAE_SIZE_MAX 2147483647.0

/* An integer lo <= v <= hi (a JSON number with no fraction; compared as a double before any
 * conversion, so 1e20 or 2^64 never reaches size_t). On failure, the key and the value as the
 * file writes it. */
static int int_value(const cJSON *j, const char *path, const char *key, double lo, double hi, const char *what,
                     size_t *out) {
    if (!cJSON_IsNumber(j) || !(j->valuedouble >= lo && j->valuedouble <= hi) || j->valuedouble != floor(j->valuedouble)) {
        char v[80];
        return sg_errorf(path, "key \"%s\" must be %s, not %s", key, what, json_text(j, v, sizeof v));
    }
    *out = (size_t)j->valuedouble;
    return 0;
}

static int size_key(const cJSON *root, const char *path, const char *key, size_t *out) {
    const cJSON *j = get(root, key);
    if (!j) return sg_errorf(path, "missing key \"%s\"", key);
    return int_value(j, path, key, 1, SAE_SIZE_MAX, "a positive integer up to 2147483647", out);
}

static int bool_key(const cJSON *root, const char *path, const char *key, int dflt, int *out) {
    const cJSON *j = get(root, key);
    if (!j || cJSON_IsNull(j)) { *out = dflt; return 0; }
    if (!cJSON_IsBool(j)) {
        char v[80];
        return sg_errorf(path, "key \"%s\" must be true or false, not %s", key, json_text(j, v, sizeof v));
    }
    *out = cJSON_IsTrue(j);
    return 0;
}

static double version_major(const cJSON *j) {
    if (cJSON_IsString(j)) return atof(j->valuestring);
    if (cJSON_IsNumber(j)) return j->valuedouble;
    return -1;
}

/* "gpt2-small" (TransformerLens) and "gpt2" / "openai-community/gpt2" (Hugging Face) name the same model. */
static void canonical_model_name(char *out, size_t cap, const char *name) {
    const char *slash = strrchr(name, '/');
    snprintf(out, cap, "%s", slash ? slash + 1 : name);
    for (char *p = out; *p; p++) *p = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
    if (!strcmp(out, "gpt2-small")) snprintf(out, cap, "gpt2");
}

/* model_from_pretrained_kwargs keys that change no activation or log-prob (said once, ignored). */
static const char *const KWARGS_NO_EFFECT[] = {"n_devices", "dtype", "torch_dtype", "device", "move_to_device",
                                               "default_prepend_bos", "default_padding_side", "trust_remote_code"};

/* The basis SAELens loads the model in for these kwargs (sae_lens/load_model.py):
 * HookedTransformer.from_pretrained_no_processing(**kwargs), whose processing flags all default
 * to false; a flag is on only where the dict sets it true (FIELD-FACTS section 2). Keys that
 * change nothing are listed in s->basis_note; keys that change activations in ways saegap does
 * not implement are refused by name. */
static int basis_from_kwargs(Sae *s, const cJSON *kw, const char *path, const char *key_path) {
    Basis b = SG_BASIS_RAW;
    char ignored[512] = "", unknown[512] = "";
    for (const cJSON *it = kw->child; it; it = it->next) {
        const char *k = it->string;
        int flag = -1;
        for (int i = 0; i < SG_BASIS_FLAG_COUNT; i++)
            if (!strcmp(k, basis_flag_name(i))) flag = i;
        if (flag >= 0 || !strcmp(k, "center_unembed") || !strcmp(k, "refactor_factored_attn_matrices")) {
            if (!cJSON_IsBool(it))
                return sg_errorf(path, "%s.%s must be true or false", key_path, k);
        }
        if (flag >= 0) {
            if (cJSON_IsTrue(it)) b |= basis_flag_bit(flag);
            continue;
        }
        if (!strcmp(k, "center_unembed")) continue; /* a processing flag, but it changes no log-prob */
        if (!strcmp(k, "refactor_factored_attn_matrices")) {
            if (cJSON_IsTrue(it))
                return sg_errorf(path, "%s.refactor_factored_attn_matrices is true: that basis (rotated W_Q, W_K, W_V, "
                                       "W_O) is not supported", key_path);
            continue;
        }
        if (!strcmp(k, "first_n_layers") || !strcmp(k, "hf_model") || !strcmp(k, "checkpoint_index") ||
            !strcmp(k, "checkpoint_value"))
            return sg_errorf(path, "%s.%s: an SAE trained on a modified or other checkpoint of the model is not "
                                   "supported", key_path, k);
        int no_effect = 0;
        for (size_t i = 0; i < sizeof KWARGS_NO_EFFECT / sizeof *KWARGS_NO_EFFECT; i++)
            no_effect |= !strcmp(k, KWARGS_NO_EFFECT[i]);
        char *dst = no_effect ? ignored : unknown;
        size_t len = strlen(dst);
        snprintf(dst + len, 512 - len, "%s%s", len ? ", " : "", k);
    }
    s->basis = b;
    s->basis_note[0] = 0;
    if (ignored[0] || unknown[0])
        snprintf(s->basis_note, sizeof s->basis_note, "%s%s%s%s%s%s", ignored[0] ? "keys " : "", ignored,
                 ignored[0] ? " change no activation: ignored" : "", ignored[0] && unknown[0] ? "; " : "",
                 unknown[0] ? unknown : "", unknown[0] ? " unknown to saegap: ignored (check they change no activation)" : "");
    return 0;
}

int sae_take_hook(Sae *s, const char *dir, const char *derived, const char *what, const char *explicit_hook) {
    if (derived && explicit_hook && strcmp(derived, explicit_hook) != 0)
        return sg_errorf(dir, "%s says the SAE's site is %s, --sae-hook says %s; they must agree", what, derived,
                         explicit_hook);
    const char *hook = explicit_hook ? explicit_hook : derived;
    if (!hook) return 1;
    s->hook_name = sg_xstrdup(hook);
    return 0;
}

/* The site exists in the model and matches d_in (m NULL: any). */
static int sae_check_site(Sae *s, const char *dir, const Gpt2Model *m) {
    /* The site: must exist in this model and match d_in (m is NULL for `saegap info`). */
    if (site_parse(&s->site, s->hook_name, m ? &m->cfg : NULL, dir) != 0) return -1;
    if (s->site.kind == SG_SITE_EMBED || s->site.kind == SG_SITE_POS_EMBED)
        return sg_errorf(dir, "SAEs on %s are not supported (intervened passes start inside a block)", s->hook_name);
    size_t width = m ? site_width(s->site, &m->cfg) : s->d_in;
    if (s->d_in != width)
        return sg_errorf(dir, "d_in %zu does not match the width %zu of %s in this model", s->d_in, width, s->hook_name);
    return 0;
}

/* --basis overrides the format's basis, recording both. */
static void sae_apply_basis_override(Sae *s, const SaeLoadOptions *opt) {
    s->cfg_basis = s->basis;
    if (opt->has_override) {
        s->basis = opt->basis;
        char from_cfg[sizeof s->basis_source];
        snprintf(from_cfg, sizeof from_cfg, "%s", s->basis_source);
        snprintf(s->basis_source, sizeof s->basis_source, "--basis %s (the cfg implies %s: %.*s)", basis_name(s->basis),
                 basis_name(s->cfg_basis), (int)sizeof from_cfg - 128, from_cfg);
    }
}

static int parse_cfg(Sae *s, const char *dir, const Gpt2Model *m, const char *model_name, const SaeLoadOptions *opt) {
    char path[4096];
    snprintf(path, sizeof path, "%s/cfg.json", dir);
    cJSON *root = json_object_file(path, 16u << 20);
    if (!root) return -1;
    int rc = -1;
    const cJSON *meta = get(root, "metadata");
    if (meta && !cJSON_IsObject(meta)) meta = NULL;
    const cJSON *reshape = NULL;
    const int sparsify = sae_is_sparsify_cfg(root);
    if (sparsify) {
        if (sae_sparsify_cfg(s, dir, root, path, opt->hook)) goto done;
        goto site;
    }

    /* Generation: SAELens decides by sae_lens_version (< 6 is pre-v6); otherwise by keys. */
    double ver = version_major(get_meta(root, meta, "sae_lens_version"));
    if (ver >= 6 || (ver < 0 && meta)) s->generation = SAE_CFG_V6;
    else if (get(root, "hook_point")) s->generation = SAE_CFG_LEGACY;
    else if (get(root, "hook_name")) s->generation = SAE_CFG_FLAT;
    else if (meta) s->generation = SAE_CFG_V6;
    else { sg_errorf(path, "cannot tell the cfg generation: no hook_point, hook_name or metadata.hook_name"); goto done; }

    const cJSON *hook = s->generation == SAE_CFG_LEGACY ? get(root, "hook_point")
                        : s->generation == SAE_CFG_FLAT ? get(root, "hook_name")
                                                        : get_meta(root, meta, "hook_name");
    if (!cJSON_IsString(hook)) {
        const char *hk = s->generation == SAE_CFG_LEGACY ? "hook_point"
                         : s->generation == SAE_CFG_FLAT ? "hook_name"
                                                         : "metadata.hook_name";
        char hv[80];
        if (hook) sg_errorf(path, "key \"%s\" must be a string, not %s", hk, json_text(hook, hv, sizeof hv));
        else sg_errorf(path, "missing key \"%s\"", hk);
        goto done;
    }
    {
        char where[4200];
        snprintf(where, sizeof where, "its cfg.json (%s)", s->generation == SAE_CFG_LEGACY ? "hook_point"
                                                          : s->generation == SAE_CFG_FLAT ? "hook_name"
                                                                                          : "metadata.hook_name");
        if (sae_take_hook(s, dir, hook->valuestring, where, opt->hook)) goto done;
    }
    const cJSON *head = s->generation == SAE_CFG_LEGACY ? get(root, "hook_point_head_index")
                                                        : get_meta(root, meta, "hook_head_index");
    if (head && !cJSON_IsNull(head)) {
        sg_errorf(path, "hook_head_index is set (a single-head SAE); saegap runs SAEs on whole hooks");
        goto done;
    }
    if (size_key(root, path, "d_in", &s->d_in) || size_key(root, path, "d_sae", &s->d_sae)) goto done;

    const cJSON *mn = get_meta(root, meta, "model_name");
    s->model_name = sg_xstrdup(cJSON_IsString(mn) ? mn->valuestring : "");

    /* How its training contexts were cut (contexts.h): SAELens's ActivationsStore.from_sae reads both */
    const cJSON *pb = get_meta(root, meta, "prepend_bos"), *cs = get_meta(root, meta, "context_size");
    if (pb && !cJSON_IsNull(pb)) {
        if (!cJSON_IsBool(pb)) {
            char v[80];
            sg_errorf(path, "key \"prepend_bos\" must be true or false, not %s", json_text(pb, v, sizeof v));
            goto done;
        }
        s->has_prepend_bos = 1, s->prepend_bos = cJSON_IsTrue(pb);
    }
    if (cs && !cJSON_IsNull(cs) && int_value(cs, path, "context_size", 1, SAE_SIZE_MAX, "a positive integer", &s->context_size))
        goto done;

    /* Architecture and activation. Pre-v6 flat files may spell topk as an activation fn. An
     * absent architecture is standard (legacy and early flat cfgs have none); anything present
     * must be the string of a known name. */
    char val[80];
    const char *arch = "standard";
    const cJSON *ja = get(root, "architecture");
    if (ja && !cJSON_IsString(ja)) {
        sg_errorf(path, "key \"architecture\" must be a string (standard, jumprelu, topk, gated), not %s",
                  json_text(ja, val, sizeof val));
        goto done;
    }
    if (ja) arch = ja->valuestring;
    const char *afn_key = "activation_fn_str";
    const cJSON *afn = get(root, afn_key);
    if (!afn) afn = get(root, afn_key = "activation_fn");
    if (afn && !cJSON_IsString(afn) && !cJSON_IsNull(afn)) {
        sg_errorf(path, "key \"%s\" must be a string (relu, topk), not %s", afn_key, json_text(afn, val, sizeof val));
        goto done;
    }
    int found = 0;
    for (int i = 0; i < SAE_ARCH_COUNT; i++) /* groupmax is sparsify's, not a SAELens architecture */
        if (i != SAE_GROUPMAX && !strcmp(arch, ARCH_NAME[i])) { s->arch = (SaeArch)i; found = 1; }
    if (!found) {
        sg_errorf(path, "key \"architecture\" is %s: not supported (standard, jumprelu, topk, gated)",
                  json_text(ja, val, sizeof val));
        goto done;
    }
    if (cJSON_IsString(afn) && strcmp(afn->valuestring, "relu") != 0) {
        if (!strcmp(afn->valuestring, "topk") && s->arch == SAE_STANDARD) s->arch = SAE_TOPK;
        else if (strcmp(afn->valuestring, "topk") != 0) {
            sg_errorf(path, "key \"%s\" is %s: activation function not supported (relu, topk)", afn_key,
                      json_text(afn, val, sizeof val));
            goto done;
        }
    }
    if (s->arch == SAE_TOPK) {
        const char *k_key = "k";
        const cJSON *k = get(root, "k");
        const cJSON *kw = get(root, "activation_fn_kwargs");
        if (!k && cJSON_IsObject(kw) && get(kw, "k")) k = get(kw, "k"), k_key = "activation_fn_kwargs.k";
        if (!k) {
            sg_errorf(path, "topk SAE needs key \"k\" (or activation_fn_kwargs.k): an integer from 1 to d_sae %zu",
                      s->d_sae);
            goto done;
        }
        char what[96];
        snprintf(what, sizeof what, "an integer from 1 to d_sae %zu", s->d_sae);
        if (int_value(k, path, k_key, 1, (double)s->d_sae, what, &s->k)) goto done;
        if (bool_key(root, path, "rescale_acts_by_decoder_norm", 0, &s->rescale_acts_by_decoder_norm)) goto done;
    }
    if (bool_key(root, path, "apply_b_dec_to_input", 1, &s->apply_b_dec_to_input)) goto done;

    const cJSON *na = get(root, "normalize_activations");
    s->norm = SAE_NORM_NONE;
    if (cJSON_IsBool(na)) s->norm = cJSON_IsTrue(na) ? SAE_NORM_EXPECTED_AVERAGE : SAE_NORM_NONE;
    else if (cJSON_IsString(na)) {
        int ok = 0;
        for (int i = 0; i < SAE_NORM_COUNT; i++)
            if (!strcmp(na->valuestring, NORM_NAME[i])) { s->norm = (SaeNorm)i; ok = 1; }
        if (!ok) {
            sg_errorf(path, "key \"normalize_activations\" is %s: not supported (none, constant_norm_rescale, "
                      "layer_norm, expected_average_only_in)", json_text(na, val, sizeof val));
            goto done;
        }
    } else if (na && !cJSON_IsNull(na)) {
        sg_errorf(path, "key \"normalize_activations\" must be a string, a boolean or null, not %s",
                  json_text(na, val, sizeof val));
        goto done;
    }
    reshape = get(root, "reshape_activations");
    if (reshape && !cJSON_IsNull(reshape) &&
        (!cJSON_IsString(reshape) || (strcmp(reshape->valuestring, "none") && strcmp(reshape->valuestring, "hook_z")))) {
        sg_errorf(path, "key \"reshape_activations\" is %s: not supported (none, hook_z)",
                  json_text(reshape, val, sizeof val));
        goto done;
    }

site:
    if (sae_check_site(s, dir, m)) goto done;
    if (cJSON_IsString(reshape) && !strcmp(reshape->valuestring, "hook_z") && s->site.kind != SG_SITE_ATTN_Z) {
        sg_errorf(path, "reshape_activations is hook_z but the hook is %s", s->hook_name);
        goto done;
    }

    /* Model name: refuse an SAE trained on another model unless the user says otherwise. */
    if (s->model_name[0] && model_name && model_name[0] && !opt->allow_model_mismatch) {
        char a[256], b[256];
        canonical_model_name(a, sizeof a, s->model_name);
        canonical_model_name(b, sizeof b, model_name);
        if (strcmp(a, b) != 0) {
            sg_errorf(dir, "cfg model_name \"%s\" does not match the model \"%s\" (--allow-model-mismatch to run anyway)",
                      s->model_name, model_name);
            goto done;
        }
    }

    /* Basis (FIELD-FACTS section 2, docs/basis.md): --basis, else the cfg's kwargs as SAELens
     * reads them, else TransformerLens's from_pretrained defaults. */
    const cJSON *kw = get(meta, "model_from_pretrained_kwargs");
    const char *kw_path = "metadata.model_from_pretrained_kwargs";
    if (!kw) kw = get(root, "model_from_pretrained_kwargs"), kw_path = "model_from_pretrained_kwargs";
    if (!sparsify && kw && !cJSON_IsObject(kw) && !cJSON_IsNull(kw)) {
        sg_errorf(path, "%s must be an object or null", kw_path);
        goto done;
    }
    if (sparsify) {
        /* sae_sparsify_cfg set it: raw (sparsify hooks the unprocessed model) */
    } else if (cJSON_IsObject(kw)) {
        if (basis_from_kwargs(s, kw, path, kw_path)) goto done;
        char *text = cJSON_PrintUnformatted(kw);
        snprintf(s->basis_source, sizeof s->basis_source, "cfg.json %s = %s", kw_path, text ? text : "?");
        cJSON_free(text);
        if (m && s->basis_note[0] && !opt->has_override) sg_warnf("%s: %s: %s", dir, kw_path, s->basis_note);
    } else if (kw) { /* null: SAELens passes `kwargs or {}` */
        s->basis = SG_BASIS_RAW;
        snprintf(s->basis_source, sizeof s->basis_source, "cfg.json %s = null (SAELens reads it as {})", kw_path);
    } else if (m && m->cfg.family != SG_FAMILY_GPT2) {
        /* SAELens's Pythia dictionaries (pythia-70m-deduped-*-sm) were trained on the raw Hugging
         * Face activations, and Gemma Scope's loader asks for from_pretrained_no_processing
         * (docs/basis.md, docs/families.md) */
        s->basis = SG_BASIS_RAW;
        snprintf(s->basis_source, sizeof s->basis_source,
                 "default for %s: cfg has no model_from_pretrained_kwargs (SAELens's SAEs of this family were "
                 "trained on unprocessed activations)", m->cfg.architecture);
        if (!opt->has_override)
            sg_warnf("%s: cfg has no model_from_pretrained_kwargs; on a %s model saegap assumes unprocessed "
                     "activations (basis raw; --basis processed to override)", dir,
                     m->cfg.family == SG_FAMILY_NEOX ? "Pythia" : "Gemma-2");
    } else {
        s->basis = SG_BASIS_PROCESSED;
        snprintf(s->basis_source, sizeof s->basis_source,
                 "default: cfg has no model_from_pretrained_kwargs (TransformerLens from_pretrained: all flags on)");
        if (m && !opt->has_override)
            sg_warnf("%s: cfg has no model_from_pretrained_kwargs; assuming TransformerLens's default weight "
                     "processing (basis processed; --basis raw to override)", dir);
    }
    sae_apply_basis_override(s, opt);
    rc = 0;
done:
    cJSON_Delete(root);
    return rc;
}

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
    char cfg_path[4096], npz_path[4096];
    struct stat sb;
    snprintf(cfg_path, sizeof cfg_path, "%s/cfg.json", dir);
    snprintf(npz_path, sizeof npz_path, "%s/params.npz", dir);
    const int gemma_scope = stat(cfg_path, &sb) != 0 && stat(npz_path, &sb) == 0;
    if ((gemma_scope ? sae_gemma_scope_open(s, dir, hook) || sae_check_site(s, dir, NULL) : parse_cfg(s, dir, NULL, NULL, &opt)) != 0) {
        sae_free(s);
        return -1;
    }
    return 0;
}

/* ---- weights ------------------------------------------------------------------------------- */

typedef struct { const char *name; const float **dst; int ndim; int64_t s0, s1; int optional; } SaeTensor;

int sae_open(Sae *s, const char *dir, const Gpt2Model *m, const char *model_name, const SaeLoadOptions *opt) {
    memset(s, 0, sizeof *s);
    s->dir = sg_xstrdup(dir);
    const char *prev_alloc = NULL;
    int alloc_named = 0;
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) { sg_errorf(dir, "SAE folder does not exist"); goto fail; }
    char cfg_path[4096], npz_path[4096];
    snprintf(cfg_path, sizeof cfg_path, "%s/cfg.json", dir);
    snprintf(npz_path, sizeof npz_path, "%s/params.npz", dir);
    if (stat(cfg_path, &sb) != 0 && stat(npz_path, &sb) == 0) { /* Gemma Scope */
        if (sae_gemma_scope_open(s, dir, opt->hook) || sae_check_site(s, dir, m)) goto fail;
        sae_apply_basis_override(s, opt);
        if (sae_gemma_scope_check_values(s)) goto fail;
        npz_drop_pages(&s->npz); /* read again once per node, by sae_place */
        return 0;
    }
    if (parse_cfg(s, dir, m, model_name, opt)) goto fail;

    const int sparsify = s->generation == SAE_CFG_SPARSIFY;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, sparsify ? "sae.safetensors" : "sae_weights.safetensors");
    if (safetensors_open(&s->st, path)) goto fail;
    prev_alloc = sg_alloc_for(s->st.path), alloc_named = 1; /* the sizes below are the file's */
    const int64_t I = (int64_t)s->d_in, F = (int64_t)s->d_sae;
    /* sparsify names the encoder as the Linear layer it is: [d_sae, d_in], read transposed */
    SaeTensor spec[] = {
        {sparsify ? "encoder.weight" : "W_enc", &s->W_enc, 2, sparsify ? F : I, sparsify ? I : F, 0},
        {sparsify ? "encoder.bias" : "b_enc", &s->b_enc, 1, F, 0, s->arch == SAE_GATED},
        {"W_dec", &s->W_dec, 2, F, I, 0},
        {"b_dec", &s->b_dec, 1, I, 0, 0},
        {"threshold", &s->threshold, 1, F, 0, s->arch != SAE_JUMPRELU},
        {"b_gate", &s->b_gate, 1, F, 0, s->arch != SAE_GATED},
        {"b_mag", &s->b_mag, 1, F, 0, s->arch != SAE_GATED},
        {"r_mag", &s->r_mag, 1, F, 0, s->arch != SAE_GATED},
        {"scaling_factor", &s->scaling_factor, 1, F, 0, 1},
    };
    size_t n_spec = sizeof spec / sizeof spec[0], total = 0;
    const SafetensorsTensor *found[sizeof spec / sizeof spec[0]] = {0};
    /* a tensor the architecture does not use (W_skip, a threshold on a topk SAE, ...) would be
     * dropped silently: SAELens's load_state_dict (strict) refuses it, and so does saegap */
    for (size_t t = 0; t < s->st.n_tensors; t++) {
        const char *name = s->st.tensors[t].name;
        int used = 0;
        for (size_t i = 0; i < n_spec; i++)
            used |= !strcmp(name, spec[i].name) && (!spec[i].optional || !strcmp(name, "scaling_factor"));
        if (!used) {
            sg_errorf(path, "tensor '%s' is not part of a %s SAE (%s's strict load_state_dict refuses it too): "
                      "not supported", name, sae_arch_name(s->arch), sparsify ? "sparsify" : "SAELens");
            goto fail;
        }
    }
    for (size_t i = 0; i < n_spec; i++) {
        int needed = !spec[i].optional;
        if (!needed && !safetensors_find(&s->st, spec[i].name)) continue;
        if (!needed && strcmp(spec[i].name, "scaling_factor") != 0) continue;
        int64_t shape[2] = {spec[i].s0, spec[i].s1};
        if (safetensors_expect(&s->st, spec[i].name, &found[i], spec[i].ndim, shape)) goto fail;
        if (sg_add_overflow(total, found[i]->numel, &total)) { sg_errorf(path, "tensor sizes overflow"); goto fail; }
    }
    /* F32 weights are used in place (13 SAEs of gpt2-small-res-jb are 2 GB: a copy per rank
     * would decide how many ranks fit on a node); F16/BF16 are checked here and converted by
     * sae_place, once per node */
    s->pending = sg_xcalloc(n_spec, sizeof *s->pending);
    for (size_t i = 0; i < n_spec; i++) {
        if (!found[i]) continue;
        if (safetensors_is_f32_view(found[i])) {
            if (safetensors_f32(spec[i].dst, NULL, &s->st, found[i])) goto fail;
        } else {
            if (safetensors_check_f32(&s->st, found[i])) goto fail;
            s->pending[s->n_pending++] = (SafetensorsPending){found[i], spec[i].dst};
        }
    }
    sg_alloc_for(prev_alloc);
    return 0;
fail:
    if (alloc_named) sg_alloc_for(prev_alloc);
    sae_free(s);
    return -1;
}

void sae_place(Sae *s, MPI_Comm node) {
    const int npz = s->generation == SAE_CFG_GEMMA_SCOPE;
    const size_t floats = npz ? sae_gemma_scope_floats(s) : safetensors_pending_floats(s->pending, s->n_pending);
    const char *prev_alloc = sg_alloc_for(npz ? s->npz.path : s->st.path);
    int fill, part, parts;
    /* safetensors_place writes every byte of its block; Gemma Scope's arrays leave gaps: zeroed */
    float *block = nodeblock_alloc(&s->block, node, floats * sizeof(float), npz ? 0 : floats * sizeof(float), &fill);
    nodeblock_share(&s->block, &part, &parts);
    if (npz) {
        sae_gemma_scope_place(s, block, fill);
        npz_drop_pages(&s->npz);
    } else {
        safetensors_place(block, &s->st, s->pending, s->n_pending, part, parts);
    }
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

/* an SAE folder: cfg.json (SAELens, sparsify) or params.npz (Gemma Scope) */
static int has_cfg(const char *dir) {
    char p[8192], q[8192];
    struct stat sb;
    if ((size_t)snprintf(p, sizeof p, "%s/cfg.json", dir) >= sizeof p) return 0;
    if ((size_t)snprintf(q, sizeof q, "%s/params.npz", dir) >= sizeof q) return 0;
    return stat(p, &sb) == 0 || stat(q, &sb) == 0;
}

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
        if (has_cfg(args[a])) {
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
            if (stat(p, &sb) == 0 && S_ISDIR(sb.st_mode) && has_cfg(p)) {
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
