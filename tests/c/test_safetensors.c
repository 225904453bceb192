/* Validation of .safetensors headers (src/safetensors.c): small files written to a temporary
 * folder, valid ones opened with the right dtypes, shapes and views into the mapping, malformed
 * ones refused with -1, a zeroed struct and one pending error that names the file (and the tensor
 * where there is one). Named cases (check.h); exits non-zero on any failure. */
#include "error.h"
#include "safetensors.h"

#include "check.h"

#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_dir[64];
static char *g_files[256];
static size_t g_n_files;

/* The path of a new file `name` in the temporary folder, remembered for the cleanup. */
static const char *tmp_path(const char *name) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s/%s", g_dir, name);
    if (g_n_files == sizeof g_files / sizeof g_files[0]) {
        fprintf(stderr, "too many temporary files\n");
        exit(2);
    }
    g_files[g_n_files] = malloc(strlen(buf) + 1);
    strcpy(g_files[g_n_files], buf);
    return g_files[g_n_files++];
}

static void write_bytes(const char *path, const void *bytes, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(bytes, 1, n, f) != n) || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(2);
    }
}

/* A safetensors file: 8-byte little-endian hlen, the header (with every ' turned into " so the
 * tests can write JSON without escapes, unless raw), then data_len bytes of data (zeros when
 * data is NULL). hlen is the header's length unless hlen_override is not UINT64_MAX. */
static const char *make_file(const char *name, const char *header, int raw, const void *data, size_t data_len,
                             uint64_t hlen_override) {
    const char *path = tmp_path(name);
    size_t hl = strlen(header), total = 8 + hl + data_len;
    unsigned char *buf = calloc(total ? total : 1, 1);
    uint64_t hlen = hlen_override != UINT64_MAX ? hlen_override : (uint64_t)hl;
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(hlen >> (8 * i));
    for (size_t i = 0; i < hl; i++) buf[8 + i] = (unsigned char)(!raw && header[i] == '\'' ? '"' : header[i]);
    if (data) memcpy(buf + 8 + hl, data, data_len);
    write_bytes(path, buf, total);
    free(buf);
    return path;
}
static const char *make_st(const char *name, const char *header, const void *data, size_t data_len) {
    return make_file(name, header, 0, data, data_len, UINT64_MAX);
}

static int is_zeroed(const Safetensors *st) {
    return !st->path && !st->map && !st->map_size && !st->n_tensors && !st->tensors && !st->by_name && !st->arena;
}

/* Opens path expecting a refusal whose message starts with "<path>: " and holds want1 and
 * want2 (either may be NULL). */
static void refused_at(int line, const char *path, const char *want1, const char *want2) {
    Safetensors st;
    memset(&st, 0x5a, sizeof st); /* garbage: open must zero it on failure */
    sg_error_clear();
    int rc = safetensors_open(&st, path);
    const char *msg = sg_error_message();
    size_t pl = strlen(path);
    if (rc != -1) {
        check_fail_at(__FILE__, line, "%s was accepted (rc %d), expected a refusal mentioning '%s'", path, rc,
                      want1 ? want1 : "");
        safetensors_close(&st);
        sg_error_clear();
        return;
    }
    int ok = strncmp(msg, path, pl) == 0 && msg[pl] == ':' && msg[pl + 1] == ' ' && (!want1 || strstr(msg, want1)) &&
             (!want2 || strstr(msg, want2));
    if (!ok) {
        check_fail_at(__FILE__, line, "message \"%s\" does not name %s and hold '%s' '%s'", msg, path,
                      want1 ? want1 : "", want2 ? want2 : "");
    }
    if (!is_zeroed(&st)) {
        check_fail_at(__FILE__, line, "struct not zeroed after a refused open of %s", path);
    }
    safetensors_close(&st); /* accepts the zeroed struct */
    sg_error_clear();
}
#define REFUSED(path, w1, w2) refused_at(__LINE__, (path), (w1), (w2))

static uint16_t le16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }

