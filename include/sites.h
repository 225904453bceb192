/* sites.h: TransformerLens hook sites, their names, their buffers, and the activation basis.
 *
 * The basis (FIELD-FACTS section 2) is explicit everywhere a site's value is read or written:
 *  SG_BASIS_PROCESSED  TransformerLens's default weight processing (fold_ln,
 *                      center_writing_weights, center_unembed, fold_value_biases):
 *                      residual-stream sites = HF value minus its mean over d_model;
 *                      attn.hook_z = HF z minus (b_V + ln_1.bias @ W_V) per head;
 *                      mlp.hook_post = HF value.
 *  SG_BASIS_RAW        plain Hugging Face values.
 * Writing a processed residual value back into the HF stream is exact because every read of
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

typedef enum { SG_BASIS_PROCESSED, SG_BASIS_RAW, SG_BASIS_COUNT } Basis;

typedef struct {
    SiteKind kind;
    size_t layer; /* unused for hook_embed / hook_pos_embed */
} Site;

const char *basis_name(Basis b);        /* "processed" | "raw" */
int basis_parse(const char *s, Basis *out);

/* Parses a TransformerLens hook name; checks the layer against n_layer. 0 or -1 with a
 * pending error naming the site (`where` is the option or file it came from). */
int site_parse(Site *out, const char *name, size_t n_layer, const char *where);

/* The canonical hook name, e.g. "blocks.6.hook_resid_pre". */
void site_name(char *buf, size_t cap, Site s);

/* Width of the site's vector: D, or 4D for mlp.hook_post. */
size_t site_width(Site s, const Gpt2Config *c);

/* Whether the site lives in the residual stream (centered in the processed basis). */
int site_is_residual(SiteKind k);

/* The HF buffer (B*T rows of site_width) holding the site in the last pass. */
float *site_buffer(const Activations *a, Site s);

/* out (N, width) = the site's value for rows [row0, row0+N) in `basis`. */
void site_read(float *out, const Activations *a, const Gpt2Model *m, Site s, Basis basis, size_t row0, size_t N);

/* Number of sites a model has and the i-th in canonical order (embed, pos_embed, then per
 * layer resid_pre, attn.hook_z, attn_out, resid_mid, mlp.hook_post, mlp_out, resid_post). */
size_t site_count(size_t n_layer);
Site site_at(size_t i);

/* Writes x (N rows of the site's width, in `basis`) into the site's HF buffer, for the rows
 * with mask[r] != 0 only. Residual-stream values are written as they are (the LayerNorms
 * downstream remove the mean, so a centered value gives TransformerLens's result exactly);
 * processed attn.hook_z adds the folded value bias back. */
void site_write(Activations *a, const Gpt2Model *m, Site s, Basis basis, const float *x, const unsigned char *mask,
                size_t N);

/* Where a pass restarts after the site's buffer changed: layer (n_layer = only ln_f) and stage. */
ForwardStage site_restart(Site s, size_t *layer);

/* Canonical index of a site in the model (stable: used to key random draws). */
size_t site_index(Site s);

#endif
