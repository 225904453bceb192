/* tokens.c: load token files (see tokens.h).
 *
 * Every size in a token file is hostile until checked: shapes and counts go through the
 * checked arithmetic of error.h, and the bytes a header declares are compared with the bytes
 * the file holds before anything is allocated, so a damaged header is refused as such. */
#include "tokens.h"

#include "error.h"
#include "h5out.h"
#include "npy.h"

#include <ctype.h>
#include <strings.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define LLMC_MAGIC 20240520
#define LLMC_HEADER_INTS 256

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcasecmp(s + n - k, suffix) == 0;
}

/* Rows kept: the first max_contexts (0 = all). */
static size_t rows_used(size_t rows, size_t max_contexts) { return max_contexts && max_contexts < rows ? max_contexts : rows; }

/* Takes int64 values (n_rows, ctx) and keeps the first max_contexts rows as int32. */
static int finish(TokenSet *ts, const char *path, const int64_t *vals, size_t rows, size_t ctx, size_t max_contexts) {
    size_t count;
    if (rows == 0 || ctx == 0) return sg_errorf(path, "holds no tokens (shape [%zu, %zu])", rows, ctx);
    if (sg_mul_overflow(rows, ctx, &count))
        return sg_errorf(path, "shape [%zu, %zu] has more elements than a size can hold (damaged file?)", rows, ctx);
    ts->n_available = rows;
    rows = rows_used(rows, max_contexts);
    ts->n = rows, ts->ctx = ctx;
    count = rows * ctx; /* at most the product checked above */
    ts->ids = sg_xcalloc(count, sizeof(int32_t));
    for (size_t i = 0; i < count; i++) {
        if (vals[i] < 0 || vals[i] > INT32_MAX)
            return sg_errorf(path, "token id %lld at context %zu, position %zu is out of range", (long long)vals[i],
                             i / ctx, i % ctx);
        ts->ids[i] = (int32_t)vals[i];
    }
    return 0;
}

/* A read-only mapping of a whole regular file (size > 0). */
typedef struct { const unsigned char *p; size_t size; } Mapped;

static int map_file(Mapped *m, const char *path) {
    m->p = NULL, m->size = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return sg_errorf(path, "cannot open: %s", strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) { close(fd); return sg_errorf(path, "cannot stat: %s", strerror(errno)); }
    if (sb.st_size <= 0) { close(fd); return sg_errorf(path, "is empty"); }
    size_t size = (size_t)sb.st_size;
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return sg_errorf(path, "cannot mmap: %s", strerror(errno));
    m->p = map, m->size = size;
    return 0;
}

static void unmap_file(Mapped *m) {
    if (m->p) munmap((void *)m->p, m->size);
    m->p = NULL, m->size = 0;
}

/* Rows [0, use) of a (rows, ctx) matrix of little-endian integers of isize bytes at data, whose
 * rows * ctx * isize bytes the caller has checked lie inside the file, into ts->ids; ids
 * outside [0, INT32_MAX] are refused. Fortran order stores (r, c) at c * rows + r. */
static int convert(TokenSet *ts, const char *path, const unsigned char *data, size_t isize, int is_signed, int fortran,
                   size_t rows, size_t ctx, size_t use) {
    size_t count = use * ctx; /* use <= rows: bounded by the checked rows * ctx */
    ts->n_available = rows, ts->n = use, ts->ctx = ctx;
    ts->ids = sg_xcalloc(count, sizeof(int32_t));
    for (size_t i = 0; i < count; i++) {
        size_t r = i / ctx, c = i % ctx, src = fortran ? c * rows + r : i;
        const unsigned char *p = data + src * isize;
        int64_t v = 0;
        uint64_t u = 0;
        int too_big = 0;
        switch (isize) {
        case 1: v = is_signed ? (int64_t)(int8_t)p[0] : (int64_t)p[0]; break;
        case 2: { uint16_t x; memcpy(&x, p, 2); v = is_signed ? (int64_t)(int16_t)x : (int64_t)x; } break;
        case 4: { uint32_t x; memcpy(&x, p, 4); v = is_signed ? (int64_t)(int32_t)x : (int64_t)x; } break;
        default:
            memcpy(&u, p, 8);
            if (is_signed) memcpy(&v, &u, 8);
            else if (u > INT32_MAX) too_big = 1;
            else v = (int64_t)u;
            break;
        }
        if (too_big)
            return sg_errorf(path, "token id %llu at context %zu, position %zu is out of range", (unsigned long long)u, r, c);
        if (v < 0 || v > INT32_MAX)
            return sg_errorf(path, "token id %lld at context %zu, position %zu is out of range", (long long)v, r, c);
        ts->ids[i] = (int32_t)v;
    }
    return 0;
}

