/* model.h: a model from a Hugging Face folder (config.json + model.safetensors): GPT-2
 * (GPT2LMHeadModel) or Pythia (GPTNeoXForCausalLM). docs/families.md lists what differs.
 *
 * Weights are const float views: straight into the mmap for aligned F32 files, or into one
 * owned float32 block converted once at load for F16/BF16. GPT-2's Conv1D layout is W [in, out],
 * y = x @ W + b; GPT-NeoX's Linear layout is W [out, in], y = x @ W^T + b (cfg.weights_out_in:
 * the GEMM reads it through its strides, no copy). Every expected tensor's name and shape is
 * checked at load time.
 * Shape letters: L layers, D = n_embd, NH heads, Dh = D/NH, F = n_inner (the MLP's width),
 * V vocab, P n_positions.
 */
#ifndef SAEGAP_MODEL_H
#define SAEGAP_MODEL_H

#include "nodeblock.h"
#include "safetensors.h"
#include "tokenizer_special.h"

#include <stddef.h>

typedef enum { SG_ACT_GELU_TANH, SG_ACT_GELU_ERF, SG_ACT_RELU } Gpt2Activation;

typedef enum { SG_FAMILY_GPT2, SG_FAMILY_NEOX, SG_FAMILY_GEMMA2 } ModelFamily;

/* LayerNorm (x - mean) / sd * w + b, or Gemma's RMSNorm x / rms * (1 + w) (no bias) */
typedef enum { SG_NORM_LAYER, SG_NORM_RMS_ONE_PLUS } NormKind;

typedef struct {
    ModelFamily family;
    const char *architecture;             /* "GPT2LMHeadModel", "GPTNeoXForCausalLM" */
    size_t n_layer, n_head, n_embd, n_positions, vocab_size; /* size_t to prevent int overflow */
    size_t n_inner;                       /* the MLP's width F (GPT-2: n_inner or 4D; NeoX: intermediate_size) */
    size_t head_dim;                      /* Dh: D / n_head, except Gemma-2's head_dim (NH * Dh != D there) */
    size_t n_kv_head;                     /* key/value heads: n_head, or fewer (Gemma-2's grouped-query attention) */
    NormKind norm;
    int post_norms;                       /* Gemma-2: attn and MLP outputs RMS-normed before each add */
    int gated_mlp;                        /* Gemma-2: down(gelu_tanh(gate(x)) * up(x)) */
    float embed_scale;                    /* Gemma-2: the embedding times float32(sqrt D), the compute dtype's; else 1 */
    double attn_scale;                    /* the scores' scale: 1/sqrt(Dh), or query_pre_attn_scalar^-0.5 */
    double attn_softcap;                  /* Gemma-2: scores -> cap * tanh(scores / cap) before the mask; 0 = off */
    double final_softcap;                 /* Gemma-2: logits -> cap * tanh(logits / cap); 0 = off */
    size_t sliding_window;                /* Gemma-2: even layers attend to the last W positions; 0 = off */
    int weights_out_in;                   /* 1: Linear [out, in] (NeoX); 0: Conv1D [in, out] (GPT-2) */
    int parallel_residual;                /* NeoX: x + attn(ln1(x)) + mlp(ln2(x)); no resid_mid */
    int learned_positions;                /* GPT-2's wpe; NeoX rotates q and k instead */
    int tied_unembed;                     /* the unembedding is wte (GPT-2; NeoX with tie_word_embeddings) */
    size_t rotary_dims;                   /* NeoX: the first int(Dh * rotary_pct) dims of q and k rotate */
    double rotary_base;                   /* NeoX: rotary_emb_base (10000) */
    double layer_norm_epsilon;
    Gpt2Activation activation;
    const char *activation_name;
    int scale_attn_weights;               /* divide scores by sqrt(Dh) (HF default true) */
    int scale_attn_by_inverse_layer_idx;  /* additionally divide by (layer + 1) */
    long bos_token_id;                    /* config bos_token_id (GPT-2: 50256); -1 if outside the vocab */
    long eos_token_id, pad_token_id;      /* config's, -1 when absent: SAELens's special tokens when the folder has no tokenizer files */
    /* SAELens's special tokens (get_special_token_ids: tokenizer_special.h), which its scores leave
     * out: read from the folder's tokenizer files, else config.json's bos, eos and pad ids
     * (special_from_config 1). Sorted, unique, inside the vocabulary. */
    size_t n_special;
    long special_ids[SG_MAX_SPECIAL_IDS];
    int special_from_config;
    char special_source[256];             /* where they come from, for the file and info */
    char name[256];                       /* _name_or_path, else the folder's name (SAE model check) */
} Gpt2Config;

/* Where query head h's q and its key/value head's k and v sit in a row of the QKV projection's
 * output (width (NH + 2 NKV) Dh): q at q_base + h q_stride, k at k_base + (h / group) kv_stride,
 * v at v_base + (h / group) kv_stride. GPT-2 concatenates q | k | v (head h at h Dh in each);
 * GPT-NeoX interleaves per head (row h 3Dh + s Dh + j, s = 0 q, 1 k, 2 v: FAMILIES-FACTS
 * section 1); Gemma-2's three projections give q | k | v with NKV = NH / group key/value heads. */
