/* model.c: config.json -> Gpt2Config, tensor names -> Gpt2Model with checked shapes. */
#include "model.h"

#include "error.h"
#include "nodeblock.h"
#include "textfile.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Sizes above this are refused: no GPT-2-family dimension comes near it, and products of two
 * of them stay far inside size_t (they are still computed with the checked helpers). */
#define CFG_SIZE_MAX 1e9

static int cfg_size(const cJSON *root, const char *path, const char *key, size_t *out, int required) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!j) return required ? sg_errorf(path, "missing key \"%s\"", key) : 1;
    if (!cJSON_IsNumber(j) || !(j->valuedouble >= 1 && j->valuedouble <= CFG_SIZE_MAX) ||
        j->valuedouble != floor(j->valuedouble)) {
        char v[80];
        return sg_errorf(path, "key \"%s\" must be a positive integer up to %.0f, not %s", key, CFG_SIZE_MAX,
                         json_text(j, v, sizeof v));
    }
    *out = (size_t)j->valuedouble;
    return 0;
}

static int cfg_bool(const cJSON *root, const char *path, const char *key, int *out, int dflt) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!j || cJSON_IsNull(j)) { *out = dflt; return 0; }
    if (!cJSON_IsBool(j)) return sg_errorf(path, "key \"%s\" must be true or false", key);
    *out = cJSON_IsTrue(j);
    return 0;
}

