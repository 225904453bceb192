/* npy.c: the .npy header (npy.h). */
#include "npy.h"

#include "error.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NPY_MAX_HEADER (1u << 20)

/* One shape entry: decimal digits (Python 2 files may add 'L'), checked. */
static int npy_dim(const char *what, const char **sp, size_t *out) {
    const char *s = *sp, *start = s;
    size_t v = 0;
    while (isdigit((unsigned char)*s)) {
        if (sg_mul_overflow(v, 10, &v) || sg_add_overflow(v, (size_t)(*s - '0'), &v)) {
            size_t n = strspn(start, "0123456789");
            return sg_errorf(what, ".npy shape entry %.*s%s does not fit in 64 bits (damaged header?)",
                             n > 40 ? 40 : (int)n, start, n > 40 ? "..." : "");
        }
        s++;
    }
    if (*s == 'L') s++;
    *sp = s, *out = v;
    return 0;
}

int npy_header(const char *what, const unsigned char *pre, size_t size, NpyHeader *out) {
    memset(out, 0, sizeof *out);
    if (size < 10 || memcmp(pre, "\x93NUMPY", 6) != 0) return sg_errorf(what, "not a .npy file (bad magic)");
    size_t hlen, pre_len;
    if (pre[6] == 1) hlen = (size_t)pre[8] | (size_t)pre[9] << 8, pre_len = 10;
    else if (pre[6] == 2 || pre[6] == 3) {
        if (size < 12) return sg_errorf(what, "truncated .npy header");
        hlen = (size_t)pre[8] | (size_t)pre[9] << 8 | (size_t)pre[10] << 16 | (size_t)pre[11] << 24;
        pre_len = 12;
    } else {
        return sg_errorf(what, ".npy format version %d.%d is not supported (1.0, 2.0 or 3.0)", pre[6], pre[7]);
    }
    if (hlen > NPY_MAX_HEADER) return sg_errorf(what, "implausible .npy header length %zu", hlen);
    if (hlen > size - pre_len)
        return sg_errorf(what, "truncated .npy header (%zu bytes declared, %zu in the file)", hlen, size - pre_len);
    char *h = sg_xcalloc(hlen + 1, 1);
    memcpy(h, pre + pre_len, hlen);
    int rc = 0;
    const char *d = strstr(h, "'descr'");
    if (d) d = strchr(d + 7, '\'');
    if (d) sscanf(d + 1, "%15[^']", out->descr);
    out->fortran_order = strstr(h, "'fortran_order': True") != NULL;
    const char *s = strstr(h, "'shape'");
    if (s) s = strchr(s, '(');
    int bad = 0;
    if (s) {
        s++;
        while (*s && *s != ')') {
            while (*s == ' ' || *s == ',') s++;
            if (*s == ')') break;
            if (!isdigit((unsigned char)*s) || out->ndim == NPY_MAX_DIMS) { bad = 1; break; }
            if (npy_dim(what, &s, &out->shape[out->ndim++])) { rc = -1; break; }
        }
    }
    if (rc == 0 && (!d || !s || bad)) rc = sg_errorf(what, "cannot parse the .npy header");
    out->data_offset = pre_len + hlen;
    free(h);
    return rc;
}

int npy_count(const char *what, const NpyHeader *h, size_t *count) {
    size_t n = 1;
    for (size_t i = 0; i < h->ndim; i++)
        if (sg_mul_overflow(n, h->shape[i], &n))
            return sg_errorf(what, ".npy header declares more elements than this machine can address (damaged?)");
    *count = n;
    return 0;
}
