/* The table of SAE formats (src/sae_formats.c, include/sae_format.h), as named cases:
 *  - rows_complete: every SaeFormat has its row, at its own index, with every member set (a new
 *    format's row that forgets one fails here, not on a user's folder);
 *  - names: the cfg_generation, architecture and normalize_activations strings written into
 *    result files, as CONTRACT.md and SAELens spell them;
 *  - detection: hand-written folders against the rules of docs/architecture.md (cfg.json before
 *    params.npz; sparsify's size keys without a hook key before SAELens's version rule;
 *    SAELens's generation by sae_lens_version, else hook_point, hook_name, metadata), and the
 *    refusals of a folder no row claims.
 * Exits non-zero on any failure, naming the case. */
#include "error.h"
#include "sae_formats.h"

#include "check.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_dir[64];

static void rows_complete(void) {
    for (int i = 0; i < SAE_FORMAT_COUNT; i++) {
        const SaeFormatOps *r = sae_format_row((SaeFormat)i);
        CHECK(r->id == (SaeFormat)i, "row %d has id %d", i, (int)r->id);
        CHECK(r->marker && r->marker[0], "row %s: no marker", sae_format_name((SaeFormat)i));
        CHECK(r->description && r->description[0], "row %s: no description", sae_format_name((SaeFormat)i));
        CHECK(r->claims && r->site && r->read && r->settle && r->basis && r->open_weights && r->floats && r->zeroed_from && r->place &&
                  r->weights_file,
              "row %s: a member is not set", sae_format_name((SaeFormat)i));
    }
}

static void names(void) {
    static const struct { SaeFormat f; const char *name, *in_description; } F[] = {
        {SAE_FORMAT_LEGACY, "legacy", "SAELens SAE, cfg generation legacy"},
        {SAE_FORMAT_FLAT, "flat", "SAELens SAE, cfg generation flat"},
        {SAE_FORMAT_V6, "v6", "SAELens SAE, cfg generation v6"},
        {SAE_FORMAT_SPARSIFY, "sparsify", "EleutherAI sparsify SAE"},
        {SAE_FORMAT_GEMMA_SCOPE, "gemma_scope", "Gemma Scope SAE"},
    };
    CHECK(sizeof F / sizeof F[0] == SAE_FORMAT_COUNT, "a format is missing from this test");
    for (size_t i = 0; i < sizeof F / sizeof F[0]; i++) {
        CHECK(!strcmp(sae_format_name(F[i].f), F[i].name), "format %zu is named %s, not %s", i, sae_format_name(F[i].f),
              F[i].name);
        CHECK(strstr(sae_format_row(F[i].f)->description, F[i].in_description) != NULL, "%s: description '%s'",
              F[i].name, sae_format_row(F[i].f)->description);
    }
    static const char *const ARCH[] = {"standard", "jumprelu", "topk", "gated", "groupmax"};
    static const char *const NORM[] = {"none", "constant_norm_rescale", "layer_norm", "expected_average_only_in"};
    for (int i = 0; i < SAE_ARCH_COUNT; i++)
        CHECK(!strcmp(sae_arch_name((SaeArch)i), ARCH[i]), "arch %d: %s", i, sae_arch_name((SaeArch)i));
    for (int i = 0; i < SAE_NORM_COUNT; i++)
        CHECK(!strcmp(sae_norm_name((SaeNorm)i), NORM[i]), "norm %d: %s", i, sae_norm_name((SaeNorm)i));
}

/* A fresh folder under g_dir holding cfg.json (when cfg is not NULL) and params.npz (when npz). */
static const char *folder(const char *name, const char *cfg, int npz) {
    static char dir[256];
    char p[320];
    snprintf(dir, sizeof dir, "%s/%s", g_dir, name);
    mkdir(dir, 0700);
    if (cfg) {
        snprintf(p, sizeof p, "%s/cfg.json", dir);
        FILE *f = fopen(p, "w");
        fputs(cfg, f);
        fclose(f);
    }
    if (npz) {
        snprintf(p, sizeof p, "%s/params.npz", dir);
        fclose(fopen(p, "w"));
    }
    return dir;
}

