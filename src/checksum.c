/* checksum.c: FNV-1a 64 and the job identity hash (see checksum.h). */
#include "checksum.h"

#include "error.h"

#include <stdio.h>
#include <string.h>
#include <xxhash.h>

uint64_t fnv1a(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

#define FNV_PREFIX "fnv1a64:"
#define XXH3_PREFIX "xxh3-64:"

void job_hash_init(JobHash *h, JobHashKind kind) {
    memset(h, 0, sizeof *h);
    h->kind = kind;
    h->fnv = FNV1A_INIT;
    if (kind == JOB_HASH_XXH3) {
        h->xxh = XXH3_createState();
        if (!h->xxh || XXH3_64bits_reset(h->xxh) != XXH_OK) sg_fatal("memory", "cannot start an XXH3 hash");
    }
}

void job_hash_update(JobHash *h, const void *data, size_t n) {
    if (h->kind == JOB_HASH_FNV1A) h->fnv = fnv1a(h->fnv, data, n);
    else if (n && XXH3_64bits_update(h->xxh, data, n) != XXH_OK) sg_fatal("XXH3", "hash update failed");
}

void job_hash_final(JobHash *h, char out[64]) {
    if (h->kind == JOB_HASH_FNV1A) {
        snprintf(out, 64, FNV_PREFIX "%016llx", (unsigned long long)h->fnv);
    } else {
        snprintf(out, 64, XXH3_PREFIX "%016llx", (unsigned long long)XXH3_64bits_digest(h->xxh));
        XXH3_freeState(h->xxh);
    }
    h->xxh = NULL;
}

JobHashKind job_hash_kind_of(const char *recorded) {
    return strncmp(recorded, FNV_PREFIX, strlen(FNV_PREFIX)) == 0 ? JOB_HASH_FNV1A : JOB_HASH_XXH3;
}
