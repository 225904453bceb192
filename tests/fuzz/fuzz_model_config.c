/* fuzz_model_config: a Hugging Face config.json (src/model.c model_read_config), then
 * model_load of that config with the fixture's weights (tests/fuzz/fixture/model): the
 * sizes the config declares are what model_load allocates and checks tensors against. */
#include "fuzz_common.h"

#include "model.h"

#include <stdio.h>

static void body(void *arg) {
    const char *dir = arg;
    Gpt2Config cfg;
    if (model_read_config(&cfg, dir) != 0) return;
    Gpt2Model m;
    if (model_load(&m, dir) == 0) model_free(&m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_begin("model_config", data, size);
    const char *dir = fuzz_mkdir();
    fuzz_write_in(dir, "config.json", data, size);
    char weights[1024];
    snprintf(weights, sizeof weights, "%s/model/model.safetensors", fuzz_fixture());
    fuzz_link_in(dir, "model.safetensors", weights);
    fuzz_guard(body, (void *)dir);
    fuzz_done();
    return 0;
}
