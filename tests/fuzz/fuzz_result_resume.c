/* fuzz_result_resume: `saegap run ... --out FILE.h5 --resume` (src/run.c open_output: the
 * job_* attributes, the unit layout, the datasets and the done flags it reads) on the input as
 * the result file of the fixture job (tests/fuzz/fixture; the seeds in corpus/result_resume
 * are that job's files, complete and with units left). Through saegap_run, on MPI_COMM_SELF. */
#include "fuzz_common.h"

#include "saegap.h"

#include <mpi.h>
#include <stdio.h>

static void body(void *arg) {
    static char model[1024], sae[1024], tokens[1024];
    snprintf(model, sizeof model, "%s/model", fuzz_fixture());
    snprintf(sae, sizeof sae, "%s/saes", fuzz_fixture());
    snprintf(tokens, sizeof tokens, "%s/tokens.npy", fuzz_fixture());
    char *argv[] = {"saegap", "run", "--model", model, "--sae", sae, "--tokens", tokens,
                    "--interventions", "sae,eps_random,zero_ablation", "--examples", "1",
                    "--threads-per-rank", "1", "--quiet", "--out", arg, "--resume"};
    saegap_run((int)(sizeof argv / sizeof argv[0]), argv, MPI_COMM_SELF);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_begin("result_resume", data, size);
    fuzz_guard(body, (void *)fuzz_write(".h5", data, size));
    fuzz_done();
    return 0;
}
