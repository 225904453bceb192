/* fuzz_gemma_scope_npz: Gemma Scope's params.npz (src/npz.c: the zip directory, stored and
 * deflate members, CRC-32, the .npy headers; src/sae_gemma_scope.c: the arrays' shapes), as
 * sae_read_cfg reads it (info, plan: headers only) and sae_load against the fixture model (every
 * value), in a folder whose path names the site (gemma-scope-fuzz-res/layer_1: d_in 8). */
#include "fuzz_common.h"

#include "model.h"
#include "sae.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void body(void *arg) {
    const char *dir = arg;
    Sae s;
    if (sae_read_cfg(&s, dir, NULL) == 0) sae_free(&s);
    SaeLoadOptions opt = {0};
    if (sae_load(&s, dir, fuzz_fixture_model(), fuzz_fixture_model()->cfg.name, &opt) == 0) sae_free(&s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_begin("gemma_scope_npz", data, size);
    (void)fuzz_fixture_model(); /* loaded once, outside the input's guard */
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/gemma-scope-fuzz-res", fuzz_mkdir());
    if (mkdir(dir, 0700) != 0) abort();
    snprintf(dir + strlen(dir), sizeof dir - strlen(dir), "/layer_1");
    if (mkdir(dir, 0700) != 0) abort();
    fuzz_write_in(dir, "params.npz", data, size);
    fuzz_guard(body, dir);
    fuzz_done();
    return 0;
}
