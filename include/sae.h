/* sae.h: SAE folders, and their encode/decode for the standard, jumprelu, topk, gated and
 * groupmax architectures (FIELD-FACTS section 3). A folder is read through its format's row
 * (sae_format.h, sae_formats.h): SAELens's cfg.json + sae_weights.safetensors in all three cfg
 * generations (sae_saelens.c), EleutherAI sparsify's cfg.json + sae.safetensors
 * (sae_sparsify.c), Gemma Scope's params.npz (sae_gemma_scope.c). Each SAE knows its site and
 * its activation basis. */
#ifndef SAEGAP_SAE_H
#define SAEGAP_SAE_H

#include "sae_format.h"

#include <mpi.h>
#include <stddef.h>

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

/* How `saegap info` names the SAE's format (its row's description). */
const char *sae_description(const Sae *s);

/* The file whose bytes are the SAE's weights (what --resume hashes to identify the SAE). */
SaeWeightsFile sae_weights_file(const Sae *s);

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