/* The contexts of a flat stream of count ids at p cut with BOS (tokens.h): how many the stream
 * fills (*rows), and the stream tokens left over (*rest); when out is not NULL, the first `use`
 * of them written to out (use <= *rows). */
static void cut_with_bos(const unsigned char *p, size_t count, size_t ctx, int32_t bos, size_t *rows, size_t *rest,
                         int32_t *out, size_t use) {
    size_t pos = 0, r = 0;
    for (;;) {
        uint16_t first = 0;
        if (pos < count) memcpy(&first, p + 2 * pos, 2);
        const size_t insert = pos < count && first == (uint32_t)bos ? 0 : 1, need = ctx - insert;
        if (count - pos < need || pos == count) break;
        if (out && r < use) {
            int32_t *row = out + r * ctx;
            if (insert) row[0] = bos;
            for (size_t j = 0; j < need; j++) {
                uint16_t x;
                memcpy(&x, p + 2 * (pos + j), 2);
                row[insert + j] = x;
            }
        }
        pos += need, r++;
    }
    *rows = r, *rest = count - pos;
}

static int load_u16(TokenSet *ts, const char *path, const unsigned char *p, size_t count, const TokenCut *cut,
                    size_t max_contexts) {
    const size_t ctx = cut->ctx;
    ts->flat = 1;
    if (count == 0) return sg_errorf(path, "holds no tokens");
    if (ctx == 0)
        return sg_errorf(path, "a flat token file needs --ctx N to cut it into contexts");
    if (!cut->prepend_bos) {
        size_t rows = count / ctx;
        if (rows == 0) return sg_errorf(path, "holds %zu tokens, fewer than one context of --ctx %zu", count, ctx);
        if (count % ctx)
            sg_warnf("%s: %zu trailing tokens do not fill a context of %zu and are not used", path, count % ctx, ctx);
        int rc = convert(ts, path, p, 2, 0, 0, rows, ctx, rows_used(rows, max_contexts));
        ts->n_unused = count % ctx;
        return rc;
    }
    if (ctx < 2)
        return sg_errorf(path, "a context of %zu token cut with BOS holds nothing but BOS (--ctx 2 or more)", ctx);
    size_t rows, rest;
    cut_with_bos(p, count, ctx, cut->bos, &rows, &rest, NULL, 0);
    if (rows == 0)
        return sg_errorf(path, "holds %zu tokens, fewer than one context of %zu cut with BOS (%zu stream tokens)", count,
                         ctx, ctx - 1);
    if (rest)
        sg_warnf("%s: %zu trailing tokens do not fill a context of %zu cut with BOS and are not used", path, rest, ctx);
    const size_t use = rows_used(rows, max_contexts);
    ts->n_available = rows, ts->n = use, ts->ctx = ctx, ts->cut_with_bos = 1, ts->n_unused = rest;
    ts->ids = sg_xcalloc(use * ctx, sizeof(int32_t)); /* use * ctx <= count + use: fits */
    cut_with_bos(p, count, ctx, cut->bos, &rows, &rest, ts->ids, use);
    return 0;
}