/* a valid file: header order, dtypes, shapes, views into the mapping, conversion */
static void case_valid_file(void) {
    unsigned char data[48];
    float a[6] = {1.5f, -2.0f, 0.25f, 3.0f, -0.0f, 1e-3f};
    /* BF16: 1.0, -2.0, 3.140625, 0x0001 (smallest subnormal) */
    uint16_t b[4] = {0x3F80, 0xC000, 0x4049, 0x0001};
    /* F16: 1.0, -2.0, 2^-24 (smallest subnormal), 65504 (largest), 2^-14 (smallest normal),
     * 0x0155 = 341 x 2^-24 (subnormal), -0 and 1/3 rounded (0x3555) */
    uint16_t c[8] = {0x3C00, 0xC000, 0x0001, 0x7BFF, 0x0400, 0x0155, 0x8000, 0x3555};
    memcpy(data + 0, b, 8);   /* b at [0, 8) though it is listed second */
    memcpy(data + 8, a, 24);  /* a at [8, 32) */
    memcpy(data + 32, c, 16); /* c at [32, 48) */
    const char *header =
        "{'a':{'dtype':'F32','shape':[2,3],'data_offsets':[8,32]},"
        " '__metadata__':{'format':'pt','nested':[1,{'x':null},true,-2.5e+3]},"
        " 'b' : { 'shape' : [4], 'data_offsets' : [0, 8], 'dtype' : 'BF16', 'ignored' : {'k':[]} },"
        " 'c':{'dtype':'F16','shape':[8],'data_offsets':[32,48]}}";
    const char *path = make_st("valid.safetensors", header, data, sizeof data);
    Safetensors st;
    sg_error_clear();
    int rc = safetensors_open(&st, path);
    CHECK(rc == 0, "valid file refused: %s", sg_error_message());
    CHECK(sg_error_message()[0] == 0, "a valid file left an error: %s", sg_error_message());
    if (rc == 0) {
        CHECK(st.n_tensors == 3, "n_tensors %zu, expected 3 (__metadata__ is not a tensor)", st.n_tensors);
        CHECK(!strcmp(st.path, path), "path '%s'", st.path);
        CHECK(st.map_size == 8 + strlen(header) + sizeof data, "map size %zu", st.map_size);
        const char *block = (const char *)st.map + st.map_size - sizeof data;
        CHECK(!strcmp(st.tensors[0].name, "a") && !strcmp(st.tensors[1].name, "b") &&
                  !strcmp(st.tensors[2].name, "c"),
              "tensors not in header order: %s %s %s", st.tensors[0].name, st.tensors[1].name, st.tensors[2].name);
        const SafetensorsTensor *ta = safetensors_find(&st, "a"), *tb = safetensors_find(&st, "b"),
                                *tc = safetensors_find(&st, "c");
        CHECK(ta == &st.tensors[0] && tb == &st.tensors[1] && tc == &st.tensors[2], "find returned the wrong tensor");
        CHECK(!safetensors_find(&st, "__metadata__") && !safetensors_find(&st, "d") &&
                  !safetensors_find(&st, "") && !safetensors_find(&st, "A"),
              "find of an absent name returned a tensor");
        if (ta && tb && tc) {
            CHECK(ta->dtype == ST_F32 && ta->ndim == 2 && ta->shape[0] == 2 && ta->shape[1] == 3 && ta->numel == 6 &&
                      ta->nbytes == 24,
                  "a: dtype %d ndim %d shape [%lld,%lld] numel %zu nbytes %zu", (int)ta->dtype, ta->ndim,
                  (long long)ta->shape[0], (long long)ta->shape[1], ta->numel, ta->nbytes);
            CHECK(tb->dtype == ST_BF16 && tb->ndim == 1 && tb->shape[0] == 4 && tb->numel == 4 && tb->nbytes == 8,
                  "b: dtype %d ndim %d numel %zu nbytes %zu", (int)tb->dtype, tb->ndim, tb->numel, tb->nbytes);
            CHECK(tc->dtype == ST_F16 && tc->numel == 8 && tc->nbytes == 16, "c: dtype/numel");
            CHECK((const char *)ta->data == block + 8 && (const char *)tb->data == block &&
                      (const char *)tc->data == block + 32,
                  "data views do not point at data_offsets in the mapping");
            CHECK(!memcmp(ta->data, a, 24) && le16(tb->data) == 0x3F80, "views do not hold the file's bytes");
            float out[8];
            CHECK(safetensors_to_f32(out, &st, ta) == 0 && !memcmp(out, a, sizeof a), "F32 conversion");
            CHECK(safetensors_to_f32(out, &st, tb) == 0 && out[0] == 1.0f && out[1] == -2.0f &&
                      out[2] == 3.140625f && out[3] == ldexpf(1.0f, -133),
                  "BF16 conversion: %g %g %g %g", out[0], out[1], out[2], out[3]);
            CHECK(safetensors_to_f32(out, &st, tc) == 0, "F16 conversion refused: %s", sg_error_message());
            float want_c[8] = {1.0f, -2.0f, ldexpf(1.0f, -24), 65504.0f, ldexpf(1.0f, -14), 341 * ldexpf(1.0f, -24),
                               -0.0f, 0.333251953125f};
            for (int i = 0; i < 8; i++)
                CHECK(out[i] == want_c[i] && signbit(out[i]) == signbit(want_c[i]), "F16 %#06x -> %.9g, expected %.9g",
                      c[i], out[i], want_c[i]);
            const SafetensorsTensor *e = NULL;
            int64_t sh23[2] = {2, 3}, sh32[2] = {3, 2};
            CHECK(safetensors_expect(&st, "a", &e, 2, sh23) == 0 && e == ta, "expect a [2,3]");
            sg_error_clear();
            CHECK(safetensors_expect(&st, "a", &e, 2, sh32) == -1 && strstr(sg_error_message(), path) &&
                      strstr(sg_error_message(), "tensor 'a' has shape [2, 3], expected [3, 2]"),
                  "expect with the wrong shape: \"%s\"", sg_error_message());
            sg_error_clear();
            CHECK(safetensors_expect(&st, "zz", &e, 1, sh23) == -1 && strstr(sg_error_message(), path) &&
                      strstr(sg_error_message(), "missing tensor 'zz'"),
                  "expect of a missing tensor: \"%s\"", sg_error_message());
            sg_error_clear();
        }
        safetensors_close(&st);
        CHECK(is_zeroed(&st), "close does not zero the struct");
        safetensors_close(&st); /* twice is fine */
    }
}

