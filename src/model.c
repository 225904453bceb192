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

/* A positive finite number, or `dflt` when the key is absent or null. */
static int cfg_positive(const cJSON *root, const char *path, const char *key, double *out, double dflt) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!j || cJSON_IsNull(j)) { *out = dflt; return 0; }
    if (!cJSON_IsNumber(j) || !(j->valuedouble > 0) || !isfinite(j->valuedouble)) {
        char v[80];
        return sg_errorf(path, "key \"%s\" must be a positive number, not %s", key, json_text(j, v, sizeof v));
    }
    *out = j->valuedouble;
    return 0;
}

/* The MLP activation by its Hugging Face name (activation_function, hidden_act). */
static int cfg_activation(const cJSON *root, const char *path, const char *key, const char *dflt, Gpt2Config *cfg) {
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, key);
    const char *a = dflt;
    if (act) {
        if (!cJSON_IsString(act)) return sg_errorf(path, "key \"%s\" must be a string", key);
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
        return sg_errorf(path, "%s \"%s\" is not supported (gelu_new, gelu_pytorch_tanh, gelu, relu)", key, a);
    }
    return 0;
}

/* GPT2Config's keys and Hugging Face's defaults for them. */
static int read_gpt2_keys(const cJSON *root, const char *path, Gpt2Config *cfg) {
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (mt && (!cJSON_IsString(mt) || strcmp(mt->valuestring, "gpt2") != 0))
        return sg_errorf(path, "model_type is %s; saegap runs GPT-2 (\"gpt2\") and Pythia (\"gpt_neox\") models",
                         cJSON_IsString(mt) ? mt->valuestring : "not a string");
    cfg->family = SG_FAMILY_GPT2, cfg->architecture = "GPT2LMHeadModel";
    cfg->learned_positions = 1, cfg->tied_unembed = 1;
    if (cfg_size(root, path, "n_layer", &cfg->n_layer, 1) || cfg_size(root, path, "n_head", &cfg->n_head, 1) ||
        cfg_size(root, path, "n_embd", &cfg->n_embd, 1) || cfg_size(root, path, "vocab_size", &cfg->vocab_size, 1))
        return -1;
    int r = cfg_size(root, path, "n_positions", &cfg->n_positions, 0);
    if (r < 0) return -1;
    if (r == 1 && cfg_size(root, path, "n_ctx", &cfg->n_positions, 0) != 0)
        return sg_errorf(path, "missing key \"n_positions\" (or \"n_ctx\")");
    if (cfg->n_embd % cfg->n_head != 0)
        return sg_errorf(path, "n_embd %zu is not a multiple of n_head %zu", cfg->n_embd, cfg->n_head);
    cfg->head_dim = cfg->n_embd / cfg->n_head, cfg->n_kv_head = cfg->n_head;
    const cJSON *inner = cJSON_GetObjectItemCaseSensitive(root, "n_inner");
    if (!inner || cJSON_IsNull(inner)) cfg->n_inner = 4 * cfg->n_embd; /* n_embd <= 1e9: no overflow */
    else if (cfg_size(root, path, "n_inner", &cfg->n_inner, 1) != 0) return -1;
    if (cfg_positive(root, path, "layer_norm_epsilon", &cfg->layer_norm_epsilon, 1e-5) ||
        cfg_activation(root, path, "activation_function", "gelu_new", cfg))
        return -1;
    if (cfg_bool(root, path, "scale_attn_weights", &cfg->scale_attn_weights, 1) ||
        cfg_bool(root, path, "scale_attn_by_inverse_layer_idx", &cfg->scale_attn_by_inverse_layer_idx, 0))
        return -1;
    int upcast = 0; /* only changes float precision inside attention: accepted */
    if (cfg_bool(root, path, "reorder_and_upcast_attn", &upcast, 0)) return -1;
    cfg->attn_scale = cfg->scale_attn_weights ? 1.0f / sqrtf((float)cfg->head_dim) : 1.0f;
    cfg->bos_token_id = 50256;
    return 0;
}