static int load_bin(TokenSet *ts, const char *path, const TokenCut *cut, size_t max_contexts) {
    Mapped m;
    if (map_file(&m, path)) return -1;
    const unsigned char *p = m.p;
    size_t size = m.size;
    int rc;
    int32_t magic = 0;
    if (size >= 4) memcpy(&magic, p, 4);
    if (magic == LLMC_MAGIC) {
        /* a flat uint16 file never starts so: its first id would be 55240, beyond GPT-2's vocabulary */
        ts->format = "llm.c bin";
        int32_t hdr[3] = {0, 0, 0};
        if (size < LLMC_HEADER_INTS * 4) {
            rc = sg_errorf(path, "llm.c token file is %zu bytes, shorter than its %d-byte header (truncated?)", size,
                           LLMC_HEADER_INTS * 4);
        } else {
            memcpy(hdr, p, sizeof hdr);
            size_t body = size - LLMC_HEADER_INTS * 4, need = 0;
            if (hdr[1] != 1 && hdr[1] != 2)
                rc = sg_errorf(path, "llm.c token file version %d is not supported (1 or 2)", hdr[1]);
            else if (hdr[2] < 0)
                rc = sg_errorf(path, "llm.c header declares %d tokens (negative: damaged header?)", hdr[2]);
            else if (sg_mul_overflow((size_t)hdr[2], 2, &need) || body != need)
                rc = sg_errorf(path, "llm.c header promises %d tokens (%zu bytes) but the file holds %zu bytes of them%s",
                               hdr[2], need, body, body < need ? " (truncated?)" : "");
            else rc = load_u16(ts, path, p + LLMC_HEADER_INTS * 4, (size_t)hdr[2], cut, max_contexts);
        }
    } else {
        ts->format = "uint16 bin";
        if (size % 2) rc = sg_errorf(path, "size %zu bytes is odd: not a file of uint16 token ids", size);
        else rc = load_u16(ts, path, p, size / 2, cut, max_contexts);
    }
    unmap_file(&m);
    return rc;
}

/* A token array in a .npy file: 2-D [n_contexts, ctx] of little-endian integers (npy.h parses
 * the header). */
static int load_npy(TokenSet *ts, const char *path, size_t max_contexts) {
    ts->format = "npy";
    Mapped m;
    if (map_file(&m, path)) return -1;
    int rc = -1;
    NpyHeader hd;
    if (npy_header(path, m.p, m.size, &hd)) goto done;
    const char *descr = hd.descr;
    size_t isize = 0;
    int is_signed = 0;
    if (strlen(descr) == 3 && (descr[0] == '<' || descr[0] == '|') && (descr[1] == 'i' || descr[1] == 'u')) {
        is_signed = descr[1] == 'i';
        isize = (size_t)(descr[2] - '0');
        if (isize != 1 && isize != 2 && isize != 4 && isize != 8) isize = 0;
    }
    if (isize == 0) {
        sg_errorf(path, "dtype '%s' is not a little-endian integer type (token ids must be integers)", descr);
        goto done;
    }
    if (hd.ndim != 2) {
        sg_errorf(path, "array has %zu dimension(s); token arrays must be 2-D [n_contexts, ctx]", hd.ndim);
        goto done;
    }
    size_t rows = hd.shape[0], ctx = hd.shape[1], count, bytes;
    if (sg_mul_overflow(rows, ctx, &count) || sg_mul_overflow(count, isize, &bytes)) {
        sg_errorf(path, "header declares shape (%zu, %zu) of '%s': more bytes than any file can hold (damaged header?)",
                  rows, ctx, descr);
        goto done;
    }
    if (count == 0) { sg_errorf(path, "holds no tokens (shape [%zu, %zu])", rows, ctx); goto done; }
    size_t avail = m.size - hd.data_offset;
    if (bytes > avail) {
        sg_errorf(path, "truncated: header promises shape (%zu, %zu) of '%s' = %zu values (%zu bytes), the file holds "
                  "%zu bytes of data (%zu values)", rows, ctx, descr, count, bytes, avail, avail / isize);
        goto done;
    }
    rc = convert(ts, path, (const unsigned char *)m.p + hd.data_offset, isize, is_signed, hd.fortran_order, rows, ctx,
                 rows_used(rows, max_contexts));
done:
    unmap_file(&m);
    return rc;
}

int tokens_is_flat(const char *path) { return ends_with(path, ".bin"); }

const char *tokens_context_source(int flat, int cut_with_bos) {
    return !flat ? "rows as stored" : cut_with_bos ? "flat stream cut with BOS" : "flat stream cut without BOS";
}