/* conversions refused: integer dtypes, NaN and Inf, naming the tensor */
static void case_conversions_refused(void) {
    float vals[3] = {1.0f, NAN, 2.0f};
    unsigned char data[12 + 8 + 4];
    memcpy(data, vals, 12);
    int32_t ints[2] = {7, -7};
    memcpy(data + 12, ints, 8);
    uint16_t h[2] = {0x3C00, 0x7C00}; /* F16 1.0, +Inf */
    memcpy(data + 20, h, 4);
    const char *path = make_st("nonfinite.safetensors",
                               "{'w.nan':{'dtype':'F32','shape':[3],'data_offsets':[0,12]},"
                               "'w.int':{'dtype':'I32','shape':[2],'data_offsets':[12,20]},"
                               "'w.inf':{'dtype':'F16','shape':[2],'data_offsets':[20,24]}}",
                               data, sizeof data);
    Safetensors st;
    sg_error_clear();
    CHECK(safetensors_open(&st, path) == 0, "file with a NaN refused at open (values are checked on conversion)");
    const SafetensorsTensor *tn = safetensors_find(&st, "w.nan"), *ti = safetensors_find(&st, "w.int"),
                            *tf = safetensors_find(&st, "w.inf");
    float out[3];
    if (tn && ti && tf) {
        CHECK(ti->dtype == ST_I32 && !memcmp(ti->data, ints, 8), "I32 view");
        sg_error_clear();
        CHECK(safetensors_to_f32(out, &st, tn) == -1 && strstr(sg_error_message(), path) &&
                  strstr(sg_error_message(), "'w.nan'") && strstr(sg_error_message(), "NaN at flat index 1"),
              "NaN: \"%s\"", sg_error_message());
        sg_error_clear();
        CHECK(safetensors_to_f32(out, &st, tf) == -1 && strstr(sg_error_message(), "'w.inf'") &&
                  strstr(sg_error_message(), "Inf at flat index 1"),
              "Inf: \"%s\"", sg_error_message());
        sg_error_clear();
        CHECK(safetensors_to_f32(out, &st, ti) == -1 && strstr(sg_error_message(), "'w.int'") &&
                  strstr(sg_error_message(), "dtype I32"),
              "I32 to f32: \"%s\"", sg_error_message());
        sg_error_clear();
        const SafetensorsTensor *e = NULL;
        int64_t sh[1] = {2};
        CHECK(safetensors_expect(&st, "w.int", &e, 1, sh) == -1 && strstr(sg_error_message(), "dtype I32"),
              "expect accepted an I32 tensor: \"%s\"", sg_error_message());
        sg_error_clear();
    } else {
        CHECK(0, "tensors of nonfinite.safetensors not found");
    }
    safetensors_close(&st);
}

