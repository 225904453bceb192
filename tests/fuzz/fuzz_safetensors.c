/* fuzz_safetensors: the safetensors header and tensor table (src/safetensors.c): open, find
 * every tensor by name, check it against its own shape, convert float tensors to float32. */
#include "fuzz_common.h"

#include "safetensors.h"

#include <stdlib.h>

static void body(void *arg) {
    const char *path = arg;
    Safetensors st;
    if (safetensors_open(&st, path) != 0) return;
    for (size_t i = 0; i < st.n_tensors; i++) {
        const SafetensorsTensor *t = &st.tensors[i];
        const SafetensorsTensor *found = safetensors_find(&st, t->name), *checked = NULL;
        if (!found) abort(); /* every tensor of the table is found by its name */
        if (safetensors_expect(&st, t->name, &checked, t->ndim, t->shape) == 0 && checked->numel <= (1u << 22)) {
            float *out = malloc((checked->numel ? checked->numel : 1) * sizeof(float));
            if (!out) abort();
            safetensors_to_f32(out, &st, checked);
            free(out);
        }
    }
    safetensors_close(&st);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_begin("safetensors", data, size);
    fuzz_guard(body, (void *)fuzz_write(".safetensors", data, size));
    fuzz_done();
    return 0;
}
