/* safetensors.c: mmap a .safetensors file and validate its header (see safetensors.h). */
#define _DEFAULT_SOURCE /* madvise(MADV_DONTNEED): glibc's posix_madvise ignores POSIX_MADV_DONTNEED */
#include "safetensors.h"

#include "error.h"
#include "gemm.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "saegap reads little-endian files by pointer; port safetensors.c for big-endian hosts"
#endif

/* The reference implementation refuses headers above 100 MB (MAX_HEADER_SIZE). */
#define ST_MAX_HEADER (100u * 1000u * 1000u)

static const struct { const char *name; size_t size; } DTYPES[ST_DTYPE_COUNT] = {
    [ST_BOOL] = {"BOOL", 1}, [ST_U8] = {"U8", 1},     [ST_I8] = {"I8", 1},
    [ST_I16] = {"I16", 2},   [ST_U16] = {"U16", 2},   [ST_F16] = {"F16", 2},
    [ST_BF16] = {"BF16", 2}, [ST_I32] = {"I32", 4},   [ST_U32] = {"U32", 4},
    [ST_F32] = {"F32", 4},   [ST_I64] = {"I64", 8},   [ST_U64] = {"U64", 8},
    [ST_F64] = {"F64", 8},   [ST_F8_E4M3] = {"F8_E4M3", 1}, [ST_F8_E5M2] = {"F8_E5M2", 1},
};

const char *safetensors_dtype_name(SafetensorsDtype dt) {
    return (unsigned)dt < ST_DTYPE_COUNT ? DTYPES[dt].name : "?";
}

static int dtype_parse(const char *s, SafetensorsDtype *out) {
    for (int i = 0; i < ST_DTYPE_COUNT; i++)
        if (strcmp(s, DTYPES[i].name) == 0) { *out = (SafetensorsDtype)i; return 0; }
    return -1;
}

/* ---- the header: a dedicated JSON reader ------------------------------------------------------
 *
 * The header is the file's own description of itself, so it is read as hostile: one pass over
 * the bytes, no tree of nodes (a general JSON library spends its time in malloc on headers of a
 * million tensors), integers read exactly as written with checked arithmetic (no detour through
 * double), nesting depth bounded, and every refusal quoting the value as the file writes it.
 * Grammar: RFC 8259 JSON. The top level is an object; "__metadata__" may hold any value; every
 * other member is a tensor {"dtype": string, "shape": [uint...], "data_offsets": [uint, uint]}
 * (other keys of an entry are ignored, as serde does in the reference implementation). */

#define JSON_MAX_DEPTH 64

typedef struct {
    const char *p, *begin, *end;
    const char *path;
    char *arena;        /* decoded strings, NUL-terminated; never larger than the header */
    size_t arena_used;
} Jp;