/* every dtype name, its element size, shapes of 0 and 8 dims, zero-size tensors */
static void case_dtypes_and_shapes(void) {
    static const size_t size_of[ST_DTYPE_COUNT] = {1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 8, 8, 8, 1, 1};
    char header[4096] = "{";
    size_t off = 0;
    for (int d = 0; d < ST_DTYPE_COUNT; d++) {
        size_t nb = 3 * size_of[d];
        snprintf(header + strlen(header), sizeof header - strlen(header),
                 "'t%02d':{'dtype':'%s','shape':[3],'data_offsets':[%zu,%zu]},", d,
                 safetensors_dtype_name((SafetensorsDtype)d), off, off + nb);
        off += nb;
    }
    /* a scalar, an 8-dim tensor, and zero-size tensors (one between two others) */
    snprintf(header + strlen(header), sizeof header - strlen(header),
             "'scalar':{'dtype':'F64','shape':[],'data_offsets':[%zu,%zu]},"
             "'empty':{'dtype':'F32','shape':[4,0,3],'data_offsets':[%zu,%zu]},"
             "'eight':{'dtype':'U8','shape':[1,2,1,2,1,2,1,2],'data_offsets':[%zu,%zu]},"
             "'empty2':{'dtype':'I64','shape':[0],'data_offsets':[%zu,%zu]}}     ",
             off, off + 8, off + 8, off + 8, off + 8, off + 24, off + 24, off + 24);
    size_t total = off + 24;
    unsigned char *data = calloc(total, 1);
    const char *path = make_st("dtypes.safetensors", header, data, total);
    free(data);
    Safetensors st;
    sg_error_clear();
    CHECK(safetensors_open(&st, path) == 0, "all dtypes: %s", sg_error_message());
    CHECK(st.n_tensors == ST_DTYPE_COUNT + 4, "n_tensors %zu", st.n_tensors);
    for (int d = 0; d < ST_DTYPE_COUNT && st.n_tensors; d++) {
        char name[8];
        snprintf(name, sizeof name, "t%02d", d);
        const SafetensorsTensor *t = safetensors_find(&st, name);
        CHECK(t && t->dtype == (SafetensorsDtype)d && t->numel == 3 && t->nbytes == 3 * size_of[d],
              "dtype %s: nbytes %zu, expected %zu", safetensors_dtype_name((SafetensorsDtype)d), t ? t->nbytes : 0,
              3 * size_of[d]);
    }
    const SafetensorsTensor *s = safetensors_find(&st, "scalar"), *e = safetensors_find(&st, "empty"),
                            *g = safetensors_find(&st, "eight");
    CHECK(s && s->ndim == 0 && s->numel == 1 && s->nbytes == 8, "scalar: ndim %d numel %zu", s ? s->ndim : -1,
          s ? s->numel : 0);
    CHECK(e && e->ndim == 3 && e->numel == 0 && e->nbytes == 0 && e->shape[2] == 3, "zero-size tensor");
    CHECK(g && g->ndim == 8 && g->numel == 16 && g->shape[7] == 2, "8-dim tensor");
    CHECK(!strcmp(safetensors_dtype_name(ST_F8_E5M2), "F8_E5M2") &&
              !strcmp(safetensors_dtype_name(ST_DTYPE_COUNT), "?"),
          "dtype names");
    safetensors_close(&st);
}

/* names with escapes decode to UTF-8; an empty header is a file of no tensors */
static void case_escaped_names(void) {
    /* "a\u00e9\"b\\c\ud83d\ude00/\n" in JSON: a, e-acute, quote, b, backslash, c, U+1F600, /, newline */
    const char *path = make_file("escapes.safetensors",
                                 "{\"a\\u00e9\\\"b\\\\c\\ud83d\\ude00\\/\\n\":{\"dtype\":\"U8\",\"shape\":[2],"
                                 "\"data_offsets\":[0,2]}}",
                                 1, "xy", 2, UINT64_MAX);
    Safetensors st;
    sg_error_clear();
    CHECK(safetensors_open(&st, path) == 0, "escaped name: %s", sg_error_message());
    const char *want = "a\xc3\xa9\"b\\c\xf0\x9f\x98\x80/\n";
    CHECK(st.n_tensors == 1 && !strcmp(st.tensors[0].name, want), "escaped name decoded as '%s'",
          st.n_tensors ? st.tensors[0].name : "");
    CHECK(safetensors_find(&st, want) != NULL, "find of the decoded name");
    safetensors_close(&st);

    /* the same name written as raw UTF-8 (2- and 4-byte sequences) */
    path = make_file("raw-utf8.safetensors",
                     "{\"a\xc3\xa9\xf0\x9f\x98\x80\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 1,
                     "xy", 2, UINT64_MAX);
    CHECK(safetensors_open(&st, path) == 0 && st.n_tensors == 1 &&
              !strcmp(st.tensors[0].name, "a\xc3\xa9\xf0\x9f\x98\x80"),
          "raw UTF-8 name: %s", sg_error_message());
    safetensors_close(&st);

    path = make_st("empty.safetensors", "{}", NULL, 0);
    CHECK(safetensors_open(&st, path) == 0 && st.n_tensors == 0 && !safetensors_find(&st, "a"),
          "header {} with no data: %s", sg_error_message());
    safetensors_close(&st);
    path = make_st("metaonly.safetensors", "{'__metadata__':{}} ", NULL, 0);
    CHECK(safetensors_open(&st, path) == 0 && st.n_tensors == 0, "metadata only: %s", sg_error_message());
    safetensors_close(&st);
}