int model_read_config(Gpt2Config *cfg, const char *dir) {
    memset(cfg, 0, sizeof *cfg);
    struct stat sb;
    if (stat(dir, &sb) != 0) return sg_errorf(dir, "model folder does not exist");
    if (!S_ISDIR(sb.st_mode)) return sg_errorf(dir, "--model must be a folder holding config.json and model.safetensors");
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *text = textfile_read(path, 16u << 20);
    if (!text) return -1;
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!root) return sg_errorf(path, "not valid JSON");
    int rc = -1;
    if (!cJSON_IsObject(root)) { sg_errorf(path, "not a JSON object"); goto done; }
    /* Hugging Face names the model's class in "architectures": refuse another family by that
     * name before any GPT-2 key is missing (a Pythia or Gemma-2 folder has none of them) */
    const cJSON *arch = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    if (arch) {
        const cJSON *a0 = cJSON_IsArray(arch) ? cJSON_GetArrayItem(arch, 0) : NULL;
        if (!a0 || !cJSON_IsString(a0)) {
            char v[64];
            sg_errorf(path, "key \"architectures\" must be a list of class names, not %s", json_text(arch, v, sizeof v));
            goto done;
        }
        if (strncmp(a0->valuestring, "GPT2", 4) != 0) { /* GPT2LMHeadModel, GPT2Model, ... */
            sg_errorf(path, "architectures is [\"%.100s\", ...]: saegap implements GPT-2 (GPT2LMHeadModel) only", a0->valuestring);
            goto done;
        }
    }
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (mt && (!cJSON_IsString(mt) || strcmp(mt->valuestring, "gpt2") != 0)) {
        sg_errorf(path, "model_type is %s; saegap runs GPT-2-family models (\"gpt2\")",
                  cJSON_IsString(mt) ? mt->valuestring : "not a string");
        goto done;
    }
    if (cfg_size(root, path, "n_layer", &cfg->n_layer, 1) || cfg_size(root, path, "n_head", &cfg->n_head, 1) ||
        cfg_size(root, path, "n_embd", &cfg->n_embd, 1) || cfg_size(root, path, "vocab_size", &cfg->vocab_size, 1))
        goto done;
    int r = cfg_size(root, path, "n_positions", &cfg->n_positions, 0);
    if (r < 0) goto done;
    if (r == 1 && cfg_size(root, path, "n_ctx", &cfg->n_positions, 0) != 0) {
        sg_errorf(path, "missing key \"n_positions\" (or \"n_ctx\")");
        goto done;
    }
    if (cfg->n_embd % cfg->n_head != 0) {
        sg_errorf(path, "n_embd %zu is not a multiple of n_head %zu", cfg->n_embd, cfg->n_head);
        goto done;
    }
    /* Defaults below are Hugging Face GPT2Config's own. */
    cfg->layer_norm_epsilon = 1e-5;
    const cJSON *eps = cJSON_GetObjectItemCaseSensitive(root, "layer_norm_epsilon");
    if (eps) {
        if (!cJSON_IsNumber(eps) || !(eps->valuedouble > 0) || !isfinite(eps->valuedouble)) {
            char v[80];
            sg_errorf(path, "key \"layer_norm_epsilon\" must be a positive number, not %s", json_text(eps, v, sizeof v));
            goto done;
        }
        cfg->layer_norm_epsilon = eps->valuedouble;
    }
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "activation_function");
    const char *a = "gelu_new";
    if (act) {
        if (!cJSON_IsString(act)) { sg_errorf(path, "key \"activation_function\" must be a string"); goto done; }
        a = act->valuestring;
    }
    if (!strcmp(a, "gelu_new") || !strcmp(a, "gelu_pytorch_tanh") || !strcmp(a, "gelu_fast")) {
        cfg->activation = SG_ACT_GELU_TANH;
        cfg->activation_name = "gelu_new";
    } else if (!strcmp(a, "gelu")) {
        cfg->activation = SG_ACT_GELU_ERF;
        cfg->activation_name = "gelu";
    } else if (!strcmp(a, "relu")) {
        cfg->activation = SG_ACT_RELU;
        cfg->activation_name = "relu";
    } else {
        sg_errorf(path, "activation_function \"%s\" is not supported (gelu_new, gelu_pytorch_tanh, gelu, relu)", a);
        goto done;
    }
    if (cfg_bool(root, path, "scale_attn_weights", &cfg->scale_attn_weights, 1) ||
        cfg_bool(root, path, "scale_attn_by_inverse_layer_idx", &cfg->scale_attn_by_inverse_layer_idx, 0))
        goto done;
    int upcast = 0; /* only changes float precision inside attention: accepted */
    if (cfg_bool(root, path, "reorder_and_upcast_attn", &upcast, 0)) goto done;
    cfg->bos_token_id = 50256;
    const cJSON *bos = cJSON_GetObjectItemCaseSensitive(root, "bos_token_id");
    /* compared as a double before any conversion: 1e20 must not reach (long) */
    if (cJSON_IsNumber(bos))
        cfg->bos_token_id = bos->valuedouble >= 0 && bos->valuedouble < (double)cfg->vocab_size ? (long)bos->valuedouble : -1;
    if (cfg->bos_token_id < 0 || (size_t)cfg->bos_token_id >= cfg->vocab_size) cfg->bos_token_id = -1;
    /* SAELens's evals leave out pad, eos and bos tokens (for GPT-2 all 50256) */
    const char *special[2] = {"eos_token_id", "pad_token_id"};
    long *special_id[2] = {&cfg->eos_token_id, &cfg->pad_token_id};
    for (int i = 0; i < 2; i++) {
        const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, special[i]);
        *special_id[i] = cJSON_IsNumber(j) && j->valuedouble >= 0 && j->valuedouble < (double)cfg->vocab_size
                             ? (long)j->valuedouble : -1;
    }
    const cJSON *nm = cJSON_GetObjectItemCaseSensitive(root, "_name_or_path");
    if (cJSON_IsString(nm) && nm->valuestring[0]) snprintf(cfg->name, sizeof cfg->name, "%s", nm->valuestring);
    else {
        size_t len = strlen(dir);
        while (len > 1 && dir[len - 1] == '/') len--;
        size_t start = len;
        while (start > 0 && dir[start - 1] != '/') start--;
        snprintf(cfg->name, sizeof cfg->name, "%.*s", (int)(len - start), dir + start);
    }
    rc = 0;
done:
    cJSON_Delete(root);
    return rc;
}

/* Finds `name` with or without the "transformer." prefix; checks shape and dtype. */
static int find_tensor(const Gpt2Model *m, const char *name, int ndim, const int64_t *shape,
                       const SafetensorsTensor **out) {
    char full[256];
    snprintf(full, sizeof full, "transformer.%s", name);
    const char *use = safetensors_find(&m->st, full) ? full : name;
    if (!safetensors_find(&m->st, use)) return sg_errorf(m->st.path, "missing tensor '%s'", name);
    return safetensors_expect(&m->st, use, out, ndim, shape);
}

