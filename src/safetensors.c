/* safetensors.c: mmap a .safetensors file and validate its header (see safetensors.h). */
#include "safetensors.h"

#include "error.h"

#include <cjson/cJSON.h>
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

/* A JSON number that is a non-negative integer exactly representable in a double. */
static int json_uint(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return -1;
    double v = j->valuedouble;
    if (!(v >= 0) || v > 9007199254740992.0 || v != floor(v)) return -1;
    *out = (uint64_t)v;
    return 0;
}

static int cmp_by_offset(const void *a, const void *b) {
    const SafetensorsTensor *x = a, *y = b;
    const char *px = x->data, *py = y->data;
    if (px != py) return px < py ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : (x->nbytes > y->nbytes);
}

static int parse_header(Safetensors *st, const char *json, size_t json_len, const char *data, size_t data_len) {
    const char *path = st->path;
    cJSON *root = cJSON_ParseWithLength(json, json_len);
    if (!root) return sg_errorf(path, "safetensors header is not valid JSON (file truncated or not a safetensors file?)");
    int rc = -1;
    if (!cJSON_IsObject(root)) { sg_errorf(path, "safetensors header is not a JSON object"); goto done; }

    size_t n = 0;
    for (cJSON *e = root->child; e; e = e->next)
        if (strcmp(e->string, "__metadata__") != 0) n++;
    st->tensors = sg_xcalloc(n ? n : 1, sizeof *st->tensors);

    size_t i = 0;
    for (cJSON *e = root->child; e; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0) continue;
        SafetensorsTensor *t = &st->tensors[i];
        const char *name = e->string;
        for (size_t k = 0; k < i; k++)
            if (strcmp(st->tensors[k].name, name) == 0) { sg_errorf(path, "tensor '%s' appears twice in the header", name); goto done; }
        cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
        cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
        cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
        if (!cJSON_IsObject(e) || !cJSON_IsString(jd) || !cJSON_IsArray(js) || !cJSON_IsArray(jo)) {
            sg_errorf(path, "tensor '%s': header entry needs \"dtype\", \"shape\" and \"data_offsets\"", name);
            goto done;
        }
        if (dtype_parse(jd->valuestring, &t->dtype) != 0) {
            sg_errorf(path, "tensor '%s': unknown dtype \"%s\"", name, jd->valuestring);
            goto done;
        }
        int ndim = cJSON_GetArraySize(js);
        if (ndim > ST_MAX_DIMS) { sg_errorf(path, "tensor '%s': %d dimensions (at most %d supported)", name, ndim, ST_MAX_DIMS); goto done; }
        t->ndim = ndim;
        size_t numel = 1;
        int d = 0;
        for (cJSON *x = js->child; x; x = x->next, d++) {
            uint64_t v;
            if (json_uint(x, &v) != 0) { sg_errorf(path, "tensor '%s': shape entries must be non-negative integers", name); goto done; }
            t->shape[d] = (int64_t)v;
            if (v != 0 && numel > SIZE_MAX / v) { sg_errorf(path, "tensor '%s': shape overflows", name); goto done; }
            numel *= (size_t)v;
        }
        uint64_t b, en;
        if (cJSON_GetArraySize(jo) != 2 || json_uint(cJSON_GetArrayItem(jo, 0), &b) != 0 ||
            json_uint(cJSON_GetArrayItem(jo, 1), &en) != 0) {
            sg_errorf(path, "tensor '%s': data_offsets must be two non-negative integers", name);
            goto done;
        }
        if (en < b || en > data_len) {
            sg_errorf(path, "tensor '%s': data_offsets [%llu, %llu] lie outside the data block of %zu bytes", name,
                      (unsigned long long)b, (unsigned long long)en, data_len);
            goto done;
        }
        if (numel > SIZE_MAX / DTYPES[t->dtype].size || numel * DTYPES[t->dtype].size != en - b) {
            sg_errorf(path, "tensor '%s': %s x shape needs %zu bytes but data_offsets span %llu", name,
                      DTYPES[t->dtype].name, numel * DTYPES[t->dtype].size, (unsigned long long)(en - b));
            goto done;
        }
        t->name = sg_xstrdup(name);
        t->numel = numel;
        t->nbytes = (size_t)(en - b);
        t->data = data + b;
        i++;
    }
    st->n_tensors = i;

    /* Tensors must tile the data block: sorted by offset, each starts where the previous
     * ended (no gap, no overlap), and the last ends at the end of the file. */
    SafetensorsTensor *sorted = sg_xcalloc(n ? n : 1, sizeof *sorted);
    memcpy(sorted, st->tensors, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, cmp_by_offset);
    size_t expect = 0;
    for (size_t k = 0; k < n; k++) {
        size_t off = (size_t)((const char *)sorted[k].data - data);
        if (off != expect) {
            if (off < expect)
                sg_errorf(path, "tensor '%s' overlaps tensor '%s' in the data block", sorted[k].name, sorted[k - 1].name);
            else
                sg_errorf(path, "gap of %zu bytes in the data block before tensor '%s'", off - expect, sorted[k].name);
            free(sorted);
            goto done;
        }
        expect = off + sorted[k].nbytes;
    }
    free(sorted);
    if (expect != data_len) {
        sg_errorf(path, "data block is %zu bytes but the tensors cover %zu (file truncated or padded?)", data_len, expect);
        goto done;
    }
    rc = 0;