static void jp_ws(Jp *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

static int jp_syntax(Jp *j, const char *expected) {
    size_t at = (size_t)(j->p - j->begin);
    if (j->p >= j->end)
        return sg_errorf(j->path, "safetensors header is not valid JSON: it ends where %s is expected (file truncated "
                                  "or not a safetensors file?)", expected);
    unsigned char c = (unsigned char)*j->p;
    if (c >= 0x20 && c < 0x7f)
        return sg_errorf(j->path, "safetensors header is not valid JSON: '%c' at byte %zu where %s is expected", c, at,
                         expected);
    return sg_errorf(j->path, "safetensors header is not valid JSON: byte 0x%02x at byte %zu where %s is expected", c, at,
                     expected);
}

static int jp_lit(Jp *j, char c, const char *expected) {
    jp_ws(j);
    if (j->p >= j->end || *j->p != c) return jp_syntax(j, expected);
    j->p++;
    return 0;
}

static int hex4(const char *p, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

/* A string at j->p (after whitespace). With out: decoded into the arena (NUL-terminated). */
static int jp_string(Jp *j, const char **out) {
    jp_ws(j);
    if (j->p >= j->end || *j->p != '"') return jp_syntax(j, "a string");
    j->p++;
    char *dst = out ? j->arena + j->arena_used : NULL;
    size_t n = 0;
    while (j->p < j->end && *j->p != '"') {
        unsigned char c = (unsigned char)*j->p;
        if (c < 0x20) return jp_syntax(j, "a character of a string (control characters must be escaped)");
        if (c != '\\') {
            if (dst) dst[n++] = (char)c;
            j->p++;
            continue;
        }
        if (j->end - j->p < 2) { j->p = j->end; return jp_syntax(j, "an escape"); }
        static const char esc[] = "\"\\/bfnrt", repl[] = "\"\\/\b\f\n\r\t";
        char e = j->p[1];
        const char *simple = e ? strchr(esc, e) : NULL;
        if (simple) {
            if (dst) dst[n++] = repl[simple - esc];
            j->p += 2;
            continue;
        }
        unsigned cp, lo;
        if (e != 'u' || j->end - j->p < 6 || hex4(j->p + 2, &cp)) return jp_syntax(j, "a valid escape");
        j->p += 6;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (j->end - j->p < 6 || j->p[0] != '\\' || j->p[1] != 'u' || hex4(j->p + 2, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                return jp_syntax(j, "the low half of a \\u surrogate pair");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            j->p += 6;
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return jp_syntax(j, "a \\u escape that is not a lone low surrogate");
        }
        if (cp == 0) return sg_errorf(j->path, "safetensors header: a string holds \\u0000 (not allowed in names)");
        if (!dst) continue;
        /* UTF-8: at most 4 bytes for the 6 or 12 bytes of the escape */
        if (cp < 0x80) dst[n++] = (char)cp;
        else if (cp < 0x800) dst[n++] = (char)(0xC0 | cp >> 6), dst[n++] = (char)(0x80 | (cp & 0x3F));
        else if (cp < 0x10000)
            dst[n++] = (char)(0xE0 | cp >> 12), dst[n++] = (char)(0x80 | ((cp >> 6) & 0x3F)),
            dst[n++] = (char)(0x80 | (cp & 0x3F));
        else
            dst[n++] = (char)(0xF0 | cp >> 18), dst[n++] = (char)(0x80 | ((cp >> 12) & 0x3F)),
            dst[n++] = (char)(0x80 | ((cp >> 6) & 0x3F)), dst[n++] = (char)(0x80 | (cp & 0x3F));
    }
    if (j->p >= j->end) return jp_syntax(j, "the end of a string");
    j->p++;
    if (dst) {
        dst[n] = 0;
        j->arena_used += n + 1; /* n + 1 <= the string's encoded length (quotes included) */
        *out = dst;
    }
    return 0;
}

/* A number token (RFC 8259 grammar), not converted. */
static int jp_number(Jp *j) {
    const char *p = j->p;
    if (p < j->end && *p == '-') p++;
    if (p >= j->end || !(*p >= '0' && *p <= '9')) return jp_syntax(j, "a value");
    if (*p == '0') p++;
    else while (p < j->end && *p >= '0' && *p <= '9') p++;
    if (p < j->end && *p == '.') {
        p++;
        if (p >= j->end || !(*p >= '0' && *p <= '9')) { j->p = p; return jp_syntax(j, "a digit"); }
        while (p < j->end && *p >= '0' && *p <= '9') p++;
    }
    if (p < j->end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < j->end && (*p == '+' || *p == '-')) p++;
        if (p >= j->end || !(*p >= '0' && *p <= '9')) { j->p = p; return jp_syntax(j, "a digit"); }
        while (p < j->end && *p >= '0' && *p <= '9') p++;
    }
    j->p = p;
    return 0;
}

/* Any value, skipped; depth bounds nesting (a hostile header cannot exhaust the stack). */
static int jp_skip(Jp *j, int depth) {
    jp_ws(j);
    if (j->p >= j->end) return jp_syntax(j, "a value");
    if (depth > JSON_MAX_DEPTH)
        return sg_errorf(j->path, "safetensors header nests deeper than %d levels at byte %zu", JSON_MAX_DEPTH,
                         (size_t)(j->p - j->begin));
    char c = *j->p;
    if (c == '"') return jp_string(j, NULL);
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        j->p++;
        jp_ws(j);
        if (j->p < j->end && *j->p == close) { j->p++; return 0; }
        for (;;) {
            if (c == '{' && (jp_string(j, NULL) || jp_lit(j, ':', "':'"))) return -1;
            if (jp_skip(j, depth + 1)) return -1;
            jp_ws(j);
            if (j->p < j->end && *j->p == ',') { j->p++; continue; }
            return jp_lit(j, close, c == '{' ? "',' or '}'" : "',' or ']'");
        }
    }
    static const char *const words[] = {"true", "false", "null"};
    for (int i = 0; i < 3; i++) {
        size_t len = strlen(words[i]);
        if ((size_t)(j->end - j->p) >= len && memcmp(j->p, words[i], len) == 0) { j->p += len; return 0; }
    }
    return jp_number(j);
}

/* The text of the value starting at j->p, as written (cut at 60 bytes), for messages. */
static const char *jp_value_text(Jp *j, char *buf, size_t cap) {
    const char *start = j->p;
    Jp probe = *j;
    int had_error = sg_error_message()[0] != 0;
    size_t len = jp_skip(&probe, 0) == 0 ? (size_t)(probe.p - start) : (size_t)(j->end - start);
    if (!had_error) sg_error_clear(); /* a failed probe leaves no error: the caller reports its own */
    if (len > cap - 4) snprintf(buf, cap, "%.*s...", (int)(cap - 4), start);
    else snprintf(buf, cap, "%.*s", (int)len, start);
    return buf;
}

/* A non-negative integer written as digits only, exactly; else refused quoting it. */
static int jp_uint(Jp *j, const char *tensor, const char *what, uint64_t max, uint64_t *out) {
    jp_ws(j);
    const char *start = j->p, *p = j->p;
    uint64_t v = 0;
    int overflow = 0;
    while (p < j->end && *p >= '0' && *p <= '9') {
        size_t next;
        if (sg_mul_overflow((size_t)v, 10, &next) || sg_add_overflow(next, (size_t)(*p - '0'), &next)) overflow = 1;
        else v = next;
        p++;
    }
    int is_int = p > start && (p < j->end ? !strchr(".eE", *p) : 1) && !(p - start > 1 && *start == '0');
    if (!is_int || overflow || v > max) {
        char txt[72];
        jp_value_text(j, txt, sizeof txt);
        if (is_int)
            return sg_errorf(j->path, "tensor '%s': %s %s is larger than %llu (damaged header?)", tensor, what, txt,
                             (unsigned long long)max);
        return sg_errorf(j->path, "tensor '%s': %s must be a non-negative integer, not %s", tensor, what, txt);
    }
    j->p = p;
    *out = v;
    return 0;
}

/* One tensor entry {"dtype", "shape", "data_offsets"} into t (name already set). */
static int jp_tensor(Jp *j, SafetensorsTensor *t, uint64_t *begin, uint64_t *end) {
    const char *name = t->name;
    int have_dtype = 0, have_shape = 0, have_offsets = 0;
    jp_ws(j);
    if (j->p >= j->end || *j->p != '{') {
        char txt[72];
        return sg_errorf(j->path, "tensor '%s': header entry must be an object with \"dtype\", \"shape\" and "
                                  "\"data_offsets\", not %s", name, jp_value_text(j, txt, sizeof txt));
    }
    j->p++;
    jp_ws(j);
    if (j->p < j->end && *j->p == '}') j->p++;
    else for (;;) {
        const char *key;
        size_t mark = j->arena_used;
        if (jp_string(j, &key) || jp_lit(j, ':', "':'")) return -1;
        int which = !strcmp(key, "dtype") ? 1 : !strcmp(key, "shape") ? 2 : !strcmp(key, "data_offsets") ? 3 : 0;
        j->arena_used = mark; /* the key is not kept */
        int *have = which == 1 ? &have_dtype : which == 2 ? &have_shape : which == 3 ? &have_offsets : NULL;
        if (have && *have) return sg_errorf(j->path, "tensor '%s': key \"%s\" appears twice in its entry", name, key);
        if (have) *have = 1;
        jp_ws(j);
        if (which == 1) {
            const char *dt;
            if (j->p >= j->end || *j->p != '"') {
                char txt[72];
                return sg_errorf(j->path, "tensor '%s': dtype must be a string, not %s", name,
                                 jp_value_text(j, txt, sizeof txt));
            }
            if (jp_string(j, &dt)) return -1;
            if (dtype_parse(dt, &t->dtype) != 0)
                return sg_errorf(j->path, "tensor '%s': unknown dtype \"%s\"", name, dt);
            j->arena_used = mark;
        } else if (which == 2 || which == 3) {
            const char *what = which == 2 ? "shape" : "data_offsets";
            if (j->p >= j->end || *j->p != '[') {
                char txt[72];
                return sg_errorf(j->path, "tensor '%s': %s must be an array of integers, not %s", name, what,
                                 jp_value_text(j, txt, sizeof txt));
            }
            j->p++;
            uint64_t vals[ST_MAX_DIMS];
            int n = 0;
            jp_ws(j);
            if (j->p < j->end && *j->p == ']') j->p++;
            else for (;;) {
                uint64_t v = 0;
                if (n == (which == 2 ? ST_MAX_DIMS : 2))
                    return which == 2
                               ? sg_errorf(j->path, "tensor '%s': more than %d dimensions", name, ST_MAX_DIMS)
                               : sg_errorf(j->path, "tensor '%s': data_offsets must be two integers [begin, end]", name);
                if (jp_uint(j, name, which == 2 ? "shape entry" : "data_offsets entry",
                            which == 2 ? (uint64_t)INT64_MAX : UINT64_MAX, &v))
                    return -1;
                vals[n++] = v;
                jp_ws(j);
                if (j->p < j->end && *j->p == ',') { j->p++; continue; }
                if (jp_lit(j, ']', "',' or ']'")) return -1;
                break;
            }
            if (which == 2) {
                t->ndim = n;
                for (int d = 0; d < n; d++) t->shape[d] = (int64_t)vals[d];
            } else {
                if (n != 2) return sg_errorf(j->path, "tensor '%s': data_offsets must be two integers [begin, end]", name);
                *begin = vals[0], *end = vals[1];
            }
        } else if (jp_skip(j, 2)) {
            return -1;
        }
        jp_ws(j);
        if (j->p < j->end && *j->p == ',') { j->p++; continue; }
        if (jp_lit(j, '}', "',' or '}'")) return -1;
        break;
    }
    if (!have_dtype || !have_shape || !have_offsets)
        return sg_errorf(j->path, "tensor '%s': header entry needs \"dtype\", \"shape\" and \"data_offsets\" (missing %s)",
                         name, !have_dtype ? "dtype" : !have_shape ? "shape" : "data_offsets");
    return 0;
}

/* qsort_r is a GNU extension; the array being sorted is set around each qsort call. */
static const SafetensorsTensor *g_sort_tensors;

static int cmp_by_name(const void *a, const void *b) {
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    int c = strcmp(g_sort_tensors[x].name, g_sort_tensors[y].name);
    return c ? c : (x > y) - (x < y);
}

static int cmp_by_offset(const void *a, const void *b) {
    const SafetensorsTensor *x = &g_sort_tensors[*(const size_t *)a], *y = &g_sort_tensors[*(const size_t *)b];
    const char *px = x->data, *py = y->data;
    if (px != py) return px < py ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : (x->nbytes > y->nbytes);
}

const char *safetensors_sort_names(Safetensors *st) {
    const size_t n = st->n_tensors;
    for (size_t k = 0; k < n; k++) st->by_name[k] = k;
    g_sort_tensors = st->tensors;
    qsort(st->by_name, n, sizeof *st->by_name, cmp_by_name);
    g_sort_tensors = NULL;
    for (size_t k = 1; k < n; k++)
        if (strcmp(st->tensors[st->by_name[k - 1]].name, st->tensors[st->by_name[k]].name) == 0)
            return st->tensors[st->by_name[k]].name;
    return NULL;
}

static int parse_header(Safetensors *st, const char *json, size_t json_len, const char *data, size_t data_len) {
    const char *path = st->path;
    Jp j = {json, json, json + json_len, path, NULL, 0};
    jp_ws(&j);
    if (j.p >= j.end || *j.p != '{') return sg_errorf(path, "safetensors header is not a JSON object");
    j.p++;
    st->arena = j.arena = sg_xcalloc(json_len + 1, 1);
    size_t cap = 0, n = 0;
    jp_ws(&j);
    if (j.p < j.end && *j.p == '}') j.p++;
    else for (;;) {
        const char *name;
        if (jp_string(&j, &name) || jp_lit(&j, ':', "':'")) return -1;
        if (!strcmp(name, "__metadata__")) {
            j.arena_used -= strlen(name) + 1;
            if (jp_skip(&j, 1)) return -1;
        } else {
            if (n == cap) {
                size_t grown = cap ? cap : 64;
                if (sg_mul_overflow(grown, 2, &grown)) return sg_errorf(path, "too many tensors");
                st->tensors = sg_xreallocarray(st->tensors, grown, sizeof *st->tensors);
                cap = grown;
            }
            SafetensorsTensor *t = &st->tensors[n];
            memset(t, 0, sizeof *t);
            t->name = (char *)name;
            st->n_tensors = ++n;
            uint64_t b = 0, en = 0;
            if (jp_tensor(&j, t, &b, &en)) return -1;
            size_t numel = 1, nbytes;
            for (int d = 0; d < t->ndim; d++)
                if (sg_mul_overflow(numel, (size_t)t->shape[d], &numel))
                    return sg_errorf(path, "tensor '%s': the product of its shape overflows (damaged header?)", name);
            if (sg_mul_overflow(numel, DTYPES[t->dtype].size, &nbytes))
                return sg_errorf(path, "tensor '%s': %s x shape needs more bytes than a size can hold (damaged header?)",
                                 name, DTYPES[t->dtype].name);
            if (en < b || en > data_len)
                return sg_errorf(path, "tensor '%s': data_offsets [%llu, %llu] lie outside the data block of %zu bytes",
                                 name, (unsigned long long)b, (unsigned long long)en, data_len);
            if (nbytes != en - b)
                return sg_errorf(path, "tensor '%s': %s x shape needs %zu bytes but data_offsets span %llu", name,
                                 DTYPES[t->dtype].name, nbytes, (unsigned long long)(en - b));
            t->numel = numel;
            t->nbytes = (size_t)(en - b);
            t->data = data + b;
        }
        jp_ws(&j);
        if (j.p < j.end && *j.p == ',') { j.p++; continue; }
        if (jp_lit(&j, '}', "',' or '}'")) return -1;
        break;
    }
    jp_ws(&j);
    if (j.p != j.end) return jp_syntax(&j, "the end of the header");

    /* Names must be unique: sorted, equal names are neighbours (n log n; a header of a million
     * tensors is checked in about a second). The sorted index serves safetensors_find. */
    st->by_name = sg_xcalloc(n ? n : 1, sizeof *st->by_name);
    const char *twice = safetensors_sort_names(st);
    if (twice) return sg_errorf(path, "tensor '%s' appears twice in the header", twice);

    /* Tensors must tile the data block: sorted by offset, each starts where the previous
     * ended (no gap, no overlap), and the last ends at the end of the file. */
    size_t *order = sg_xcalloc(n ? n : 1, sizeof *order);
    for (size_t k = 0; k < n; k++) order[k] = k;
    g_sort_tensors = st->tensors;
    qsort(order, n, sizeof *order, cmp_by_offset);
    g_sort_tensors = NULL;
    size_t expect = 0;
    int rc = 0;
    for (size_t k = 0; k < n && rc == 0; k++) {
        const SafetensorsTensor *t = &st->tensors[order[k]];
        size_t off = (size_t)((const char *)t->data - data);
        if (off < expect)
            rc = sg_errorf(path, "tensor '%s' overlaps tensor '%s' in the data block", t->name,
                           st->tensors[order[k - 1]].name);
        else if (off > expect)
            rc = sg_errorf(path, "gap of %zu bytes in the data block before tensor '%s'", off - expect, t->name);
        expect = off + t->nbytes;
    }
    free(order);
    if (rc == 0 && expect != data_len)
        rc = sg_errorf(path, "data block is %zu bytes but the tensors cover %zu (file truncated or padded?)", data_len,
                       expect);
    return rc;
}

/* Offset of the first byte that is not part of well-formed UTF-8 (RFC 3629: shortest forms,
 * no surrogates, at most U+10FFFF), or n when all of s is. */
static size_t utf8_invalid_at(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t len = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
        if (len == 0 || len > n - i) return i;
        uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1f) : len == 3 ? (c & 0x0f) : (c & 0x07);
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return i;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        static const uint32_t min_of_len[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min_of_len[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
        i += len;
    }
    return n;
}

int safetensors_open(Safetensors *st, const char *path) {
    memset(st, 0, sizeof *st);
    st->path = sg_xstrdup(path);
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        sg_errorf(path, "cannot open: %s", strerror(errno));
        safetensors_close(st);
        return -1;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        sg_errorf(path, "not a regular file");
        safetensors_close(st);
        return -1;
    }
    size_t size = (size_t)sb.st_size;
    if (size < 8) {
        close(fd);
        sg_errorf(path, "file is %zu bytes, too short for a safetensors header", size);
        safetensors_close(st);
        return -1;
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        sg_errorf(path, "cannot mmap: %s", strerror(errno));
        safetensors_close(st);
        return -1;
    }
    st->map = map;
    st->map_size = size;
    uint64_t hlen;
    memcpy(&hlen, map, 8);
    if (hlen > size - 8) {
        sg_errorf(path, "header length %llu exceeds the file size %zu (truncated or not a safetensors file)",
                  (unsigned long long)hlen, size);
        safetensors_close(st);
        return -1;
    }
    if (hlen > ST_MAX_HEADER) {
        sg_errorf(path, "header length %llu exceeds the 100 MB that safetensors allows (not a safetensors file?)",
                  (unsigned long long)hlen);
        safetensors_close(st);
        return -1;
    }
    const char *json = (const char *)map + 8;
    if (hlen == 0 || json[0] != '{') {
        sg_errorf(path, "safetensors header is not a JSON object");
        safetensors_close(st);
        return -1;
    }
    size_t bad = utf8_invalid_at((const unsigned char *)json, (size_t)hlen);
    if (bad < hlen) { /* the reference implementation reads the header as a Rust str */
        sg_errorf(path, "safetensors header is not valid UTF-8 (byte 0x%02x at header byte %zu)",
                  (unsigned)(unsigned char)json[bad], bad);
        safetensors_close(st);
        return -1;
    }
    const char *prev = sg_alloc_for(path);
    int rc = parse_header(st, json, (size_t)hlen, json + hlen, size - 8 - (size_t)hlen);
    sg_alloc_for(prev);
    if (rc != 0) {
        safetensors_close(st);
        return -1;
    }
    for (size_t i = 0; i < st->n_tensors; i++) st->tensors[i].file = st->path;
    return 0;
}

