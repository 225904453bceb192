/* sites.c: hook names, site buffers and basis conversion (see sites.h). */
#include "sites.h"

#include "error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The name table is part of the result-file contract: lock it to the enum. */
static const char *const SITE_SUFFIX[SG_SITE_KIND_COUNT] = {
    [SG_SITE_EMBED] = "hook_embed",
    [SG_SITE_POS_EMBED] = "hook_pos_embed",
    [SG_SITE_RESID_PRE] = "hook_resid_pre",
    [SG_SITE_RESID_MID] = "hook_resid_mid",
    [SG_SITE_RESID_POST] = "hook_resid_post",
    [SG_SITE_ATTN_OUT] = "hook_attn_out",
    [SG_SITE_MLP_OUT] = "hook_mlp_out",
    [SG_SITE_ATTN_Z] = "attn.hook_z",
    [SG_SITE_MLP_POST] = "mlp.hook_post",
};
_Static_assert(SG_SITE_KIND_COUNT == 9, "update SITE_SUFFIX and the canonical order with the enum");

/* Recorded in result files (attribute `basis`): lock the names to the bits. */
static const char *const BASIS_NAME[8] = {
    [SG_BASIS_RAW] = "raw",
    [SG_BASIS_CENTER_WRITING_WEIGHTS] = "center_writing_weights",
    [SG_BASIS_FOLD_LN] = "fold_ln",
    [SG_BASIS_CENTER_WRITING_WEIGHTS | SG_BASIS_FOLD_LN] = "center_writing_weights+fold_ln",
    [SG_BASIS_FOLD_VALUE_BIASES] = "fold_value_biases",
    [SG_BASIS_CENTER_WRITING_WEIGHTS | SG_BASIS_FOLD_VALUE_BIASES] = "center_writing_weights+fold_value_biases",
    [SG_BASIS_FOLD_LN | SG_BASIS_FOLD_VALUE_BIASES] = "fold_ln+fold_value_biases",
    [SG_BASIS_PROCESSED] = "processed",
};
static const char *const FLAG_NAME[SG_BASIS_FLAG_COUNT] = {"center_writing_weights", "fold_ln", "fold_value_biases"};
_Static_assert(SG_BASIS_PROCESSED == 7 && SG_BASIS_FLAG_COUNT == 3, "update BASIS_NAME and FLAG_NAME with the flags");

const char *basis_name(Basis b) { return BASIS_NAME[b & SG_BASIS_PROCESSED]; }
const char *basis_flag_name(int i) { return FLAG_NAME[i]; }
Basis basis_flag_bit(int i) { return 1u << i; }

int basis_parse(const char *s, Basis *out) {
    for (Basis b = 0; b <= SG_BASIS_PROCESSED; b++)
        if (strcmp(s, BASIS_NAME[b]) == 0) { *out = b; return 0; }
    /* any order of '+'-joined flag names, each at most once */
    Basis b = 0;
    const char *p = s;
    while (*p) {
        size_t len = strcspn(p, "+");
        int found = -1;
        for (int i = 0; i < SG_BASIS_FLAG_COUNT; i++)
            if (strlen(FLAG_NAME[i]) == len && strncmp(p, FLAG_NAME[i], len) == 0) found = i;
        if (found < 0 || (b & basis_flag_bit(found))) return -1;
        b |= basis_flag_bit(found);
        p += len;
        if (*p == '+' && *++p == '\0') return -1;
    }
    if (p == s) return -1;
    *out = b;
    return 0;
}

/* The per-head value bias the basis removes from attn.hook_z, or NULL (FIELD-FACTS section 2:
 * fold_ln first folds ln_1.bias @ W_V into b_V, then fold_value_biases moves b_V into b_O). */
static const float *removed_value_bias(const Gpt2Model *m, Site s, Basis basis) {
    if (s.kind != SG_SITE_ATTN_Z || !(basis & SG_BASIS_FOLD_VALUE_BIASES)) return NULL;
    if (basis & SG_BASIS_FOLD_LN) return m->value_bias_folded + s.layer * z_width(&m->cfg);
    return m->value_bias + s.layer * z_width(&m->cfg); /* b_V alone */
}

