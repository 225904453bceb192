/* verify.c: `saegap verify`: re-reads every finished unit's rows in the order `run` wrote
 * them and compares their FNV-1a checksum with the one the unit recorded (run.c put_rows).
 * Complete: exit 0; resumable: SAEGAP_VERIFY_RESUMABLE; damaged: SAEGAP_VERIFY_DAMAGED. */
#include "verify.h"

#include "checksum.h"
#include "error.h"
#include "h5out.h"
#include "interventions.h"

#include <stdint.h>
#include <stdio.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>


typedef struct {
    H5Out *h;
    const char *path;
    char why[512];
} V;

static int damaged(V *v, const char *fmt, const char *arg) {
    snprintf(v->why, sizeof v->why, fmt, arg);
    return SAEGAP_VERIFY_DAMAGED;
}

/* Adds rows [c0, c0+nb) of dataset `name` (float32) to the checksum; -1 when unreadable. */
static int fold(V *v, uint64_t *ck, const char *name, size_t c0, size_t nb, float **buf, size_t *cap) {
    int nd;
    uint64_t dims[8];
    int ds = h5out_find_dataset(v->h, name, H5OUT_F32, &nd, dims);
    if (ds < 0) return -1;
    /* the shape is stored in full (h5out_find_dataset), so these products fit; the rows asked
     * for come from attributes and are checked against it before any buffer is sized */
    size_t per = 1, want = 0;
    for (int i = 1; i < nd; i++) per *= dims[i];
    if (nd < 1 || c0 > dims[0] || nb > dims[0] - c0 || sg_mul_overflow(nb, per, &want)) return -1;
    if (want > *cap) {
        *cap = want;
        *buf = sg_xreallocarray(*buf, *cap, sizeof(float));
    }
    if (h5out_try_read_rows(v->h, ds, c0, nb, *buf)) return -1;
    *ck = fnv1a(*ck, *buf, nb * per * sizeof(float));
    return 0;
}

static int verify_file(V *v, size_t *left, size_t *total) {
    H5Out *h = v->h;
    int64_t complete = 0, n = 0, T = 0, S = 0, B = 0, bpb = 0, G = 0, Wk = 0;
    char sites[4096] = "", ivs[512] = "", scope[32] = "";
    if (h5out_get_attr_i64(h, "/", "complete", &complete) || h5out_get_attr_i64(h, "/", "n_contexts", &n) ||
        h5out_get_attr_i64(h, "/", "ctx", &T) || h5out_get_attr_i64(h, "/", "samples", &S) ||
        h5out_get_attr_i64(h, "/", "unit_batch_contexts", &B) || h5out_get_attr_i64(h, "/", "unit_batches_per_block", &bpb) ||
        h5out_get_attr_i64(h, "/", "unit_site_groups", &G) || h5out_get_attr_str(h, "/", "job_sites", sites, sizeof sites) ||
        h5out_get_attr_str(h, "/", "job_interventions", ivs, sizeof ivs) ||
        h5out_get_attr_str(h, "/", "job_scope", scope, sizeof scope))
        return damaged(v, "%s", "the saegap run attributes are missing (not a run file, or its metadata is damaged)");
    int position = !strcmp(scope, "position");
    if (position && h5out_get_attr_i64(h, "/", "window", &Wk))
        return damaged(v, "%s", "attribute window is missing");
    if (!position) Wk = T;
    if (n <= 0 || T <= 0 || B <= 0 || bpb <= 0 || G <= 0 || S <= 0)
        return damaged(v, "%s", "the unit layout attributes are not positive");
    uint32_t mask;
    if (iv_parse_list(&mask, ivs)) return damaged(v, "unknown interventions '%s'", ivs);
    /* sites, in run order */
    char *names[256];
    size_t K = 0;
    for (char *save = NULL, *t = strtok_r(sites, ",", &save); t && K < 256; t = strtok_r(NULL, ",", &save)) names[K++] = t;
    size_t n_batches = ((size_t)n + (size_t)B - 1) / (size_t)B, n_blocks = (n_batches + (size_t)bpb - 1) / (size_t)bpb;
    if ((size_t)G > K) G = (int64_t)K;
    size_t n_units = n_blocks * (size_t)G;
    int nd;
    uint64_t dims[8];
    int ds_done = h5out_find_dataset(h, "progress/unit_done", H5OUT_I32, &nd, dims);
    int ds_ck = h5out_find_dataset(h, "progress/unit_checksum", H5OUT_I64, &nd, dims);
    if (ds_done < 0 || ds_ck < 0 || dims[0] != n_units) return damaged(v, "%s", "the progress record is missing");
    int32_t *done = sg_xcalloc(n_units, sizeof(int32_t));
    int64_t *ck = sg_xcalloc(n_units, sizeof(int64_t));
    if (h5out_try_read_rows(h, ds_done, 0, n_units, done) || h5out_try_read_rows(h, ds_ck, 0, n_units, ck)) {
        free(done), free(ck);
        return damaged(v, "%s", "the progress record is unreadable");
    }
    int zscore = position && S > 1 && (mask & (1u << IV_SAE)) && (mask & (1u << IV_EPS_RANDOM));
    static const char *const recon[] = {"l2_norm_in", "l2_norm_out", "eps_norm", "cossim", "mse", "l0", "l1"};
    float *buf = NULL;
    size_t cap = 0, n_left = 0, bad = 0;
    char name[512];
    for (size_t u = 0; u < n_units; u++) {
        if (done[u] != 1) { n_left++; continue; }
        size_t block = u / (size_t)G, g = u % (size_t)G, s0 = K * g / (size_t)G, s1 = K * (g + 1) / (size_t)G;
        size_t c0 = block * (size_t)bpb * (size_t)B, c1 = c0 + (size_t)bpb * (size_t)B;
        if (c1 > (size_t)n) c1 = (size_t)n;
        uint64_t h64 = 1469598103934665603ull;
        int err = 0;
        for (size_t c = c0; c < c1 && !err; c += (size_t)B) {
            size_t nb = c1 - c < (size_t)B ? c1 - c : (size_t)B;
            if (g == 0) err |= fold(v, &h64, "clean/ce", c, nb, &buf, &cap);
            for (size_t si = s0; si < s1 && !err; si++) {
                for (int iv = 0; iv < IV_COUNT; iv++) {
                    if (!(mask & (1u << iv))) continue;
                    snprintf(name, sizeof name, "sites/%s/kl/%s", names[si], iv_name((Intervention)iv));
                    err |= fold(v, &h64, name, c, nb, &buf, &cap);
                    snprintf(name, sizeof name, "sites/%s/ce/%s", names[si], iv_name((Intervention)iv));
                    err |= fold(v, &h64, name, c, nb, &buf, &cap);
                }
                if (zscore) {
                    snprintf(name, sizeof name, "sites/%s/sae_kl_zscore", names[si]);
                    err |= fold(v, &h64, name, c, nb, &buf, &cap);
                }
                for (int k = 0; k < 7; k++) {
                    snprintf(name, sizeof name, "sites/%s/recon/%s", names[si], recon[k]);
                    err |= fold(v, &h64, name, c, nb, &buf, &cap);
                }
            }
        }
        if (err || (int64_t)h64 != ck[u]) bad++;
    }
    free(buf), free(done), free(ck);
    (void)Wk;
    *left = n_left, *total = n_units;
    if (bad) {
        char tmp[64];
        snprintf(tmp, sizeof tmp, "%zu", bad);
        return damaged(v, "%s finished unit(s) fail their checksum or cannot be read", tmp);
    }
    if (complete == 1 && n_left == 0) {
        char want[64] = "", got[64];
        h5out_get_attr_str(h, "/", "final_checksum", want, sizeof want);
        snprintf(got, sizeof got, "fnv1a64:%016llx", (unsigned long long)h5out_checksum_final(h, v->path));
        if (strcmp(want, got) != 0)
            return damaged(v, "%s", "tokens, aggregate records, feature densities or correlations fail their checksum");
        return 0;
    }
    if (complete == 1) return damaged(v, "%s", "marked complete but units are missing");
    return SAEGAP_VERIFY_RESUMABLE;
}

