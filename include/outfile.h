/* outfile.h: the life of a result file on disk, apart from what HDF5 writes into it: its
 * crash-safe creation under a temporary name, the writer lock, the disk space it needs, and
 * the step that gives it its final name.
 *
 * Until its schema is flushed, a new HDF5 file has no superblock on disk, and a kill -9 in that
 * window would leave under the final name a file that nothing can open or resume. So a new
 * result is written as "<path>.creating" and given its final name only once the schema is on
 * disk:
 *   out_partial_path    the "<path>.creating" name (-1 with a pending error when too long)
 *   out_partial_claim   rank 0: creates and locks the partial file, first removing a stale
 *                       one (unlocked: left by a killed run); refuses one that another run
 *                       holds. Errors name `out`, the file the user asked for. Returns the
 *                       lock fd (keep it for the whole run) or -1.
 *   (h5out_create_claimed opens it as a new HDF5 file)
 *   out_publish         collective, after h5out_flush: links the file to its final name
 *                       (refusing an existing one; rename where hard links are unsupported)
 *                       and removes the partial name; the open file and its lock carry on
 *                       under the final name (then h5out_renamed).
 *
 * Disk space (a full disk must lose nothing). A result's datasets are all allocated at
 * creation, so its size is known before it exists (h5out_dry counts it):
 *   out_check_space     collective: -1 with "no space left on device" naming the file when
 *                       its folder has less than `need` bytes free
 *   out_partial_reserve rank 0, on the claimed (empty) partial file: reserves `bytes` for it
 *                       before HDF5 writes anything, so that creation cannot meet a full disk
 *   out_reserve         rank 0, after a flush: makes the file system back every byte of the
 *                       file and `slack` bytes past its end (fallocate KEEP_SIZE) for the
 *                       metadata written at the end, so that no later write can meet a full
 *                       disk; -1 with a pending error naming `name` (no space: the message
 *                       says so)
 *   out_release_reserve rank 0, after the file is closed: gives the slack back (a truncate to
 *                       the file's size frees the blocks reserved past its end) */
#ifndef SAEGAP_OUTFILE_H
#define SAEGAP_OUTFILE_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#define OUT_PARTIAL_MAX 4200 /* a buffer for out_partial_path */
#define OUT_MPIIO_LOCK_MAX (2 * OUT_PARTIAL_MAX)
int out_partial_path(const char *path, char *buf, size_t cap);
int out_partial_claim(const char *out, const char *partial);
int out_publish(const char *partial, const char *path, MPI_Comm comm);

/* An exclusive lock that marks `path` as being written (Linux open-file-description lock on
 * its first byte; independent of HDF5's own flock, so readers can still open the file).
 * Returns an fd >= 0 holding the lock, or -1 with a pending error when another process holds
 * it. Released by out_lock_release or when the process ends (also on kill -9). */
int out_lock_acquire(const char *path);
void out_lock_release(int fd);

int out_check_space(const char *path, uint64_t need, MPI_Comm comm);
int out_partial_reserve(const char *partial, const char *out, uint64_t bytes);
int out_reserve(const char *path, uint64_t slack, const char *name);
void out_release_reserve(const char *path);

/* Bytes the file system can still give this path's folder (unprivileged), or UINT64_MAX. */
uint64_t out_free_bytes(const char *path);

/* Open MPI's file-I/O layer, when a file's ranks span several nodes, keeps a lock file beside it,
 * "<opened name>-<job id>-<pid of rank 0>.lock", and removes it on close; a killed run leaves it.
 * Rank 0, holding the writer lock of path (so no live run uses these): removes such files of
 * path and of its partial name, each named in a warning. */
void out_remove_stale_mpiio_locks(const char *path);
/* Rank 0, after opening `opened` through MPI-IO: this run's own lock file, or "" (none: one
 * node, or another MPI), into buf (OUT_MPIIO_LOCK_MAX bytes), for sg_fatal_removes_lock. */
void out_mpiio_lock_of_this_run(const char *opened, char *buf);

#endif
