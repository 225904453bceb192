/* sae_format.h: what an SAE format is. The SAE as its folder describes it (Sae), the names
 * written into result files (architecture, normalize_activations, cfg_generation: CONTRACT.md,
 * never renamed), and the row every format fills (SaeFormatOps): how a folder is recognised,
 * where its site comes from, how its cfg and weights are read and placed, which bytes identify it
 * for --resume, and how `saegap info` names it. The rows are defined in the formats' files
 * (sae_saelens.c, sae_sparsify.c, sae_gemma_scope.c) and listed in sae_formats.c's table;
 * sae.c runs them. A format needs nothing from sae.c: only this module, sites and the readers. */
#ifndef SAEGAP_SAE_FORMAT_H
#define SAEGAP_SAE_FORMAT_H

#include "model.h"
#include "nodeblock.h"
#include "npz.h"
#include "safetensors.h"
#include "sites.h"

#include <stddef.h>

/* SAE_GROUPMAX: sparsify's "activation": "groupmax" (sae_sparsify.c); no SAELens architecture */
typedef enum { SAE_STANDARD, SAE_JUMPRELU, SAE_TOPK, SAE_GATED, SAE_GROUPMAX, SAE_ARCH_COUNT } SaeArch;
typedef enum { SAE_NORM_NONE, SAE_NORM_CONSTANT_NORM_RESCALE, SAE_NORM_LAYER_NORM, SAE_NORM_EXPECTED_AVERAGE,
               SAE_NORM_COUNT } SaeNorm;
/* The folder's format: SAELens's three cfg generations, EleutherAI sparsify's cfg, Gemma Scope's
 * params.npz (result attribute cfg_generation). In the order sae_formats.c tries them. */
typedef enum { SAE_FORMAT_SPARSIFY, SAE_FORMAT_LEGACY, SAE_FORMAT_FLAT, SAE_FORMAT_V6, SAE_FORMAT_GEMMA_SCOPE,
               SAE_FORMAT_COUNT } SaeFormat;

typedef struct {
    char *dir;
    char *hook_name;
    char *model_name;
    Site site;
    size_t d_in, d_sae, k;          /* k: topk and groupmax only */
    SaeArch arch;
    SaeNorm norm;
    SaeFormat format;
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
const char *sae_format_name(SaeFormat f);

/* ---- the row of a format -------------------------------------------------------------------- */

struct cJSON;

/* What a format reads from: its folder, its cfg (parsed once, when its marker is JSON), the
 * model when there is one (NULL for info and plan), and the load options. */
typedef struct {
    SaeFormat format;
    const char *dir;
    const struct cJSON *cfg;       /* the marker's JSON object, or NULL */
    const char *cfg_path;          /* <dir>/<marker> */
    const Gpt2Model *m;
    const SaeLoadOptions *opt;
} SaeFormatIn;

/* The site a format records, before --sae-hook is weighed against it (sae.c). */
typedef struct {
    const char *hook;              /* the hook name its cfg, folder name or path gives, or NULL */
    char buf[128];                 /* holds it when the format makes it (from a folder's name) */
    char where[96];                /* what says so, for the disagreement message: "its folder name" */
    const char *missing;           /* the error when neither it nor --sae-hook gives a site */
} SaeFormatSite;

/* The file whose bytes are the SAE's weights: named in allocation errors, hashed by --resume. */
typedef struct {
    const char *path;
    const void *bytes;
    size_t size;
} SaeWeightsFile;

/* One format. Every member is set (test_sae_formats checks each row); sae.c calls them in this
 * order: claims (detection), site, read, [the site checked against the model], settle, [the
 * model name], basis, [--basis], open_weights (runs only), then floats and place once per node,
 * weights_file any time after. */
typedef struct {
    SaeFormat id;
    const char *marker;            /* the file that makes a folder this format's candidate (cfg.json, params.npz); a .json marker is parsed and given to claims */
    const char *description;       /* `saegap info`'s first line after the folder */
    /* whether a folder holding the marker is this format's (cfg: the marker's JSON, or NULL) */
    int (*claims)(const struct cJSON *cfg);
    /* the site rule: the hook name the format records (out->hook NULL when it records none) */
    int (*site)(const SaeFormatIn *in, SaeFormatSite *out);
    /* the rest of the description: sizes, architecture, normalisation, contexts */
    int (*read)(Sae *s, const SaeFormatIn *in);
    /* what needs the checked site (s->site): SAELens's reshape_activations hook_z */
    int (*settle)(Sae *s, const SaeFormatIn *in);
    /* the activation basis the format implies (s->basis, basis_source, basis_note) */
    int (*basis)(Sae *s, const SaeFormatIn *in);
    /* the weights, every tensor checked (shape, dtype, NaN/Inf); F32 tensors ready as views */
    int (*open_weights)(Sae *s);
    size_t (*floats)(const Sae *s);                     /* the node block's floats */
    /* bytes of the node block from which it must start zeroed (place writes everything before) */
    size_t (*zeroed_from)(const Sae *s);
    /* the weights into the node block: fill on the rank that fills it alone, or part `part` of
     * `parts` converted by each rank of the node (nodeblock.h) */
    void (*place)(Sae *s, float *block, int fill, int part, int parts);
    SaeWeightsFile (*weights_file)(const Sae *s);
} SaeFormatOps;

/* The rows, each defined in its format's file, listed in sae_formats.c. */
extern const SaeFormatOps SAE_FORMAT_SPARSIFY_ROW;                            /* sae_sparsify.c */
extern const SaeFormatOps SAE_FORMAT_LEGACY_ROW, SAE_FORMAT_FLAT_ROW, SAE_FORMAT_V6_ROW; /* sae_saelens.c */
extern const SaeFormatOps SAE_FORMAT_GEMMA_SCOPE_ROW;                         /* sae_gemma_scope.c */

/* ---- what the formats share ------------------------------------------------------------------ */

/* Largest d_in, d_sae or k accepted: an int, far above any SAE (SAELens's largest have 2^24
 * latents), so every product of two stays exact in size_t and in BLIS's dimensions. */
#define SAE_SIZE_MAX 2147483647.0

/* An integer lo <= v <= hi from a cfg (a JSON number with no fraction; compared as a double
 * before any conversion, so 1e20 or 2^64 never reaches size_t). On failure the error names the
 * key, `what` it must be and the value as the file writes it. */
int sae_cfg_int(const struct cJSON *j, const char *path, const char *key, double lo, double hi, const char *what,
                size_t *out);

#endif
