/* npy.c: the .npy header (npy.h).
 *
 * NumPy reads the header (numpy/lib/format.py, _read_array_header) by ast.literal_eval, then
 * demands a dict whose keys are exactly 'descr', 'fortran_order' and 'shape', a tuple of ints
 * for the shape and a bool for fortran_order. A header NumPy refuses must not be read here in
 * some other way, so this is a strict parser for the subset of Python literal syntax that
 * NumPy's writer uses and literal_eval gives the same meaning: a dict of single- or
 * double-quoted string keys (no escapes, no prefixes, printable ASCII), string, True/False and
 * tuple-of-decimal-ints values, whitespace between tokens, an optional trailing comma, and
 * whitespace after the closing brace. Anything else is refused with a message naming the file
 * and the problem, even where literal_eval would accept it (a refusal never reads wrong values).
 * Each key must appear once (literal_eval would keep the last of two). */
#include "npy.h"

#include "error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *what;
    const char *s, *end; /* the header text, [s, end) left to read */
} Lex;

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f'; }
static int is_digit(char c) { return c >= '0' && c <= '9'; }
static int is_word(char c) { return is_digit(c) || c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

static void skip_space(Lex *x) {
    while (x->s < x->end && is_space(*x->s)) x->s++;
}

/* Where an excerpt of a value ends. */
static int stop(char c) { return c == ',' || c == '}' || c == ')' || is_space(c); }

/* A short, printable excerpt of what stands at p (for "found ..." in messages). */
static const char *excerpt(const Lex *x, const char *p, char *buf, size_t cap) {
    size_t n = 0;
    if (p >= x->end) return "the end of the header";
    while (p + n < x->end && n + 4 < cap && n < 24 && !stop(p[n])) n++;
    if (n == 0) n = 1;
    size_t o = 0;
    for (size_t i = 0; i < n && o + 5 < cap; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c >= 0x20 && c < 0x7f) buf[o++] = (char)c;
        else o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", c);
    }
    if (p + n < x->end && !stop(p[n]) && o + 4 < cap)
        memcpy(buf + o, "...", 3), o += 3;
    buf[o] = 0;
    return buf;
}

static int syntax(Lex *x, const char *expected) {
    char buf[128];
    return sg_errorf(x->what, ".npy header: expected %s, found %s (not a header NumPy writes)", expected,
                     excerpt(x, x->s, buf, sizeof buf));
}

/* A quoted string without escapes into out[0..cap) (NUL-terminated); *len gets its length,
 * which may exceed cap - 1 (then out holds the start). */
static int string_lit(Lex *x, const char *role, char *out, size_t cap, size_t *len) {
    if (x->s < x->end && is_word(*x->s) && x->s + 1 < x->end && (x->s[1] == '\'' || x->s[1] == '"'))
        return sg_errorf(x->what, ".npy header: %s has a string prefix (%c%c...); NumPy writes plain quoted strings",
                         role, x->s[0], x->s[1]);
    if (x->s >= x->end || (*x->s != '\'' && *x->s != '"')) {
        char e[64];
        snprintf(e, sizeof e, "a quoted string for %s", role);
        return syntax(x, e);
    }
    const char q = *x->s++;
    size_t n = 0;
    for (;; x->s++) {
        if (x->s >= x->end) return sg_errorf(x->what, ".npy header: %s: string not closed", role);
        const unsigned char c = (unsigned char)*x->s;
        if (c == (unsigned char)q) break;
        if (c == '\\')
            return sg_errorf(x->what, ".npy header: %s: escape sequences in strings are not read (NumPy writes none)", role);
        if (c < 0x20 || c >= 0x7f)
            return sg_errorf(x->what, ".npy header: %s: string holds byte 0x%02x (NumPy writes printable ASCII)", role, c);
        if (n + 1 < cap) out[n] = (char)c;
        n++;
    }
    x->s++;
    out[n + 1 < cap ? n : cap - 1] = 0;
    *len = n;
    /* 'a' 'b' is one string to Python ('ab'), and ''' opens a triple-quoted one */
    const char *p = x->s;
    while (p < x->end && is_space(*p)) p++;
    if (p < x->end && (*p == '\'' || *p == '"'))
        return sg_errorf(x->what, ".npy header: %s: string literals in a row (or triple quotes) are not read", role);
    return 0;
}

