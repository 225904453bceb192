/* forward.h: the GPT-2 forward pass in the Hugging Face basis, llm.c style.
 *
 * Key to the shape letters: B contexts in a batch, T tokens per context, D = n_embd,
 * NH heads, Dh = D/NH, L layers, V vocab.
 * Every intermediate is a named buffer, planned once by acts_alloc for (B_max, T_max); the ops
 * never allocate. The buffers hold plain HF values; sites.h converts them to and from the
 * TransformerLens basis. Each layer is split into stages so an intervened pass can restart
 * right after the site it overwrote (see gpt2_forward_from).
 */
#ifndef SAEGAP_FORWARD_H
#define SAEGAP_FORWARD_H

#include "model.h"

#include <stddef.h>
#include <stdint.h>

typedef struct Activations {
    size_t B_max, T_max, L, D, NH, V, F; /* F: the MLP's width (n_inner) */
    size_t Dh, Z, W;      /* head_dim; attn.hook_z's width NH Dh; the QKV rows' width (NH + 2 NKV) Dh */
    size_t B, T;          /* shape of the batch last run */
    /* A suffix pass (prefix != NULL): the batch holds only positions [P, P + T) of each context
     * (the positions a change at P can reach that are read: a causal model's later positions
     * never change earlier ones);
     * attention reads the keys and values of positions [0, P) from the prefix pass (a clean
     * cache of the same contexts, every layer kept), which a change at position >= P cannot
     * alter (the model is causal). Its rows' values are those of the full pass, bit for bit. */
    const struct Activations *prefix;
    size_t P;
    float *kv;            /* (kv_threads, 2, T_max, Dh) keys and values of a suffix pass's head */
    int kv_threads;
    int all_layers;       /* 1: every layer's buffers are kept (the clean cache, dump); 0: a pass's
                             working set, each layer overwriting the last (resid alternates two
                             slots): 1/L of the memory, for passes read only at the end (lnf) */
    size_t *slot;         /* all_layers: layer l's place in the per-layer buffers (but qkv and
                             resid, always every layer's): its own for a kept layer, one shared by
                             the others (acts_alloc_kept) */
    float *embed;         /* (B,T,D) wte[token]                         hook_embed (HF) */
    float *pos_embed;     /* (B,T,D) wpe[position]                      hook_pos_embed (HF) */
    float *resid;         /* (L+1,B,T,D) resid[l] = blocks.l.hook_resid_pre; resid[L] = last resid_post */
    float *ln1;           /* (L,B,T,D) */
    float *qkv;           /* (L,B,T,W) */
    float *att;           /* (L,B,NH,T,T) softmax probabilities */
    float *z;             /* (L,B,T,Z) per-head outputs, head-major   attn.hook_z (HF: includes b_V) */
    float *attn_out;      /* (L,B,T,D) c_proj output                    hook_attn_out (HF) */
    float *resid_mid;     /* (L,B,T,D)                                  hook_resid_mid (HF; unused with
                             the parallel residual, which has none) */
    float *ln2;           /* (L,B,T,D) */
    float *fc;            /* (L,B,T,F) c_fc output, pre-activation */
    float *fc_act;        /* (L,B,T,F) activation output              mlp.hook_post */
    float *mlp_out;       /* (L,B,T,D)                                  hook_mlp_out (HF) */
    float *lnf;           /* (B,T,D) ln_f output, input of the unembedding */
    float *fc_up;         /* (L,B,T,F) Gemma-2's up projection (GeGLU); NULL otherwise */
    float *block;         /* one allocation holding all of the above */
} Activations;

/* Where a pass restarts inside layer l after a site's buffer was overwritten. */
typedef enum {
    SG_STAGE_ATTN,        /* from resid[l]: ln_1, attention, ...         */
    SG_STAGE_ATTN_PROJ,   /* from z[l]: c_proj, residual, mlp, ...        */
    SG_STAGE_ATTN_RESID,  /* from attn_out[l]: resid_mid = resid + attn_out */
    SG_STAGE_MLP,         /* from resid_mid[l]: ln_2, mlp, ...            */
    SG_STAGE_MLP_PROJ,    /* from fc_act[l]: c_proj, residual             */
    SG_STAGE_MLP_RESID,   /* from mlp_out[l]: resid[l+1] = resid_mid + mlp_out */
} ForwardStage;

void acts_alloc(Activations *a, const Gpt2Config *c, size_t B_max, size_t T_max, int all_layers);
/* A clean cache that keeps every layer's residual stream and QKV rows (a suffix pass reads any
 * layer's keys and values) but the other per-layer buffers only of the layers with keep[l] set
 * (L entries): the rest share one slot, overwritten layer after layer. What a job's sites read
 * (site_keep_layers, sites.h) at a fraction of the memory; the values computed are the same. */
void acts_alloc_kept(Activations *a, const Gpt2Config *c, size_t B_max, size_t T_max, const unsigned char *keep);
/* Bytes acts_alloc_kept takes (keep NULL: every layer), and a work pass (all_layers 0) for
 * `threads` threads: what plan.c and the batch's budget count (sweep_rank_bytes). */
double acts_bytes(const Gpt2Config *c, size_t B_max, size_t T_max, const unsigned char *keep, int all_layers,
                  int threads);
/* Layer l of a per-layer buffer with `width` floats per row (D, 3D, 4D; NH*T for att), for the
 * batch last run, and resid[l] (l <= L). Every access to a layer's buffers goes through these. */
static inline float *acts_layer(const Activations *a, float *base, size_t l, size_t width) {
    return base + (a->all_layers ? a->slot[l] : 0) * a->B * a->T * width;
}
static inline float *acts_qkv(const Activations *a, size_t l) {
    return a->qkv + (a->all_layers ? l : 0) * a->B * a->T * a->W;
}
static inline float *acts_resid(const Activations *a, size_t l) {
    return a->resid + (a->all_layers ? l : l % 2) * a->B * a->T * a->D;
}
void acts_free(Activations *a);

/* Full pass: tokens (B,T) -> every buffer up to lnf. T <= n_positions, ids < V (checked by the caller). */
void gpt2_forward(Activations *a, const Gpt2Model *m, const int32_t *tokens, size_t B, size_t T);
/* The same pass through layers [0, end) only (end >= L: gpt2_forward): the buffers of those
 * layers hold the full pass's values (a layer never reads a later one); lnf is not computed.
 * For passes that read sites only (the statistics pass). */
void gpt2_forward_until(Activations *a, const Gpt2Model *m, const int32_t *tokens, size_t B, size_t T, size_t end);

/* Continues a pass from `stage` of layer `layer` (buffers before that point are left as they are)
 * on the batch of B x T rows set in a->B, a->T. */
void gpt2_forward_from(Activations *a, const Gpt2Model *m, size_t layer, ForwardStage stage);

/* x (n) = cap * tanh(x / cap) in place (Gemma-2's final logit soft-cap); cap 0: unchanged. */
void sg_softcap(float *x, size_t n, float cap);

/* logits (n,V) = lnf rows (the buffer must hold n x vocab_padded floats) [row0, row0+n) @ wte^T (raw HF logits; the processed basis only
 * shifts each row by a constant, which log-softmax removes). */
void gpt2_logits(float *logits, const Activations *a, const Gpt2Model *m, size_t row0, size_t n);

#endif
