/* error.c: pending user errors, rank agreement, warnings and the fatal path. */
#define _DEFAULT_SOURCE /* madvise */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/sysinfo.h>
#include <unistd.h>

static char g_error[SG_ERROR_MAX];
static MPI_Comm g_comm = MPI_COMM_NULL;
static int g_rank = 0;
static int g_quiet = 0;

/* Copies `where` into buf (cap bytes), shortened when it is longer than `room`: its start and
 * its end (the file's name) around "...", and its length, so that a message about an over-long
 * path still names it, e.g. "/very/long/.../file.h5 (1203 characters)". The cuts do not split
 * a UTF-8 sequence. */
static void abbreviate(char *buf, size_t cap, const char *where, size_t room) {
    size_t n = strlen(where);
    if (n <= room || room < 80) {
        snprintf(buf, cap, "%s", where);
        return;
    }
    char suffix[48];
    int sn = snprintf(suffix, sizeof suffix, " (%zu characters)", n);
    size_t keep = room - 3 - (size_t)sn, head = keep / 3, tail = keep - head;
    while (head > 0 && ((unsigned char)where[head] & 0xC0) == 0x80) head--;
    const char *end = where + n - tail;
    while (*end && ((unsigned char)*end & 0xC0) == 0x80) end++;
    snprintf(buf, cap, "%.*s...%s%s", (int)head, where, end, suffix);
}

int sg_errorf(const char *where, const char *fmt, ...) {
    if (g_error[0] != '\0') return -1; /* keep the first (innermost) cause */
    char msg[SG_ERROR_MAX], place[SG_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* both parts are kept: an over-long location is shortened in its middle, to leave the
     * message at least half of the line */
    size_t len = strlen(msg), half = sizeof g_error / 2, for_msg = len < half ? len : half;
    abbreviate(place, sizeof place, where ? where : "saegap", sizeof g_error - 3 - for_msg);
    size_t pl = strlen(place), ml = len;
    if (pl > sizeof g_error - 3) pl = sizeof g_error - 3;
    if (ml > sizeof g_error - 3 - pl) ml = sizeof g_error - 3 - pl; /* the message's end is what goes */
    memcpy(g_error, place, pl);
    memcpy(g_error + pl, ": ", 2);
    memcpy(g_error + pl + 2, msg, ml);
    g_error[pl + 2 + ml] = '\0';
    return -1;
}

const char *sg_error_message(void) { return g_error; }
void sg_error_clear(void) { g_error[0] = '\0'; }

void sg_set_comm(MPI_Comm comm, int quiet) {
    g_comm = comm;
    g_quiet = quiet;
    SG_MPI(MPI_Comm_rank(comm, &g_rank), "MPI_Comm_rank failed");
}

int sg_rank(void) { return g_rank; }
int sg_quiet(void) { return g_quiet; }

int sg_agree(MPI_Comm comm, int status) {
    int rank, size;
    SG_MPI(MPI_Comm_rank(comm, &rank), "MPI_Comm_rank failed");
    SG_MPI(MPI_Comm_size(comm, &size), "MPI_Comm_size failed");
    /* lowest failing rank, or size when every rank succeeded */
    int mine = status != 0 ? rank : size, first = size;
    SG_MPI(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm), "MPI_Allreduce failed while agreeing on an error");
    if (first == size) return 0;
    if (rank == first) {
        const char *msg = g_error[0] ? g_error : "failed (no message recorded)";
        if (size > 1 && rank != 0)
            fprintf(stderr, "saegap: error: %s [rank %d]\n", msg, rank);
        else
            fprintf(stderr, "saegap: error: %s\n", msg);
        fflush(stderr);
    }
    return -1;
}