typedef struct {
    size_t q_base, q_stride, k_base, v_base, kv_stride, group;
} QkvLayout;

static inline size_t qkv_width(const Gpt2Config *c) { return (c->n_head + 2 * c->n_kv_head) * c->head_dim; }
static inline size_t z_width(const Gpt2Config *c) { return c->n_head * c->head_dim; }

static inline QkvLayout qkv_layout(const Gpt2Config *c) {
    const size_t Dh = c->head_dim, Z = z_width(c), KV = c->n_kv_head * Dh;
    if (c->family == SG_FAMILY_NEOX) return (QkvLayout){0, 3 * Dh, Dh, 2 * Dh, 3 * Dh, 1};
    return (QkvLayout){0, Dh, Z, Z + KV, Dh, c->n_head / c->n_kv_head};
}

/* Matrices in the family's layout (cfg.weights_out_in): GPT-2 (in, out), NeoX and Gemma-2
 * (out, in). Q = NH Dh and QKV = (NH + 2 NKV) Dh wide (3D for GPT-2 and NeoX). Absent tensors
 * (Gemma-2 has no biases) are NULL. */
typedef struct {
    const float *ln1_w, *ln1_b;   /* (D) */
    const float *qkv_w;           /* (D, QKV); q, k, v placed as qkv_layout says */
    const float *qkv_b;           /* (QKV) */
    const float *q_w, *k_w, *v_w; /* Gemma-2's three projections instead of qkv_w: (Q|KV|KV, D) */
    const float *attn_proj_w;     /* (Q, D) */
    const float *attn_proj_b;     /* (D) */
    const float *post_attn_w;     /* Gemma-2's post-attention RMSNorm (D) */
    const float *ln2_w, *ln2_b;   /* (D); Gemma-2: the pre-feedforward RMSNorm */
    const float *fc_w;            /* (D, F); Gemma-2: gate_proj */
    const float *fc_b;            /* (F) */
    const float *up_w;            /* Gemma-2's up_proj (D, F) */
    const float *mlp_proj_w;      /* (F, D) */
    const float *mlp_proj_b;      /* (D) */
    const float *post_mlp_w;      /* Gemma-2's post-feedforward RMSNorm (D) */
} Gpt2LayerWeights;

typedef struct {
    char *dir;
    Gpt2Config cfg;
    const float *wte;             /* (V, D) token embedding (NeoX: embed_in) */
    const float *unembed;         /* (V, D) the unembedding: wte (GPT-2, tied) or embed_out (NeoX) */
    /* (Vp, D) the unembedding padded with zero rows to Vp = V rounded up to 64, as llm.c does: BLIS then
     * never treats the last real vocab column as an edge case, whose summation order would
     * otherwise depend on the thread count (measured: logits differed by 1 ulp). */
    const float *wte_padded;
    size_t vocab_padded;
    const float *wpe;             /* (P, D); NULL without learned positions */
    Gpt2LayerWeights *layers;     /* (L) */
    const float *lnf_w, *lnf_b;   /* (D) */
    /* The value bias b_V per layer, (L, Q) head-major (attn.hook_z's layout; 0 without biases), and
     * TransformerLens's folded one, b_V + ln_1.bias @ W_V: attn.hook_z in the processed basis
     * is the HF z minus this (FIELD-FACTS section 2). */
    const float *value_bias;
    const float *value_bias_folded;
    Safetensors st;
    /* converted tensors (F16/BF16 or misaligned F32), the padded wte and the folded value bias:
     * one block per node (nodeblock.h), filled by model_place */
    NodeBlock block;
    SafetensorsPending *pending;        /* tensors model_place converts (model_open -> model_place) */
    size_t n_pending;
    size_t n_params;
} Gpt2Model;

/* Opens and validates every tensor (names, shapes, dtypes, NaN/Inf) without collectives; 0 or
 * -1 with a pending error naming the file. F32 tensors are then ready (views of the mapping). */
int model_open(Gpt2Model *m, const char *dir);
/* Converts what model_open could not use in place and derives the padded wte and the folded
 * value bias, once per node: collective over node (MPI_COMM_NULL: this rank alone). Call it
 * only once every rank's model_open succeeded (sg_agree): it cannot fail. */
void model_place(Gpt2Model *m, MPI_Comm node);
/* model_open then model_place for this rank alone (tools, tests). */
int model_load(Gpt2Model *m, const char *dir);
void model_free(Gpt2Model *m); /* accepts a zeroed struct */

/* Whether tok is one of SAELens's special tokens (cfg.special_ids). */
int model_is_special(const Gpt2Config *c, long tok);
/* The special ids as text, "0,1,2" ("" for none), cut with "..." past cap. Returns buf. */
const char *model_special_text(const Gpt2Config *c, char *buf, size_t cap);

/* Reads config.json only (for `saegap info` and planning). */
int model_read_config(Gpt2Config *cfg, const char *dir);

#endif
