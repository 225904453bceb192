/* error.c: pending user errors, rank agreement, warnings and the fatal path. */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char g_error[SG_ERROR_MAX];
static MPI_Comm g_comm = MPI_COMM_NULL;
static int g_rank = 0;
static int g_quiet = 0;

int sg_errorf(const char *where, const char *fmt, ...) {
    if (g_error[0] != '\0') return -1; /* keep the first (innermost) cause */
    int n = snprintf(g_error, sizeof g_error, "%s: ", where ? where : "saegap");
    if (n < 0 || (size_t)n >= sizeof g_error) n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_error + n, sizeof g_error - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

const char *sg_error_message(void) { return g_error; }
void sg_error_clear(void) { g_error[0] = '\0'; }

void sg_set_comm(MPI_Comm comm, int quiet) {
    g_comm = comm;
    g_quiet = quiet;
    MPI_Comm_rank(comm, &g_rank);
}

int sg_rank(void) { return g_rank; }
int sg_quiet(void) { return g_quiet; }

int sg_agree(MPI_Comm comm, int status) {
    int rank, size;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    /* lowest failing rank, or size when every rank succeeded */
    int mine = status != 0 ? rank : size, first = size;
    if (MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm) != MPI_SUCCESS)
        sg_fatal("MPI", "MPI_Allreduce failed while agreeing on an error");
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
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (initialized && !finalized) {
        int size = 1;
        MPI_Comm comm = g_comm != MPI_COMM_NULL ? g_comm : MPI_COMM_WORLD;
        MPI_Comm_size(MPI_COMM_WORLD, &size);
        if (size > 1) MPI_Abort(comm, 1);
    }
    exit(1);
}

void *sg_xcalloc(size_t count, size_t size) {
    if (count == 0 || size == 0) count = size = 1;
    if (count > (size_t)-1 / size) sg_fatal("memory", "allocation of %zu x %zu bytes overflows", count, size);
    size_t bytes = count * size;
    size_t padded = (bytes + 63) / 64 * 64;
    void *p = aligned_alloc(64, padded);
    if (!p) sg_fatal("memory", "out of memory allocating %.1f MB", (double)bytes / 1e6);
    memset(p, 0, padded);
    return p;
}

void *sg_xrealloc(void *p, size_t size) {
    void *q = realloc(p, size ? size : 1);
    if (!q) sg_fatal("memory", "out of memory allocating %.1f MB", (double)size / 1e6);
    return q;
}

char *sg_xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = sg_xrealloc(NULL, n);
    memcpy(d, s, n);
    return d;
}