static int is_global(SiteKind k) { return k == SG_SITE_EMBED || k == SG_SITE_POS_EMBED; }

int site_is_residual(SiteKind k) { return k != SG_SITE_ATTN_Z && k != SG_SITE_MLP_POST; }

const char *site_missing_reason(SiteKind k, const Gpt2Config *c) {
    if (k == SG_SITE_RESID_MID && c->parallel_residual)
        return "the model's attention and MLP read the same residual stream in parallel "
               "(GPT-NeoX's use_parallel_residual), so it has no hook_resid_mid";
    if (k == SG_SITE_POS_EMBED && !c->learned_positions)
        return "the model has rotary position embeddings, so it has no hook_pos_embed";
    return NULL;
}

/* The site exists in the model (c NULL: any model). */
static int check_exists(const Site *s, const char *name, const Gpt2Config *c, const char *where) {
    const char *why = c ? site_missing_reason(s->kind, c) : NULL;
    return why ? sg_errorf(where, "site '%s' does not exist in %s: %s", name, c->architecture, why) : 0;
}

int site_parse(Site *out, const char *name, const Gpt2Config *c, const char *where) {
    const size_t n_layer = c ? c->n_layer : (size_t)1 << 20;
    for (int k = 0; k < SG_SITE_KIND_COUNT; k++)
        if (is_global((SiteKind)k) && strcmp(name, SITE_SUFFIX[k]) == 0) {
            *out = (Site){(SiteKind)k, 0};
            return check_exists(out, name, c, where);
        }
    if (strncmp(name, "blocks.", 7) == 0) {
        const char *p = name + 7;
        char *end = NULL;
        if (*p >= '0' && *p <= '9') {
            unsigned long layer = strtoul(p, &end, 10);
            if (end && *end == '.') {
                for (int k = 0; k < SG_SITE_KIND_COUNT; k++)
                    if (!is_global((SiteKind)k) && strcmp(end + 1, SITE_SUFFIX[k]) == 0) {
                        if (layer >= n_layer)
                            return sg_errorf(where, "site '%s': layer %lu does not exist (the model has %zu layers, 0..%zu)",
                                             name, layer, n_layer, n_layer - 1);
                        *out = (Site){(SiteKind)k, (size_t)layer};
                        return check_exists(out, name, c, where);
                    }
            }
        }
    }
    return sg_errorf(where,
                     "unknown site '%s' (TransformerLens hook names: hook_embed, hook_pos_embed, "
                     "blocks.L.{hook_resid_pre,hook_resid_mid,hook_resid_post,hook_attn_out,hook_mlp_out,"
                     "attn.hook_z,mlp.hook_post})",
                     name);
}

void site_name(char *buf, size_t cap, Site s) {
    if (is_global(s.kind)) snprintf(buf, cap, "%s", SITE_SUFFIX[s.kind]);
    else snprintf(buf, cap, "blocks.%zu.%s", s.layer, SITE_SUFFIX[s.kind]);
}

size_t site_width(Site s, const Gpt2Config *c) {
    return s.kind == SG_SITE_MLP_POST ? c->n_inner : s.kind == SG_SITE_ATTN_Z ? z_width(c) : c->n_embd;
}

float *site_buffer(const Activations *a, Site s) {
    size_t l = s.layer, D = a->D;
    switch (s.kind) {
    case SG_SITE_EMBED: return a->embed;
    case SG_SITE_POS_EMBED: return a->pos_embed;
    case SG_SITE_RESID_PRE: return acts_resid(a, l);
    case SG_SITE_RESID_MID: return acts_layer(a, a->resid_mid, l, D);
    case SG_SITE_RESID_POST: return acts_resid(a, l + 1);
    case SG_SITE_ATTN_OUT: return acts_layer(a, a->attn_out, l, D);
    case SG_SITE_MLP_OUT: return acts_layer(a, a->mlp_out, l, D);
    case SG_SITE_ATTN_Z: return acts_layer(a, a->z, l, a->Z);
    case SG_SITE_MLP_POST: return acts_layer(a, a->fc_act, l, a->F);
    case SG_SITE_KIND_COUNT: break;
    }
    sg_fatal("sites", "invalid site kind %d", (int)s.kind);
}