/* many tensors, listed in the reverse order of their offsets: lookups by name */
static void case_many_tensors(void) {
    enum { NT = 3000 };
    size_t cap = (size_t)NT * 80 + 16, len = 0;
    char *header = malloc(cap);
    len += (size_t)snprintf(header + len, cap - len, "{");
    for (int i = 0; i < NT; i++) {
        int k = NT - 1 - i; /* tensor "n<k>" holds byte k */
        len += (size_t)snprintf(header + len, cap - len, "%s'n%d':{'dtype':'U8','shape':[1],'data_offsets':[%d,%d]}",
                                i ? "," : "", k, k, k + 1);
    }
    snprintf(header + len, cap - len, "}");
    unsigned char data[NT];
    for (int k = 0; k < NT; k++) data[k] = (unsigned char)(k * 7);
    const char *path = make_st("many.safetensors", header, data, NT);
    free(header);
    Safetensors st;
    sg_error_clear();
    CHECK(safetensors_open(&st, path) == 0 && st.n_tensors == NT, "%d tensors: %s", NT, sg_error_message());
    int bad = 0;
    for (int k = 0; k < NT && st.n_tensors; k++) {
        char name[16];
        snprintf(name, sizeof name, "n%d", k);
        const SafetensorsTensor *t = safetensors_find(&st, name);
        if (!t || *(const unsigned char *)t->data != (unsigned char)(k * 7) || strcmp(t->name, name)) bad++;
    }
    CHECK(bad == 0, "%d of %d lookups by name found the wrong tensor", bad, NT);
    safetensors_close(&st);
}

/* refused: the file and the header length */
static void case_refused_file_and_header_length(void) {
    const char *p = tmp_path("short.safetensors");
    write_bytes(p, "\x02\0\0\0\0\0\0", 7);
    REFUSED(p, "7 bytes, too short", NULL);
    REFUSED(tmp_path("does-not-exist.safetensors"), "cannot open", NULL);
    REFUSED(g_dir, "not a regular file", NULL);
    REFUSED(make_file("hlen-beyond.safetensors", "{}", 0, NULL, 0, 3), "header length 3 exceeds the file size 10",
            NULL);
    REFUSED(make_file("hlen-huge.safetensors", "{}", 0, NULL, 0, UINT64_MAX - 3), "exceeds the file size", NULL);
    REFUSED(make_file("hlen-2^63.safetensors", "{}", 0, NULL, 0, (uint64_t)1 << 63), "exceeds the file size", NULL);
    REFUSED(make_file("hlen-zero.safetensors", "{}", 0, NULL, 0, 0), "not a JSON object", NULL);
    REFUSED(make_st("array.safetensors", "[]", NULL, 0), "not a JSON object", NULL);
    REFUSED(make_st("leading-space.safetensors", " {}", NULL, 0), "not a JSON object", NULL);
    /* a header of more than 100 MB inside a (sparse) file long enough to hold it */
    {
        const char *big = tmp_path("hlen-100MB.safetensors");
        uint64_t hlen = 100000001;
        unsigned char head[9];
        for (int i = 0; i < 8; i++) head[i] = (unsigned char)(hlen >> (8 * i));
        head[8] = '{';
        write_bytes(big, head, 9);
        if (truncate(big, (off_t)(8 + hlen)) != 0) perror("truncate");
        REFUSED(big, "header length 100000001 exceeds the 100 MB", NULL);
    }
}

