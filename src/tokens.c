/* tokens.c: load token files (see tokens.h). */
#include "tokens.h"

#include "error.h"
#include "h5out.h"

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

/* Takes int64 values (n_rows, ctx) and keeps the first max_contexts rows as int32. */
static int finish(TokenSet *ts, const char *path, const int64_t *vals, size_t rows, size_t ctx, size_t max_contexts) {
    if (rows == 0 || ctx == 0) return sg_errorf(path, "holds no tokens (shape [%zu, %zu])", rows, ctx);
    ts->n_available = rows;
    if (max_contexts && max_contexts < rows) rows = max_contexts;
    ts->n = rows, ts->ctx = ctx;
    ts->ids = sg_xcalloc(rows * ctx, sizeof(int32_t));
    for (size_t i = 0; i < rows * ctx; i++) {
        if (vals[i] < 0 || vals[i] > INT32_MAX)
            return sg_errorf(path, "token id %lld at context %zu, position %zu is out of range", (long long)vals[i],
                             i / ctx, i % ctx);
        ts->ids[i] = (int32_t)vals[i];
    }
    return 0;
}

static int load_u16(TokenSet *ts, const char *path, const unsigned char *p, size_t count, size_t ctx,
                    size_t max_contexts) {
    if (count == 0) return sg_errorf(path, "holds no tokens");
    if (ctx == 0) return sg_errorf(path, "a flat token file needs --ctx N to cut it into contexts");
    size_t rows = count / ctx;
    if (rows == 0) return sg_errorf(path, "holds %zu tokens, fewer than one context of --ctx %zu", count, ctx);
    if (count % ctx)
        sg_warnf("%s: %zu trailing tokens do not fill a context of %zu and are not used", path, count % ctx, ctx);
    size_t use = max_contexts && max_contexts < rows ? max_contexts : rows;
    int64_t *vals = sg_xcalloc(use * ctx, sizeof *vals);
    for (size_t i = 0; i < use * ctx; i++) { uint16_t v; memcpy(&v, p + 2 * i, 2); vals[i] = v; }
    int rc = finish(ts, path, vals, use, ctx, 0);
    ts->n_available = rows;
    free(vals);
    return rc;
}

static int load_bin(TokenSet *ts, const char *path, size_t ctx, size_t max_contexts) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return sg_errorf(path, "cannot open: %s", strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) { close(fd); return sg_errorf(path, "cannot stat: %s", strerror(errno)); }
    size_t size = (size_t)sb.st_size;
    if (size == 0) { close(fd); return sg_errorf(path, "is empty"); }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return sg_errorf(path, "cannot mmap: %s", strerror(errno));
    const unsigned char *p = map;
    int rc;
    int32_t magic = 0;
    if (size >= 4) memcpy(&magic, p, 4);
    if (size >= LLMC_HEADER_INTS * 4 && magic == LLMC_MAGIC) {
        int32_t hdr[3];
        memcpy(hdr, p, sizeof hdr);
        size_t count = hdr[2] > 0 ? (size_t)hdr[2] : 0;
        size_t body = size - LLMC_HEADER_INTS * 4;
        ts->format = "llm.c bin";
        if (hdr[1] != 1 && hdr[1] != 2) rc = sg_errorf(path, "llm.c token file version %d is not supported (1 or 2)", hdr[1]);
        else if (body != 2 * count)
            rc = sg_errorf(path, "llm.c header promises %zu tokens but the file holds %zu bytes of them", count, body);
        else rc = load_u16(ts, path, p + LLMC_HEADER_INTS * 4, count, ctx, max_contexts);
    } else {
        ts->format = "uint16 bin";
        if (size % 2) rc = sg_errorf(path, "size %zu bytes is odd: not a file of uint16 token ids", size);
        else rc = load_u16(ts, path, p, size / 2, ctx, max_contexts);
    }
    munmap(map, size);
    return rc;
}