typedef struct {
    const char *name;
    const float **dst;
    int ndim;
    int64_t shape[2];
} TensorSpec;

int model_open(Gpt2Model *m, const char *dir) {
    memset(m, 0, sizeof *m);
    if (model_read_config(&m->cfg, dir) != 0) return -1;
    m->dir = sg_xstrdup(dir);
    const Gpt2Config *c = &m->cfg;
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    struct stat sb;
    if (stat(path, &sb) != 0) {
        snprintf(path, sizeof path, "%s/pytorch_model.bin", dir);
        if (stat(path, &sb) == 0)
            sg_errorf(dir, "has only pytorch_model.bin; convert it to model.safetensors "
                           "(e.g. with transformers: model.save_pretrained(dir, safe_serialization=True))");
        else
            sg_errorf(dir, "missing model.safetensors");
        model_free(m);
        return -1;
    }
    if (safetensors_open(&m->st, path) != 0) { model_free(m); return -1; }
    /* n_layer is bounded by the file before it sizes anything: 12 tensors a layer, 4 more */
    size_t n_specs;
    if (sg_mul_overflow(c->n_layer, 12, &n_specs) || sg_add_overflow(n_specs, 4, &n_specs) ||
        n_specs > m->st.n_tensors) {
        sg_errorf(path, "config.json declares n_layer %zu (%zu tensors) but the file holds %zu tensors", c->n_layer,
                  c->n_layer * 12 + 4, m->st.n_tensors);
        model_free(m);
        return -1;
    }
    const char *prev_alloc = sg_alloc_for(m->st.path);

    const int64_t L = (int64_t)c->n_layer, D = (int64_t)c->n_embd, V = (int64_t)c->vocab_size,
                  P = (int64_t)c->n_positions;
    m->layers = sg_xcalloc(c->n_layer, sizeof *m->layers);
    size_t k = 0;
    TensorSpec *specs = sg_xcalloc(n_specs, sizeof *specs);
    char (*names)[96] = sg_xcalloc(n_specs, sizeof *names);
#define SPEC(dst_, nd_, s0_, s1_, ...)                                         \
    do {                                                                       \
        snprintf(names[k], sizeof names[k], __VA_ARGS__);                      \
        specs[k] = (TensorSpec){names[k], (dst_), (nd_), {(s0_), (s1_)}};      \
        k++;                                                                   \
    } while (0)
    SPEC(&m->wte, 2, V, D, "wte.weight");
    SPEC(&m->wpe, 2, P, D, "wpe.weight");
    for (int64_t l = 0; l < L; l++) {
        Gpt2LayerWeights *w = &m->layers[l];
        SPEC(&w->ln1_w, 1, D, 0, "h.%lld.ln_1.weight", (long long)l);
        SPEC(&w->ln1_b, 1, D, 0, "h.%lld.ln_1.bias", (long long)l);
        SPEC(&w->qkv_w, 2, D, 3 * D, "h.%lld.attn.c_attn.weight", (long long)l);
        SPEC(&w->qkv_b, 1, 3 * D, 0, "h.%lld.attn.c_attn.bias", (long long)l);
        SPEC(&w->attn_proj_w, 2, D, D, "h.%lld.attn.c_proj.weight", (long long)l);
        SPEC(&w->attn_proj_b, 1, D, 0, "h.%lld.attn.c_proj.bias", (long long)l);
        SPEC(&w->ln2_w, 1, D, 0, "h.%lld.ln_2.weight", (long long)l);
        SPEC(&w->ln2_b, 1, D, 0, "h.%lld.ln_2.bias", (long long)l);
        SPEC(&w->fc_w, 2, D, 4 * D, "h.%lld.mlp.c_fc.weight", (long long)l);
        SPEC(&w->fc_b, 1, 4 * D, 0, "h.%lld.mlp.c_fc.bias", (long long)l);
        SPEC(&w->mlp_proj_w, 2, 4 * D, D, "h.%lld.mlp.c_proj.weight", (long long)l);
        SPEC(&w->mlp_proj_b, 1, D, 0, "h.%lld.mlp.c_proj.bias", (long long)l);
    }
    SPEC(&m->lnf_w, 1, D, 0, "ln_f.weight");
    SPEC(&m->lnf_b, 1, D, 0, "ln_f.bias");
#undef SPEC

    /* Pass 1: names, shapes, dtypes. Pass 2: F32 tensors are used in place; the others are
     * checked here and converted by model_place, once per node. NaN/Inf refused either way. */
    const SafetensorsTensor **found = sg_xcalloc(n_specs, sizeof *found);
    int rc = 0;
    for (size_t i = 0; i < n_specs && rc == 0; i++) {
        rc = find_tensor(m, specs[i].name, specs[i].ndim, specs[i].shape, &found[i]);
        if (rc == 0) m->n_params += found[i]->numel;
    }
    m->pending = sg_xcalloc(n_specs, sizeof *m->pending);
    for (size_t i = 0; i < n_specs && rc == 0; i++) {
        if (safetensors_is_f32_view(found[i])) {
            rc = safetensors_f32(specs[i].dst, NULL, &m->st, found[i]);
        } else {
            rc = safetensors_check_f32(&m->st, found[i]);
            m->pending[m->n_pending++] = (SafetensorsPending){found[i], specs[i].dst};
        }
    }
    free(found);
    free(specs);
    free(names);
    if (rc != 0) { sg_alloc_for(prev_alloc); model_free(m); return -1; }

    /* wte (V, D) and every layer's (D) tensors are in the file, so these products are bounded
     * by its size; still computed checked */
    size_t vd, vpd, ld;
    m->vocab_padded = (c->vocab_size + 63) / 64 * 64;
    if (sg_mul_overflow(c->vocab_size, c->n_embd, &vd) || sg_mul_overflow(m->vocab_padded, c->n_embd, &vpd) ||
        sg_mul_overflow(c->n_layer, c->n_embd, &ld)) {
        sg_alloc_for(prev_alloc);
        sg_errorf(path, "vocab_size %zu x n_embd %zu overflows", c->vocab_size, c->n_embd);
        model_free(m);
        return -1;
    }
    sg_alloc_for(prev_alloc);
    return 0;
}

