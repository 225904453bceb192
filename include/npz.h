/* npz.h: NumPy .npz archives (a zip of .npy members, as np.savez and np.savez_compressed write
 * them): Gemma Scope's params.npz. Read-only, validated: the central directory (zip64 too), each
 * member's stored (0) or deflate (8) data, its CRC-32, and its .npy header (npy.h). Every offset
 * and size read from the file is checked against the file before use. */
#ifndef SAEGAP_NPZ_H
#define SAEGAP_NPZ_H

#include "npy.h"

#include <stddef.h>
#include <stdint.h>

typedef struct {
    char *name;           /* e.g. "W_enc.npy" */
    int method;           /* 0 stored, 8 deflate */
    size_t csize, usize;  /* bytes in the archive, bytes of the .npy */
    size_t data;          /* offset of the member's data in the file */
    uint32_t crc;
} NpzMember;

typedef struct {
    char *path;
    const unsigned char *map;
    size_t size;
    NpzMember *members;
    size_t n;
} Npz;

/* 0, or -1 with a pending error naming the path. */
int npz_open(Npz *z, const char *path);
void npz_close(Npz *z); /* accepts a zeroed struct */

/* Lets the kernel drop this process's mapping of the archive's pages (madvise; the page cache
 * keeps them, a later read faults them back in): once its arrays are read into float32 copies
 * the archive no longer counts in the process's memory. */
void npz_drop_pages(const Npz *z);

/* The member "NAME.npy", or NULL. */
const NpzMember *npz_find(const Npz *z, const char *array);

/* The member's .npy header (reads and inflates only its first bytes). */
int npz_header(const Npz *z, const NpzMember *m, NpyHeader *h);

/* The member's array as float32 into out (count floats, which must be its element count):
 * dtype '<f4', '<f2' or '<f8', C order; the CRC-32 must match and every value be finite. */
int npz_read_f32(const Npz *z, const NpzMember *m, float *out, size_t count);

#endif
