/* sae_gemma_scope.c: Gemma Scope SAE folders (params.npz, no cfg.json) described as a saegap Sae
 * (sae.h). FAMILIES-FACTS section 4(a): JumpReLU, pre = x W_enc + b_enc (no b_dec subtracted),
 * f = pre where pre > threshold, x_hat = f W_dec + b_dec; trained on the model's raw activations.
 * The archive names no site: Google's folders do (gemma-scope-2b-pt-res/layer_L/width_16k/
 * average_l0_K: res = blocks.L.hook_resid_post, mlp = blocks.L.hook_mlp_out (after the
 * post-feedforward norm), att = blocks.L.attn.hook_z flattened head-major), or --sae-hook. The
 * format table's row SAE_FORMAT_GEMMA_SCOPE_ROW (sae_format.h). */
#include "sae_format.h"

#include "error.h"
#include "nodeblock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The arrays, their shapes in terms of (d_in, d_sae), and where they go. */
typedef struct { const char *name; int ndim; int dims[2]; } GsArray; /* dims: 0 = d_in, 1 = d_sae */
static const GsArray ARRAYS[] = {
    {"W_enc", 2, {0, 1}}, {"W_dec", 2, {1, 0}}, {"b_enc", 1, {1, 0}}, {"b_dec", 1, {0, 0}}, {"threshold", 1, {1, 0}},
};
#define N_ARRAYS (sizeof ARRAYS / sizeof ARRAYS[0])

static const float **slot(Sae *s, size_t i) {
    const float **slots[N_ARRAYS] = {&s->W_enc, &s->W_dec, &s->b_enc, &s->b_dec, &s->threshold};
    return slots[i];
}

/* blocks.L.<hook> from a path holding ".../gemma-scope-...-{res,mlp,att}.../layer_L/..." */
static int hook_from_path(const char *dir, char *out, size_t cap) {
    const char *kind = NULL;
    long layer = -1;
    for (const char *p = dir; *p;) {
        size_t len = strcspn(p, "/");
        char part[256];
        snprintf(part, sizeof part, "%.*s", (int)(len < 255 ? len : 255), p);
        if (!strncmp(part, "gemma-scope", 11)) {
            if (strstr(part, "-res")) kind = "hook_resid_post";
            else if (strstr(part, "-mlp")) kind = "hook_mlp_out";
            else if (strstr(part, "-att")) kind = "attn.hook_z";
        }
        char *end;
        if (!strncmp(part, "layer_", 6) && part[6] >= '0' && part[6] <= '9') {
            long v = strtol(part + 6, &end, 10);
            if (!*end && v < 100000) layer = v;
        }
        p += len;
        while (*p == '/') p++;
    }
    if (!kind || layer < 0) return -1;
    snprintf(out, cap, "blocks.%ld.%s", layer, kind);
    return 0;
}

/* A folder holding params.npz (and no cfg.json: sae_formats.c tries the cfg rows first). */
static int gemma_scope_claims(const struct cJSON *cfg) { (void)cfg; return 1; }

static int gemma_scope_site(const SaeFormatIn *in, SaeFormatSite *out) {
    out->hook = hook_from_path(in->dir, out->buf, sizeof out->buf) == 0 ? out->buf : NULL;
    snprintf(out->where, sizeof out->where, "its path");
    out->missing = "a Gemma Scope SAE's path says its site (.../gemma-scope-2b-pt-{res,mlp,att}/layer_L/...: "
                   "res = hook_resid_post, mlp = hook_mlp_out, att = attn.hook_z); this one's does not: "
                   "give it with --sae-hook";
    return 0;
}

/* SAELens's loader (gemma_2_sae_huggingface_loader) drops an all-ones scaling_factor and refuses
 * any other (finetuning_scaling_factor is false for Gemma Scope); its strict load_state_dict
 * refuses arrays no JumpReLU SAE has. saegap does the same, by name. */
static int refuse_other_arrays(Sae *s, const char *path) {
    for (size_t m = 0; m < s->npz.n; m++) {
        const char *name = s->npz.members[m].name;
        size_t len = strlen(name);
        int known = 0;
        for (size_t i = 0; i < N_ARRAYS; i++)
            known |= len == strlen(ARRAYS[i].name) + 4 && !strncmp(name, ARRAYS[i].name, len - 4) && !strcmp(name + len - 4, ".npy");
        if (known) continue;
        if (!strcmp(name, "scaling_factor.npy")) {
            NpyHeader sh;
            if (npz_header(&s->npz, &s->npz.members[m], &sh)) return -1;
            if (sh.ndim != 1 || sh.shape[0] != s->d_sae)
                return sg_errorf(path, "array scaling_factor must have shape (%zu,) like b_enc", s->d_sae);
            float *v = sg_xcalloc(s->d_sae, sizeof(float));
            int rc = npz_read_f32(&s->npz, &s->npz.members[m], v, s->d_sae);
            size_t off = 0;
            while (rc == 0 && off < s->d_sae && v[off] == 1.0f) off++;
            const double bad = rc == 0 && off < s->d_sae ? v[off] : 1.0;
            free(v);
            if (rc) return -1;
            if (off < s->d_sae)
                return sg_errorf(path, "array scaling_factor is %.9g at latent %zu, not all ones: a scaling factor on the "
                                       "code is not part of Gemma Scope's JumpReLU (SAELens refuses it too): not supported",
                                 bad, off);
            continue;
        }
        return sg_errorf(path, "holds array '%.*s', which Gemma Scope's JumpReLU SAE does not have (W_enc, W_dec, b_enc, "
                               "b_dec, threshold; SAELens refuses it too): not supported", (int)(len > 4 ? len - 4 : len), name);
    }
    return 0;
}