void site_read(float *out, const Activations *a, const Gpt2Model *m, Site s, Basis basis, size_t row0, size_t N) {
    size_t W = site_width(s, &m->cfg);
    const float *src = site_buffer(a, s) + row0 * W;
    memcpy(out, src, N * W * sizeof(float));
    const float *bv = removed_value_bias(m, s, basis);
    /* TransformerLens centres the writing weights of LayerNorm models only: with RMSNorm (Gemma-2)
     * center_writing_weights changes nothing (FAMILIES-FACTS section 3) */
    if (site_is_residual(s.kind) && (basis & SG_BASIS_CENTER_WRITING_WEIGHTS) && m->cfg.norm == SG_NORM_LAYER) {
        /* center_writing_weights: subtract the mean over d_model (double accumulation) */
        for (size_t n = 0; n < N; n++) {
            float *x = out + n * W;
            double mean = 0;
            for (size_t i = 0; i < W; i++) mean += x[i];
            mean /= (double)W;
            for (size_t i = 0; i < W; i++) x[i] = (float)((double)x[i] - mean);
        }
    } else if (bv) {
        for (size_t n = 0; n < N; n++)
            for (size_t i = 0; i < W; i++) out[n * W + i] -= bv[i];
    }
}

size_t site_count(size_t n_layer) { return 2 + 7 * n_layer; }

Site site_at(size_t i) {
    static const SiteKind per_layer[7] = {SG_SITE_RESID_PRE, SG_SITE_ATTN_Z,   SG_SITE_ATTN_OUT, SG_SITE_RESID_MID,
                                          SG_SITE_MLP_POST,  SG_SITE_MLP_OUT, SG_SITE_RESID_POST};
    if (i == 0) return (Site){SG_SITE_EMBED, 0};
    if (i == 1) return (Site){SG_SITE_POS_EMBED, 0};
    return (Site){per_layer[(i - 2) % 7], (i - 2) / 7};
}

void site_write(Activations *a, const Gpt2Model *m, Site s, Basis basis, const float *x, const unsigned char *mask,
                size_t row0, size_t N) {
    size_t W = site_width(s, &m->cfg), P = a->P, T = a->prefix ? a->prefix->T : a->T;
    float *dst = site_buffer(a, s) + row0 * W;
    const float *bv = removed_value_bias(m, s, basis);
    for (size_t n = 0; n < N; n++) {
        if (!mask[n]) continue;
        const size_t t = n % T, r = n / T * a->T + (t - P); /* row n's place in the pass */
        if (t < P || t >= P + a->T)
            sg_fatal("sites", "a pass of positions [%zu, %zu) cannot change position %zu", P, P + a->T, t);
        for (size_t i = 0; i < W; i++) dst[r * W + i] = bv ? x[n * W + i] + bv[i] : x[n * W + i];
    }
    if (s.kind == SG_SITE_EMBED || s.kind == SG_SITE_POS_EMBED)
        sg_fatal("sites", "writing %s is not supported", s.kind == SG_SITE_EMBED ? "hook_embed" : "hook_pos_embed");
}

ForwardStage site_restart(Site s, size_t *layer) {
    *layer = s.layer;
    switch (s.kind) {
    case SG_SITE_RESID_PRE: return SG_STAGE_ATTN;
    case SG_SITE_ATTN_Z: return SG_STAGE_ATTN_PROJ;
    case SG_SITE_ATTN_OUT: return SG_STAGE_ATTN_RESID;
    case SG_SITE_RESID_MID: return SG_STAGE_MLP;
    case SG_SITE_MLP_POST: return SG_STAGE_MLP_PROJ;
    case SG_SITE_MLP_OUT: return SG_STAGE_MLP_RESID;
    case SG_SITE_RESID_POST: *layer = s.layer + 1; return SG_STAGE_ATTN;
    default: break;
    }
    sg_fatal("sites", "no restart point for site kind %d", (int)s.kind);
}

