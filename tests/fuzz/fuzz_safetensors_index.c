/* fuzz_safetensors_index: a sharded checkpoint's model.safetensors.index.json
 * (src/safetensors_shards.c), in a folder with the fixture's two-shard Pythia model
 * (tests/fuzz/fixture/pythia-sharded: its config.json and shard files), then model_load of it:
 * the weight_map decides which shard files are opened and where each tensor is looked for. */
#include "fuzz_common.h"

#include "model.h"

#include <stdio.h>

static void body(void *arg) {
    Gpt2Model m;
    if (model_load(&m, (const char *)arg) == 0) model_free(&m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_begin("safetensors_index", data, size);
    const char *dir = fuzz_mkdir();
    fuzz_write_in(dir, "model.safetensors.index.json", data, size);
    static const char *const files[] = {"config.json", "model-00001-of-00002.safetensors",
                                        "model-00002-of-00002.safetensors"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char target[1024];
        snprintf(target, sizeof target, "%s/pythia-sharded/%s", fuzz_fixture(), files[i]);
        fuzz_link_in(dir, files[i], target);
    }
    fuzz_guard(body, (void *)dir);
    fuzz_done();
    return 0;
}