/* True or False, as a whole word. */
static int bool_lit(Lex *x, int *out) {
    size_t n = 0;
    while (x->s + n < x->end && is_word(x->s[n])) n++;
    if (n == 4 && !memcmp(x->s, "True", 4)) *out = 1;
    else if (n == 5 && !memcmp(x->s, "False", 5)) *out = 0;
    else {
        char buf[128];
        return sg_errorf(x->what, ".npy header: 'fortran_order' must be True or False, found %s",
                         excerpt(x, x->s, buf, sizeof buf));
    }
    x->s += n;
    return 0;
}

/* One shape entry: a decimal int literal (no sign, no leading zeros, no '_', no suffix),
 * checked for overflow. */
static int dim_lit(Lex *x, size_t *out) {
    const char *start = x->s;
    char buf[128];
    size_t v = 0, n = 0;
    while (x->s + n < x->end && is_digit(x->s[n])) n++;
    if (n == 0 || (x->s + n < x->end && (is_word(x->s[n]) || x->s[n] == '.')))
        return sg_errorf(x->what, ".npy header: 'shape' entries must be non-negative integers, found %s",
                         excerpt(x, start, buf, sizeof buf));
    if (n > 1 && start[0] == '0')
        return sg_errorf(x->what, ".npy header: 'shape' entry %s has leading zeros (not a Python integer)",
                         excerpt(x, start, buf, sizeof buf));
    for (size_t i = 0; i < n; i++)
        if (sg_mul_overflow(v, 10, &v) || sg_add_overflow(v, (size_t)(start[i] - '0'), &v))
            return sg_errorf(x->what, ".npy shape entry %.*s%s does not fit in 64 bits (damaged header?)",
                             n > 40 ? 40 : (int)n, start, n > 40 ? "..." : "");
    x->s += n;
    *out = v;
    return 0;
}

/* A tuple of dims: (), (a,), (a, b), (a, b,) ... */
static int shape_lit(Lex *x, NpyHeader *h) {
    char buf[128];
    if (x->s >= x->end || *x->s != '(')
        return sg_errorf(x->what, ".npy header: 'shape' must be a tuple of integers, found %s",
                         excerpt(x, x->s, buf, sizeof buf));
    const char *open = x->s++;
    int comma = 0;
    h->ndim = 0;
    for (;;) {
        skip_space(x);
        if (x->s < x->end && *x->s == ')') break;
        if (h->ndim == NPY_MAX_DIMS)
            return sg_errorf(x->what, ".npy header: 'shape' has more than %d dimensions (saegap reads at most %d)",
                             NPY_MAX_DIMS, NPY_MAX_DIMS);
        if (dim_lit(x, &h->shape[h->ndim])) return -1;
        h->ndim++;
        skip_space(x);
        comma = 0;
        if (x->s < x->end && *x->s == ',') { x->s++, comma = 1; continue; }
        if (x->s < x->end && *x->s == ')') break;
        return syntax(x, "',' or ')' in 'shape'");
    }
    x->s++;
    if (h->ndim == 1 && !comma) /* (5) is the integer 5 to Python, not a tuple */
        return sg_errorf(x->what, ".npy header: 'shape' %.*s is an integer, not a tuple (a 1-tuple is written (n,))",
                         (int)(x->s - open > 40 ? 40 : x->s - open), open);
    return 0;
}

static const char *const KEYS[3] = {"descr", "fortran_order", "shape"};

