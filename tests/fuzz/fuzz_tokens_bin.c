/* fuzz_tokens_bin: a .bin token file, llm.c (256 x int32 header, magic 20240520) or flat
 * uint16 (src/tokens.c load_bin): without --ctx (refused for .bin), and with a --ctx and
 * --contexts chosen from the input's hash, then the vocabulary check; and the cut with BOS
 * (src/contexts.h: SAELens's rule) with a BOS id from the hash (50256, 0, 2, or one of the
 * input's first ids, so that the "not doubled" path runs). */
#include "fuzz_common.h"

#include "tokens.h"

typedef struct { const char *path; uint32_t h, first; } Arg;

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
    static const int32_t bos[] = {50256, 0, 2, -1};
    TokenCut cut = {.ctx = ctx, .prepend_bos = 1, .bos = bos[(a->h >> 5) % 4]};
    if (cut.bos < 0) cut.bos = (int32_t)(a->first & 0xffff);
    if (tokens_load_cut(&ts, a->path, &cut, contexts) == 0) {
        for (size_t i = 0; i < ts.n; i++)
            if (ts.ids[i * ts.ctx] != cut.bos) __builtin_trap(); /* every context starts with BOS */
        tokens_check(&ts, a->path, 50257, 1024);
        tokens_free(&ts);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_begin("tokens_bin", data, size);
    Arg a = {fuzz_write(".bin", data, size), fuzz_hash(data, size), 0};
    if (size >= 2) a.first = (uint32_t)data[0] | (uint32_t)data[1] << 8;
    fuzz_guard(body, &a);
    fuzz_done();
    return 0;
}
