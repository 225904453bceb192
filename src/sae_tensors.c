/* sae_tensors.c: an SAE's tensors from one safetensors file (see sae_tensors.h). */
#include "sae_tensors.h"

#include "error.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct { const char *name; const float **dst; int ndim; int64_t s0, s1; int optional; } SaeTensor;

/* a tensor the architecture does not use (W_skip, a threshold on a topk SAE, ...) would be
 * dropped silently: the trainers' load_state_dict (strict) refuses it, and so does saegap */
static int refuse_unused(const Sae *s, const SaeTensor *spec, size_t n_spec, const char *path, const char *trainer) {
    for (size_t t = 0; t < s->st.n_tensors; t++) {
        const char *name = s->st.tensors[t].name;
        int used = 0;
        for (size_t i = 0; i < n_spec; i++)
            used |= !strcmp(name, spec[i].name) && (!spec[i].optional || !strcmp(name, "scaling_factor"));
        if (!used)
            return sg_errorf(path, "tensor '%s' is not part of a %s SAE (%s's strict load_state_dict refuses it too): "
                             "not supported", name, sae_arch_name(s->arch), trainer);
    }
    return 0;
}

static int take_tensors(Sae *s, const SaeTensor *spec, const SafetensorsTensor **found, size_t n_spec, const char *path) {
    size_t total = 0;
    for (size_t i = 0; i < n_spec; i++) {
        int needed = !spec[i].optional;
        if (!needed && !safetensors_find(&s->st, spec[i].name)) continue;
        if (!needed && strcmp(spec[i].name, "scaling_factor") != 0) continue;
        int64_t shape[2] = {spec[i].s0, spec[i].s1};
        if (safetensors_expect(&s->st, spec[i].name, &found[i], spec[i].ndim, shape)) return -1;
        if (sg_add_overflow(total, found[i]->numel, &total)) return sg_errorf(path, "tensor sizes overflow");
    }
    /* F32 weights are used in place (13 SAEs of gpt2-small-res-jb are 2 GB: a copy per rank
     * would decide how many ranks fit on a node); F16/BF16 are checked here and converted by
     * sae_place, once per node */
    s->pending = sg_xcalloc(n_spec, sizeof *s->pending);
    for (size_t i = 0; i < n_spec; i++) {
        if (!found[i]) continue;
        if (safetensors_is_f32_view(found[i])) {
            if (safetensors_f32(spec[i].dst, NULL, &s->st, found[i])) return -1;
        } else {
            if (safetensors_check_f32(&s->st, found[i])) return -1;
            s->pending[s->n_pending++] = (SafetensorsPending){found[i], spec[i].dst};
        }
    }
    return 0;
}

int sae_tensors_open(Sae *s, const SaeTensorNames *names) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", s->dir, names->file);
    if (safetensors_open(&s->st, path)) return -1;
    const char *prev_alloc = sg_alloc_for(s->st.path); /* the sizes below are the file's */
    const int64_t I = (int64_t)s->d_in, F = (int64_t)s->d_sae;
    const int oi = names->enc_out_in;
    const SaeTensor spec[] = {
        {names->enc_w, &s->W_enc, 2, oi ? F : I, oi ? I : F, 0},
        {names->enc_b, &s->b_enc, 1, F, 0, s->arch == SAE_GATED},
        {"W_dec", &s->W_dec, 2, F, I, 0},
        {"b_dec", &s->b_dec, 1, I, 0, 0},
        {"threshold", &s->threshold, 1, F, 0, s->arch != SAE_JUMPRELU},
        {"b_gate", &s->b_gate, 1, F, 0, s->arch != SAE_GATED},
        {"b_mag", &s->b_mag, 1, F, 0, s->arch != SAE_GATED},
        {"r_mag", &s->r_mag, 1, F, 0, s->arch != SAE_GATED},
        {"scaling_factor", &s->scaling_factor, 1, F, 0, 1},
    };
    const size_t n_spec = sizeof spec / sizeof spec[0];
    const SafetensorsTensor *found[sizeof spec / sizeof spec[0]] = {0};
    int rc = refuse_unused(s, spec, n_spec, path, names->trainer) ? -1 : take_tensors(s, spec, found, n_spec, path);
    sg_alloc_for(prev_alloc);
    return rc;
}

size_t sae_tensors_floats(const Sae *s) { return safetensors_pending_floats(s->pending, s->n_pending); }

/* safetensors_place writes every byte of its block */
size_t sae_tensors_zeroed_from(const Sae *s) { return sae_tensors_floats(s) * sizeof(float); }

void sae_tensors_place(Sae *s, float *block, int fill, int part, int parts) {
    (void)fill; /* every rank of the node converts its part */
    safetensors_place(block, &s->st, s->pending, s->n_pending, part, parts);
}

SaeWeightsFile sae_tensors_file(const Sae *s) { return (SaeWeightsFile){s->st.path, s->st.map, s->st.map_size}; }