const char *tokens_source(const TokenSet *ts) {
    return !ts->flat && ts->ctx < ts->row_width ? "rows cut to their first ctx tokens"
                                                : tokens_context_source(ts->flat, ts->cut_with_bos);
}

/* A 2-D file's rows cut to their first `to` tokens, in place (SAELens: row[:context_size]). */
static void cut_rows(TokenSet *ts, size_t to) {
    for (size_t r = 0; r < ts->n; r++) memmove(ts->ids + r * to, ts->ids + r * ts->ctx, to * sizeof *ts->ids);
    ts->ctx = to;
}

int tokens_load(TokenSet *ts, const char *path, size_t ctx, size_t max_contexts) {
    const TokenCut cut = {.ctx = ctx};
    return tokens_load_cut(ts, path, &cut, max_contexts);
}

int tokens_load_cut(TokenSet *ts, const char *path, const TokenCut *cut, size_t max_contexts) {
    const size_t ctx = cut->ctx;
    memset(ts, 0, sizeof *ts);
    struct stat sb;
    if (stat(path, &sb) != 0)
        return errno == ENOENT ? sg_errorf(path, "token file does not exist")
                               : sg_errorf(path, "cannot open the token file: %s", strerror(errno));
    if (!S_ISREG(sb.st_mode)) return sg_errorf(path, "token path is not a regular file");
    /* an unreadable file is said so, before a reader takes it for "not an HDF5 file" */
    int fd = open(path, O_RDONLY);
    if (fd < 0) return sg_errorf(path, "cannot read the token file: %s", strerror(errno));
    close(fd);
    const char *prev = sg_alloc_for(path);
    int rc;
    if (ends_with(path, ".h5") || ends_with(path, ".hdf5")) {
        ts->format = "hdf5";
        int64_t *vals = NULL;
        size_t rows = 0, cols = 0;
        rc = h5_read_int_matrix(path, "tokens", &vals, &rows, &cols);
        if (rc == 0) rc = finish(ts, path, vals, rows, cols, max_contexts);
        free(vals);
    } else if (ends_with(path, ".npy")) {
        rc = load_npy(ts, path, max_contexts);
    } else if (ends_with(path, ".bin")) {
        rc = load_bin(ts, path, cut, max_contexts);
    } else {
        rc = sg_errorf(path, "unknown token file type (expected .h5/.hdf5, .npy or .bin)");
    }
    sg_alloc_for(prev);
    if (rc == 0 && !ts->flat) ts->row_width = ts->ctx;
    const size_t to = ctx ? ctx : cut->rows_to;
    if (rc == 0 && !ts->flat && to && to < ts->ctx) {
        sg_warnf("%s: its rows of %zu tokens are cut to their first %zu (%s), as SAELens uses a pretokenized dataset's "
                 "rows", path, ts->ctx, to, ctx ? "--ctx" : "the SAEs' cfg context_size");
        cut_rows(ts, to);
    } else if (rc == 0 && ctx && ts->ctx != ctx) {
        rc = sg_errorf(path, "--ctx %zu is longer than the file's rows of %zu tokens", ctx, ts->ctx);
    } else if (rc == 0 && !ts->flat && to > ts->ctx) {
        sg_warnf("%s: its rows of %zu tokens are shorter than the contexts of %zu tokens the SAEs' cfgs record (SAELens "
                 "refuses such a pretokenized dataset); used as stored", path, ts->ctx, to);
    }
    if (rc != 0) tokens_free(ts);
    return rc;
}

int tokens_check(const TokenSet *ts, const char *path, size_t vocab_size, size_t n_positions) {
    if (ts->ctx > n_positions)
        return sg_errorf(path, "context length %zu exceeds the model's n_positions %zu", ts->ctx, n_positions);
    for (size_t i = 0; i < ts->n * ts->ctx; i++)
        if ((size_t)ts->ids[i] >= vocab_size)
            return sg_errorf(path, "token id %d at context %zu, position %zu is outside the vocabulary (vocab_size %zu)",
                             ts->ids[i], i / ts->ctx, i % ts->ctx, vocab_size);
    return 0;
}

void tokens_free(TokenSet *ts) {
    free(ts->ids);
    memset(ts, 0, sizeof *ts);
}
