/* fuzz_tokenizer_special: a model folder's tokenizer files (src/tokenizer_special.c: SAELens's
 * special token ids). The input is up to three files separated by the line "\n--8<--\n":
 * special_tokens_map.json, tokenizer_config.json, tokenizer.json, in that order; an empty part
 * leaves that file out (make_corpus.py writes the seeds). */
#include "fuzz_common.h"

#include "tokenizer_special.h"

#include <string.h>

#define SEP "\n--8<--\n"

static void body(void *arg) {
    const char *dir = arg;
    static long ids[SG_MAX_SPECIAL_IDS];
    size_t n = 0;
    char source[256];
    tokenizer_special_ids(dir, 256000, ids, &n, source, sizeof source);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_begin("tokenizer_special", data, size);
    const char *dir = fuzz_mkdir();
    static const char *const NAMES[3] = {"special_tokens_map.json", "tokenizer_config.json", "tokenizer.json"};
    const size_t seplen = strlen(SEP);
    size_t at = 0;
    for (int k = 0; k < 3 && at <= size; k++) {
        size_t end = size; /* the last part runs to the end of the input */
        for (size_t i = at; k < 2 && i + seplen <= size; i++)
            if (!memcmp(data + i, SEP, seplen)) { end = i; break; }
        if (end > at) fuzz_write_in(dir, NAMES[k], data + at, end - at);
        at = end + seplen;
    }
    fuzz_guard(body, (void *)dir);
    fuzz_done();
    return 0;
}
