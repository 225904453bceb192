/* fuzz_result_info: `saegap info FILE.h5` (src/info.c) on the input: a run result (its
 * attributes and progress record), a dump file, or else a token file. Through saegap_run. */
#include "fuzz_common.h"

#include "saegap.h"

#include <mpi.h>

static void body(void *arg) {
    char *argv[] = {"saegap", "info", arg};
    saegap_run(3, argv, MPI_COMM_SELF);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_begin("result_info", data, size);
    fuzz_guard(body, (void *)fuzz_write(".h5", data, size));
    fuzz_done();
    return 0;
}
