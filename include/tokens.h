/* tokens.h: token ids from the files users already have (CONTRACT.md --tokens):
 *   .h5/.hdf5  integer dataset `tokens` [n_contexts, ctx]
 *   .npy       integer array [n_contexts, ctx] (C or Fortran order, little-endian)
 *   .bin       llm.c (256 x int32 header, magic 20240520, then uint16 ids; needs --ctx)
 *              or flat little-endian uint16 (nanoGPT train.bin/val.bin; needs --ctx)
 * A 2-D file's rows are the contexts, as stored. A flat stream (.bin) is cut into contexts of
 * ctx tokens; with prepend_bos as SAELens's concat_and_batch_sequences cuts a stream given as
 * one sequence with begin_batch_token_id = BOS: each context is BOS followed by ctx - 1 stream
 * tokens, except where the next stream token already is BOS (not doubled: the context is then ctx
 * stream tokens); a final context that the stream cannot fill is dropped, with a warning.
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
    int flat;            /* a flat stream, cut here */
    int cut_with_bos;    /* flat and cut with BOS at position 0 of each context */
    size_t n_unused;     /* flat: trailing stream tokens that fill no context */
    size_t row_width;    /* 2-D: the rows' length in the file; ctx < row_width when they were cut */
} TokenSet;

/* How a flat stream is cut. A 2-D file ignores prepend_bos; its rows are cut to their first ctx
 * (or rows_to) tokens when longer, as SAELens uses a pretokenized dataset's rows
 * (row[:context_size]); a ctx longer than its rows is refused. */
typedef struct {
    size_t ctx;          /* tokens per context (--ctx); 0: not known (a flat file is refused: needs --ctx) */
    int prepend_bos;     /* flat: every context starts with bos */
    int32_t bos;
    size_t rows_to;      /* 2-D, without ctx: the SAEs' cfg context_size (0: rows as stored; longer: a warning) */
} TokenCut;

/* Whether path names a flat stream (.bin), by its name alone. */
int tokens_is_flat(const char *path);

/* The source of the contexts as the result file records it (root attribute context_source):
 * "flat stream cut with BOS", "flat stream cut without BOS" or "rows as stored". */
const char *tokens_context_source(int flat, int cut_with_bos);
/* The same for a loaded set, with "rows cut to their first ctx tokens" for cut rows. */
const char *tokens_source(const TokenSet *ts);

/* ctx: --ctx (0 when not given); max_contexts: --contexts (0 = all). Values that do not fit
 * int32 or are negative are refused here; the vocabulary is checked by tokens_check. */
int tokens_load(TokenSet *ts, const char *path, size_t ctx, size_t max_contexts);
/* The same with the cut: a flat stream with prepend_bos is cut as above (ctx >= 2 then). */
int tokens_load_cut(TokenSet *ts, const char *path, const TokenCut *cut, size_t max_contexts);

/* Every id < vocab_size (prints the first bad id and where it is), ctx <= n_positions. */
int tokens_check(const TokenSet *ts, const char *path, size_t vocab_size, size_t n_positions);

void tokens_free(TokenSet *ts);

#endif
