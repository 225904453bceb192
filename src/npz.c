/* npz.c: NumPy .npz archives (npz.h). The zip format (APPNOTE.TXT): the end-of-central-directory
 * record (zip64's when its fields are saturated) locates the central directory, whose entries give
 * each member's method, sizes, CRC and local header; the local header only tells how far its name
 * and extra field reach (np.savez writes zip64 local headers whose size fields are 0xffffffff). */
#define _DEFAULT_SOURCE /* madvise(MADV_DONTNEED): glibc's posix_madvise ignores POSIX_MADV_DONTNEED */
#include "npz.h"

#include "error.h"
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

static uint32_t rd16(const unsigned char *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }
static uint32_t rd32(const unsigned char *p) { return rd16(p) | rd16(p + 2) << 16; }
static uint64_t rd64(const unsigned char *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }

/* [off, off + len) lies inside the file */
static int inside(const Npz *z, uint64_t off, uint64_t len) { return off <= z->size && len <= z->size - off; }

void npz_close(Npz *z) {
    if (z->map) munmap((void *)z->map, z->size);
    for (size_t i = 0; i < z->n; i++) free(z->members[i].name);
    free(z->members);
    free(z->path);
    memset(z, 0, sizeof *z);
}

/* The central directory's offset, size and entry count, from the (zip64) end record. */
static int find_directory(Npz *z, uint64_t *cd_off, uint64_t *cd_size, uint64_t *count) {
    const size_t tail = z->size < 65557 ? z->size : 65557; /* the record (22) + the longest comment */
    for (size_t back = 22; back <= tail; back++) {
        const unsigned char *e = z->map + z->size - back;
        if (rd32(e) != 0x06054b50) continue;
        *count = rd16(e + 10), *cd_size = rd32(e + 12), *cd_off = rd32(e + 16);
        if (*count == 0xffff || *cd_size == 0xffffffffu || *cd_off == 0xffffffffu) {
            /* zip64: a locator right before the record points at the zip64 end record */
            if (back + 20 > z->size || rd32(e - 20) != 0x07064b50)
                return sg_errorf(z->path, "zip64 archive without its end-record locator (damaged?)");
            uint64_t at = rd64(e - 20 + 8);
            if (!inside(z, at, 56) || rd32(z->map + at) != 0x06064b50)
                return sg_errorf(z->path, "zip64 end record out of place (damaged?)");
            *count = rd64(z->map + at + 32), *cd_size = rd64(z->map + at + 40), *cd_off = rd64(z->map + at + 48);
        }
        if (!inside(z, *cd_off, *cd_size)) return sg_errorf(z->path, "central directory outside the file (truncated?)");
        return 0;
    }
    return sg_errorf(z->path, "not a zip archive (no end-of-central-directory record): not an .npz file");
}

/* The array a member holds for np.load: its name less ".npy" (np.load's key). */
static size_t key_len(const char *name) {
    const size_t n = strlen(name);
    return n >= 4 && !strcmp(name + n - 4, ".npy") ? n - 4 : n;
}

static int by_key(const void *a, const void *b) {
    const char *x = (*(const NpzMember *const *)a)->name, *y = (*(const NpzMember *const *)b)->name;
    const size_t nx = key_len(x), ny = key_len(y);
    const int c = memcmp(x, y, nx < ny ? nx : ny);
    return c ? c : (nx > ny) - (nx < ny);
}

/* Two members for one array: Python's zipfile keeps the last of two equal names, and np.load
 * reads a member "W_enc" in place of "W_enc.npy"; saegap refuses both rather than pick one. */
static int refuse_duplicates(const Npz *z) {
    if (z->n < 2) return 0;
    const NpzMember **v = sg_xcalloc(z->n, sizeof *v);
    for (size_t i = 0; i < z->n; i++) v[i] = &z->members[i];
    qsort(v, z->n, sizeof *v, by_key);
    int rc = 0;
    for (size_t i = 1; rc == 0 && i < z->n; i++) {
        if (by_key(&v[i - 1], &v[i]) != 0) continue;
        if (!strcmp(v[i - 1]->name, v[i]->name))
            rc = sg_errorf(z->path, "member %s appears more than once in the archive (np.load would read the last one)",
                           v[i]->name);
        else
            rc = sg_errorf(z->path, "members %s and %s hold the same array (np.load would read %s)", v[i - 1]->name,
                           v[i]->name, strlen(v[i - 1]->name) < strlen(v[i]->name) ? v[i - 1]->name : v[i]->name);
    }
    free(v);
    return rc;
}