int verify_command(const Options *o, MPI_Comm comm) {
    int rank;
    MPI_Comm_rank(comm, &rank);
    int status = 0;
    if (!o->positional) {
        if (rank == 0) fprintf(stderr, "saegap: error: command line: verify needs a result file: saegap verify RESULT.h5\n");
        return 1;
    }
    char partial[OUT_PARTIAL_MAX];
    const int present = access(o->positional, F_OK) == 0;
    if (rank == 0 && !present && out_partial_path(o->positional, partial, sizeof partial) == 0 &&
        access(partial, F_OK) == 0) {
        /* a run was killed while creating the file (see h5out.h): --resume starts it afresh */
        printf("%s: resumable: not created yet, only %s (a run was interrupted while creating it; the same saegap "
               "run command with --resume starts it afresh)\n", o->positional, partial);
        fflush(stdout);
        status = SAEGAP_VERIFY_RESUMABLE;
    } else if (rank == 0) {
        V v = {.path = o->positional};
        v.h = h5out_open_readonly(o->positional);
        size_t left = 0, total = 0;
        if (!v.h) {
            status = SAEGAP_VERIFY_DAMAGED;
            snprintf(v.why, sizeof v.why, "%s", sg_error_message());
            sg_error_clear();
        } else {
            status = verify_file(&v, &left, &total);
            h5out_close(v.h);
        }
        if (status == 0)
            printf("%s: complete: all %zu units written and their checksums verified\n", o->positional, total);
        else if (status == SAEGAP_VERIFY_RESUMABLE)
            printf("%s: resumable: %zu of %zu units left (the same saegap run command with --resume finishes it)\n",
                   o->positional, left, total);
        else if (!present)
            printf("%s: missing: no such file (exit status %d, as for a damaged file)\n", o->positional, status);
        else
            printf("%s: damaged: %s\n", o->positional, v.why);
        fflush(stdout);
    }
    if (MPI_Bcast(&status, 1, MPI_INT, 0, comm) != MPI_SUCCESS) return 1;
    return status;
}