void safetensors_close(Safetensors *st) {
    if (st->map) munmap(st->map, st->map_size);
    for (size_t i = 0; i < st->n_shards; i++) safetensors_close(&st->shards[i]);
    free(st->shards);
    free(st->tensors); /* names live in the arena */
    free(st->arena);
    free(st->by_name);
    free(st->path);
    memset(st, 0, sizeof *st);
}

const SafetensorsTensor *safetensors_find(const Safetensors *st, const char *name) {
    if (!st->by_name) return NULL;
    size_t lo = 0, hi = st->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const SafetensorsTensor *t = &st->tensors[st->by_name[mid]];
        int c = strcmp(t->name, name);
        if (c == 0) return t;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

/* The file a tensor lives in: its shard's, for a sharded model (messages name that file). */
static const char *tensor_file(const Safetensors *st, const SafetensorsTensor *t) {
    return t->file ? t->file : st->path;
}

float safetensors_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else { /* subnormal: normalise */
            int e = -1;
            do { man <<= 1; e++; } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 0x1f) bits = sign | 0x7f800000u | (man << 13);
    else bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Elements [i0, i0 + n) of t as float32 into out; -1 (pending error) for a dtype saegap does
 * not read. */
static int convert_range(float *out, const Safetensors *st, const SafetensorsTensor *t, size_t i0, size_t n) {
    const unsigned char *p = t->data;
    switch (t->dtype) {
    case ST_F32: memcpy(out, p + 4 * i0, n * 4); break;
    case ST_F16:
        for (size_t i = 0; i < n; i++) { uint16_t h; memcpy(&h, p + 2 * (i0 + i), 2); out[i] = safetensors_f16_to_f32(h); }
        break;
    case ST_BF16: /* the widening is a shift: vectorised (gigabytes at start-up) */
#pragma omp simd
        for (size_t i = 0; i < n; i++) {
            uint16_t h; memcpy(&h, p + 2 * (i0 + i), 2);
            uint32_t bits = (uint32_t)h << 16; memcpy(&out[i], &bits, 4);
        }
        break;
    default:
        return sg_errorf(tensor_file(st, t), "tensor '%s' has dtype %s; saegap reads F32, F16 or BF16 weights", t->name,
                         DTYPES[t->dtype].name);
    }
    return 0;
}

/* 1 when one of elements [i0, i0 + n) has its exponent bits all ones (NaN or Inf): float32, or
 * 16-bit floats whose exponent bits are mask16 (F16 0x7c00, BF16 0x7f80). Branch-free, so the
 * compiler vectorises it; the 16-bit formats are checked as stored, without converting. */
static int any_nonfinite(const unsigned char *p, SafetensorsDtype dt, size_t i0, size_t n) {
    uint32_t any = 0;
    if (dt == ST_F32) {
        for (size_t i = i0; i < i0 + n; i++) {
            uint32_t b;
            memcpy(&b, p + 4 * i, sizeof b);
            any |= (uint32_t)((b & 0x7f800000u) == 0x7f800000u);
        }
    } else {
        const uint16_t mask = dt == ST_F16 ? 0x7c00 : 0x7f80;
        for (size_t i = i0; i < i0 + n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, sizeof h);
            any |= (uint32_t)((h & mask) == mask);
        }
    }
    return any != 0;
}

