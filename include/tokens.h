/* tokens.h: token ids from the files users already have (CONTRACT.md --tokens):
 *   .h5/.hdf5  integer dataset `tokens` [n_contexts, ctx]
 *   .npy       integer array [n_contexts, ctx] (C or Fortran order, little-endian)
 *   .bin       llm.c (256 x int32 header, magic 20240520, then uint16 ids; needs --ctx)
 *              or flat little-endian uint16 (nanoGPT train.bin/val.bin; needs --ctx)
 */
#ifndef SAEGAP_TOKENS_H
#define SAEGAP_TOKENS_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int32_t *ids;        /* (n, ctx) */
    size_t n, ctx;
    size_t n_available;  /* contexts in the file before --contexts */
    const char *format;  /* "hdf5" | "npy" | "llm.c bin" | "uint16 bin" */
} TokenSet;

/* ctx: --ctx (0 when not given); max_contexts: --contexts (0 = all). Values that do not fit
 * int32 or are negative are refused here; the vocabulary is checked by tokens_check. */
int tokens_load(TokenSet *ts, const char *path, size_t ctx, size_t max_contexts);

/* Every id < vocab_size (prints the first bad id and where it is), ctx <= n_positions. */
int tokens_check(const TokenSet *ts, const char *path, size_t vocab_size, size_t n_positions);

void tokens_free(TokenSet *ts);

#endif