int npz_open(Npz *z, const char *path) {
    memset(z, 0, sizeof *z);
    z->path = sg_xstrdup(path);
    int fd = open(path, O_RDONLY);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        sg_errorf(path, "cannot open: %s", fd < 0 ? strerror(errno) : "not a regular file");
        if (fd >= 0) close(fd);
        npz_close(z);
        return -1;
    }
    z->size = (size_t)sb.st_size;
    void *map = z->size ? mmap(NULL, z->size, PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED;
    close(fd);
    if (map == MAP_FAILED) {
        sg_errorf(path, z->size ? "cannot mmap: %s" : "empty file%s", z->size ? strerror(errno) : "");
        z->size = 0;
        npz_close(z);
        return -1;
    }
    z->map = map;
    uint64_t cd_off = 0, cd_size = 0, count = 0;
    int rc = find_directory(z, &cd_off, &cd_size, &count);
    /* every entry takes at least 46 bytes of the directory */
    if (rc == 0 && count > cd_size / 46) rc = sg_errorf(path, "central directory declares %llu entries in %llu bytes (damaged?)",
                                                       (unsigned long long)count, (unsigned long long)cd_size);
    if (rc == 0) z->members = sg_xcalloc(count ? count : 1, sizeof *z->members);
    uint64_t at = cd_off;
    for (uint64_t i = 0; rc == 0 && i < count; i++) {
        const unsigned char *e = z->map + at;
        if (!inside(z, at, 46) || rd32(e) != 0x02014b50) { rc = sg_errorf(path, "central directory entry %llu damaged", (unsigned long long)i); break; }
        const uint32_t flags = rd16(e + 8), method = rd16(e + 10), nlen = rd16(e + 28), xlen = rd16(e + 30), clen = rd16(e + 32);
        uint64_t csize = rd32(e + 20), usize = rd32(e + 24), local = rd32(e + 42);
        if (!inside(z, at + 46, (uint64_t)nlen + xlen + clen)) { rc = sg_errorf(path, "central directory entry %llu truncated", (unsigned long long)i); break; }
        /* zip64 extra field: the saturated sizes and offset, in this order */
        for (const unsigned char *x = e + 46 + nlen, *end = x + xlen; x + 4 <= end;) {
            const uint32_t id = rd16(x), len = rd16(x + 2);
            if (x + 4 + len > end) break;
            if (id == 0x0001) {
                const unsigned char *v = x + 4, *vend = v + len;
                if (usize == 0xffffffffu && v + 8 <= vend) usize = rd64(v), v += 8;
                if (csize == 0xffffffffu && v + 8 <= vend) csize = rd64(v), v += 8;
                if (local == 0xffffffffu && v + 8 <= vend) local = rd64(v);
            }
            x += 4 + len;
        }
        NpzMember *m = &z->members[z->n];
        m->name = sg_xcalloc(nlen + 1, 1);
        memcpy(m->name, e + 46, nlen);
        z->n++;
        if (flags & 1) { rc = sg_errorf(path, "member %s is encrypted", m->name); break; }
        if (method != 0 && method != 8) {
            rc = sg_errorf(path, "member %s uses zip method %u (saegap reads stored and deflate members)", m->name, method);
            break;
        }
        if (!inside(z, local, 30) || rd32(z->map + local) != 0x04034b50) {
            rc = sg_errorf(path, "member %s: local header outside the file or damaged", m->name);
            break;
        }
        /* Python's zipfile (np.load) refuses a member whose local header names another file */
        if (rd16(z->map + local + 26) != nlen || !inside(z, local + 30, nlen) || memcmp(z->map + local + 30, e + 46, nlen)) {
            rc = sg_errorf(path, "member %s: its local header gives another name (damaged?)", m->name);
            break;
        }
        const uint64_t data = local + 30 + rd16(z->map + local + 26) + rd16(z->map + local + 28);
        if (!inside(z, data, csize)) { rc = sg_errorf(path, "member %s: its data runs past the end of the file (truncated?)", m->name); break; }
        if (method == 0 && csize != usize) { rc = sg_errorf(path, "member %s: stored with two different sizes", m->name); break; }
        m->method = (int)method, m->csize = (size_t)csize, m->usize = (size_t)usize, m->data = (size_t)data;
        m->crc = rd32(e + 16);
        at += 46 + (uint64_t)nlen + xlen + clen;
    }
    if (rc == 0) rc = refuse_duplicates(z);
    if (rc != 0) npz_close(z);
    return rc;
}

const NpzMember *npz_find(const Npz *z, const char *array) {
    char want[256];
    snprintf(want, sizeof want, "%s.npy", array);
    for (size_t i = 0; i < z->n; i++)
        if (!strcmp(z->members[i].name, want)) return &z->members[i];
    return NULL;
}

