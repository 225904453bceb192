/* fuzz_tokens_npy: a .npy token file (src/tokens.c load_npy): all contexts, the first one
 * (--contexts 1), the file's own --ctx, then the vocabulary check. */
#include "fuzz_common.h"

#include "tokens.h"

static void body(void *arg) {
    const char *path = arg;
    TokenSet ts;
    size_t ctx = 0;
    if (tokens_load(&ts, path, 0, 0) == 0) {
        ctx = ts.ctx;
        tokens_check(&ts, path, 50257, 1024);
        tokens_free(&ts);
    }
    if (tokens_load(&ts, path, ctx, 1) == 0) {
        tokens_check(&ts, path, 211, 40);
        tokens_free(&ts);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_begin("tokens_npy", data, size);
    fuzz_guard(body, (void *)fuzz_write(".npy", data, size));
    fuzz_done();
    return 0;
}
