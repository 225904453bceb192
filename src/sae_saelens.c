/* sae_saelens.c: SAELens SAE folders (cfg.json + sae_weights.safetensors) in the three cfg
 * generations SAELens has written: legacy (hook_point), flat (hook_name, v3-v5) and v6 (the
 * model's side under "metadata"). Three rows of the format table (sae_format.h) that differ in
 * where the cfg keeps its hook; the rest of a cfg is read alike (FIELD-FACTS sections 2-3). */
#include "sae_format.h"

#include "error.h"
#include "sae_tensors.h"
#include "textfile.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Where each generation keeps its hook and its head index (sae_lens/config.py). */
typedef struct {
    const char *hook_key;          /* the key as messages name it */
    int hook_in_meta;              /* metadata.hook_name first, then the top level */
    const char *head_key;
} Generation;

static const Generation *generation_of(SaeFormat f) {
    static const Generation LEGACY = {"hook_point", 0, "hook_point_head_index"};
    static const Generation FLAT = {"hook_name", 0, "hook_head_index"};
    static const Generation V6 = {"metadata.hook_name", 1, "hook_head_index"};
    return f == SAE_FORMAT_LEGACY ? &LEGACY : f == SAE_FORMAT_FLAT ? &FLAT : &V6;
}

static const cJSON *get(const cJSON *o, const char *key) {
    return o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
}

static const cJSON *meta_of(const cJSON *root) {
    const cJSON *meta = get(root, "metadata");
    return cJSON_IsObject(meta) ? meta : NULL;
}

/* Looks in v6's metadata first, then at the top level. */
static const cJSON *get_meta(const cJSON *root, const char *key) {
    const cJSON *j = get(meta_of(root), key);
    return j && !cJSON_IsNull(j) ? j : get(root, key);
}