/* The first `want` bytes of the member (all of it when want >= usize) into out; bytes written. */
static int member_bytes(const Npz *z, const NpzMember *m, unsigned char *out, size_t want, size_t *got) {
    const size_t n = want < m->usize ? want : m->usize;
    if (m->method == 0) {
        memcpy(out, z->map + m->data, n);
        *got = n;
    } else {
        z_stream s;
        memset(&s, 0, sizeof s);
        if (inflateInit2(&s, -MAX_WBITS) != Z_OK) return sg_errorf(z->path, "member %s: zlib cannot start", m->name);
        /* zlib counts in 32 bits: feed and drain in slices */
        size_t in_done = 0, out_done = 0;
        int zr = Z_OK;
        while (out_done < n && zr == Z_OK) {
            const size_t in_left = m->csize - in_done, out_left = n - out_done;
            s.next_in = (unsigned char *)(z->map + m->data + in_done);
            s.avail_in = (uInt)(in_left < (1u << 30) ? in_left : (1u << 30));
            s.next_out = out + out_done;
            s.avail_out = (uInt)(out_left < (1u << 30) ? out_left : (1u << 30));
            const uInt ai = s.avail_in, ao = s.avail_out;
            zr = inflate(&s, Z_NO_FLUSH);
            in_done += ai - s.avail_in, out_done += ao - s.avail_out;
            if (zr == Z_BUF_ERROR && s.avail_in == 0 && in_done == m->csize) break;
            if (zr == Z_BUF_ERROR) zr = Z_OK;
        }
        inflateEnd(&s);
        if (zr != Z_OK && zr != Z_STREAM_END) return sg_errorf(z->path, "member %s: damaged deflate data", m->name);
        if (out_done < n) return sg_errorf(z->path, "member %s: its deflate data ends early (truncated?)", m->name);
        *got = n;
    }
    return 0;
}

void npz_drop_pages(const Npz *z) {
    if (z->map && z->size) (void)madvise((void *)(uintptr_t)z->map, z->size, MADV_DONTNEED); /* advice only */
}

int npz_header(const Npz *z, const NpzMember *m, NpyHeader *h) {
    char what[1024];
    snprintf(what, sizeof what, "%s: %s", z->path, m->name);
    const size_t cap = NPY_MAX_HEADER + 16; /* the largest header npy.c accepts, and its preamble */
    unsigned char *buf = sg_xcalloc(cap, 1);
    size_t got = 0;
    int rc = member_bytes(z, m, buf, cap, &got);
    if (rc == 0) rc = npy_header(what, buf, got, h);
    free(buf);
    return rc;
}

int npz_read_f32(const Npz *z, const NpzMember *m, float *out, size_t count) {
    char what[1024];
    snprintf(what, sizeof what, "%s: %s", z->path, m->name);
    NpyHeader h;
    if (npz_header(z, m, &h)) return -1;
    size_t n, isize = !strcmp(h.descr, "<f4") ? 4 : !strcmp(h.descr, "<f2") ? 2 : !strcmp(h.descr, "<f8") ? 8 : 0;
    if (!isize) return sg_errorf(what, "dtype '%s' is not a little-endian float (f2, f4 or f8)", h.descr);
    if (h.fortran_order && h.ndim > 1) return sg_errorf(what, "Fortran-ordered arrays are not supported");
    if (npy_count(what, &h, &n)) return -1;
    if (n != count) return sg_errorf(what, "holds %zu values, %zu expected", n, count);
    size_t bytes;
    if (sg_mul_overflow(n, isize, &bytes) || sg_add_overflow(bytes, h.data_offset, &bytes) || bytes != m->usize)
        return sg_errorf(what, "its .npy is %zu bytes, its header promises %zu values of %zu bytes after %zu (damaged?)",
                         m->usize, n, isize, h.data_offset);
    unsigned char *raw = sg_xcalloc(m->usize ? m->usize : 1, 1);
    size_t got = 0;
    int rc = member_bytes(z, m, raw, m->usize, &got);
    if (rc == 0) {
        /* CRC-32 over the whole member, in slices (zlib counts in 32 bits) */
        uLong c = crc32(0L, Z_NULL, 0);
        for (size_t i0 = 0; i0 < got; i0 += 1u << 30) c = crc32(c, raw + i0, (uInt)(got - i0 < (1u << 30) ? got - i0 : (1u << 30)));
        if ((uint32_t)c != m->crc) rc = sg_errorf(z->path, "member %s fails its CRC-32 (damaged)", m->name);
    }
    const unsigned char *p = raw + h.data_offset;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        float v;
        if (isize == 4) memcpy(&v, p + 4 * i, 4);
        else if (isize == 2) { uint16_t x; memcpy(&x, p + 2 * i, 2); v = safetensors_f16_to_f32(x); }
        else { double d; memcpy(&d, p + 8 * i, 8); v = (float)d; }
        if (!isfinite(v)) rc = sg_errorf(what, "holds a non-finite value (%g at flat index %zu)", (double)v, i);
        out[i] = v;
    }
    free(raw);
    return rc;
}
