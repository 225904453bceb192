/* fuzz_tokens_bin: a .bin token file, llm.c (256 x int32 header, magic 20240520) or flat
 * uint16 (src/tokens.c load_bin): without --ctx (refused for .bin), and with a --ctx and
 * --contexts chosen from the input's hash, then the vocabulary check. */
#include "fuzz_common.h"

#include "tokens.h"

typedef struct { const char *path; uint32_t h; } Arg;

static void body(void *arg) {
    const Arg *a = arg;
    TokenSet ts;
    if (tokens_load(&ts, a->path, 0, 0) == 0) tokens_free(&ts);
    static const size_t ctxs[] = {1, 2, 3, 7, 8, 64, 128, 1024};
    size_t ctx = ctxs[a->h % 8], contexts = (a->h >> 3) % 4; /* 0 = all */
    if (tokens_load(&ts, a->path, ctx, contexts) == 0) {
        tokens_check(&ts, a->path, 50257, 1024);
        tokens_free(&ts);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_begin("tokens_bin", data, size);
    Arg a = {fuzz_write(".bin", data, size), fuzz_hash(data, size)};
    fuzz_guard(body, &a);
    fuzz_done();
    return 0;
}