done:
    cJSON_Delete(root);
    return rc;
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
    if (hlen > ST_MAX_HEADER || hlen > size - 8) {
        sg_errorf(path, "header length %llu exceeds the file size %zu (truncated or not a safetensors file)",
                  (unsigned long long)hlen, size);
        safetensors_close(st);
        return -1;
    }
    const char *json = (const char *)map + 8;
    if (hlen == 0 || json[0] != '{') {
        sg_errorf(path, "safetensors header is not a JSON object");
        safetensors_close(st);
        return -1;
    }
    if (parse_header(st, json, (size_t)hlen, json + hlen, size - 8 - (size_t)hlen) != 0) {
        safetensors_close(st);
        return -1;
    }
    return 0;
}

void safetensors_close(Safetensors *st) {
    if (st->map) munmap(st->map, st->map_size);
    for (size_t i = 0; i < st->n_tensors; i++) free(st->tensors[i].name);
    free(st->tensors);
    free(st->path);
    memset(st, 0, sizeof *st);
}

const SafetensorsTensor *safetensors_find(const Safetensors *st, const char *name) {
    for (size_t i = 0; i < st->n_tensors; i++)
        if (strcmp(st->tensors[i].name, name) == 0) return &st->tensors[i];
    return NULL;
}

static float f16_to_f32(uint16_t h) {
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

int safetensors_to_f32(float *out, const Safetensors *st, const SafetensorsTensor *t) {
    const unsigned char *p = t->data;
    switch (t->dtype) {
    case ST_F32: memcpy(out, p, t->numel * 4); break;
    case ST_F16:
        for (size_t i = 0; i < t->numel; i++) { uint16_t h; memcpy(&h, p + 2 * i, 2); out[i] = f16_to_f32(h); }
        break;
    case ST_BF16:
        for (size_t i = 0; i < t->numel; i++) {
            uint16_t h; memcpy(&h, p + 2 * i, 2);
            uint32_t bits = (uint32_t)h << 16; memcpy(&out[i], &bits, 4);
        }
        break;
    default:
        return sg_errorf(st->path, "tensor '%s' has dtype %s; saegap reads F32, F16 or BF16 weights", t->name,
                         DTYPES[t->dtype].name);
    }
    for (size_t i = 0; i < t->numel; i++)
        if (!isfinite(out[i]))
            return sg_errorf(st->path, "tensor '%s' holds a non-finite value (%s at flat index %zu)", t->name,
                             isnan(out[i]) ? "NaN" : "Inf", i);
    return 0;
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
        return sg_errorf(st->path, "tensor '%s' has shape [%s], expected [%s]", name, got, want);
    }
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16)
        return sg_errorf(st->path, "tensor '%s' has dtype %s; saegap reads F32, F16 or BF16 weights", name,
                         DTYPES[t->dtype].name);
    *out = t;
    return 0;
}