/* Lets the kernel drop this process's mapping of the file pages inside [p, p + n) (whole pages
 * only): the page cache keeps them, so a later read faults them back in, but a checked or
 * converted tensor no longer counts in the rank's memory (its Pss) beside its float32 copy.
 * Only for the read-only file mappings of this module, never written. */
static void drop_pages(const void *p, size_t n) {
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), a = ((uintptr_t)p + page - 1) / page * page,
                    b = ((uintptr_t)p + n) / page * page;
    if (b > a) (void)madvise((void *)a, (size_t)(b - a), MADV_DONTNEED); /* advice: failure changes nothing */
}

void safetensors_hash_release(void (*update)(void *, const void *, size_t), void *state, const void *map, size_t n) {
    enum { SLICE = 64 << 20 };
    for (size_t at = 0; at < n; at += SLICE) {
        const size_t m = n - at < SLICE ? n - at : SLICE;
        update(state, (const unsigned char *)map + at, m);
        drop_pages((const unsigned char *)map + at, m);
    }
}

static int check_finite(const float *v, size_t n, size_t i0, const Safetensors *st, const SafetensorsTensor *t) {
    if (!any_nonfinite((const unsigned char *)v, ST_F32, 0, n)) return 0;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return sg_errorf(tensor_file(st, t), "tensor '%s' holds a non-finite value (%s at flat index %zu)", t->name,
                             isnan(v[i]) ? "NaN" : "Inf", i0 + i);
    return 0;
}

