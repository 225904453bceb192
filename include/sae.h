/* sae.h: SAE folders, and their encode/decode for the standard, jumprelu, topk and gated
 * architectures (FIELD-FACTS section 3): SAELens's (cfg.json + sae_weights.safetensors) in all
 * three cfg generations, and EleutherAI sparsify's (cfg.json + sae.safetensors, a top-k SAE
 * with a Linear encoder: sae_sparsify.c). Each SAE knows its site and its activation basis. */
#ifndef SAEGAP_SAE_H
#define SAEGAP_SAE_H

#include "model.h"
#include "npz.h"
#include "safetensors.h"
#include "sites.h"

#include <stddef.h>

/* SAE_GROUPMAX: sparsify's "activation": "groupmax" (sae_sparsify.c); no SAELens architecture */
typedef enum { SAE_STANDARD, SAE_JUMPRELU, SAE_TOPK, SAE_GATED, SAE_GROUPMAX, SAE_ARCH_COUNT } SaeArch;
typedef enum { SAE_NORM_NONE, SAE_NORM_CONSTANT_NORM_RESCALE, SAE_NORM_LAYER_NORM, SAE_NORM_EXPECTED_AVERAGE,
               SAE_NORM_COUNT } SaeNorm;
/* the cfg's format: SAELens's three generations, or sparsify's (result attribute cfg_generation) */
typedef enum { SAE_CFG_LEGACY, SAE_CFG_FLAT, SAE_CFG_V6, SAE_CFG_SPARSIFY, SAE_CFG_GEMMA_SCOPE, SAE_CFG_COUNT } SaeCfgGeneration;

typedef struct {
    char *dir;
    char *hook_name;
    char *model_name;
    Site site;
    size_t d_in, d_sae, k;          /* k: topk and groupmax only */
    SaeArch arch;
    SaeNorm norm;
    SaeCfgGeneration generation;
    int apply_b_dec_to_input;
    int rescale_acts_by_decoder_norm;
    Basis basis;                   /* the basis used (docs/basis.md) */
    Basis cfg_basis;               /* the basis the cfg implies, before --basis */
    char basis_source[768];        /* where the basis came from (with the cfg's text), recorded per site */
    char basis_note[1100];         /* kwargs keys ignored because they change no activation, or "" */
    int has_prepend_bos, prepend_bos; /* the cfg's prepend_bos (top level, or metadata in v6), when it has one */
    size_t context_size;           /* the cfg's context_size; 0 when it has none (contexts.h) */
    double norm_scaling_factor;    /* expected_average_only_in: 0 until given or estimated */
    char norm_scaling_factor_source[192]; /* "--norm-scaling-factor " + site name (< 128) + "=" + %.17g */
    const float *W_enc;            /* (d_in, d_sae), or (d_sae, d_in) with enc_out_in */
    int enc_out_in;                /* sparsify's encoder.weight: a Linear layer's [out, in] */
    const float *b_enc;            /* (d_sae); NULL for gated */
    const float *W_dec;            /* (d_sae, d_in) */
    const float *b_dec;            /* (d_in) */
    const float *threshold;        /* (d_sae) jumprelu */
    const float *b_gate, *b_mag;   /* (d_sae) gated */
    const float *r_mag;            /* (d_sae) gated */
    float *exp_r_mag;              /* (d_sae) gated: exp(r_mag) */
    const float *scaling_factor;   /* (d_sae) or NULL when absent or all ones */
    float *dec_norm;               /* (d_sae) ||W_dec_i||, topk with rescale */
    Safetensors st;
    Npz npz;                       /* Gemma Scope's params.npz instead of st (sae_gemma_scope.c) */
    NodeBlock block;               /* converted (F16/BF16) tensors, once per node: sae_place */
    SafetensorsPending *pending;           /* what sae_place converts */
    size_t n_pending;
} Sae;

typedef struct {
    Basis basis;                   /* when has_override */
    int has_override;
    int allow_model_mismatch;
    const char *hook;              /* --sae-hook for this SAE, or NULL: the site its format records */
} SaeLoadOptions;

const char *sae_arch_name(SaeArch a);
const char *sae_norm_name(SaeNorm n);
const char *sae_generation_name(SaeCfgGeneration g);

/* Opens one SAE folder and checks it against the model (hook exists, d_in = site width,
 * model name) and every tensor (shape, dtype, NaN/Inf), without collectives. 0 or -1 with a
 * pending error naming the folder. F32 weights are then ready (views of the mapping). */
int sae_open(Sae *s, const char *dir, const Gpt2Model *m, const char *model_name, const SaeLoadOptions *opt);
/* Converts the F16/BF16 weights once per node (collective over node; MPI_COMM_NULL: this rank
 * alone) and derives the SAE's small vectors. Call once every rank's sae_open succeeded. */
