/* sae_sparsify.c: EleutherAI sparsify SAE folders (cfg.json + sae.safetensors) described as a
 * saegap Sae (sae.h). FAMILIES-FACTS section 4(b): the encoder is a Linear layer,
 * f = top-k(ReLU((x - b_dec) @ encoder.weight^T + encoder.bias)), or with "activation": "groupmax"
 * the largest of each of k contiguous groups of d_sae / k latents; x_hat = f @ W_dec + b_dec.
 * The folder's name says the hook: sparsify saves `layers.N` (the output of layer N, i.e.
 * blocks.N.hook_resid_post), `layers.N.mlp` (hook_mlp_out) and `layers.N.attention`
 * (hook_attn_out), all taken from the model without TransformerLens's processing. The format
 * table's row SAE_FORMAT_SPARSIFY_ROW (sae_format.h). */
#include "sae_format.h"

#include "error.h"
#include "sae_tensors.h"
#include "textfile.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* SAELens cfgs name their hook (hook_point, hook_name or metadata.hook_name); sparsify's name the
 * dictionary's size instead. Tried before SAELens's rows (sae_formats.c): SAELens's rule by
 * sae_lens_version alone would take a sparsify cfg that records one. */
static int sparsify_claims(const cJSON *root) {
    if (!root) return 0;
    if (cJSON_GetObjectItemCaseSensitive(root, "hook_point") || cJSON_GetObjectItemCaseSensitive(root, "hook_name") ||
        cJSON_GetObjectItemCaseSensitive(root, "metadata"))
        return 0;
    return cJSON_GetObjectItemCaseSensitive(root, "num_latents") != NULL ||
           cJSON_GetObjectItemCaseSensitive(root, "expansion_factor") != NULL;
}

/* "layers.6" -> blocks.6.hook_resid_post, "layers.6.mlp" -> blocks.6.hook_mlp_out,
 * "layers.6.attention" -> blocks.6.hook_attn_out; else -1. */
static int hook_from_folder(const char *dir, char *out, size_t cap) {
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/') len--;
    size_t start = len;
    while (start > 0 && dir[start - 1] != '/') start--;
    char name[256];
    snprintf(name, sizeof name, "%.*s", (int)(len - start), dir + start);
    if (strncmp(name, "layers.", 7) != 0 || name[7] < '0' || name[7] > '9') return -1;
    char *end;
    unsigned long layer = strtoul(name + 7, &end, 10);
    const char *suffix = !*end ? "hook_resid_post" : !strcmp(end, ".mlp") ? "hook_mlp_out"
                                                 : !strcmp(end, ".attention") ? "hook_attn_out" : NULL;
    if (!suffix || layer > 100000) return -1;
    snprintf(out, cap, "blocks.%lu.%s", layer, suffix);
    return 0;
}

/* A non-negative integer key (1e20 or 2.5 refused as written); 1 when absent and not required. */
static int count_key(const cJSON *root, const char *path, const char *key, int required, double lo, size_t *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!j) return required ? sg_errorf(path, "missing key \"%s\"", key) : 1;
    char what[64];
    snprintf(what, sizeof what, "an integer from %.0f to 2147483647", lo);
    return sae_cfg_int(j, path, key, lo, SAE_SIZE_MAX, what, out);
}

/* Every key sparsify's SparseCoderConfig has had on its main branch (config.py, 2024-06 to
 * 2025-09), and what saegap does with it: the forward keys are read below or refused; the others
 * only shape training (normalize_decoder: the saved W_dec is used as it is). */
static const char *const KNOWN_KEYS[] = {"d_in",      "num_latents",     "expansion_factor", "k",
                                         "activation", "normalize_decoder", "signed",          "multi_topk",
                                         "skip_connection", "transcode"};

/* "activation" (sparsify config.py: "topk", the default, or "groupmax"); 0 or -1 with a pending error. */
static int activation_key(Sae *s, const cJSON *root, const char *path) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, "activation");
    if (!j || cJSON_IsNull(j) || (cJSON_IsString(j) && !strcmp(j->valuestring, "topk"))) {
        s->arch = SAE_TOPK;
        return 0;
    }
    if (cJSON_IsString(j) && !strcmp(j->valuestring, "groupmax")) {
        s->arch = SAE_GROUPMAX;
        return 0;
    }
    char v[80];
    return sg_errorf(path, "key \"activation\" is %s: not supported (sparsify's topk or groupmax)",
                     json_text(j, v, sizeof v));
}

/* Keys sparsify's main branch never wrote (forks add some that change the forward): said once. */
static void warn_unknown_keys(const cJSON *root, const char *path) {
    char unknown[512] = "";
    for (const cJSON *it = root->child; it; it = it->next) {
        int known = 0;
        for (size_t i = 0; i < sizeof KNOWN_KEYS / sizeof *KNOWN_KEYS; i++) known |= !strcmp(it->string, KNOWN_KEYS[i]);
        size_t len = strlen(unknown);
        if (!known && len < sizeof unknown - 1) snprintf(unknown + len, sizeof unknown - len, "%s%s", len ? ", " : "", it->string);
    }
    if (unknown[0])
        sg_warnf("%s: keys %s are not sparsify's (its loader drops them): ignored; check they do not change the "
                 "encoder or decoder", path, unknown);
}