void sg_warnf(const char *fmt, ...) {
    if (g_rank != 0) return;
    va_list ap;
    va_start(ap, fmt);
    fputs("saegap: warning: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    fflush(stderr);
}

static const char *g_remove_on_fatal;
static char g_lock_on_fatal[4096];

void sg_fatal_removes(const char *path) { g_remove_on_fatal = path; }

void sg_fatal_removes_lock(const char *path) {
    snprintf(g_lock_on_fatal, sizeof g_lock_on_fatal, "%s", path ? path : "");
}

_Noreturn void sg_fatal_at(const char *file, int line, const char *where, const char *fmt, ...) {
    char msg[SG_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fflush(stdout);
    fprintf(stderr, "saegap: error: %s: %s [rank %d] (%s:%d)\n", where ? where : "saegap", msg, g_rank,
            file, line);
    fflush(stderr);
    if (g_remove_on_fatal) unlink(g_remove_on_fatal); /* a new file that holds no result yet */
    if (g_lock_on_fatal[0]) unlink(g_lock_on_fatal);   /* MPI-IO's lock beside the result */
    /* unchecked: this is where a failed check would lead */
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (initialized && !finalized) {
        int size = 1;
        MPI_Comm comm = g_comm != MPI_COMM_NULL ? g_comm : MPI_COMM_WORLD;
        MPI_Comm_size(MPI_COMM_WORLD, &size);
        if (size > 1) MPI_Abort(comm, 1);
    }
    /* _exit, not exit: exit() would run libhdf5's atexit handler, which closes every HDF5 file
     * still open, so flushes a file whose write has just failed once more (a full disk: libhdf5
     * 1.10 then crashes in H5F__close_cb, status 139, after the message). MPI_Abort above ends
     * N ranks without any atexit handler; _exit ends one rank the same way: the file keeps what
     * its last successful flush wrote, and no library runs on a state that has just failed.
     * stdio was flushed above; nothing else of saegap's needs an exit handler. */
    fflush(NULL);
    _exit(1);
}

_Noreturn void sg_mpi_fatal_at(const char *file, int line, int code, const char *fmt, ...) {
    char what[SG_ERROR_MAX], why[MPI_MAX_ERROR_STRING] = "";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    int len = 0;
    if (MPI_Error_string(code, why, &len) != MPI_SUCCESS) snprintf(why, sizeof why, "MPI error code %d", code);
    sg_fatal_at(file, line, "MPI", "%s: %s", what, why);
}

static const char *g_alloc_for = NULL;

const char *sg_alloc_for(const char *where) {
    const char *prev = g_alloc_for;
    g_alloc_for = where;
    return prev;
}

/* RAM + swap in bytes (0 when unknown): an upper bound of what a zeroed allocation can get. */
static double machine_memory(void) {
    static double total = -1;
    if (total < 0) {
        struct sysinfo si;
        total = sysinfo(&si) == 0 ? ((double)si.totalram + (double)si.totalswap) * (double)si.mem_unit : 0;
    }
    return total;
}

/* "12.5 MB", "8796 GB" */
static const char *size_text(char *buf, size_t cap, double bytes) {
    if (bytes < 1e9) snprintf(buf, cap, "%.4g MB", bytes / 1e6);
    else snprintf(buf, cap, "%.4g GB", bytes / 1e9);
    return buf;
}

static const char *g_alloc_hint = NULL;

void sg_alloc_hint(const char *hint) { g_alloc_hint = hint; }

_Noreturn static void alloc_failed(const char *why, double bytes) {
    char b[32];
    const char *sep = g_alloc_hint ? "; " : "", *hint = g_alloc_hint ? g_alloc_hint : "";
    if (g_alloc_for)
        sg_fatal(g_alloc_for, "%s %s for what this file declares (is the file damaged?)%s%s", why,
                 size_text(b, sizeof b, bytes), sep, hint);
    sg_fatal("memory", "%s %s%s%s", why, size_text(b, sizeof b, bytes), sep, hint);
}

/* Refuses a request of `bytes` before trying when it cannot be met. */
static void check_request(size_t bytes) {
    double mem = machine_memory();
    if (mem > 0 && (double)bytes > mem) {
        char b[32], m[32];
        sg_fatal(g_alloc_for ? g_alloc_for : "memory", "needs %s of memory, more than this machine has (%s)%s",
                 size_text(b, sizeof b, (double)bytes), size_text(m, sizeof m, mem),
                 g_alloc_for ? " (is the file damaged?)" : "");
    }
}

/* Zeroes n bytes at p. Whole pages inside a large block are handed back to the kernel instead
 * (MADV_DONTNEED: private anonymous memory reads as zero afterwards, and is faulted in when a
 * thread first writes it): a rank's planned buffers are about 1 GB, and writing zeros into
 * every page of them took a third of a small run's start-up, on one thread. */
static void zero_lazily(void *p, size_t n) {
    const uintptr_t page = 4096, a = (uintptr_t)p, lo = (a + page - 1) / page * page, hi = (a + n) / page * page;
    if (n < (1u << 20) || hi <= lo || madvise((void *)lo, hi - lo, MADV_DONTNEED) != 0) {
        memset(p, 0, n);
        return;
    }
    memset(p, 0, lo - a);
    memset((void *)hi, 0, a + n - hi);
}

void *sg_xcalloc(size_t count, size_t size) {
    if (count == 0 || size == 0) count = size = 1;
    size_t bytes, padded;
    if (sg_mul_overflow(count, size, &bytes) || sg_add_overflow(bytes, 63, &padded))
        alloc_failed("cannot allocate", (double)count * (double)size);
    padded = padded / 64 * 64;
    check_request(padded);
    void *p = aligned_alloc(64, padded);
    if (!p) alloc_failed("out of memory allocating", (double)bytes);
    zero_lazily(p, padded);
    return p;
}

void *sg_xrealloc(void *p, size_t size) {
    if (size) check_request(size);
    void *q = realloc(p, size ? size : 1);
    if (!q) alloc_failed("out of memory allocating", (double)size);
    return q;
}

void *sg_xreallocarray(void *p, size_t count, size_t size) {
    size_t bytes;
    if (sg_mul_overflow(count, size, &bytes)) alloc_failed("cannot allocate", (double)count * (double)size);
    return sg_xrealloc(p, bytes);
}

char *sg_xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = sg_xrealloc(NULL, n);
    memcpy(d, s, n);
    return d;
}