static int parse_dict(Lex *x, NpyHeader *h) {
    int seen[3] = {0, 0, 0};
    while (x->s < x->end && (*x->s == ' ' || *x->s == '\t')) x->s++; /* literal_eval strips these */
    if (x->s >= x->end || *x->s != '{') return syntax(x, "'{' (the header is a Python dict)");
    x->s++;
    for (;;) {
        skip_space(x);
        if (x->s < x->end && *x->s == '}') break;
        char key[64];
        size_t klen = 0;
        if (string_lit(x, "a key", key, sizeof key, &klen)) return -1;
        int k = -1;
        for (int i = 0; i < 3; i++)
            if (klen == strlen(KEYS[i]) && !strcmp(key, KEYS[i])) k = i;
        if (k < 0)
            return sg_errorf(x->what, ".npy header: unexpected key '%s%s' (NumPy's headers hold exactly 'descr', "
                             "'fortran_order' and 'shape')", key, klen >= sizeof key ? "..." : "");
        if (seen[k]) return sg_errorf(x->what, ".npy header: key '%s' appears twice", KEYS[k]);
        seen[k] = 1;
        skip_space(x);
        if (x->s >= x->end || *x->s != ':') return syntax(x, "':' after a key");
        x->s++;
        skip_space(x);
        if (k == 0) {
            size_t dlen = 0;
            if (string_lit(x, "'descr'", h->descr, sizeof h->descr, &dlen)) return -1;
            if (dlen >= sizeof h->descr)
                return sg_errorf(x->what, ".npy header: 'descr' '%s...' is not a dtype saegap reads", h->descr);
        } else if (k == 1) {
            if (bool_lit(x, &h->fortran_order)) return -1;
        } else if (shape_lit(x, h)) {
            return -1;
        }
        skip_space(x);
        if (x->s < x->end && *x->s == ',') { x->s++; continue; }
        if (x->s < x->end && *x->s == '}') break;
        return syntax(x, "',' or '}' after a value");
    }
    x->s++;
    skip_space(x);
    if (x->s < x->end) return syntax(x, "only padding after the header's '}'");
    for (int i = 0; i < 3; i++)
        if (!seen[i]) return sg_errorf(x->what, ".npy header: no '%s' key (NumPy refuses such a header)", KEYS[i]);
    return 0;
}

int npy_header(const char *what, const unsigned char *pre, size_t size, NpyHeader *out) {
    memset(out, 0, sizeof *out);
    if (size < 10 || memcmp(pre, "\x93NUMPY", 6) != 0) return sg_errorf(what, "not a .npy file (bad magic)");
    size_t hlen, pre_len;
    if (pre[7] != 0 || pre[6] < 1 || pre[6] > 3)
        return sg_errorf(what, ".npy format version %d.%d is not supported (1.0, 2.0 or 3.0)", pre[6], pre[7]);
    if (pre[6] == 1) hlen = (size_t)pre[8] | (size_t)pre[9] << 8, pre_len = 10;
    else {
        if (size < 12) return sg_errorf(what, "truncated .npy header");
        hlen = (size_t)pre[8] | (size_t)pre[9] << 8 | (size_t)pre[10] << 16 | (size_t)pre[11] << 24;
        pre_len = 12;
    }
    if (hlen > NPY_MAX_HEADER)
        return sg_errorf(what, "implausible .npy header length %zu (NumPy refuses headers over %d bytes)", hlen,
                         NPY_MAX_HEADER);
    if (hlen > size - pre_len)
        return sg_errorf(what, "truncated .npy header (%zu bytes declared, %zu in the file)", hlen, size - pre_len);
    const char *h = (const char *)pre + pre_len;
    if (memchr(h, 0, hlen)) return sg_errorf(what, ".npy header holds a NUL byte (damaged?)");
    Lex x = {what, h, h + hlen};
    if (parse_dict(&x, out)) return -1;
    out->data_offset = pre_len + hlen;
    return 0;
}

int npy_count(const char *what, const NpyHeader *h, size_t *count) {
    size_t n = 1;
    for (size_t i = 0; i < h->ndim; i++)
        if (sg_mul_overflow(n, h->shape[i], &n))
            return sg_errorf(what, ".npy header declares more elements than this machine can address (damaged?)");
    *count = n;
    return 0;
}
