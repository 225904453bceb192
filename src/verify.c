/* verify.c: `saegap verify`: re-reads every finished unit's rows through resultfile.h's
 * unit-rows walk (the order `run` wrote and checksummed them in) and compares their FNV-1a
 * checksum with the one the unit recorded.
 * Complete: exit 0; resumable: SAEGAP_VERIFY_RESUMABLE; damaged: SAEGAP_VERIFY_DAMAGED. */
#include "verify.h"

#include "checksum.h"
#include "error.h"
#include "h5out.h"
#include "outfile.h"
#include "interventions.h"
#include "resultfile.h"
#include "schedule.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>


typedef struct {
    H5Out *h;
    const char *path;
    char why[512];
    int final_unrecorded; /* complete, but written by a version that stored no final checksum */
} V;

static int damaged(V *v, const char *fmt, const char *arg) {
    snprintf(v->why, sizeof v->why, fmt, arg);
    return SAEGAP_VERIFY_DAMAGED;
}

static int verify_file(V *v, size_t *left, size_t *total) {
    H5Out *h = v->h;
    RfFileJob job;
    if (rf_read_file_job(h, &job, v->why, sizeof v->why)) return SAEGAP_VERIFY_DAMAGED;
    const int64_t complete = job.complete;
    size_t n_units = job.shape.layout.n_units;
    int32_t *done = NULL;
    int64_t *ck = NULL;
    int rc = rf_read_progress(h, n_units, &done, &ck);
    if (rc == -1) return damaged(v, "%s", "the progress record is missing");
    if (rc != 0) return damaged(v, "%s", "the progress record is unreadable");
    /* every finished unit's rows (and records), re-read in the order run wrote them */
    const int records = rf_unit_ck_records(h);
    size_t n_left = 0;
    int32_t *failed = sg_xcalloc(n_units, sizeof *failed);
    for (size_t u = 0; u < n_units; u++) {
        if (done[u] != 1) { n_left++; continue; }
        uint64_t sum = 0;
        int err = rf_unit_reread(h, NULL, &job.shape, (const char *const *)job.names, u, records, &sum);
        failed[u] = err || (int64_t)sum != ck[u];
    }
    char units[160]; /* the first ones, named: --resume computes them again */
    const size_t bad = rf_list_units(units, sizeof units, failed, n_units);
    free(failed), free(done), free(ck);
    *left = n_left, *total = n_units;
    if (bad) {
        char tmp[256];
        snprintf(tmp, sizeof tmp, "%zu finished unit(s) (units %s)", bad, units);
        return damaged(v, "%s fail their checksum or cannot be read (the same saegap run command with --resume "
                          "computes them again)", tmp);
    }
    if (complete == 1 && n_left == 0) {
        RfFinalCheck fc = rf_final_checksum_check(h);
        if (fc == RF_FINAL_MISMATCH)
            return damaged(v, "%s", "tokens, aggregate records, feature densities, correlations, examples or the "
                                    "result attributes (aggregates, scores, mean KLs) fail their checksum");
        v->final_unrecorded = fc == RF_FINAL_NOT_RECORDED;
        return 0;
    }
    if (complete == 1) return damaged(v, "%s", "marked complete but units are missing");
    return SAEGAP_VERIFY_RESUMABLE;
}

/* A file verify cannot open (permissions, a folder) is the user's error, exit 1 with the OS's
 * reason: "damaged" (exit 4) could lead to deleting a good result. -1 with a pending error. */
static int check_readable(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return sg_errorf(path, "cannot read: %s", strerror(errno));
    struct stat sb;
    const int dir = fstat(fd, &sb) == 0 && S_ISDIR(sb.st_mode);
    close(fd);
    return dir ? sg_errorf(path, "cannot read: %s (verify takes a result file)", strerror(EISDIR)) : 0;
}

int verify_command(const Options *o, MPI_Comm comm) {
    int rank;
    SG_MPI(MPI_Comm_rank(comm, &rank), "rank");
    int status = 0;
    if (!o->positional) {
        if (rank == 0) fprintf(stderr, "saegap: error: command line: verify needs a result file: saegap verify RESULT.h5\n");
        return 1;
    }
    char partial[OUT_PARTIAL_MAX];
    const int present = access(o->positional, F_OK) == 0;
    if (sg_agree(comm, rank == 0 && present ? check_readable(o->positional) : 0)) return 1;
    if (rank == 0 && !present && out_partial_path(o->positional, partial, sizeof partial) == 0 &&
        access(partial, F_OK) == 0) {
        /* a run was killed while creating the file (see h5out.h): --resume starts it afresh */
        printf("%s: resumable: not created yet, only %s (a run was interrupted while creating it; the same saegap "
               "run command with --resume starts it afresh)\n", o->positional, partial);
        fflush(stdout);
        status = SAEGAP_VERIFY_RESUMABLE;
    } else if (rank == 0) {
        V v = {.path = o->positional};
        v.h = h5out_open_readonly(o->positional);
        size_t left = 0, total = 0;
        if (!v.h) {
            status = SAEGAP_VERIFY_DAMAGED;
            snprintf(v.why, sizeof v.why, "%s", sg_error_message());
            sg_error_clear();
        } else {
            status = verify_file(&v, &left, &total);
            h5out_close(v.h);
        }
        if (status == 0 && v.final_unrecorded)
            printf("%s: complete: all %zu units written and their checksums verified; the datasets written after the "
                   "units (tokens, aggregate records, feature densities, correlations, examples) cannot be verified: "
                   "the saegap that wrote this file recorded no final checksum (docs/output-schema.md)\n",
                   o->positional, total);
        else if (status == 0)
            printf("%s: complete: all %zu units written and their checksums verified\n", o->positional, total);
        else if (status == SAEGAP_VERIFY_RESUMABLE && left == 0)
            printf("%s: resumable: all %zu units written, the run was interrupted while finishing the aggregates (the "
                   "same saegap run command with --resume finishes it)\n", o->positional, total);
        else if (status == SAEGAP_VERIFY_RESUMABLE)
            printf("%s: resumable: %zu of %zu units left (the same saegap run command with --resume finishes it)\n",
                   o->positional, left, total);
        else if (!present)
            printf("%s: missing: no such file (exit status %d, as for a damaged file)\n", o->positional, status);
        else
            printf("%s: damaged: %s\n", o->positional, v.why);
        fflush(stdout);
    }
    SG_MPI(MPI_Bcast(&status, 1, MPI_INT, 0, comm), "broadcasting the verdict");
    return status;
}