/* refused: not JSON */
static void case_refused_not_json(void) {
    REFUSED(make_st("unclosed.safetensors", "{'a':{'dtype':'U8','shape':[1],'data_offsets':[0,1]}", "x", 1),
            "not valid JSON", "end");
    REFUSED(make_st("trailing-comma.safetensors", "{'a':{'dtype':'U8','shape':[1],'data_offsets':[0,1]},}", "x", 1),
            "not valid JSON", "where a string is expected");
    REFUSED(make_st("garbage-after.safetensors", "{} x", NULL, 0), "not valid JSON", "'x' at byte 3");
    REFUSED(make_st("two-objects.safetensors", "{}{}", NULL, 0), "not valid JSON", "end of the header");
    REFUSED(make_file("single-quotes.safetensors", "{'a':1}", 1, NULL, 0, UINT64_MAX), "not valid JSON",
            "''' at byte 1");
    REFUSED(make_file("unterminated.safetensors", "{\"abc", 1, NULL, 0, UINT64_MAX), "not valid JSON",
            "end of a string");
    REFUSED(make_file("control-char.safetensors", "{\"a\tb\":{}}", 1, NULL, 0, UINT64_MAX), "not valid JSON",
            "byte 0x09");
    REFUSED(make_file("bad-escape.safetensors", "{\"a\\x\":{}}", 1, NULL, 0, UINT64_MAX), "not valid JSON",
            "valid escape");
    REFUSED(make_file("bad-hex.safetensors", "{\"a\\u12g4\":{}}", 1, NULL, 0, UINT64_MAX), "valid escape", NULL);
    REFUSED(make_file("lone-low.safetensors", "{\"a\\udc00\":{}}", 1, NULL, 0, UINT64_MAX), "lone low surrogate",
            NULL);
    REFUSED(make_file("lone-high.safetensors", "{\"a\\ud800x\":{}}", 1, NULL, 0, UINT64_MAX), "low half", NULL);
    REFUSED(make_file("nul-escape.safetensors", "{\"a\\u0000\":{}}", 1, NULL, 0, UINT64_MAX), "\\u0000", NULL);
    REFUSED(make_st("missing-colon.safetensors", "{'a' {}}", NULL, 0), "not valid JSON", "':'");
    REFUSED(make_st("bad-literal.safetensors", "{'__metadata__':tru}", NULL, 0), "not valid JSON", NULL);
    REFUSED(make_st("bad-number.safetensors", "{'__metadata__':1.}", NULL, 0), "not valid JSON", "a digit");
    char deep[200] = "{'__metadata__':";
    for (int i = 0; i < 70; i++) strcat(deep, "[");
    for (int i = 0; i < 70; i++) strcat(deep, "]");
    strcat(deep, "}");
    REFUSED(make_st("deep.safetensors", deep, NULL, 0), "nests deeper than 64 levels", NULL);
}

/* refused: the header is UTF-8, as the reference implementation requires */
static void case_refused_not_utf8(void) {
    REFUSED(make_file("utf8-ff.safetensors", "{\"a\xff\xfe\":{}}", 1, NULL, 0, UINT64_MAX), "not valid UTF-8",
            "byte 0xff at header byte 3");
    REFUSED(make_file("utf8-overlong.safetensors", "{\"\xc0\xaf\":{}}", 1, NULL, 0, UINT64_MAX),
            "not valid UTF-8", "header byte 2");
    REFUSED(make_file("utf8-surrogate.safetensors", "{\"\xed\xa0\x80\":{}}", 1, NULL, 0, UINT64_MAX),
            "not valid UTF-8", "header byte 2");
    REFUSED(make_file("utf8-cut.safetensors", "{\"\xe2\x82", 1, NULL, 0, UINT64_MAX), "not valid UTF-8", NULL);
}

