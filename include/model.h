/* model.h: a GPT-2-family model from a Hugging Face folder (config.json + model.safetensors).
 *
 * Weights are const float views: straight into the mmap for aligned F32 files, or into one
 * owned float32 block converted once at load for F16/BF16. Conv1D layout: W is [in, out],
 * y = x @ W + b. Every expected tensor's name and shape is checked at load time.
 * Shape letters: L layers, D = n_embd, NH heads, Dh = D/NH, V vocab, P n_positions.
 */
#ifndef SAEGAP_MODEL_H
#define SAEGAP_MODEL_H

#include "nodeblock.h"
#include "safetensors.h"

#include <stddef.h>

typedef enum { SG_ACT_GELU_TANH, SG_ACT_GELU_ERF, SG_ACT_RELU } Gpt2Activation;

typedef struct {
    size_t n_layer, n_head, n_embd, n_positions, vocab_size; /* size_t to prevent int overflow */
    double layer_norm_epsilon;
    Gpt2Activation activation;
    const char *activation_name;
    int scale_attn_weights;               /* divide scores by sqrt(Dh) (HF default true) */
    int scale_attn_by_inverse_layer_idx;  /* additionally divide by (layer + 1) */
    long bos_token_id;                    /* config bos_token_id (GPT-2: 50256); -1 if outside the vocab */
    long eos_token_id, pad_token_id;      /* config's, -1 when absent: special tokens of SAELens's scores */
    char name[256];                       /* _name_or_path, else the folder's name (SAE model check) */
} Gpt2Config;

typedef struct {
    const float *ln1_w, *ln1_b;   /* (D) */
    const float *qkv_w;           /* (D, 3D) q, k, v concatenated along out */
    const float *qkv_b;           /* (3D) */
    const float *attn_proj_w;     /* (D, D) */
    const float *attn_proj_b;     /* (D) */
    const float *ln2_w, *ln2_b;   /* (D) */
    const float *fc_w;            /* (D, 4D) */
    const float *fc_b;            /* (4D) */
    const float *mlp_proj_w;      /* (4D, D) */
    const float *mlp_proj_b;      /* (D) */
} Gpt2LayerWeights;

typedef struct {
    char *dir;
    Gpt2Config cfg;
    const float *wte;             /* (V, D) token embedding, tied unembedding */
    /* (Vp, D) wte padded with zero rows to Vp = V rounded up to 64, as llm.c does: BLIS then
     * never treats the last real vocab column as an edge case, whose summation order would
     * otherwise depend on the thread count (measured: logits differed by 1 ulp). */
    const float *wte_padded;
    size_t vocab_padded;
    const float *wpe;             /* (P, D) */
    Gpt2LayerWeights *layers;     /* (L) */
    const float *lnf_w, *lnf_b;   /* (D) */
    /* TransformerLens's folded value bias per layer: b_V + ln_1.bias @ W_V, (L, D) head-major.
     * attn.hook_z in the processed basis is the HF z minus this (FIELD-FACTS section 2). */
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

/* Reads config.json only (for `saegap info` and planning). */
int model_read_config(Gpt2Config *cfg, const char *dir);

#endif
