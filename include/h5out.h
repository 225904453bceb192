/* h5out.h: the only module that talks to HDF5.
 *
 * Writing follows PLATFORM-NOTES (parallel HDF5 1.10): the file is opened by every rank of a
 * communicator through the MPI-IO driver; every dataset is created up front, uncompressed and
 * allocated early, and the file flushed, so that afterwards ranks write only raw data
 * (independently, at their own pace) and a kill cannot damage the metadata. Creating datasets
 * and attributes is collective: every rank calls with the same arguments.
 * File types are explicit little-endian; strings are variable-length UTF-8 (h5py reads str).
 */
#ifndef SAEGAP_H5OUT_H
#define SAEGAP_H5OUT_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { H5OUT_F32, H5OUT_F64, H5OUT_I32, H5OUT_I64 } H5OutType;

typedef struct H5Out H5Out;

/* Reads an integer dataset [rows, cols] of a (serial) HDF5 file into int64. User errors
 * (missing file or dataset, wrong rank, non-integer type) return -1 with a pending error. */
int h5_read_int_matrix(const char *path, const char *dataset, int64_t **vals, size_t *rows, size_t *cols);

/* Collective. Creates `path`, refusing an existing file. NULL with a pending error on failure. */
H5Out *h5out_create(const char *path, MPI_Comm comm);

/* Collective. Opens the claimed, empty "<path>.creating" file (outfile.h) as a new HDF5 file. */
H5Out *h5out_create_claimed(const char *partial, MPI_Comm comm);
/* After outfile.h's out_publish gave the open file its final name: errors name that from now. */
void h5out_renamed(H5Out *h, const char *path);

/* Collective. Opens an existing result file for writing (--resume). NULL with a pending error
 * when it is not an HDF5 file. In this mode h5out_dataset opens datasets by name and checks
 * their shape instead of creating them. */
H5Out *h5out_open(const char *path, MPI_Comm comm);
int h5out_resuming(const H5Out *h);

/* Opens a result file read-only on one process (saegap verify / info). NULL with a pending
 * error when it is not readable as HDF5. */
H5Out *h5out_open_readonly(const char *path);

/* Opens an existing dataset by name without knowing its shape; -1 when missing or unreadable. */
int h5out_find_dataset(H5Out *h, const char *name, H5OutType type, int *ndims, uint64_t *dims);

/* FNV-1a of the datasets for which wanted(path) is true, each as its path then its bytes, in
 * name order; -1 when one of them cannot be read. With attr_wanted, each object's attributes
 * for which attr_wanted(object path, "." for the root, attribute name) is true come first, in
 * name order: object and name, then the value (strings as bytes, integers as int64, floats as
 * double, whatever type stores them). */
int h5out_checksum_final(H5Out *h, int (*wanted)(const char *dataset),
                         int (*attr_wanted)(const char *object, const char *attr), uint64_t *sum);

/* The shape of an open dataset handle: 0, or -1. */
int h5out_dims(H5Out *h, int ds, int *ndims, uint64_t *dims);

/* Like h5out_read_rows, but returns -1 instead of failing (damaged files). */
int h5out_try_read_rows(H5Out *h, int ds, uint64_t row0, uint64_t nrows, void *data);

/* Attribute readers (collective-safe: every rank may call). 0, or -1 when absent. */
int h5out_get_attr_str(H5Out *h, const char *obj, const char *name, char *buf, size_t cap);
int h5out_get_attr_i64(H5Out *h, const char *obj, const char *name, int64_t *v);
int h5out_get_attr_f64(H5Out *h, const char *obj, const char *name, double *v);

/* Collective. Creates a dataset (intermediate groups made as needed); returns its handle index. */
int h5out_dataset(H5Out *h, const char *name, H5OutType type, int ndims, const uint64_t *dims);
/* The same, for a dataset added to the schema after files were written: on --resume of a file
 * without it, it is created (empty) instead of refused as missing. */
int h5out_dataset_added(H5Out *h, const char *name, H5OutType type, int ndims, const uint64_t *dims);

/* Independent. Writes rows [row0, row0+nrows) along the first dimension; data is native. */
void h5out_write_rows(H5Out *h, int ds, uint64_t row0, uint64_t nrows, const void *data);

/* Independent. Reads rows [row0, row0+nrows) along the first dimension into native memory. */
void h5out_read_rows(H5Out *h, int ds, uint64_t row0, uint64_t nrows, void *data);

/* Collective. A dataset of n fixed-length UTF-8 strings (at most 127 bytes each). */
int h5out_dataset_strings(H5Out *h, const char *name, uint64_t n);
/* Independent. Writes all n strings. */
void h5out_write_strings(H5Out *h, int ds, const char *const *strings, uint64_t n);

/* Collective. Attributes on an object ("/" or a dataset/group path); replaced if present. */
void h5out_attr_str(H5Out *h, const char *obj, const char *name, const char *value);
void h5out_attr_i64(H5Out *h, const char *obj, const char *name, int64_t value);
void h5out_attr_f64(H5Out *h, const char *obj, const char *name, double value);

/* Collective. saegap_version, command_line and created (UTC) on the root. */
void h5out_attr_provenance(H5Out *h, const char *command_line);

/* An H5Out that creates nothing and counts the bytes of the datasets a schema function creates
 * through it (attributes are no-ops): a result's size before it exists (outfile.h's space checks). */
H5Out *h5out_dry(void);
uint64_t h5out_dry_bytes(const H5Out *h);

void h5out_flush(H5Out *h);       /* collective */
void h5out_close(H5Out *h);       /* collective; NULL is fine */

#endif