/* GPTNeoXConfig's keys (v4 names; v5's rope_parameters too) and Hugging Face's defaults. */
static int read_neox_keys(const cJSON *root, const char *path, Gpt2Config *cfg) {
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (mt && (!cJSON_IsString(mt) || strcmp(mt->valuestring, "gpt_neox") != 0))
        return sg_errorf(path, "architectures is GPTNeoXForCausalLM but model_type is %s, not \"gpt_neox\"",
                         cJSON_IsString(mt) ? mt->valuestring : "not a string");
    cfg->family = SG_FAMILY_NEOX, cfg->architecture = "GPTNeoXForCausalLM";
    cfg->weights_out_in = 1, cfg->scale_attn_weights = 1;
    if (cfg_size(root, path, "num_hidden_layers", &cfg->n_layer, 1) ||
        cfg_size(root, path, "num_attention_heads", &cfg->n_head, 1) ||
        cfg_size(root, path, "hidden_size", &cfg->n_embd, 1) ||
        cfg_size(root, path, "intermediate_size", &cfg->n_inner, 1) ||
        cfg_size(root, path, "vocab_size", &cfg->vocab_size, 1))
        return -1;
    int r = cfg_size(root, path, "max_position_embeddings", &cfg->n_positions, 0);
    if (r < 0) return -1;
    if (r == 1) cfg->n_positions = 2048;
    if (cfg->n_embd % cfg->n_head != 0)
        return sg_errorf(path, "hidden_size %zu is not a multiple of num_attention_heads %zu", cfg->n_embd, cfg->n_head);
    cfg->head_dim = cfg->n_embd / cfg->n_head, cfg->n_kv_head = cfg->n_head;
    cfg->attn_scale = 1.0f / sqrtf((float)cfg->head_dim);
    double pct = 0.25, base = 10000;
    const cJSON *rope = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
    const cJSON *rope_keys = cJSON_IsObject(rope) ? rope : root;
    if (cfg_positive(rope_keys, path, rope == rope_keys ? "partial_rotary_factor" : "rotary_pct", &pct, 0.25) ||
        cfg_positive(rope_keys, path, rope == rope_keys ? "rope_theta" : "rotary_emb_base", &base, 10000))
        return -1;
    const cJSON *scaling = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    const cJSON *rope_type = cJSON_IsObject(rope) ? cJSON_GetObjectItemCaseSensitive(rope, "rope_type") : NULL;
    if ((scaling && !cJSON_IsNull(scaling)) ||
        (rope_type && !(cJSON_IsString(rope_type) && strcmp(rope_type->valuestring, "default") == 0)))
        return sg_errorf(path, "rope scaling is set; saegap implements Pythia's plain rotary embedding only");
    const size_t Dh = cfg->n_embd / cfg->n_head;
    if (!(pct <= 1)) return sg_errorf(path, "rotary_pct %g is above 1", pct);
    cfg->rotary_dims = (size_t)((double)Dh * pct); /* int(head_size * rotary_pct), as HF */
    cfg->rotary_base = base;
    if (cfg->rotary_dims % 2 != 0)
        return sg_errorf(path, "rotary_pct %g gives %zu rotary dimensions of %zu: rotary needs an even count", pct,
                         cfg->rotary_dims, Dh);
    if (cfg_positive(root, path, "layer_norm_eps", &cfg->layer_norm_epsilon, 1e-5) ||
        cfg_activation(root, path, "hidden_act", "gelu", cfg) ||
        cfg_bool(root, path, "use_parallel_residual", &cfg->parallel_residual, 1))
        return -1;
    if (cfg_bool(root, path, "tie_word_embeddings", &cfg->tied_unembed, 0)) return -1;
    int attention_bias = 1;
    if (cfg_bool(root, path, "attention_bias", &attention_bias, 1)) return -1;
    if (!attention_bias) return sg_errorf(path, "attention_bias is false; saegap implements Pythia's biased attention only");
    cfg->bos_token_id = 0;
    return 0;
}

