/* rng.h: counter-based normal draws (Philox4x32-10 from Random123).
 *
 * A draw is a pure function of (seed, site, intervention, context, position, sample, element):
 * no state, so a number never depends on how work is split across ranks, in which order units
 * run, or whether the run was resumed.
 *   key     = seed (64 bits)
 *   counter = { element pair index, context, position | sample << 16, site_id | intervention << 24 }
 * Each Philox call gives 128 bits = two 53-bit uniforms in (0,1) -> two normals (Box-Muller).
 */
#ifndef SAEGAP_RNG_H
#define SAEGAP_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t seed;
    uint32_t site_id;      /* < 2^24: the site's canonical index in the model */
    uint32_t intervention; /* < 256 */
    uint32_t context;      /* global context index */
    uint32_t position;     /* < 2^16 */
    uint32_t sample;       /* < 2^16 */
} RngStream;

/* out[0..n) ~ N(0, 1), elements [0, n) of the stream. */
void rng_normal(double *out, size_t n, const RngStream *s);

#endif
