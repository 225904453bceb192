/* sae_formats.c: the table of SAE formats and the folder's format (see sae_formats.h). Adding a
 * format: a value of SaeFormat and its name (sae_format.h, sae_format.c), a file that defines its
 * row, and the row here, where its place is the order detection asks in (docs/architecture.md). */
#include "sae_formats.h"

#include "error.h"
#include "textfile.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

/* One row per SaeFormat, in the enum's order, which is the order detection asks the rows whose
 * marker the folder holds: sparsify's cfg before SAELens's (SAELens's rule by sae_lens_version
 * alone would take a sparsify cfg that records one), cfg.json rows before params.npz. */
static const SaeFormatOps *const FORMATS[] = {
    &SAE_FORMAT_SPARSIFY_ROW, &SAE_FORMAT_LEGACY_ROW, &SAE_FORMAT_FLAT_ROW, &SAE_FORMAT_V6_ROW,
    &SAE_FORMAT_GEMMA_SCOPE_ROW,
};
_Static_assert(sizeof FORMATS / sizeof *FORMATS == SAE_FORMAT_COUNT, "FORMATS: one row per SaeFormat");

const SaeFormatOps *sae_format_row(SaeFormat f) {
    if ((unsigned)f >= SAE_FORMAT_COUNT || FORMATS[f]->id != f) sg_fatal("sae_formats.c", "no row for format %d", (int)f);
    return FORMATS[f];
}

/* <dir>/<name> exists (of any type: a directory named cfg.json is refused when read). */
static int holds(const char *dir, const char *name) {
    char p[8192];
    struct stat sb;
    if ((size_t)snprintf(p, sizeof p, "%s/%s", dir, name) >= sizeof p) return 0;
    return stat(p, &sb) == 0;
}

int sae_format_folder(const char *dir) {
    for (size_t i = 0; i < SAE_FORMAT_COUNT; i++)
        if (holds(dir, FORMATS[i]->marker)) return 1;
    return 0;
}

static int is_json(const char *name) {
    size_t n = strlen(name);
    return n >= 5 && !strcmp(name + n - 5, ".json");
}

int sae_format_detect(const char *dir, SaeFormat *out, cJSON **cfg, char *cfg_path, size_t cap) {
    *cfg = NULL;
    const char *marker = FORMATS[0]->marker;
    for (size_t i = 0; i < SAE_FORMAT_COUNT; i++)
        if (holds(dir, FORMATS[i]->marker)) { marker = FORMATS[i]->marker; break; }
    snprintf(cfg_path, cap, "%s/%s", dir, marker);
    if (is_json(marker) && !(*cfg = json_object_file(cfg_path, 16u << 20))) return -1;
    for (size_t i = 0; i < SAE_FORMAT_COUNT; i++)
        if (!strcmp(FORMATS[i]->marker, marker) && FORMATS[i]->claims(*cfg)) {
            *out = FORMATS[i]->id;
            return 0;
        }
    cJSON_Delete(*cfg);
    *cfg = NULL;
    /* every cfg.json no other row claims is SAELens's but for its hook keys */
    return sg_errorf(cfg_path, "cannot tell the cfg generation: no hook_point, hook_name or metadata.hook_name");
}