/* Every weight of every rank passes here at start-up: chunks on the rank's threads (the OpenMP
 * team BLIS uses), then the first bad element, in order. drop: release each chunk's file pages
 * once checked (a tensor that will be converted into a node block, not used in place). */
enum { CHECK_CHUNK = 1 << 22 }; /* elements: 8-16 MB */
static int check_tensor(const Safetensors *st, const SafetensorsTensor *t, int drop) {
    const size_t size = DTYPES[t->dtype].size, n_chunks = (t->numel + CHECK_CHUNK - 1) / CHECK_CHUNK;
    const unsigned char *p = t->data;
    int bad_any = 0;
    size_t first_bad = n_chunks;
#pragma omp parallel for num_threads(gemm_get_threads()) schedule(dynamic) reduction(| : bad_any) reduction(min : first_bad)
    for (size_t k = 0; k < n_chunks; k++) {
        const size_t i0 = k * CHECK_CHUNK, n = t->numel - i0 < CHECK_CHUNK ? t->numel - i0 : CHECK_CHUNK;
        if (any_nonfinite(p, t->dtype, i0, n)) {
            bad_any |= 1;
            first_bad = k < first_bad ? k : first_bad;
        } else if (drop) {
            drop_pages(p + i0 * size, n * size);
        }
    }
    if (!bad_any) return 0;
    float chunk[4096];
    for (size_t i0 = first_bad * CHECK_CHUNK; i0 < t->numel; i0 += 4096) {
        size_t n = t->numel - i0 < 4096 ? t->numel - i0 : 4096;
        if (convert_range(chunk, st, t, i0, n) || check_finite(chunk, n, i0, st, t)) return -1;
    }
    return 0;
}

