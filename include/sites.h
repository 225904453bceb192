/* sites.h: TransformerLens hook sites, their names, their buffers, and the activation basis.
 *
 * The basis (FIELD-FACTS section 2, docs/basis.md) is the set of TransformerLens weight-processing
 * flags that change a hook value, explicit everywhere a site's value is read or written:
 *  SG_BASIS_CENTER_WRITING_WEIGHTS  residual-stream sites = HF value minus its mean over d_model
 *  SG_BASIS_FOLD_VALUE_BIASES       attn.hook_z = HF z minus b_V per head, or minus
 *                                   b_V + ln_1.bias @ W_V when SG_BASIS_FOLD_LN is on too
 *  SG_BASIS_FOLD_LN                 alone changes no hook value
 * mlp.hook_post and the log-probs depend on none of them (center_unembed shifts a position's
 * logits by a constant, so it is not a basis flag). SG_BASIS_PROCESSED = all three
 * (TransformerLens's from_pretrained default), SG_BASIS_RAW = none (plain Hugging Face values).
 * Writing a centered residual value back into the HF stream is exact because every read of
 * the residual stream goes through a LayerNorm, which removes the mean.
 */
#ifndef SAEGAP_SITES_H
#define SAEGAP_SITES_H

#include "forward.h"

#include <stddef.h>

typedef enum {
    SG_SITE_EMBED,       /* hook_embed */
    SG_SITE_POS_EMBED,   /* hook_pos_embed */
    SG_SITE_RESID_PRE,   /* blocks.L.hook_resid_pre */
    SG_SITE_RESID_MID,   /* blocks.L.hook_resid_mid */
    SG_SITE_RESID_POST,  /* blocks.L.hook_resid_post */
    SG_SITE_ATTN_OUT,    /* blocks.L.hook_attn_out */
    SG_SITE_MLP_OUT,     /* blocks.L.hook_mlp_out */
    SG_SITE_ATTN_Z,      /* blocks.L.attn.hook_z (flattened NH*Dh, head-major) */
    SG_SITE_MLP_POST,    /* blocks.L.mlp.hook_post */
    SG_SITE_KIND_COUNT
} SiteKind;

/* A basis is a set of these flags (bit mask). */
typedef unsigned Basis;
enum {
    SG_BASIS_CENTER_WRITING_WEIGHTS = 1u,
    SG_BASIS_FOLD_LN = 2u,
    SG_BASIS_FOLD_VALUE_BIASES = 4u,
    SG_BASIS_RAW = 0u,
    SG_BASIS_PROCESSED = 7u,
    SG_BASIS_FLAG_COUNT = 3,
};

typedef struct {
    SiteKind kind;
    size_t layer; /* unused for hook_embed / hook_pos_embed */
} Site;

/* "processed" (all three flags), "raw" (none), else the flags that are on joined by '+' in the
 * order center_writing_weights+fold_ln+fold_value_biases. */
const char *basis_name(Basis b);
/* TransformerLens's name of flag i (0 <= i < SG_BASIS_FLAG_COUNT) and its bit. */
const char *basis_flag_name(int i);
Basis basis_flag_bit(int i);
/* Parses what basis_name prints, and any '+'-joined set of flag names. 0 or -1. */
int basis_parse(const char *s, Basis *out);

/* Parses a TransformerLens hook name; checks the layer against c->n_layer and that the model
 * has the site (c NULL: any layer, any model). 0 or -1 with a pending error naming the site
 * (`where` is the option or file it came from). */
int site_parse(Site *out, const char *name, const Gpt2Config *c, const char *where);

/* Why a model has no site of this kind (Pythia: no hook_resid_mid, no hook_pos_embed), or NULL
 * when it has one. */
const char *site_missing_reason(SiteKind k, const Gpt2Config *c);

/* The canonical hook name, e.g. "blocks.6.hook_resid_pre". */
void site_name(char *buf, size_t cap, Site s);

/* Width of the site's vector: D, or F (n_inner) for mlp.hook_post. */
size_t site_width(Site s, const Gpt2Config *c);

/* Whether the site lives in the residual stream (centered under center_writing_weights). */
int site_is_residual(SiteKind k);

/* The HF buffer (B*T rows of site_width) holding the site in the last pass. */
float *site_buffer(const Activations *a, Site s);

/* out (N, width) = the site's value for rows [row0, row0+N) in `basis`. */
void site_read(float *out, const Activations *a, const Gpt2Model *m, Site s, Basis basis, size_t row0, size_t N);

/* Number of sites a model has and the i-th in canonical order (embed, pos_embed, then per
 * layer resid_pre, attn.hook_z, attn_out, resid_mid, mlp.hook_post, mlp_out, resid_post). */
size_t site_count(size_t n_layer);
Site site_at(size_t i);

/* Writes x (N rows of the site's width, in `basis`: whole contexts of P + T positions) into
 * the site's HF buffer from row row0 on (of a suffix pass: positions >= P only), for the rows
 * with mask[r] != 0 only. Residual-stream values are written as they are (the LayerNorms
 * downstream remove the mean, so a centered value gives TransformerLens's result exactly);
 * attn.hook_z adds back the value bias the basis subtracted. */
void site_write(Activations *a, const Gpt2Model *m, Site s, Basis basis, const float *x, const unsigned char *mask,
                size_t row0, size_t N);

/* Where a pass restarts after the site's buffer changed: layer (n_layer = only ln_f) and stage. */
ForwardStage site_restart(Site s, size_t *layer);

/* The intervened pass's restart, in one place: makes `work` hold the clean pass's values of
 * everything the restarted pass reads but does not recompute (the site's own buffer, and the
 * restart layer's residual inputs), and returns the layer and stage to continue from
 * (gpt2_forward_from). The caller then writes the site and continues. With copies > 1, `work`
 * holds that many copies of the clean batch one after another (copies x B contexts): several
 * passes (interventions, samples) run as one, in GEMMs of copies x B x T rows. With P > 0 the
 * pass is a suffix pass (forward.h): only positions [P, P + Tq) of each context (Tq <= T - P),
 * for a change made at positions >= P only, read at positions < P + Tq only. */
ForwardStage site_restart_from_clean(Activations *work, const Activations *clean, Site s, const Gpt2Config *c,
                                     size_t copies, size_t P, size_t Tq, size_t *layer);

/* Canonical index of a site in the model (stable: used to key random draws). */
size_t site_index(Site s);

/* The layers whose buffers a clean cache must keep for these sites (keep: L entries, set here):
 * the site's own layer (its buffer, the restart's resid_mid and attn_out) and the layer its
 * intervened passes restart at (blocks.l.hook_resid_post restarts at l + 1). */
void site_keep_layers(unsigned char *keep, const Site *sites, size_t n, const Gpt2Config *c);

/* How many layers a pass must compute for every one of these sites' buffers to hold its value:
 * the deepest site's layer + 1 (blocks.l.hook_resid_pre: l, the layers before it). */
size_t site_layers_needed(const Site *sites, size_t n);

#endif