static void detected(int line, const char *name, const char *cfg, int npz, SaeFormat want) {
    const char *dir = folder(name, cfg, npz);
    SaeFormat got = SAE_FORMAT_COUNT;
    cJSON *root = NULL;
    char path[512];
    int rc = sae_format_detect(dir, &got, &root, path, sizeof path);
    CHECK(rc == 0 && got == want, "line %d, %s: format %s (rc %d: %s), expected %s", line, name,
          got < SAE_FORMAT_COUNT ? sae_format_name(got) : "none", rc, sg_error_message(), sae_format_name(want));
    CHECK(sae_format_folder(dir), "line %d, %s: not taken for an SAE folder", line, name);
    cJSON_Delete(root);
    sg_error_clear();
}

static void refused(int line, const char *name, const char *cfg, const char *needle) {
    const char *dir = folder(name, cfg, 0);
    SaeFormat got = SAE_FORMAT_COUNT;
    cJSON *root = NULL;
    char path[512];
    int rc = sae_format_detect(dir, &got, &root, path, sizeof path);
    CHECK(rc == -1 && root == NULL && strstr(sg_error_message(), needle) && strstr(sg_error_message(), "cfg.json"),
          "line %d, %s: rc %d, message '%s', expected one naming cfg.json with '%s'", line, name, rc,
          sg_error_message(), needle);
    sg_error_clear();
}

static void detection(void) {
    detected(__LINE__, "legacy", "{\"hook_point\": \"blocks.0.hook_resid_pre\"}", 0, SAE_FORMAT_LEGACY);
    detected(__LINE__, "flat", "{\"hook_name\": \"blocks.0.hook_resid_pre\"}", 0, SAE_FORMAT_FLAT);
    /* a pre-v6 version: the keys decide, even beside a metadata object */
    detected(__LINE__, "flat-v5", "{\"sae_lens_version\": \"5.9.1\", \"hook_name\": \"h\", \"metadata\": {}}", 0,
             SAE_FORMAT_FLAT);
    detected(__LINE__, "v6-meta", "{\"metadata\": {\"hook_name\": \"h\"}}", 0, SAE_FORMAT_V6);
    detected(__LINE__, "v6-version", "{\"sae_lens_version\": \"6.0.0\", \"hook_name\": \"h\"}", 0, SAE_FORMAT_V6);
    detected(__LINE__, "v6-number", "{\"sae_lens_version\": 6, \"hook_point\": \"h\"}", 0, SAE_FORMAT_V6);
    detected(__LINE__, "sparsify", "{\"d_in\": 8, \"num_latents\": 16, \"k\": 4}", 0, SAE_FORMAT_SPARSIFY);
    detected(__LINE__, "sparsify-expansion", "{\"d_in\": 8, \"expansion_factor\": 2, \"k\": 4}", 0, SAE_FORMAT_SPARSIFY);
    /* SAELens's version rule alone would call this v6: sparsify's row is asked first */
    detected(__LINE__, "sparsify-versioned", "{\"sae_lens_version\": 6, \"num_latents\": 16}", 0, SAE_FORMAT_SPARSIFY);
    /* a hook key makes it SAELens's, whatever size keys it has */
    detected(__LINE__, "flat-latents", "{\"hook_name\": \"h\", \"num_latents\": 16}", 0, SAE_FORMAT_FLAT);
    detected(__LINE__, "gemma", NULL, 1, SAE_FORMAT_GEMMA_SCOPE);
    detected(__LINE__, "cfg-and-npz", "{\"hook_name\": \"h\"}", 1, SAE_FORMAT_FLAT); /* cfg.json first */
    refused(__LINE__, "no-hook", "{\"d_in\": 8}", "cannot tell the cfg generation");
    refused(__LINE__, "not-json", "{\"d_in\": ", "not valid JSON");
    refused(__LINE__, "empty", NULL, "cannot open");
    CHECK(!sae_format_folder(folder("empty2", NULL, 0)), "a folder with no marker is taken for an SAE folder");
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/saegap-test-sae-formats-XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 2;
    }
    static const struct { const char *name; void (*run)(void); } CASES[] = {
        {"rows_complete", rows_complete}, {"names", names}, {"detection", detection}};
    int failed_cases = 0;
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
        int before = failures;
        CASES[i].run();
        if (failures != before) fprintf(stderr, "FAILED case %s\n", CASES[i].name), failed_cases++;
    }
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
    return failed_cases ? 1 : 0;
}
