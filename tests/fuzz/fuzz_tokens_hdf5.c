/* fuzz_tokens_hdf5: an HDF5 token file, dataset `tokens` [n, ctx] (src/tokens.c through
 * h5out.c h5_read_int_matrix): all contexts, the first one, the file's own --ctx, then the
 * vocabulary check. The bytes are HDF5's format: libhdf5 parses them, saegap reads the
 * dataset's type, shape and values. */
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
    if (tokens_load(&ts, path, ctx, 1) == 0) tokens_free(&ts);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_begin("tokens_hdf5", data, size);
    fuzz_guard(body, (void *)fuzz_write(".h5", data, size));
    fuzz_done();
    return 0;
}
