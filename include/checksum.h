/* checksum.h: the checksums saegap records. Not cryptographic: they detect damage and tell
 * one job's inputs from another's.
 *
 * - FNV-1a 64 over every block of output saegap writes (unit rows, the final checksum; what
 *   saegap verify recomputes). These blocks are small next to the inputs.
 * - The job identity (what --resume compares: model, tokens, SAEs) hashes gigabytes of weights
 *   on every start. Files record it with XXH3-64 ("xxh3-64:..."; xxHash runs at memory speed,
 *   where byte-serial FNV-1a took about 1 s per GB on every rank). Files written before this
 *   hold "fnv1a64:..."; --resume of such a file recomputes the identity with FNV-1a. */
#ifndef SAEGAP_CHECKSUM_H
#define SAEGAP_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>

#define FNV1A_INIT 1469598103934665603ull

uint64_t fnv1a(uint64_t h, const void *data, size_t n);

typedef enum { JOB_HASH_XXH3, JOB_HASH_FNV1A } JobHashKind;

/* A streaming hash of the job's inputs, of either kind. */
typedef struct {
    JobHashKind kind;
    uint64_t fnv;
    void *xxh; /* XXH3_state_t */
} JobHash;

void job_hash_init(JobHash *h, JobHashKind kind);
void job_hash_update(JobHash *h, const void *data, size_t n);
/* "xxh3-64:%016llx" or "fnv1a64:%016llx" into out (64 bytes); frees the state. */
void job_hash_final(JobHash *h, char out[64]);
/* The kind a recorded identity string was made with (an unknown prefix: XXH3). */
JobHashKind job_hash_kind_of(const char *recorded);

#endif
