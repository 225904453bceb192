/* fuzz_sae_cfg: an SAE cfg.json, SAELens's of any generation (legacy, flat, v6; src/sae_saelens.c) or
 * EleutherAI sparsify's (src/sae_sparsify.c: the folder is named layers.1, so a sparsify cfg
 * gets a hook, and sae.safetensors holds the fixture's sparsify weights):
 * sae_read_cfg (what `saegap info` reads), then sae_load against the fixture model with the
 * fixture's weights (d_in 8, d_sae 16: the tensors of the architecture sae_read_cfg found, as
 * sae_load refuses any other), and, when that loads,
 * the SAE's encode/decode on 4 rows, which uses what the cfg says (architecture, k,
 * normalisation, b_dec on the input). */
#include "fuzz_common.h"

#include "model.h"
#include "sae.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

typedef struct { const char *dir; uint32_t h; } Arg;

static void body(void *arg) {
    const Arg *a = arg;
    Sae s;
    const char *arch = "standard";
    if (sae_read_cfg(&s, a->dir, NULL) == 0) {
        if (s.arch != SAE_GROUPMAX) arch = sae_arch_name(s.arch); /* groupmax: sparsify's sae.safetensors */
        sae_free(&s);
    }
    char weights[1024];
    snprintf(weights, sizeof weights, "%s/sae-%s/sae_weights.safetensors", fuzz_fixture(), arch);
    fuzz_link_in(a->dir, "sae_weights.safetensors", weights);
    SaeLoadOptions opt = {0};
    opt.allow_model_mismatch = (a->h & 1) != 0;
    if (a->h & 2) opt.has_override = 1, opt.basis = (Basis)((a->h >> 2) & 7u);
    if (sae_load(&s, a->dir, fuzz_fixture_model(), fuzz_fixture_model()->cfg.name, &opt) != 0) return;
    if (s.norm == SAE_NORM_EXPECTED_AVERAGE) sae_norm_factors_apply(&s, sizeof s, 1, "1.5");
    enum { N = 4 };
    float *x = calloc(N * s.d_in, sizeof(float)), *x_hat = calloc(N * s.d_in, sizeof(float));
    float *f = calloc(N * s.d_sae, sizeof(float));
    if (!x || !x_hat || !f) abort();
    uint32_t r = a->h | 1u;
    for (size_t i = 0; i < N * s.d_in; i++) {
        r ^= r << 13, r ^= r >> 17, r ^= r << 5;
        x[i] = (float)((double)r / 4294967296.0 * 4.0 - 2.0);
    }
    SaeScratch w;
    sae_scratch_alloc(&w, &s, N);
    sae_forward(f, x_hat, &s, &w, x, N);
    sae_decode(x_hat, &s, &w, f, N);
    sae_scratch_free(&w);
    free(x), free(x_hat), free(f);
    sae_free(&s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_begin("sae_cfg", data, size);
    (void)fuzz_fixture_model(); /* loaded once, outside the input's guard */
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/layers.1", fuzz_mkdir());
    if (mkdir(dir, 0700) != 0) abort();
    fuzz_write_in(dir, "cfg.json", data, size);
    char weights[1024];
    snprintf(weights, sizeof weights, "%s/sae-sparsify/sae.safetensors", fuzz_fixture());
    fuzz_link_in(dir, "sae.safetensors", weights);
    Arg a = {dir, fuzz_hash(data, size)};
    fuzz_guard(body, &a);
    fuzz_done();
    return 0;
}
