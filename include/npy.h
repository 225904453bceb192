/* npy.h: the header of a NumPy .npy array (format 1.0, 2.0, 3.0), one parser for every reader
 * (token files: tokens.c; Gemma Scope's params.npz members: npz.c).
 * Layout: "\x93NUMPY", version, header length, then a Python dict literal
 * {'descr': '<f4', 'fortran_order': False, 'shape': (a, b), } padded with spaces, then the data.
 * The header is read as NumPy reads it, or refused (npy.c): exactly the three keys, each once,
 * 'fortran_order' True or False, 'shape' a tuple of non-negative ints.
 * Shape entries are checked for overflow; the caller checks the data against the bytes it has. */
#ifndef SAEGAP_NPY_H
#define SAEGAP_NPY_H

#include <stddef.h>

#define NPY_MAX_DIMS 3
/* numpy.lib.format._MAX_HEADER_SIZE: np.load (allow_pickle=False) refuses longer headers */
#define NPY_MAX_HEADER 10000

typedef struct {
    char descr[16];               /* e.g. "<i8", "<f4", "|u1" */
    int fortran_order;
    size_t ndim;                  /* at most NPY_MAX_DIMS */
    size_t shape[NPY_MAX_DIMS];
    size_t data_offset;           /* from the start of the .npy bytes */
} NpyHeader;

/* Parses the header of the .npy bytes p[0..size). 0, or -1 with a pending error naming `what`
 * (the file, or "FILE: MEMBER" inside an archive). */
int npy_header(const char *what, const unsigned char *p, size_t size, NpyHeader *h);

/* Product of the shape (1 for a 0-d array); -1 with a pending error naming `what` on overflow. */
int npy_count(const char *what, const NpyHeader *h, size_t *count);

#endif