/* Floats, rounded up to 64 bytes, so every section of the node block starts aligned. */
static size_t section(size_t floats) { return (floats + 15) / 16 * 16; }

void model_place(Gpt2Model *m, MPI_Comm node) {
    const Gpt2Config *c = &m->cfg;
    const size_t D = c->n_embd, vd = c->vocab_size * D, vpd = m->vocab_padded * D, ld = c->n_layer * D;
    /* layout: converted tensors, padded wte, folded value bias (sizes checked by model_open) */
    const size_t at_wte = safetensors_pending_floats(m->pending, m->n_pending), at_vb = at_wte + section(vpd),
                 floats = at_vb + section(ld);
    const char *prev_alloc = sg_alloc_for(m->st.path);
    int fill;
    float *block = nodeblock_alloc(&m->block, node, floats * sizeof(float), &fill);
    sg_alloc_for(prev_alloc);
    safetensors_place(block, &m->st, m->pending, m->n_pending, fill);
    m->wte_padded = block + at_wte;
    m->value_bias_folded = block + at_vb;
    if (fill) {
        memcpy(block + at_wte, m->wte, vd * sizeof(float));
        /* b_V' = b_V + ln_1.bias @ W_V, accumulated in double (FIELD-FACTS section 2). */
        for (size_t l = 0; l < c->n_layer; l++) {
            const Gpt2LayerWeights *w = &m->layers[l];
            for (size_t j = 0; j < D; j++) {
                double acc = w->qkv_b[2 * D + j];
                for (size_t i = 0; i < D; i++) acc += (double)w->ln1_b[i] * w->qkv_w[i * 3 * D + 2 * D + j];
                block[at_vb + l * D + j] = (float)acc;
            }
        }
    }
    nodeblock_ready(&m->block);
    free(m->pending);
    m->pending = NULL, m->n_pending = 0;
}

int model_load(Gpt2Model *m, const char *dir) {
    if (model_open(m, dir)) return -1;
    model_place(m, MPI_COMM_NULL);
    return 0;
}

void model_free(Gpt2Model *m) {
    safetensors_close(&m->st);
    free(m->layers);
    free(m->pending);
    nodeblock_free(&m->block);
    free(m->dir);
    memset(m, 0, sizeof *m);
}