int safetensors_to_f32(float *out, const Safetensors *st, const SafetensorsTensor *t) {
    if (convert_range(out, st, t, 0, t->numel)) return -1;
    return check_finite(out, t->numel, 0, st, t);
}

int safetensors_check_f32(const Safetensors *st, const SafetensorsTensor *t) {
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16) {
        float one;
        return convert_range(&one, st, t, 0, 1); /* the dtype's refusal */
    }
    /* a tensor used in place keeps its pages; one converted later into a node block lets them go */
    return check_tensor(st, t, !safetensors_is_f32_view(t));
}

int safetensors_is_f32_view(const SafetensorsTensor *t) {
    return t->dtype == ST_F32 && (uintptr_t)t->data % _Alignof(float) == 0;
}

int safetensors_f32(const float **dst, float *owned, const Safetensors *st, const SafetensorsTensor *t) {
    if (!safetensors_is_f32_view(t)) {
        if (safetensors_to_f32(owned, st, t)) return -1;
        *dst = owned;
        return 0;
    }
    if (check_tensor(st, t, 0)) return -1;
    *dst = t->data;
    return 0;
}

static size_t aligned_floats(size_t n) { return (n + 15) / 16 * 16; }

size_t safetensors_pending_floats(const SafetensorsPending *p, size_t n) {
    size_t floats = 0;
    for (size_t i = 0; i < n; i++) floats += aligned_floats(p[i].t->numel);
    return floats;
}