/* Minimal reader for the .npy header dict: {'descr': '<i8', 'fortran_order': False, 'shape': (n, ctx), } */
static int load_npy(TokenSet *ts, const char *path, size_t max_contexts) {
    ts->format = "npy";
    FILE *f = fopen(path, "rb");
    if (!f) return sg_errorf(path, "cannot open: %s", strerror(errno));
    unsigned char pre[10];
    if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0) {
        fclose(f);
        return sg_errorf(path, "not a .npy file (bad magic)");
    }
    size_t hlen;
    size_t pre_len = 10;
    if (pre[6] == 1) hlen = (size_t)pre[8] | (size_t)pre[9] << 8;
    else {
        unsigned char more[2];
        if (fread(more, 1, 2, f) != 2) { fclose(f); return sg_errorf(path, "truncated .npy header"); }
        hlen = (size_t)pre[8] | (size_t)pre[9] << 8 | (size_t)more[0] << 16 | (size_t)more[1] << 24;
        pre_len = 12;
    }
    if (hlen > 1 << 20) { fclose(f); return sg_errorf(path, "implausible .npy header length %zu", hlen); }
    char *h = sg_xcalloc(hlen + 1, 1);
    if (fread(h, 1, hlen, f) != hlen) { free(h); fclose(f); return sg_errorf(path, "truncated .npy header"); }
    int rc = -1;
    int64_t *vals = NULL;
    char descr[16] = "";
    const char *d = strstr(h, "'descr'");
    if (d) d = strchr(d + 7, '\'');
    if (d) sscanf(d + 1, "%15[^']", descr);
    int fortran = strstr(h, "'fortran_order': True") != NULL;
    size_t shape[3], ndim = 0;
    const char *s = strstr(h, "'shape'");
    if (s) s = strchr(s, '(');
    if (s) {
        s++;
        while (*s && *s != ')') {
            while (*s == ' ' || *s == ',') s++;
            if (*s == ')') break;
            if (!isdigit((unsigned char)*s) || ndim == 3) { ndim = 99; break; }
            shape[ndim++] = (size_t)strtoull(s, (char **)&s, 10);
        }
    }
    size_t isize = 0;
    int is_signed = 0;
    if (strlen(descr) == 3 && (descr[0] == '<' || descr[0] == '|') && (descr[1] == 'i' || descr[1] == 'u')) {
        is_signed = descr[1] == 'i';
        isize = (size_t)(descr[2] - '0');
        if (isize != 1 && isize != 2 && isize != 4 && isize != 8) isize = 0;
    }
    if (!d || !s || ndim == 99) { sg_errorf(path, "cannot parse the .npy header"); goto done; }
    if (isize == 0) {
        sg_errorf(path, "dtype '%s' is not a little-endian integer type (token ids must be integers)", descr);
        goto done;
    }
    if (ndim != 2) {
        sg_errorf(path, "array has %zu dimension(s); token arrays must be 2-D [n_contexts, ctx]", ndim);
        goto done;
    }
    size_t rows = shape[0], ctx = shape[1], count = rows * ctx;
    if (count == 0) { sg_errorf(path, "holds no tokens (shape [%zu, %zu])", rows, ctx); goto done; }
    unsigned char *raw = sg_xcalloc(count, isize);
    size_t got = fread(raw, isize, count, f);
    if (got != count) {
        free(raw);
        sg_errorf(path, "truncated: header promises %zu values, file holds %zu", count, got);
        goto done;
    }
    vals = sg_xcalloc(count, sizeof *vals);
    for (size_t i = 0; i < count; i++) {
        /* Fortran order stores column-major: element (r, c) is at c*rows + r */
        size_t src = fortran ? (i % ctx) * rows + i / ctx : i;
        const unsigned char *p = raw + src * isize;
        int64_t v = 0;
        switch (isize) {
        case 1: v = is_signed ? (int64_t)(int8_t)p[0] : (int64_t)p[0]; break;
        case 2: { uint16_t u; memcpy(&u, p, 2); v = is_signed ? (int64_t)(int16_t)u : (int64_t)u; } break;
        case 4: { uint32_t u; memcpy(&u, p, 4); v = is_signed ? (int64_t)(int32_t)u : (int64_t)u; } break;
        case 8: { uint64_t u; memcpy(&u, p, 8); v = is_signed || u <= INT64_MAX ? (int64_t)u : INT64_MAX; } break;
        }
        vals[i] = v;
    }
    free(raw);
    (void)pre_len;
    rc = finish(ts, path, vals, rows, ctx, max_contexts);
done:
    free(vals);
    free(h);
    fclose(f);
    return rc;
}

int tokens_load(TokenSet *ts, const char *path, size_t ctx, size_t max_contexts) {
    memset(ts, 0, sizeof *ts);
    struct stat sb;
    if (stat(path, &sb) != 0) return sg_errorf(path, "token file does not exist");
    if (!S_ISREG(sb.st_mode)) return sg_errorf(path, "token path is not a regular file");
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
        rc = load_bin(ts, path, ctx, max_contexts);
    } else {
        rc = sg_errorf(path, "unknown token file type (expected .h5/.hdf5, .npy or .bin)");
    }
    if (rc == 0 && ctx && ts->ctx != ctx)
        rc = sg_errorf(path, "--ctx %zu disagrees with the file's context length %zu", ctx, ts->ctx);
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