/* The SAE from the archive's directory and headers; every value is read by open_weights. */
static int gemma_scope_read(Sae *s, const SaeFormatIn *in) {
    const char *path = in->cfg_path;
    s->model_name = sg_xstrdup(""); /* params.npz names no model */
    s->arch = SAE_JUMPRELU;
    s->norm = SAE_NORM_NONE;
    s->apply_b_dec_to_input = 0; /* Gemma Scope encodes x, not x - b_dec */
    if (npz_open(&s->npz, path)) return -1;
    NpyHeader h[N_ARRAYS];
    for (size_t i = 0; i < N_ARRAYS; i++) {
        const NpzMember *mem = npz_find(&s->npz, ARRAYS[i].name);
        if (!mem) return sg_errorf(path, "has no array %s (Gemma Scope's: W_enc, W_dec, b_enc, b_dec, threshold)", ARRAYS[i].name);
        if (npz_header(&s->npz, mem, &h[i])) return -1;
        if (h[i].ndim != (size_t)ARRAYS[i].ndim)
            return sg_errorf(path, "array %s has %zu dimension(s), expected %d", ARRAYS[i].name, h[i].ndim, ARRAYS[i].ndim);
    }
    s->d_in = h[0].shape[0], s->d_sae = h[0].shape[1];
    if (s->d_in == 0 || s->d_sae == 0 || s->d_in > 2147483647u || s->d_sae > 2147483647u)
        return sg_errorf(path, "W_enc has shape (%zu, %zu): not an SAE's (d_in, d_sae)", s->d_in, s->d_sae);
    for (size_t i = 1; i < N_ARRAYS; i++)
        for (int d = 0; d < ARRAYS[i].ndim; d++) {
            const size_t want = ARRAYS[i].dims[d] ? s->d_sae : s->d_in;
            if (h[i].shape[d] != want)
                return sg_errorf(path, "array %s has %zu in dimension %d, expected %zu (W_enc is %zu x %zu)", ARRAYS[i].name,
                                 h[i].shape[d], d, want, s->d_in, s->d_sae);
        }
    return refuse_other_arrays(s, path);
}

static size_t count_of(const Sae *s, size_t i) {
    return ARRAYS[i].ndim == 2 ? s->d_in * s->d_sae : ARRAYS[i].dims[0] ? s->d_sae : s->d_in;
}

/* Every value read once: a damaged archive ends before any collective. */
static int gemma_scope_check_values(Sae *s) {
    for (size_t i = 0; i < N_ARRAYS; i++) {
        const size_t n = count_of(s, i);
        const char *prev = sg_alloc_for(s->npz.path);
        float *tmp = sg_xcalloc(n, sizeof(float));
        sg_alloc_for(prev);
        int rc = npz_read_f32(&s->npz, npz_find(&s->npz, ARRAYS[i].name), tmp, n);
        free(tmp);
        if (rc) return -1;
    }
    npz_drop_pages(&s->npz); /* read again once per node, by place */
    return 0;
}

static size_t aligned(size_t n) { return (n + 15) / 16 * 16; }

static size_t gemma_scope_floats(const Sae *s) {
    size_t f = 0;
    for (size_t i = 0; i < N_ARRAYS; i++) f += aligned(count_of(s, i));
    return f;
}

/* the arrays leave alignment gaps: the whole block starts zeroed */
static size_t gemma_scope_zeroed_from(const Sae *s) { return (void)s, 0; }

static void gemma_scope_place(Sae *s, float *block, int fill, int part, int parts) {
    (void)part, (void)parts; /* read by the node's filler alone */
    size_t at = 0;
    for (size_t i = 0; i < N_ARRAYS; i++) {
        if (fill && npz_read_f32(&s->npz, npz_find(&s->npz, ARRAYS[i].name), block + at, count_of(s, i)))
            sg_fatal(s->npz.path, "array %s changed while loading: %s", ARRAYS[i].name, sg_error_message());
        *slot(s, i) = block + at;
        at += aligned(count_of(s, i));
    }
    npz_drop_pages(&s->npz); /* its pages no longer counted in the rank's memory */
}

static int gemma_scope_settle(Sae *s, const SaeFormatIn *in) { (void)s, (void)in; return 0; }

static int gemma_scope_basis(Sae *s, const SaeFormatIn *in) {
    (void)in;
    s->basis = SG_BASIS_RAW;
    snprintf(s->basis_source, sizeof s->basis_source,
             "Gemma Scope SAE: trained on the model's raw activations (SAELens loads it with from_pretrained_no_processing)");
    return 0;
}

static SaeWeightsFile gemma_scope_file(const Sae *s) { return (SaeWeightsFile){s->npz.path, s->npz.map, s->npz.size}; }

const SaeFormatOps SAE_FORMAT_GEMMA_SCOPE_ROW = {
    SAE_FORMAT_GEMMA_SCOPE, "params.npz", "Gemma Scope SAE (params.npz; site from the path or --sae-hook)",
    gemma_scope_claims, gemma_scope_site, gemma_scope_read, gemma_scope_settle, gemma_scope_basis,
    gemma_scope_check_values,
    gemma_scope_floats, gemma_scope_zeroed_from, gemma_scope_place, gemma_scope_file,
};