void safetensors_place(float *block, const Safetensors *st, const SafetensorsPending *p, size_t n, int part,
                       int parts) {
    for (size_t i = 0, at = 0; i < n; i++) {
        const SafetensorsTensor *t = p[i].t;
        float *out = block + at;
        *p[i].dst = out;
        at += aligned_floats(t->numel);
        if (part < 0 || parts < 1) continue;
        if (part == 0) memset(out + t->numel, 0, (aligned_floats(t->numel) - t->numel) * sizeof(float)); /* the gap */
        /* this part's elements, in chunks on the rank's threads; each chunk's file pages are
         * released once converted (the float32 copy is what the run reads) */
        const size_t lo = t->numel * (size_t)part / (size_t)parts, hi = t->numel * ((size_t)part + 1) / (size_t)parts;
        const size_t n_chunks = (hi - lo + CHECK_CHUNK - 1) / CHECK_CHUNK, size = DTYPES[t->dtype].size;
        int bad = 0;
#pragma omp parallel for num_threads(gemm_get_threads()) schedule(dynamic) reduction(| : bad)
        for (size_t k = 0; k < n_chunks; k++) {
            const size_t i0 = lo + k * CHECK_CHUNK, m = hi - i0 < CHECK_CHUNK ? hi - i0 : CHECK_CHUNK;
            if (convert_range(out + i0, st, t, i0, m) || any_nonfinite((const unsigned char *)(out + i0), ST_F32, 0, m))
                bad |= 1;
            drop_pages((const unsigned char *)t->data + i0 * size, m * size);
        }
        if (bad) /* checked by every rank before: the file changed since */
            sg_fatal(tensor_file(st, t), "tensor '%s' changed while loading (a dtype or value it did not hold before)",
                     t->name);
    }
}

int safetensors_expect(const Safetensors *st, const char *name, const SafetensorsTensor **out, int ndim,
                       const int64_t *shape) {
    const SafetensorsTensor *t = safetensors_find(st, name);
    if (!t) return sg_errorf(st->path, "missing tensor '%s'", name);
    int ok = t->ndim == ndim;
    for (int d = 0; ok && d < ndim; d++) ok = t->shape[d] == shape[d];
    if (!ok) {
        char want[128] = "", got[128] = "";
        for (int d = 0; d < ndim; d++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", d ? ", " : "", (long long)shape[d]);
        for (int d = 0; d < t->ndim; d++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? ", " : "", (long long)t->shape[d]);
        return sg_errorf(tensor_file(st, t), "tensor '%s' has shape [%s], expected [%s]", name, got, want);
    }
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16)
        return sg_errorf(tensor_file(st, t), "tensor '%s' has dtype %s; saegap reads F32, F16 or BF16 weights", name,
                         DTYPES[t->dtype].name);
    *out = t;
    return 0;
}
