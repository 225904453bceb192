/* error.h: the one way saegap reports problems.
 *
 * Two kinds of failure, two paths:
 *  - Errors a user can cause (bad path, malformed file, wrong shape, bad option) are
 *    recorded with sg_errorf() and returned as -1 up to the command. The command calls
 *    sg_agree() so that every rank learns of the failure at the same point; one rank
 *    prints "saegap: error: <where>: <problem>" and all ranks return exit status 1.
 *  - Failures after the inputs were checked (an HDF5 write fails, out of memory) go
 *    through sg_fatal(), which prints once and ends every rank with MPI_Abort(comm, 1)
 *    (one rank: _exit(1)).
 */
#ifndef SAEGAP_ERROR_H
#define SAEGAP_ERROR_H

#include <stddef.h>
#include <mpi.h>

#define SG_ERROR_MAX 1024

/* Records "<where>: <message>" as this rank's pending error; returns -1 so callers can
 * write `return sg_errorf(path, "...")`. The first error recorded is kept. A `where` too long
 * for the line (SG_ERROR_MAX) is shortened in its middle ("/a/b/.../file.h5 (1203 characters)"),
 * never dropped. */
int sg_errorf(const char *where, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *sg_error_message(void); /* "" when none */
void sg_error_clear(void);

/* Collective over comm: combines each rank's status (0 ok, nonzero failed). When any rank
 * failed, the lowest failing rank prints its pending error and every rank gets -1. */
int sg_agree(MPI_Comm comm, int status);

/* Warnings and progress, printed by rank 0 only (sg_set_comm decides who rank 0 is). */
void sg_warnf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void sg_set_comm(MPI_Comm comm, int quiet);
int sg_rank(void);
int sg_quiet(void);

/* Unrecoverable: prints "saegap: error: <where>: <message> [rank r] (file:line)", then
 * MPI_Abort on the communicator set by sg_set_comm, or _exit(1) on one rank: no atexit handler
 * runs (libhdf5's would close files whose write has just failed, and crash). */
_Noreturn void sg_fatal_at(const char *file, int line, const char *where, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
#define sg_fatal(where, ...) sg_fatal_at(__FILE__, __LINE__, where, __VA_ARGS__)

/* A file that sg_fatal removes before ending this rank (NULL: none): a new output file under
 * its temporary name, which holds nothing worth keeping until it gets its final name. The
 * string must outlive its use. */
void sg_fatal_removes(const char *path);
/* A lock file that MPI-IO made beside an open output (outfile.h, out_mpiio_lock_of_this_run):
 * removed too (copied; NULL or "": none). */
void sg_fatal_removes_lock(const char *path);

/* Every MPI call goes through SG_MPI: saegap_run sets MPI_ERRORS_RETURN, so a failure comes back
 * as a code, and a rank that went on after a failed call would leave the others waiting. A
 * result other than MPI_SUCCESS ends every rank with "MPI: <what>: <MPI's error string>";
 * `what` is a printf format with its arguments. */
#define SG_MPI(call, ...)                                                                      \
    do {                                                                                       \
        int sg_mpi_rc_ = (call);                                                               \
        if (sg_mpi_rc_ != MPI_SUCCESS) sg_mpi_fatal_at(__FILE__, __LINE__, sg_mpi_rc_, __VA_ARGS__); \
    } while (0)
_Noreturn void sg_mpi_fatal_at(const char *file, int line, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Checked size arithmetic: every size, offset, count and product that comes from a file goes
 * through these before it is used. Same sense as the GCC builtins they wrap: 0 with the exact
 * result in *out, or 1 when the true result does not fit size_t (then *out must not be used). */
static inline int sg_mul_overflow(size_t a, size_t b, size_t *out) { return __builtin_mul_overflow(a, b, out); }
static inline int sg_add_overflow(size_t a, size_t b, size_t *out) { return __builtin_add_overflow(a, b, out); }

/* Allocation that never returns NULL (fatal on failure), 64-byte aligned, zeroed. A request whose
 * byte count overflows, or that exceeds the machine's memory (RAM + swap: it is zeroed, so every
 * page would be touched), is refused before allocating, with a message naming the file set by
 * sg_alloc_for when there is one. */
void *sg_xcalloc(size_t count, size_t size);
void *sg_xrealloc(void *p, size_t size);
void *sg_xreallocarray(void *p, size_t count, size_t size); /* realloc of count * size, checked */
char *sg_xstrdup(const char *s);

/* Names the file whose declared sizes the following allocations serve (a loader sets it while it
 * reads a file), so that running out of memory names that file; NULL clears it. Returns the
 * previous name for the caller to restore. The string must outlive its use. */
const char *sg_alloc_for(const char *where);

/* A clause added to out-of-memory messages while it is set (NULL clears it): h5guard says that
 * its memory bound, not the machine, refused the request, and how to raise it. */
void sg_alloc_hint(const char *hint);

#endif