ForwardStage site_restart_from_clean(Activations *work, const Activations *clean, Site s, const Gpt2Config *c,
                                     size_t copies, size_t P, size_t Tq, size_t *layer) {
    ForwardStage stage = site_restart(s, layer);
    const size_t T = clean->T, B = clean->B;
    if (copies * B * Tq > work->B_max * work->T_max || T > work->T_max || Tq == 0 || P + Tq > T)
        sg_fatal("sites", "%zu copies of a batch of %zu x %zu from position %zu exceed the planned buffers (%zu x %zu)",
                 copies, B, T, P, work->B_max, work->T_max);
    if (P > 0 && !clean->all_layers) sg_fatal("sites", "a suffix pass needs a prefix pass with every layer kept");
    if (P == 0 && Tq != T) sg_fatal("sites", "a pass from position 0 computes every position");
    work->B = copies * B, work->T = Tq, work->P = P, work->prefix = P > 0 ? clean : NULL;
    const size_t D = clean->D, W = site_width(s, c);
    const float *site = site_buffer(clean, s);
    const float *resid = *layer < c->n_layer ? acts_resid(clean, *layer) : NULL;
    const float *resid_mid = *layer < c->n_layer ? acts_layer(clean, clean->resid_mid, *layer, D) : NULL;
    float *w_site = site_buffer(work, s), *w_resid = resid ? acts_resid(work, *layer) : NULL;
    float *w_resid_mid = resid ? acts_layer(work, work->resid_mid, *layer, D) : NULL;
    /* the parallel residual adds the layer's attn_out after the MLP: a pass restarted inside
     * the MLP reads the clean one (sequential models have it in resid_mid already) */
    const int attn_out_read = resid && c->parallel_residual && stage >= SG_STAGE_MLP;
    const float *attn_out = attn_out_read ? acts_layer(clean, clean->attn_out, *layer, D) : NULL;
    float *w_attn_out = attn_out_read ? acts_layer(work, work->attn_out, *layer, D) : NULL;
    /* positions [P, P + Tq) of every context, in every copy */
    for (size_t k = 0; k < copies; k++)
        for (size_t b = 0; b < B; b++) {
            const size_t from = b * T + P, to = (k * B + b) * Tq;
            memcpy(w_site + to * W, site + from * W, Tq * W * sizeof(float));
            if (resid) {
                memcpy(w_resid + to * D, resid + from * D, Tq * D * sizeof(float));
                memcpy(w_resid_mid + to * D, resid_mid + from * D, Tq * D * sizeof(float));
            }
            if (attn_out_read) memcpy(w_attn_out + to * D, attn_out + from * D, Tq * D * sizeof(float));
        }
    return stage;
}

size_t site_index(Site s) {
    for (size_t i = 0;; i++) {
        Site t = site_at(i);
        if (t.kind == s.kind && t.layer == s.layer) return i;
        if (i > 7 * (s.layer + 2)) sg_fatal("sites", "site not in canonical order");
    }
}

void site_keep_layers(unsigned char *keep, const Site *sites, size_t n, const Gpt2Config *c) {
    memset(keep, 0, c->n_layer);
    for (size_t i = 0; i < n; i++) {
        if (is_global(sites[i].kind)) continue;
        size_t restart;
        site_restart(sites[i], &restart);
        keep[sites[i].layer] = 1;
        if (restart < c->n_layer) keep[restart] = 1;
    }
}

size_t site_layers_needed(const Site *sites, size_t n) {
    size_t end = 0;
    for (size_t i = 0; i < n; i++) {
        const Site t = sites[i];
        const size_t past = is_global(t.kind)                ? 0
                            : t.kind == SG_SITE_RESID_PRE    ? t.layer /* resid[l]: layer l - 1's output */
                                                             : t.layer + 1;
        end = past > end ? past : end;
    }
    return end;
}
