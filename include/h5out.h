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

/* Crash-safe creation of a result file (saegap run). Until its schema is flushed, a new HDF5
 * file has no superblock on disk, and a kill -9 in that window would leave under the final
 * name a file that nothing can open or resume. So a new result is written as
 * "<path>.creating" and given its final name only once the schema is on disk:
 *   out_partial_path    the "<path>.creating" name (-1 with a pending error when too long)
 *   out_partial_claim   rank 0: creates and locks the partial file, first removing a stale
 *                       one (unlocked: left by a killed run); refuses one that another run
 *                       holds. Errors name `out`, the file the user asked for. Returns the
 *                       lock fd (keep it for the whole run) or -1.
 *   h5out_create_claimed  collective: opens the claimed (empty) file as a new HDF5 file
 *   h5out_publish       collective, after h5out_flush: links the file to its final name
 *                       (refusing an existing one; rename where hard links are unsupported)
 *                       and removes the partial name; the open file, its lock and every
 *                       rank's handle carry on under the final name. */
#define OUT_PARTIAL_MAX 4200 /* a buffer for out_partial_path */
int out_partial_path(const char *path, char *buf, size_t cap);
int out_partial_claim(const char *out, const char *partial);
H5Out *h5out_create_claimed(const char *partial, MPI_Comm comm);
int h5out_publish(H5Out *h, const char *path, MPI_Comm comm);

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

/* FNV-1a of the datasets written once at the end (tokens, every group under progress/ and the
 * feature densities and correlation matrices), in name order; 0 when one is unreadable. */
uint64_t h5out_checksum_final(H5Out *h, const char *path);

/* Like h5out_read_rows, but returns -1 instead of failing (damaged files). */
int h5out_try_read_rows(H5Out *h, int ds, uint64_t row0, uint64_t nrows, void *data);

/* Attribute readers (collective-safe: every rank may call). 0, or -1 when absent. */
int h5out_get_attr_str(H5Out *h, const char *obj, const char *name, char *buf, size_t cap);
int h5out_get_attr_i64(H5Out *h, const char *obj, const char *name, int64_t *v);
int h5out_get_attr_f64(H5Out *h, const char *obj, const char *name, double *v);

/* An exclusive lock that marks `path` as being written (Linux open-file-description lock on
 * its first byte; independent of HDF5's own flock, so readers can still open the file).
 * Returns an fd >= 0 holding the lock, or -1 with a pending error when another process holds
 * it. Released by out_lock_release or when the process ends (also on kill -9). */
int out_lock_acquire(const char *path);
void out_lock_release(int fd);

/* Collective. Creates a dataset (intermediate groups made as needed); returns its handle index. */
int h5out_dataset(H5Out *h, const char *name, H5OutType type, int ndims, const uint64_t *dims);

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

/* Disk space (issue: a full disk must lose nothing). A result's datasets are all allocated at
 * creation, so its size is known before it exists:
 *   h5out_dry          an H5Out that creates nothing and counts the bytes of the datasets a
 *                      schema function would create through it (attributes are no-ops)
 *   h5out_check_space  collective: -1 with "no space left on device" naming the file when
 *                      its folder has less than `need` bytes free
 *   h5out_reserve      rank 0, after a flush: makes the file system back every byte of
 *                      the file and `slack` bytes past its end (fallocate KEEP_SIZE) for the
 *                      metadata written at the end, so that no later write can meet a full
 *                      disk; -1 with a pending error naming the file (no space: the message
 *                      says so) */
/*   out_partial_reserve rank 0, on the claimed (empty) partial file: reserves `bytes` for it
 *                      before HDF5 writes anything, so that creation cannot meet a full disk */
H5Out *h5out_dry(void);
int out_partial_reserve(const char *partial, const char *out, uint64_t bytes);
uint64_t h5out_dry_bytes(const H5Out *h);
int h5out_check_space(const char *path, uint64_t need, MPI_Comm comm);
int h5out_reserve(H5Out *h, uint64_t slack, const char *name); /* name: the file as the user named it */

void h5out_flush(H5Out *h);       /* collective */
void h5out_close(H5Out *h);       /* collective; NULL is fine */

#endif