/* refused: tensor entries (each message names the tensor) */
static void case_refused_tensor_entries(void) {
    REFUSED(make_st("unknown-dtype.safetensors", "{'w':{'dtype':'F33','shape':[1],'data_offsets':[0,4]}}", NULL, 4),
            "tensor 'w': unknown dtype \"F33\"", NULL);
    REFUSED(make_st("lower-dtype.safetensors", "{'w':{'dtype':'f32','shape':[1],'data_offsets':[0,4]}}", NULL, 4),
            "tensor 'w': unknown dtype \"f32\"", NULL);
    REFUSED(make_st("dtype-number.safetensors", "{'w':{'dtype':4,'shape':[1],'data_offsets':[0,4]}}", NULL, 4),
            "tensor 'w': dtype must be a string, not 4", NULL);
    REFUSED(make_st("entry-number.safetensors", "{'w':5}", NULL, 0), "tensor 'w': header entry must be an object",
            "not 5");
    REFUSED(make_st("missing-shape.safetensors", "{'w':{'dtype':'F32','data_offsets':[0,4]}}", NULL, 4),
            "tensor 'w'", "missing shape");
    REFUSED(make_st("missing-offsets.safetensors", "{'w':{'dtype':'F32','shape':[1]}}", NULL, 4), "tensor 'w'",
            "missing data_offsets");
    REFUSED(make_st("missing-dtype.safetensors", "{'w':{'shape':[1],'data_offsets':[0,4]}}", NULL, 4), "tensor 'w'",
            "missing dtype");
    REFUSED(make_st("dup-key.safetensors",
                    "{'w':{'dtype':'F32','dtype':'F32','shape':[1],'data_offsets':[0,4]}}", NULL, 4),
            "tensor 'w': key \"dtype\" appears twice", NULL);
    REFUSED(make_st("shape-not-array.safetensors", "{'w':{'dtype':'F32','shape':4,'data_offsets':[0,4]}}", NULL, 4),
            "tensor 'w': shape must be an array of integers, not 4", NULL);
    REFUSED(make_st("shape-negative.safetensors", "{'w':{'dtype':'F32','shape':[-1],'data_offsets':[0,4]}}", NULL,
                    4),
            "tensor 'w': shape entry must be a non-negative integer, not -1", NULL);
    REFUSED(make_st("shape-float.safetensors", "{'w':{'dtype':'F32','shape':[1.0],'data_offsets':[0,4]}}", NULL, 4),
            "tensor 'w': shape entry must be a non-negative integer, not 1.0", NULL);
    REFUSED(make_st("shape-exp.safetensors", "{'w':{'dtype':'F32','shape':[1e0],'data_offsets':[0,4]}}", NULL, 4),
            "not 1e0", NULL);
    REFUSED(make_st("shape-leading-zero.safetensors", "{'w':{'dtype':'F32','shape':[01],'data_offsets':[0,4]}}",
                    NULL, 4),
            "tensor 'w': shape entry must be a non-negative integer", NULL);
    REFUSED(make_st("shape-string.safetensors", "{'w':{'dtype':'F32','shape':['1'],'data_offsets':[0,4]}}", NULL, 4),
            "tensor 'w': shape entry must be a non-negative integer", NULL);
    REFUSED(make_st("shape-9-dims.safetensors",
                    "{'w':{'dtype':'U8','shape':[1,1,1,1,1,1,1,1,1],'data_offsets':[0,1]}}", NULL, 1),
            "tensor 'w': more than 8 dimensions", NULL);
    REFUSED(make_st("shape-above-int64.safetensors",
                    "{'w':{'dtype':'U8','shape':[9223372036854775808],'data_offsets':[0,1]}}", NULL, 1),
            "tensor 'w': shape entry 9223372036854775808 is larger than 9223372036854775807", NULL);
    REFUSED(make_st("shape-above-uint64.safetensors",
                    "{'w':{'dtype':'U8','shape':[99999999999999999999999],'data_offsets':[0,1]}}", NULL, 1),
            "tensor 'w': shape entry 99999999999999999999999 is larger than", NULL);
    /* 2^32 x 2^32 = 2^64 overflows size_t; the product would wrap to 0 x 2 = 0 = the span */
    REFUSED(make_st("shape-product.safetensors",
                    "{'w':{'dtype':'U8','shape':[4294967296,4294967296,2],'data_offsets':[0,0]}}", NULL, 0),
            "tensor 'w': the product of its shape overflows", NULL);
    /* numel fits, numel x 4 bytes does not (2^62 x 4 = 2^64, wraps to 0) */
    REFUSED(make_st("nbytes-overflow.safetensors",
                    "{'w':{'dtype':'F32','shape':[4611686018427387904],'data_offsets':[0,0]}}", NULL, 0),
            "tensor 'w': F32 x shape needs more bytes than a size can hold", NULL);
    REFUSED(make_st("offsets-three.safetensors", "{'w':{'dtype':'U8','shape':[1],'data_offsets':[0,1,1]}}", NULL, 1),
            "tensor 'w': data_offsets must be two integers", NULL);
    REFUSED(make_st("offsets-one.safetensors", "{'w':{'dtype':'U8','shape':[1],'data_offsets':[1]}}", NULL, 1),
            "tensor 'w': data_offsets must be two integers", NULL);
    REFUSED(make_st("offsets-above-uint64.safetensors",
                    "{'w':{'dtype':'U8','shape':[1],'data_offsets':[0,18446744073709551616]}}", NULL, 1),
            "tensor 'w': data_offsets entry 18446744073709551616 is larger than 18446744073709551615", NULL);
    REFUSED(make_st("offsets-beyond.safetensors", "{'w':{'dtype':'F32','shape':[2],'data_offsets':[0,8]}}", NULL, 4),
            "tensor 'w': data_offsets [0, 8] lie outside the data block of 4 bytes", NULL);
    REFUSED(make_st("offsets-reversed.safetensors", "{'w':{'dtype':'U8','shape':[0],'data_offsets':[4,0]}}", NULL, 4),
            "tensor 'w': data_offsets [4, 0] lie outside", NULL);
    REFUSED(make_st("offsets-huge.safetensors",
                    "{'w':{'dtype':'U8','shape':[1],'data_offsets':[18446744073709551614,18446744073709551615]}}",
                    NULL, 1),
            "tensor 'w': data_offsets [18446744073709551614, 18446744073709551615] lie outside", NULL);
    REFUSED(make_st("span-mismatch.safetensors", "{'w':{'dtype':'F32','shape':[2,3],'data_offsets':[0,20]}}", NULL,
                    20),
            "tensor 'w': F32 x shape needs 24 bytes but data_offsets span 20", NULL);
    REFUSED(make_st("span-mismatch-bf16.safetensors", "{'w':{'dtype':'BF16','shape':[3],'data_offsets':[0,12]}}",
                    NULL, 12),
            "tensor 'w': BF16 x shape needs 6 bytes but data_offsets span 12", NULL);
}

