/* h5guard.h: reading a damaged HDF5 file ends with a message, not a crash or a hang.
 *
 * libhdf5 1.10 (Debian 12's) trusts many offsets and lengths it reads from a file: fuzzing
 * found a damaged token file that makes H5Lexists crash (a NULL memcpy in H5F__accum_read) and
 * a damaged result file whose variable-length string attribute makes H5Aread loop forever in
 * H5HG_read (h5dump hangs on it too). saegap cannot fix libhdf5, so every read of a file a user
 * gave (token files; result files for verify, info and --resume) runs inside a guard:
 *   - SIGSEGV, SIGBUS, SIGFPE, SIGILL or SIGABRT inside the guard ends the process with
 *     "saegap: error: FILE: damaged HDF5 file: libhdf5 crashed reading it (...)" and status 1;
 *   - with a CPU limit, a read that uses more than SAEGAP_HDF5_CPU_LIMIT CPU-seconds (default
 *     60; a CPU clock, so a slow file system never trips it) ends the same way, saying libhdf5
 *     loops. Not for calls that wait in MPI collectives (Open MPI's waits spin on the CPU);
 *   - the process's address space may grow by at most SAEGAP_HDF5_MEM_LIMIT MB (default 1024)
 *     plus what h5guard_allow adds while a guard is open, so a damaged length that makes
 *     libhdf5 allocate without bound fails that allocation (a failed read, or the crash message
 *     above) instead of waking the node's OOM killer. Not in sanitizer builds (they bound
 *     allocations themselves).
 * Outside a guard the handlers that were there before (Open MPI's, ASan's) are back in place.
 * Guards nest; only the outermost one installs and removes the handlers. */
#ifndef SAEGAP_H5GUARD_H
#define SAEGAP_H5GUARD_H

#include <stddef.h>

/* path must stay valid until the matching h5guard_leave. */
void h5guard_enter(const char *path, int cpu_limited);
void h5guard_leave(void);

/* Raises the open guard's memory bound by `bytes`: a read whose size saegap has checked against
 * the file (a token matrix) is not libhdf5 running away. No effect outside a guard. */
void h5guard_allow(size_t bytes);

/* Forgets an open guard that was left by a longjmp (the fuzz targets' sg_fatal): handlers
 * back, watchdog off. */
void h5guard_reset(void);

/* How a guarded fault ends (called from the signal handler with the whole message):
 * writes it to stderr and _exit(1). The fuzz targets replace it (tests/fuzz/fuzz_common.c). */
_Noreturn void sg_h5_fault(const char *message);

#endif
