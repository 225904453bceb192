/* saegap.c: command dispatch and the per-process set-up shared by all commands. */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include "saegap.h"

#include "cli.h"
#include "dump.h"
#include "error.h"
#include "gemm.h"
#include "run.h"
#include "verify.h"
#include "info.h"
#include "plan.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* BLIS threads per rank: --threads-per-rank, else BLIS_NUM_THREADS/OMP_NUM_THREADS as the
 * user set them, else the node's cores shared evenly among the ranks on that node (so
 * ranks x threads never oversubscribes a node by default). Returns the count used. */
static int configure_threads(const Options *o, MPI_Comm comm) {
    int threads;
    if (o->threads_per_rank > 0) threads = (int)o->threads_per_rank;
    else if (getenv("BLIS_NUM_THREADS") || getenv("OMP_NUM_THREADS")) return gemm_get_threads();
    else {
        MPI_Comm node;
        int on_node = 1;
        SG_MPI(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node),
               "finding the ranks on this node (MPI_Comm_split_type) failed");
        SG_MPI(MPI_Comm_size(node, &on_node), "MPI_Comm_size failed");
        SG_MPI(MPI_Comm_free(&node), "MPI_Comm_free failed");
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        threads = cores > on_node ? (int)(cores / on_node) : 1;
    }
    /* More threads than the cores this rank may run on (mpirun binds each rank to one core by
     * default) makes OpenMP's spinning threads take turns on one core: measured 80x slower.
     * Use the cores the rank has, and say so. Results do not depend on the thread count. */
    cpu_set_t set;
    int avail = threads;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) avail = CPU_COUNT(&set);
    int want = threads, fewest = avail;
    SG_MPI(MPI_Allreduce(MPI_IN_PLACE, &fewest, 1, MPI_INT, MPI_MIN, comm), "agreeing on the cores per rank failed");
    if (threads > avail) threads = avail;
    if (want > fewest)
        sg_warnf("%d thread(s) per rank asked, but a rank may run on only %d core(s) (its CPU affinity: mpirun "
                 "binds each rank to one core by default); each rank uses at most its own cores. Give every rank "
                 "its cores: mpirun --map-by slot:PE=%d (or --bind-to none)",
                 want, fewest, want);
    gemm_set_threads(threads);
    const char *kernels_warning = gemm_kernels_warning();
    if (*kernels_warning) sg_warnf("%s", kernels_warning);
    return threads;
}

int saegap_run(int argc, char **argv, MPI_Comm comm) {
    int rank;
    SG_MPI(MPI_Comm_rank(comm, &rank), "MPI_Comm_rank failed");
    /* MPI calls on this communicator return codes instead of aborting: each is checked (SG_MPI). */
    SG_MPI(MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler failed");
    sg_error_clear();
    Options o;
    int rc = cli_parse(&o, argc, argv);
    sg_set_comm(comm, rc == 0 && o.quiet);
    if (sg_agree(comm, rc) != 0) {
        cli_free(&o);
        return 1;
    }
    int status = 0;
    if (o.help) {
        if (rank == 0) cli_print_help(stdout, o.command);
    } else if (!strcmp(o.command, "dump")) {
        configure_threads(&o, comm);
        status = dump_command(&o, comm);
    } else if (!strcmp(o.command, "run")) {
        configure_threads(&o, comm);
        status = run_command(&o, comm);
    } else if (!strcmp(o.command, "plan")) {
        status = plan_command(&o, comm);
    } else if (!strcmp(o.command, "info")) {
        status = info_command(&o, comm);
    } else if (!strcmp(o.command, "verify")) {
        status = verify_command(&o, comm);
    } else {
        sg_errorf(o.command, "unknown command");
        sg_agree(comm, -1);
        status = 2;
    }
    cli_free(&o);
    return status;
}