/* refused: the tensors together (duplicates, overlaps, gaps, the end of the block) */
static void case_refused_tensors_together(void) {
    REFUSED(make_st("duplicate.safetensors",
                    "{'w':{'dtype':'F32','shape':[1],'data_offsets':[0,4]},"
                    "'v':{'dtype':'F32','shape':[1],'data_offsets':[4,8]},"
                    "'w':{'dtype':'F32','shape':[1],'data_offsets':[8,12]}}",
                    NULL, 12),
            "tensor 'w' appears twice in the header", NULL);
    /* the same name written two ways: "w" and "\u0077" */
    REFUSED(make_file("duplicate-escaped.safetensors",
                      "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                      "\"\\u0077\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
                      1, NULL, 2, UINT64_MAX),
            "tensor 'w' appears twice", NULL);
    REFUSED(make_st("overlap.safetensors",
                    "{'a':{'dtype':'F32','shape':[2],'data_offsets':[0,8]},"
                    "'b':{'dtype':'F32','shape':[2],'data_offsets':[4,12]}}",
                    NULL, 12),
            "tensor 'b' overlaps tensor 'a'", NULL);
    REFUSED(make_st("same-range.safetensors",
                    "{'a':{'dtype':'F32','shape':[2],'data_offsets':[0,8]},"
                    "'b':{'dtype':'I32','shape':[2],'data_offsets':[0,8]}}",
                    NULL, 8),
            "overlaps tensor", NULL);
    /* a zero-size tensor inside another one's bytes */
    REFUSED(make_st("empty-inside.safetensors",
                    "{'a':{'dtype':'F32','shape':[2],'data_offsets':[0,8]},"
                    "'z':{'dtype':'F32','shape':[0],'data_offsets':[4,4]}}",
                    NULL, 8),
            "tensor 'z' overlaps tensor 'a'", NULL);
    REFUSED(make_st("gap.safetensors",
                    "{'a':{'dtype':'F32','shape':[1],'data_offsets':[0,4]},"
                    "'b':{'dtype':'F32','shape':[1],'data_offsets':[8,12]}}",
                    NULL, 12),
            "gap of 4 bytes in the data block before tensor 'b'", NULL);
    REFUSED(make_st("gap-first.safetensors", "{'a':{'dtype':'F32','shape':[1],'data_offsets':[4,8]}}", NULL, 8),
            "gap of 4 bytes in the data block before tensor 'a'", NULL);
    REFUSED(make_st("padded.safetensors", "{'a':{'dtype':'F32','shape':[2],'data_offsets':[0,8]}}", NULL, 12),
            "data block is 12 bytes but the tensors cover 8", NULL);
    REFUSED(make_st("data-no-tensors.safetensors", "{}", NULL, 3), "data block is 3 bytes but the tensors cover 0",
            NULL);
}

int main(int argc, char **argv) {
    snprintf(g_dir, sizeof g_dir, "/tmp/saegap-test-st-XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 2;
    }
    static const CheckCase CASES[] = {
        CASE(valid_file),
        CASE(conversions_refused),
        CASE(dtypes_and_shapes),
        CASE(escaped_names),
        CASE(many_tensors),
        CASE(refused_file_and_header_length),
        CASE(refused_not_json),
        CASE(refused_not_utf8),
        CASE(refused_tensor_entries),
        CASE(refused_tensors_together),
    };
    int rc = check_run_cases("test_safetensors", CASES, CHECK_COUNT(CASES), argc, argv);
    for (size_t i = 0; i < g_n_files; i++) {
        unlink(g_files[i]);
        free(g_files[i]);
    }
    if (rmdir(g_dir) != 0) perror(g_dir);
    return rc;
}
