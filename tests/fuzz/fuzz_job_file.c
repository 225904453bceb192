/* fuzz_job_file: a job file (`saegap run JOB_FILE`, `saegap plan JOB_FILE`) through the public
 * entry cli_parse (src/cli.c): alone, and merged under command-line options. */
#include "fuzz_common.h"

#include "cli.h"

static void body(void *arg) {
    char *path = arg;
    Options o;
    char *run[] = {"saegap", "run", path};
    double budget;
    if (cli_parse(&o, 3, run) == 0) cli_rank_memory(&o, &budget); /* the size parser too */
    cli_free(&o);
    char *plan[] = {"saegap", "plan", path, "--ranks", "4", "--seed", "7", "--sae", "cmdline-sae", "--quiet"};
    cli_parse(&o, 10, plan);
    cli_free(&o);
    char *resume[] = {"saegap", "run", "--resume", "--contexts", "2", path, "--out", "x.h5"};
    cli_parse(&o, 8, resume);
    cli_free(&o);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_begin("job_file", data, size);
    fuzz_guard(body, (void *)fuzz_write(".job", data, size));
    fuzz_done();
    return 0;
}
