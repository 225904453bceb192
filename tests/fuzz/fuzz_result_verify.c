/* fuzz_result_verify: `saegap verify RESULT.h5` (src/verify.c) on the input as a result file:
 * the run attributes (unit layout, sites, interventions, scope), the progress record and
 * every finished unit's rows against its checksum. Through saegap_run, the public entry. */
#include "fuzz_common.h"

#include "saegap.h"

#include <mpi.h>

static void body(void *arg) {
    char *argv[] = {"saegap", "verify", arg};
    saegap_run(3, argv, MPI_COMM_SELF);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_begin("result_verify", data, size);
    fuzz_guard(body, (void *)fuzz_write(".h5", data, size));
    fuzz_done();
    return 0;
}