/* variants whose forward differs: refused by name until implemented */
static int refuse_variants(const cJSON *root, const char *path) {
    static const char *const refused[][2] = {
        {"signed", "top-k by |pre-activation| without ReLU (sparsify, June-August 2024)"},
        {"multi_topk", "the multi-top-k decoder"},
        {"skip_connection", "a W_skip term added to the reconstruction"},
        {"transcode", "a transcoder (b_dec not subtracted; it predicts another hook)"},
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, refused[i][0]);
        if (j && !cJSON_IsNull(j) && !cJSON_IsFalse(j))
            return sg_errorf(path, "sparsify cfg sets \"%s\" (%s): not supported", refused[i][0], refused[i][1]);
    }
    return 0;
}

/* The site from the folder's name; a variant saegap cannot run is refused before anything else
 * of it is read, its site included. */
static int sparsify_site(const SaeFormatIn *in, SaeFormatSite *out) {
    if (refuse_variants(in->cfg, in->cfg_path)) return -1;
    out->hook = hook_from_folder(in->dir, out->buf, sizeof out->buf) == 0 ? out->buf : NULL;
    snprintf(out->where, sizeof out->where, "its folder name");
    out->missing = "a sparsify SAE's folder name says its hook (layers.N, layers.N.mlp or layers.N.attention, as "
                   "sparsify saves them); this one's does not: rename it, or give its site with --sae-hook";
    return 0;
}

static int sparsify_read(Sae *s, const SaeFormatIn *in) {
    const cJSON *root = in->cfg;
    const char *path = in->cfg_path;
    s->model_name = sg_xstrdup(""); /* sparsify cfgs do not name the model */
    if (activation_key(s, root, path)) return -1;
    s->norm = SAE_NORM_NONE;
    s->apply_b_dec_to_input = 1;
    s->enc_out_in = 1; /* encoder.weight is a Linear [d_sae, d_in] */
    if (count_key(root, path, "d_in", 1, 1, &s->d_in) < 0) return -1;
    size_t latents = 0, expansion = 0;
    int r = count_key(root, path, "num_latents", 0, 0, &latents);
    if (r < 0) return -1;
    if (r == 1 || latents == 0) { /* sparsify: num_latents 0 means d_in * expansion_factor */
        if (count_key(root, path, "expansion_factor", 1, 1, &expansion) != 0) return -1;
        if (sg_mul_overflow(s->d_in, expansion, &latents) || latents > 2147483647u)
            return sg_errorf(path, "d_in %zu x expansion_factor %zu is too large", s->d_in, expansion);
    }
    s->d_sae = latents;
    if (count_key(root, path, "k", 1, 1, &s->k) != 0) return -1;
    if (s->k > s->d_sae) return sg_errorf(path, "key \"k\" is %zu, more than the %zu latents", s->k, s->d_sae);
    /* torch's unflatten(-1, (k, -1)) in sparsify's groupmax fails unless k divides the latents */
    if (s->arch == SAE_GROUPMAX && s->d_sae % s->k != 0)
        return sg_errorf(path, "\"activation\": \"groupmax\" splits the %zu latents into k = %zu equal groups, "
                               "but %zu is not a multiple of %zu (sparsify cannot run this SAE either)",
                         s->d_sae, s->k, s->d_sae, s->k);
    warn_unknown_keys(root, path);
    return 0;
}

static int sparsify_settle(Sae *s, const SaeFormatIn *in) { (void)s, (void)in; return 0; }

static int sparsify_basis(Sae *s, const SaeFormatIn *in) {
    (void)in;
    s->basis = SG_BASIS_RAW;
    snprintf(s->basis_source, sizeof s->basis_source,
             "sparsify SAE: trained on the model's module outputs without TransformerLens processing");
    return 0;
}

/* sparsify names the encoder as the Linear layer it is: [d_sae, d_in], read transposed */
static int sparsify_open_weights(Sae *s) {
    static const SaeTensorNames NAMES = {"sae.safetensors", "encoder.weight", "encoder.bias", 1, "sparsify"};
    return sae_tensors_open(s, &NAMES);
}

const SaeFormatOps SAE_FORMAT_SPARSIFY_ROW = {
    SAE_FORMAT_SPARSIFY, "cfg.json", "EleutherAI sparsify SAE (hook from the folder's name)", sparsify_claims,
    sparsify_site, sparsify_read, sparsify_settle, sparsify_basis, sparsify_open_weights, sae_tensors_floats, sae_tensors_zeroed_from, sae_tensors_place,
    sae_tensors_file,
};