void sae_place(Sae *s, MPI_Comm node);
/* sae_open then sae_place for this rank alone (tools, tests). */
int sae_load(Sae *s, const char *dir, const Gpt2Model *m, const char *model_name, const SaeLoadOptions *opt);
void sae_free(Sae *s);

/* sparsify cfgs (sae_sparsify.c, read by sae.c's cfg reader): whether root is one (it names
 * num_latents or expansion_factor and no hook), and the Sae it describes (hook from the folder's
 * name, top-k or group-max, b_dec subtracted, basis raw). 0 or -1 with a pending error naming the file. */
struct cJSON;
int sae_is_sparsify_cfg(const struct cJSON *root);
int sae_sparsify_cfg(Sae *s, const char *dir, const struct cJSON *root, const char *path, const char *hook);

/* Gemma Scope folders (sae_gemma_scope.c): params.npz and no cfg.json; the site from the
 * folder's path (gemma-scope-2b-pt-res, -mlp or -att, then layer_L). _open describes the SAE from
 * the archive's directory and headers (sae.c then checks the site and applies --basis);
 * _check_values reads every value once (a damaged archive ends before any collective);
 * _place fills the node block from the archive in sae_place. */
int sae_gemma_scope_open(Sae *s, const char *dir, const char *hook);
int sae_gemma_scope_check_values(Sae *s);
void sae_gemma_scope_place(Sae *s, float *block, int fill);
size_t sae_gemma_scope_floats(const Sae *s);

/* --norm-scaling-factor: "S" (every expected_average_only_in SAE) or "SITE=S,SITE=S,..." (SAELens
 * keeps these factors per SAE in pretrained_saes.yaml as norm_scaling_factor, not in cfg.json).
 * Checks the syntax: 0 or -1 with a pending error naming the option. */
int sae_norm_factors_check(const char *spec);

/* Gives each expected_average_only_in SAE its factor from the spec (recorded with its source);
 * refuses a SITE that names no SAE of the run or an SAE that does not normalise that way. SAEs
 * without a factor keep 0 (estimated later). */
int sae_norm_factors_apply(Sae *saes, size_t stride, size_t n, const char *spec);

/* cfg.json only, with no model to check against (`saegap info`, plan). hook: --sae-hook or NULL. */
int sae_read_cfg(Sae *s, const char *dir, const char *hook);

/* The SAE's site: what its format records (derived: the cfg's hook, or the one its path or
 * folder name implies; NULL when it implies none) or the explicit --sae-hook; when both are
 * given they must agree. Sets s->hook_name; 0, 1 when neither is given (the caller says what
 * the format expected), or -1 with a pending error naming dir. */
int sae_take_hook(Sae *s, const char *dir, const char *derived, const char *what, const char *explicit_hook);

/* Expands --sae arguments: a folder with cfg.json (or params.npz) is one SAE; otherwise every
 * subfolder with one, in name order. *out is a malloc'd array of malloc'd paths. hooks (NULL or
 * one per argument: --sae-hook, "-" or NULL for none) pairs each argument with an explicit site,
 * which only a single SAE folder can take; *hooks_out (when hooks_out is not NULL) gets one
 * borrowed entry per path, NULL where none was given. */
int sae_expand_paths(char ***out, size_t *n_out, const char ***hooks_out, const char *const *args,
                     const char *const *hooks, size_t n_args);

/* Workspace for N rows, planned once. */
typedef struct {
    size_t N_max;
    float *xin;    /* (N, d_in)  normalised input */
    float *z;      /* (N, d_sae) pre-activations */
    float *fdec;   /* (N, d_sae) code as decoded (scaling_factor, decoder-norm rescale) */
    double *row_a, *row_b; /* (N) decode undoes normalisation as x_hat * row_a + row_b */
} SaeScratch;

void sae_scratch_alloc(SaeScratch *w, const Sae *s, size_t N_max);
/* One workspace for several SAEs run one after another: the largest d_in and d_sae. */
void sae_scratch_alloc_dims(SaeScratch *w, size_t d_in, size_t d_sae, size_t N_max);
void sae_scratch_free(SaeScratch *w);

/* f (N, d_sae) latent code and x_hat (N, d_in) = SAE(x), all in the SAE's basis. Keeps the
 * normalisation state of these rows in w for sae_decode. */
void sae_forward(float *f, float *x_hat, const Sae *s, SaeScratch *w, const float *x, size_t N);

/* x_hat (N, d_in) from a code f (N, d_sae), using the normalisation state of the last
 * sae_forward on the same rows (for latent perturbations). */
void sae_decode(float *x_hat, const Sae *s, SaeScratch *w, const float *f, size_t N);

#endif