/* Gemma2Config's keys (FAMILIES-FACTS section 2) and Hugging Face's defaults for them. */
static int read_gemma2_keys(const cJSON *root, const char *path, Gpt2Config *cfg) {
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (mt && (!cJSON_IsString(mt) || strcmp(mt->valuestring, "gemma2") != 0))
        return sg_errorf(path, "architectures is Gemma2ForCausalLM but model_type is %s, not \"gemma2\"",
                         cJSON_IsString(mt) ? mt->valuestring : "not a string");
    cfg->family = SG_FAMILY_GEMMA2, cfg->architecture = "Gemma2ForCausalLM";
    cfg->weights_out_in = 1, cfg->norm = SG_NORM_RMS_ONE_PLUS, cfg->post_norms = 1, cfg->gated_mlp = 1;
    cfg->scale_attn_weights = 1;
    if (cfg_size(root, path, "num_hidden_layers", &cfg->n_layer, 1) ||
        cfg_size(root, path, "num_attention_heads", &cfg->n_head, 1) ||
        cfg_size(root, path, "hidden_size", &cfg->n_embd, 1) ||
        cfg_size(root, path, "intermediate_size", &cfg->n_inner, 1) ||
        cfg_size(root, path, "vocab_size", &cfg->vocab_size, 1))
        return -1;
    int r = cfg_size(root, path, "num_key_value_heads", &cfg->n_kv_head, 0);
    if (r < 0) return -1;
    if (r == 1) cfg->n_kv_head = cfg->n_head;
    r = cfg_size(root, path, "head_dim", &cfg->head_dim, 0);
    if (r < 0) return -1;
    if (r == 1) cfg->head_dim = 256;
    r = cfg_size(root, path, "max_position_embeddings", &cfg->n_positions, 0);
    if (r < 0) return -1;
    if (r == 1) cfg->n_positions = 8192;
    if (cfg->n_head % cfg->n_kv_head != 0)
        return sg_errorf(path, "num_attention_heads %zu is not a multiple of num_key_value_heads %zu", cfg->n_head,
                         cfg->n_kv_head);
    if (cfg->head_dim % 2 != 0) return sg_errorf(path, "head_dim %zu is odd: rotary needs an even count", cfg->head_dim);
    double qpas = 256, eps = 1e-6, base = 10000, acap = 50, fcap = 30;
    if (cfg_positive(root, path, "query_pre_attn_scalar", &qpas, 256) ||
        cfg_positive(root, path, "rms_norm_eps", &eps, 1e-6) || cfg_positive(root, path, "rope_theta", &base, 10000))
        return -1;
    /* the soft-caps: a number, or null for none */
    const char *caps[2] = {"attn_logit_softcapping", "final_logit_softcapping"};
    double *cap_out[2] = {&acap, &fcap};
    for (int i = 0; i < 2; i++) {
        const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, caps[i]);
        if (j && cJSON_IsNull(j)) *cap_out[i] = 0;
        else if (cfg_positive(root, path, caps[i], cap_out[i], *cap_out[i])) return -1;
    }
    const cJSON *sw = cJSON_GetObjectItemCaseSensitive(root, "sliding_window");
    if (sw && cJSON_IsNull(sw)) cfg->sliding_window = 0;
    else if ((r = cfg_size(root, path, "sliding_window", &cfg->sliding_window, 0)) < 0) return -1;
    else if (r == 1) cfg->sliding_window = 4096;
    const cJSON *types = cJSON_GetObjectItemCaseSensitive(root, "layer_types");
    if (types && !cJSON_IsNull(types)) {
        /* v5 spells the pattern out: saegap implements the sliding even / global odd one */
        int ok = cJSON_IsArray(types) && (size_t)cJSON_GetArraySize(types) == cfg->n_layer;
        for (size_t l = 0; ok && l < cfg->n_layer; l++) {
            const cJSON *t = cJSON_GetArrayItem(types, (int)l);
            ok = cJSON_IsString(t) && !strcmp(t->valuestring, l % 2 == 0 ? "sliding_attention" : "full_attention");
        }
        if (!ok) return sg_errorf(path, "layer_types is not Gemma-2's sliding (even) / full (odd) alternation");
    }
    cfg->layer_norm_epsilon = eps, cfg->rotary_dims = cfg->head_dim, cfg->rotary_base = base;
    cfg->attn_scale = (float)(1.0 / sqrt(qpas)), cfg->attn_softcap = acap, cfg->final_softcap = fcap;
    if (cfg_activation(root, path, "hidden_activation", "gelu_pytorch_tanh", cfg)) return -1;
    if (cfg_bool(root, path, "tie_word_embeddings", &cfg->tied_unembed, 1)) return -1;
    if (!cfg->tied_unembed) return sg_errorf(path, "tie_word_embeddings is false; Gemma-2 ties its unembedding");
    int attention_bias = 0;
    if (cfg_bool(root, path, "attention_bias", &attention_bias, 0)) return -1;
    if (attention_bias) return sg_errorf(path, "attention_bias is true; Gemma-2 has no biases");
    /* embed * torch.tensor(sqrt(D), dtype=the compute dtype) (HF: the hidden states' dtype; TL
     * convert_gemma_weights: its cfg.dtype). saegap computes in float32, as TransformerLens and so
     * SAELens do, whatever dtype the file stores (torch_dtype): float32(sqrt D), not sqrt(D)
     * rounded to BF16/F16 (FAMILIES-FACTS section 2, corrected 2026-12-07; issue 26.7) */
    cfg->embed_scale = (float)sqrt((double)cfg->n_embd);
    cfg->bos_token_id = 2;
    return 0;
}

