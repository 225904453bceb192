/* main.c: a shim. All of saegap is saegap_run() in libsaegap. */
#include "error.h"
#include "gemm.h"
#include "run.h"
#include "saegap.h"

#include <mpi.h>

int main(int argc, char **argv) {
    run_catch_early_stop();
    gemm_select_kernels(); /* before MPI_Init: BLIS_ARCH_TYPE is read when BLIS starts */
    SG_MPI(MPI_Init(&argc, &argv), "MPI_Init failed");
    int status = saegap_run(argc, argv, MPI_COMM_WORLD);
    SG_MPI(MPI_Finalize(), "MPI_Finalize failed");
    return status;
}