static int size_key(const cJSON *root, const char *path, const char *key, size_t *out) {
    const cJSON *j = get(root, key);
    if (!j) return sg_errorf(path, "missing key \"%s\"", key);
    return sae_cfg_int(j, path, key, 1, SAE_SIZE_MAX, "a positive integer up to 2147483647", out);
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

/* ---- detection and site ------------------------------------------------------------------- */

/* SAELens decides by sae_lens_version (< 6 is pre-v6); otherwise by keys. SAE_FORMAT_COUNT: none. */
static SaeFormat generation(const cJSON *root) {
    const cJSON *meta = meta_of(root);
    double ver = version_major(get_meta(root, "sae_lens_version"));
    if (ver >= 6 || (ver < 0 && meta)) return SAE_FORMAT_V6;
    if (get(root, "hook_point")) return SAE_FORMAT_LEGACY;
    if (get(root, "hook_name")) return SAE_FORMAT_FLAT;
    if (meta) return SAE_FORMAT_V6;
    return SAE_FORMAT_COUNT;
}

static int claims_legacy(const cJSON *cfg) { return cfg && generation(cfg) == SAE_FORMAT_LEGACY; }
static int claims_flat(const cJSON *cfg) { return cfg && generation(cfg) == SAE_FORMAT_FLAT; }
static int claims_v6(const cJSON *cfg) { return cfg && generation(cfg) == SAE_FORMAT_V6; }

/* The cfg's hook key, by generation. */
static int saelens_site(const SaeFormatIn *in, SaeFormatSite *out) {
    const Generation *g = generation_of(in->format);
    const cJSON *hook = g->hook_in_meta ? get_meta(in->cfg, "hook_name") : get(in->cfg, g->hook_key);
    if (!cJSON_IsString(hook)) {
        char hv[80];
        if (hook) return sg_errorf(in->cfg_path, "key \"%s\" must be a string, not %s", g->hook_key,
                                   json_text(hook, hv, sizeof hv));
        return sg_errorf(in->cfg_path, "missing key \"%s\"", g->hook_key);
    }
    out->hook = hook->valuestring;
    snprintf(out->where, sizeof out->where, "its cfg.json (%s)", g->hook_key);
    out->missing = "its cfg.json names no hook";
    return 0;
}

/* ---- the cfg ------------------------------------------------------------------------------- */

/* Architecture and activation. Pre-v6 flat files may spell topk as an activation fn. An absent
 * architecture is standard (legacy and early flat cfgs have none); anything present must be the
 * string of a known name. */
static int read_arch(Sae *s, const cJSON *root, const char *path) {
    char val[80];
    const char *arch = "standard";
    const cJSON *ja = get(root, "architecture");
    if (ja && !cJSON_IsString(ja))
        return sg_errorf(path, "key \"architecture\" must be a string (standard, jumprelu, topk, gated), not %s",
                         json_text(ja, val, sizeof val));
    if (ja) arch = ja->valuestring;
    const char *afn_key = "activation_fn_str";
    const cJSON *afn = get(root, afn_key);
    if (!afn) afn = get(root, afn_key = "activation_fn");
    if (afn && !cJSON_IsString(afn) && !cJSON_IsNull(afn))
        return sg_errorf(path, "key \"%s\" must be a string (relu, topk), not %s", afn_key, json_text(afn, val, sizeof val));
    int found = 0;
    for (int i = 0; i < SAE_ARCH_COUNT; i++) /* groupmax is sparsify's, not a SAELens architecture */
        if (i != SAE_GROUPMAX && !strcmp(arch, sae_arch_name((SaeArch)i))) { s->arch = (SaeArch)i; found = 1; }
    if (!found)
        return sg_errorf(path, "key \"architecture\" is %s: not supported (standard, jumprelu, topk, gated)",
                         json_text(ja, val, sizeof val));
    if (cJSON_IsString(afn) && strcmp(afn->valuestring, "relu") != 0) {
        if (!strcmp(afn->valuestring, "topk") && s->arch == SAE_STANDARD) s->arch = SAE_TOPK;
        else if (strcmp(afn->valuestring, "topk") != 0)
            return sg_errorf(path, "key \"%s\" is %s: activation function not supported (relu, topk)", afn_key,
                             json_text(afn, val, sizeof val));
    }
    if (s->arch != SAE_TOPK) return 0;
    const char *k_key = "k";
    const cJSON *k = get(root, "k");
    const cJSON *kw = get(root, "activation_fn_kwargs");
    if (!k && cJSON_IsObject(kw) && get(kw, "k")) k = get(kw, "k"), k_key = "activation_fn_kwargs.k";
    if (!k)
        return sg_errorf(path, "topk SAE needs key \"k\" (or activation_fn_kwargs.k): an integer from 1 to d_sae %zu",
                         s->d_sae);
    char what[96];
    snprintf(what, sizeof what, "an integer from 1 to d_sae %zu", s->d_sae);
    if (sae_cfg_int(k, path, k_key, 1, (double)s->d_sae, what, &s->k)) return -1;
    return bool_key(root, path, "rescale_acts_by_decoder_norm", 0, &s->rescale_acts_by_decoder_norm);
}

/* normalize_activations (a name, or a boolean in early flat cfgs) and reshape_activations. */
static int read_norm(Sae *s, const cJSON *root, const char *path) {
    char val[80];
    const cJSON *na = get(root, "normalize_activations");
    s->norm = SAE_NORM_NONE;
    if (cJSON_IsBool(na)) s->norm = cJSON_IsTrue(na) ? SAE_NORM_EXPECTED_AVERAGE : SAE_NORM_NONE;
    else if (cJSON_IsString(na)) {
        int ok = 0;
        for (int i = 0; i < SAE_NORM_COUNT; i++)
            if (!strcmp(na->valuestring, sae_norm_name((SaeNorm)i))) { s->norm = (SaeNorm)i; ok = 1; }
        if (!ok)
            return sg_errorf(path, "key \"normalize_activations\" is %s: not supported (none, constant_norm_rescale, "
                             "layer_norm, expected_average_only_in)", json_text(na, val, sizeof val));
    } else if (na && !cJSON_IsNull(na)) {
        return sg_errorf(path, "key \"normalize_activations\" must be a string, a boolean or null, not %s",
                         json_text(na, val, sizeof val));
    }
    const cJSON *reshape = get(root, "reshape_activations");
    if (reshape && !cJSON_IsNull(reshape) &&
        (!cJSON_IsString(reshape) || (strcmp(reshape->valuestring, "none") && strcmp(reshape->valuestring, "hook_z"))))
        return sg_errorf(path, "key \"reshape_activations\" is %s: not supported (none, hook_z)",
                         json_text(reshape, val, sizeof val));
    return 0;
}

/* How its training contexts were cut (contexts.h): SAELens's ActivationsStore.from_sae reads both. */
static int read_contexts(Sae *s, const cJSON *root, const char *path) {
    const cJSON *pb = get_meta(root, "prepend_bos"), *cs = get_meta(root, "context_size");
    if (pb && !cJSON_IsNull(pb)) {
        if (!cJSON_IsBool(pb)) {
            char v[80];
            return sg_errorf(path, "key \"prepend_bos\" must be true or false, not %s", json_text(pb, v, sizeof v));
        }
        s->has_prepend_bos = 1, s->prepend_bos = cJSON_IsTrue(pb);
    }
    if (cs && !cJSON_IsNull(cs) &&
        sae_cfg_int(cs, path, "context_size", 1, SAE_SIZE_MAX, "a positive integer", &s->context_size))
        return -1;
    return 0;
}

static int saelens_read(Sae *s, const SaeFormatIn *in) {
    const cJSON *root = in->cfg;
    const char *path = in->cfg_path;
    const cJSON *head = in->format == SAE_FORMAT_LEGACY ? get(root, generation_of(in->format)->head_key)
                                                        : get_meta(root, generation_of(in->format)->head_key);
    if (head && !cJSON_IsNull(head))
        return sg_errorf(path, "hook_head_index is set (a single-head SAE); saegap runs SAEs on whole hooks");
    if (size_key(root, path, "d_in", &s->d_in) || size_key(root, path, "d_sae", &s->d_sae)) return -1;
    const cJSON *mn = get_meta(root, "model_name");
    s->model_name = sg_xstrdup(cJSON_IsString(mn) ? mn->valuestring : "");
    if (read_contexts(s, root, path) || read_arch(s, root, path)) return -1;
    if (bool_key(root, path, "apply_b_dec_to_input", 1, &s->apply_b_dec_to_input)) return -1;
    return read_norm(s, root, path);
}

/* ---- the basis (FIELD-FACTS section 2, docs/basis.md) --------------------------------------- */

/* model_from_pretrained_kwargs keys that change no activation or log-prob (said once, ignored). */
static const char *const KWARGS_NO_EFFECT[] = {"n_devices", "dtype", "torch_dtype", "device", "move_to_device",
                                               "default_prepend_bos", "default_padding_side", "trust_remote_code"};

/* One kwargs key: a processing flag sets its bit of *b; a key that changes activations in ways
 * saegap does not implement is refused by name; others are listed as ignored or unknown. */
static int kwargs_key(const cJSON *it, const char *path, const char *key_path, Basis *b, char *ignored, char *unknown) {
    const char *k = it->string;
    int flag = -1;
    for (int i = 0; i < SG_BASIS_FLAG_COUNT; i++)
        if (!strcmp(k, basis_flag_name(i))) flag = i;
    if ((flag >= 0 || !strcmp(k, "center_unembed") || !strcmp(k, "refactor_factored_attn_matrices")) && !cJSON_IsBool(it))
        return sg_errorf(path, "%s.%s must be true or false", key_path, k);
    if (flag >= 0) {
        if (cJSON_IsTrue(it)) *b |= basis_flag_bit(flag);
        return 0;
    }
    if (!strcmp(k, "center_unembed")) return 0; /* a processing flag, but it changes no log-prob */
    if (!strcmp(k, "refactor_factored_attn_matrices")) {
        if (cJSON_IsTrue(it))
            return sg_errorf(path, "%s.refactor_factored_attn_matrices is true: that basis (rotated W_Q, W_K, W_V, "
                                   "W_O) is not supported", key_path);
        return 0;
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
    return 0;
}

/* The basis SAELens loads the model in for these kwargs (sae_lens/load_model.py):
 * HookedTransformer.from_pretrained_no_processing(**kwargs), whose processing flags all default
 * to false; a flag is on only where the dict sets it true (FIELD-FACTS section 2). Keys that
 * change nothing are listed in s->basis_note. */
static int basis_from_kwargs(Sae *s, const cJSON *kw, const char *path, const char *key_path) {
    Basis b = SG_BASIS_RAW;
    char ignored[512] = "", unknown[512] = "";
    for (const cJSON *it = kw->child; it; it = it->next)
        if (kwargs_key(it, path, key_path, &b, ignored, unknown)) return -1;
    s->basis = b;
    s->basis_note[0] = 0;
    if (ignored[0] || unknown[0])
        snprintf(s->basis_note, sizeof s->basis_note, "%s%s%s%s%s%s", ignored[0] ? "keys " : "", ignored,
                 ignored[0] ? " change no activation: ignored" : "", ignored[0] && unknown[0] ? "; " : "",
                 unknown[0] ? unknown : "", unknown[0] ? " unknown to saegap: ignored (check they change no activation)" : "");
    return 0;
}

/* A cfg without model_from_pretrained_kwargs: SAELens's default for the model's family. */
static void default_basis(Sae *s, const SaeFormatIn *in) {
    const Gpt2Model *m = in->m;
    if (m && m->cfg.family != SG_FAMILY_GPT2) {
        /* SAELens's Pythia dictionaries (pythia-70m-deduped-*-sm) were trained on the raw Hugging
         * Face activations, and Gemma Scope's loader asks for from_pretrained_no_processing
         * (docs/basis.md, docs/families.md) */
        s->basis = SG_BASIS_RAW;
        snprintf(s->basis_source, sizeof s->basis_source,
                 "default for %s: cfg has no model_from_pretrained_kwargs (SAELens's SAEs of this family were "
                 "trained on unprocessed activations)", m->cfg.architecture);
        if (!in->opt->has_override)
            sg_warnf("%s: cfg has no model_from_pretrained_kwargs; on a %s model saegap assumes unprocessed "
                     "activations (basis raw; --basis processed to override)", in->dir,
                     m->cfg.family == SG_FAMILY_NEOX ? "Pythia" : "Gemma-2");
    } else {
        s->basis = SG_BASIS_PROCESSED;
        snprintf(s->basis_source, sizeof s->basis_source,
                 "default: cfg has no model_from_pretrained_kwargs (TransformerLens from_pretrained: all flags on)");
        if (m && !in->opt->has_override)
            sg_warnf("%s: cfg has no model_from_pretrained_kwargs; assuming TransformerLens's default weight "
                     "processing (basis processed; --basis raw to override)", in->dir);
    }
}

/* --basis aside: the cfg's kwargs as SAELens reads them, else TransformerLens's defaults. */
static int saelens_basis(Sae *s, const SaeFormatIn *in) {
    const cJSON *kw = get(meta_of(in->cfg), "model_from_pretrained_kwargs");
    const char *kw_path = "metadata.model_from_pretrained_kwargs";
    if (!kw) kw = get(in->cfg, "model_from_pretrained_kwargs"), kw_path = "model_from_pretrained_kwargs";
    if (kw && !cJSON_IsObject(kw) && !cJSON_IsNull(kw)) return sg_errorf(in->cfg_path, "%s must be an object or null", kw_path);
    if (cJSON_IsObject(kw)) {
        if (basis_from_kwargs(s, kw, in->cfg_path, kw_path)) return -1;
        char *text = cJSON_PrintUnformatted(kw);
        snprintf(s->basis_source, sizeof s->basis_source, "cfg.json %s = %s", kw_path, text ? text : "?");
        cJSON_free(text);
        if (in->m && s->basis_note[0] && !in->opt->has_override) sg_warnf("%s: %s: %s", in->dir, kw_path, s->basis_note);
    } else if (kw) { /* null: SAELens passes `kwargs or {}` */
        s->basis = SG_BASIS_RAW;
        snprintf(s->basis_source, sizeof s->basis_source, "cfg.json %s = null (SAELens reads it as {})", kw_path);
    } else {
        default_basis(s, in);
    }
    return 0;
}

/* What needs the checked site: reshape_activations hook_z only on attn.hook_z. */
static int saelens_settle(Sae *s, const SaeFormatIn *in) {
    const cJSON *reshape = get(in->cfg, "reshape_activations");
    if (cJSON_IsString(reshape) && !strcmp(reshape->valuestring, "hook_z") && s->site.kind != SG_SITE_ATTN_Z)
        return sg_errorf(in->cfg_path, "reshape_activations is hook_z but the hook is %s", s->hook_name);
    return 0;
}

/* ---- weights ------------------------------------------------------------------------------- */

static int saelens_open_weights(Sae *s) {
    static const SaeTensorNames NAMES = {"sae_weights.safetensors", "W_enc", "b_enc", 0, "SAELens"};
    return sae_tensors_open(s, &NAMES);
}

#define SAELENS_ROW(ID, CLAIMS, GEN)                                                                        \
    {ID, "cfg.json", "SAELens SAE, cfg generation " GEN, CLAIMS, saelens_site, saelens_read, saelens_settle, \
     saelens_basis, saelens_open_weights, sae_tensors_floats, sae_tensors_zeroed_from, sae_tensors_place, sae_tensors_file}

const SaeFormatOps SAE_FORMAT_LEGACY_ROW = SAELENS_ROW(SAE_FORMAT_LEGACY, claims_legacy, "legacy");
const SaeFormatOps SAE_FORMAT_FLAT_ROW = SAELENS_ROW(SAE_FORMAT_FLAT, claims_flat, "flat");
const SaeFormatOps SAE_FORMAT_V6_ROW = SAELENS_ROW(SAE_FORMAT_V6, claims_v6, "v6");