int model_read_config(Gpt2Config *cfg, const char *dir) {
    memset(cfg, 0, sizeof *cfg);
    struct stat sb;
    if (stat(dir, &sb) != 0) /* ENAMETOOLONG, EACCES on a folder above it: the OS's words */
        return errno == ENOENT ? sg_errorf(dir, "model folder does not exist")
                               : sg_errorf(dir, "cannot open the model folder: %s", strerror(errno));
    if (!S_ISDIR(sb.st_mode)) return sg_errorf(dir, "--model must be a folder holding config.json and model.safetensors");
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    cJSON *root = json_object_file(path, 16u << 20);
    if (!root) return -1;
    int rc = -1;
    /* Hugging Face names the model's class in "architectures": it picks the family's keys, and
     * another family is refused by that name (its folder has none of the keys read below) */
    const cJSON *arch = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    int neox = 0, gemma2 = 0;
    if (arch) {
        const cJSON *a0 = cJSON_IsArray(arch) ? cJSON_GetArrayItem(arch, 0) : NULL;
        if (!a0 || !cJSON_IsString(a0)) {
            char v[64];
            sg_errorf(path, "key \"architectures\" must be a list of class names, not %s", json_text(arch, v, sizeof v));
            goto done;
        }
        neox = strncmp(a0->valuestring, "GPTNeoX", 7) == 0;      /* GPTNeoXForCausalLM, GPTNeoXModel */
        gemma2 = strncmp(a0->valuestring, "Gemma2", 6) == 0;     /* Gemma2ForCausalLM */
        if (!neox && !gemma2 && strncmp(a0->valuestring, "GPT2", 4) != 0) { /* GPT2LMHeadModel, ... */
            sg_errorf(path, "architectures is [\"%.100s\", ...]: saegap implements GPT-2 (GPT2LMHeadModel), "
                            "Pythia (GPTNeoXForCausalLM) and Gemma-2 (Gemma2ForCausalLM)", a0->valuestring);
            goto done;
        }
    } else {
        const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
        neox = cJSON_IsString(mt) && strcmp(mt->valuestring, "gpt_neox") == 0;
        gemma2 = cJSON_IsString(mt) && strcmp(mt->valuestring, "gemma2") == 0;
    }
    if ((neox ? read_neox_keys : gemma2 ? read_gemma2_keys : read_gpt2_keys)(root, path, cfg) != 0) goto done;
    if (cfg->embed_scale == 0) cfg->embed_scale = 1;
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
    /* SAELens's special tokens: the tokenizer's (tokenizer_special.h), else config.json's bos, eos, pad */
    int tr = tokenizer_special_ids(dir, cfg->vocab_size, cfg->special_ids, &cfg->n_special, cfg->special_source,
                                   sizeof cfg->special_source);
    if (tr < 0) goto done;
    if (tr == 1) {
        const long cand[3] = {cfg->bos_token_id, cfg->eos_token_id, cfg->pad_token_id};
        for (int i = 0; i < 3; i++) {
            int seen = cand[i] < 0;
            for (size_t k = 0; k < cfg->n_special && !seen; k++) seen = cfg->special_ids[k] == cand[i];
            if (!seen) cfg->special_ids[cfg->n_special++] = cand[i];
        }
        for (size_t a = 1; a < cfg->n_special; a++) /* sort the (at most 3) ids */
            for (size_t b = a; b > 0 && cfg->special_ids[b - 1] > cfg->special_ids[b]; b--) {
                long t = cfg->special_ids[b];
                cfg->special_ids[b] = cfg->special_ids[b - 1], cfg->special_ids[b - 1] = t;
            }
        cfg->special_from_config = 1;
        snprintf(cfg->special_source, sizeof cfg->special_source,
                 "config.json's bos_token_id, eos_token_id, pad_token_id (no tokenizer files in the model folder)");
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

/* Finds `name` (GPT-2: with or without the "transformer." prefix); checks shape and dtype. */
/* GPT-2 files name their tensors with or without "transformer." (as save_pretrained of
 * GPT2LMHeadModel or GPT2Model writes them). */
static const char *stored_name(const Gpt2Model *m, const char *name, char *full, size_t cap) {
    snprintf(full, cap, "transformer.%s", name);
    return m->cfg.family == SG_FAMILY_GPT2 && safetensors_find(&m->st, full) ? full : name;
}

static int tensor_present(const Gpt2Model *m, const char *name) {
    char full[256];
    return safetensors_find(&m->st, stored_name(m, name, full, sizeof full)) != NULL;
}

static int find_tensor(const Gpt2Model *m, const char *name, int ndim, const int64_t *shape,
                       const SafetensorsTensor **out) {
    char full[256];
    const char *use = stored_name(m, name, full, sizeof full);
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
    /* model.safetensors, else a sharded checkpoint (model.safetensors.index.json), in the
     * order Hugging Face's from_pretrained tries them */
    char path[4096];
    struct stat sb;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    int sharded = 0;
    if (stat(path, &sb) != 0) {
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
        sharded = stat(path, &sb) == 0;
    }
    if (!sharded && stat(path, &sb) != 0) {
        snprintf(path, sizeof path, "%s/pytorch_model.bin", dir);
        if (stat(path, &sb) == 0)
            sg_errorf(dir, "has only pytorch_model.bin; convert it to model.safetensors "
                           "(e.g. with transformers: model.save_pretrained(dir, safe_serialization=True))");
        else
            sg_errorf(dir, "missing model.safetensors (or model.safetensors.index.json and its shards)");
        model_free(m);
        return -1;
    }
    if ((sharded ? safetensors_open_sharded : safetensors_open)(&m->st, path) != 0) { model_free(m); return -1; }
    /* n_layer is bounded by the file before it sizes anything: 12 tensors a layer, 4 more. A
     * file with fewer tensors than the config needs is refused naming the first one it lacks:
     * the names of layers 0..T/per_layer are more than the T the file holds, so one is absent. */
    size_t n_specs;
    const int gemma = c->family == SG_FAMILY_GEMMA2;
    const size_t per_layer = gemma ? 11 : 12,
                 n_global = gemma ? 2 : c->family == SG_FAMILY_NEOX && c->tied_unembed ? 3 : 4;
    const int too_few = sg_mul_overflow(c->n_layer, per_layer, &n_specs) ||
                        sg_add_overflow(n_specs, n_global, &n_specs) || n_specs > m->st.n_tensors;
    const size_t n_listed_layers = too_few && c->n_layer > m->st.n_tensors / per_layer + 1
                                       ? m->st.n_tensors / per_layer + 1 : c->n_layer;
    n_specs = n_listed_layers * per_layer + n_global;
    const char *prev_alloc = sg_alloc_for(m->st.path);

    const int64_t L = (int64_t)n_listed_layers, D = (int64_t)c->n_embd, V = (int64_t)c->vocab_size,
                  P = (int64_t)c->n_positions, F = (int64_t)c->n_inner, Q = (int64_t)z_width(c),
                  KV = (int64_t)(c->n_kv_head * c->head_dim);
    m->layers = sg_xcalloc(n_listed_layers, sizeof *m->layers);
    size_t k = 0;
    TensorSpec *specs = sg_xcalloc(n_specs, sizeof *specs);
    char (*names)[96] = sg_xcalloc(n_specs, sizeof *names);
#define SPEC(dst_, nd_, s0_, s1_, ...)                                         \
    do {                                                                       \
        snprintf(names[k], sizeof names[k], __VA_ARGS__);                      \
        specs[k] = (TensorSpec){names[k], (dst_), (nd_), {(s0_), (s1_)}};      \
        k++;                                                                   \
    } while (0)
    if (gemma) {
        /* Linear layout [out, in], no biases; four RMSNorms a layer (FAMILIES-FACTS section 2) */
        SPEC(&m->wte, 2, V, D, "model.embed_tokens.weight");
        for (int64_t l = 0; l < L; l++) {
            Gpt2LayerWeights *w = &m->layers[l];
            const long long i = (long long)l;
            SPEC(&w->ln1_w, 1, D, 0, "model.layers.%lld.input_layernorm.weight", i);
            SPEC(&w->q_w, 2, Q, D, "model.layers.%lld.self_attn.q_proj.weight", i);
            SPEC(&w->k_w, 2, KV, D, "model.layers.%lld.self_attn.k_proj.weight", i);
            SPEC(&w->v_w, 2, KV, D, "model.layers.%lld.self_attn.v_proj.weight", i);
            SPEC(&w->attn_proj_w, 2, D, Q, "model.layers.%lld.self_attn.o_proj.weight", i);
            SPEC(&w->post_attn_w, 1, D, 0, "model.layers.%lld.post_attention_layernorm.weight", i);
            SPEC(&w->ln2_w, 1, D, 0, "model.layers.%lld.pre_feedforward_layernorm.weight", i);
            SPEC(&w->fc_w, 2, F, D, "model.layers.%lld.mlp.gate_proj.weight", i);
            SPEC(&w->up_w, 2, F, D, "model.layers.%lld.mlp.up_proj.weight", i);
            SPEC(&w->mlp_proj_w, 2, D, F, "model.layers.%lld.mlp.down_proj.weight", i);
            SPEC(&w->post_mlp_w, 1, D, 0, "model.layers.%lld.post_feedforward_layernorm.weight", i);
        }
        SPEC(&m->lnf_w, 1, D, 0, "model.norm.weight");
    } else if (c->family == SG_FAMILY_NEOX) {
        /* Linear layout [out, in]; QKV rows interleaved per head (qkv_layout) */
        SPEC(&m->wte, 2, V, D, "gpt_neox.embed_in.weight");
        for (int64_t l = 0; l < L; l++) {
            Gpt2LayerWeights *w = &m->layers[l];
            const long long i = (long long)l;
            SPEC(&w->ln1_w, 1, D, 0, "gpt_neox.layers.%lld.input_layernorm.weight", i);
            SPEC(&w->ln1_b, 1, D, 0, "gpt_neox.layers.%lld.input_layernorm.bias", i);
            SPEC(&w->qkv_w, 2, 3 * D, D, "gpt_neox.layers.%lld.attention.query_key_value.weight", i);
            SPEC(&w->qkv_b, 1, 3 * D, 0, "gpt_neox.layers.%lld.attention.query_key_value.bias", i);
            SPEC(&w->attn_proj_w, 2, D, D, "gpt_neox.layers.%lld.attention.dense.weight", i);
            SPEC(&w->attn_proj_b, 1, D, 0, "gpt_neox.layers.%lld.attention.dense.bias", i);
            SPEC(&w->ln2_w, 1, D, 0, "gpt_neox.layers.%lld.post_attention_layernorm.weight", i);
            SPEC(&w->ln2_b, 1, D, 0, "gpt_neox.layers.%lld.post_attention_layernorm.bias", i);
            SPEC(&w->fc_w, 2, F, D, "gpt_neox.layers.%lld.mlp.dense_h_to_4h.weight", i);
            SPEC(&w->fc_b, 1, F, 0, "gpt_neox.layers.%lld.mlp.dense_h_to_4h.bias", i);
            SPEC(&w->mlp_proj_w, 2, D, F, "gpt_neox.layers.%lld.mlp.dense_4h_to_h.weight", i);
            SPEC(&w->mlp_proj_b, 1, D, 0, "gpt_neox.layers.%lld.mlp.dense_4h_to_h.bias", i);
        }
        SPEC(&m->lnf_w, 1, D, 0, "gpt_neox.final_layer_norm.weight");
        SPEC(&m->lnf_b, 1, D, 0, "gpt_neox.final_layer_norm.bias");
        if (!c->tied_unembed) SPEC(&m->unembed, 2, V, D, "embed_out.weight");
    } else {
        SPEC(&m->wte, 2, V, D, "wte.weight");
        SPEC(&m->wpe, 2, P, D, "wpe.weight");
        for (int64_t l = 0; l < L; l++) {
            Gpt2LayerWeights *w = &m->layers[l];
            const long long i = (long long)l;
            SPEC(&w->ln1_w, 1, D, 0, "h.%lld.ln_1.weight", i);
            SPEC(&w->ln1_b, 1, D, 0, "h.%lld.ln_1.bias", i);
            SPEC(&w->qkv_w, 2, D, 3 * D, "h.%lld.attn.c_attn.weight", i);
            SPEC(&w->qkv_b, 1, 3 * D, 0, "h.%lld.attn.c_attn.bias", i);
            SPEC(&w->attn_proj_w, 2, D, D, "h.%lld.attn.c_proj.weight", i);
            SPEC(&w->attn_proj_b, 1, D, 0, "h.%lld.attn.c_proj.bias", i);
            SPEC(&w->ln2_w, 1, D, 0, "h.%lld.ln_2.weight", i);
            SPEC(&w->ln2_b, 1, D, 0, "h.%lld.ln_2.bias", i);
            SPEC(&w->fc_w, 2, D, F, "h.%lld.mlp.c_fc.weight", i);
            SPEC(&w->fc_b, 1, F, 0, "h.%lld.mlp.c_fc.bias", i);
            SPEC(&w->mlp_proj_w, 2, F, D, "h.%lld.mlp.c_proj.weight", i);
            SPEC(&w->mlp_proj_b, 1, D, 0, "h.%lld.mlp.c_proj.bias", i);
        }
        SPEC(&m->lnf_w, 1, D, 0, "ln_f.weight");
        SPEC(&m->lnf_b, 1, D, 0, "ln_f.bias");
    }
#undef SPEC
    n_specs = k;
    if (too_few) {
        size_t missing = 0, need;
        while (missing < n_specs && tensor_present(m, specs[missing].name)) missing++;
        char needs[64] = "more than can be counted";
        if (!sg_mul_overflow(c->n_layer, per_layer, &need) && !sg_add_overflow(need, n_global, &need))
            snprintf(needs, sizeof needs, "%zu", need);
        if (missing < n_specs)
            sg_errorf(path, "has no tensor '%s': config.json declares %zu layers (%s tensors) but the file holds %zu "
                      "tensors", specs[missing].name, c->n_layer, needs, m->st.n_tensors);
        else /* cannot happen (more distinct names than tensors); kept for safety */
            sg_errorf(path, "config.json declares %zu layers (%s tensors) but the file holds %zu tensors", c->n_layer,
                      needs, m->st.n_tensors);
        free(specs);
        free(names);
        sg_alloc_for(prev_alloc);
        model_free(m);
        return -1;
    }

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
        sg_mul_overflow(c->n_layer, z_width(c), &ld)) {
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
    const size_t D = c->n_embd, Q = z_width(c), vd = c->vocab_size * D, vpd = m->vocab_padded * D,
                 ld = c->n_layer * Q;
    /* a vocabulary that is a multiple of 64 already (Gemma-2's 256000, Pythia's 50304) is its
     * own padded unembedding: no copy (Gemma-2's would be 2.4 GB) */
    const int pad = m->vocab_padded != c->vocab_size;
    /* layout: converted tensors, padded unembedding, value bias, folded value bias (sizes
     * checked by model_open) */
    const size_t at_wte = safetensors_pending_floats(m->pending, m->n_pending), at_vb = at_wte + (pad ? section(vpd) : 0),
                 at_vbf = at_vb + section(ld), floats = at_vbf + section(ld);
    const char *prev_alloc = sg_alloc_for(m->st.path);
    int fill, part, parts;
    /* the converted tensors are written whole (safetensors_place); the derived sections start zeroed */
    float *block = nodeblock_alloc(&m->block, node, floats * sizeof(float), at_wte * sizeof(float), &fill);
    sg_alloc_for(prev_alloc);
    /* the conversion, split over the node's ranks and their threads */
    nodeblock_share(&m->block, &part, &parts);
    safetensors_place(block, &m->st, m->pending, m->n_pending, part, parts);
    if (c->tied_unembed) m->unembed = m->wte;
    m->wte_padded = pad ? block + at_wte : m->unembed;
    m->value_bias = block + at_vb;
    m->value_bias_folded = block + at_vbf;
    nodeblock_ready(&m->block); /* every part converted: the derived weights read them */
    if (fill) {
        if (pad) memcpy(block + at_wte, m->unembed, vd * sizeof(float));
        /* b_V (head-major, attn.hook_z's layout) and b_V' = b_V + ln_1.bias @ W_V, accumulated
         * in double (FIELD-FACTS section 2), with W_V's columns where the family puts them; a
         * model without biases (Gemma-2) has zeros, as its bases need */
        const QkvLayout q = qkv_layout(c);
        const size_t Dh = c->head_dim, QKV = qkv_width(c);
        for (size_t l = 0; l < c->n_layer; l++) {
            const Gpt2LayerWeights *w = &m->layers[l];
            if (!w->qkv_b) continue; /* the block is zeroed */
            for (size_t j = 0; j < Q; j++) {
                const size_t col = q.v_base + j / Dh / q.group * q.kv_stride + j % Dh; /* of the QKV outputs */
                double acc = w->qkv_b[col];
                block[at_vb + l * Q + j] = w->qkv_b[col];
                for (size_t i = 0; w->ln1_b && i < D; i++)
                    acc += (double)w->ln1_b[i] * (c->weights_out_in ? w->qkv_w[col * D + i] : w->qkv_w[i * QKV + col]);
                block[at_vbf + l * Q + j] = (float)acc;
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

int model_is_special(const Gpt2Config *c, long tok) {
    size_t lo = 0, hi = c->n_special;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (c->special_ids[mid] == tok) return 1;
        if (c->special_ids[mid] < tok) lo = mid + 1;
        else hi = mid;
    }
    return 0;
}

const char *model_special_text(const Gpt2Config *c, char *buf, size_t cap) {
    if (!cap) return buf;
    buf[0] = '\0';
    size_t len = 0;
    for (size_t i = 0; i < c->n_special; i++) {
        char one[32];
        int w = snprintf(one, sizeof one, "%s%ld", i ? "," : "", c->special_ids[i]);
        if (len + (size_t)w + 4 >= cap) {
            snprintf(buf + len, cap - len, "...");
            break;
        }
        memcpy(buf + len, one, (size_t)w + 1);
        len += (size_t)w;
    }
    return buf;
}
