/* sae_format.c: the names of SAE architectures, normalisations and formats as result files record
 * them, and the cfg reader every format shares (see sae_format.h). */
#include "sae_format.h"

#include "error.h"
#include "textfile.h"

#include <cjson/cJSON.h>
#include <math.h>

/* Written into result files (CONTRACT.md): a row per enum value, in the enum's order. */
static const char *const ARCH_NAME[] = {"standard", "jumprelu", "topk", "gated", "groupmax"};
static const char *const NORM_NAME[] = {"none", "constant_norm_rescale", "layer_norm", "expected_average_only_in"};
static const char *const FORMAT_NAME[] = {"sparsify", "legacy", "flat", "v6", "gemma_scope"};
_Static_assert(sizeof ARCH_NAME / sizeof *ARCH_NAME == SAE_ARCH_COUNT, "ARCH_NAME: one name per SaeArch");
_Static_assert(sizeof NORM_NAME / sizeof *NORM_NAME == SAE_NORM_COUNT, "NORM_NAME: one name per SaeNorm");
_Static_assert(sizeof FORMAT_NAME / sizeof *FORMAT_NAME == SAE_FORMAT_COUNT, "FORMAT_NAME: one name per SaeFormat");

const char *sae_arch_name(SaeArch a) { return ARCH_NAME[a]; }
const char *sae_norm_name(SaeNorm n) { return NORM_NAME[n]; }
const char *sae_format_name(SaeFormat f) { return FORMAT_NAME[f]; }

int sae_cfg_int(const cJSON *j, const char *path, const char *key, double lo, double hi, const char *what,
                size_t *out) {
    if (!cJSON_IsNumber(j) || !(j->valuedouble >= lo && j->valuedouble <= hi) || j->valuedouble != floor(j->valuedouble)) {
        char v[80];
        return sg_errorf(path, "key \"%s\" must be %s, not %s", key, what, json_text(j, v, sizeof v));
    }
    *out = (size_t)j->valuedouble;
    return 0;
}
