/* main.c: a shim. All of saegap is saegap_run() in libsaegap. */
#include "run.h"
#include "saegap.h"

#include <mpi.h>

int main(int argc, char **argv) {
    run_catch_early_stop();
    MPI_Init(&argc, &argv);
    int status = saegap_run(argc, argv, MPI_COMM_WORLD);
    MPI_Finalize();
    return status;
}
