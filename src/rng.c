/* rng.c: Philox4x32-10 normal draws (see rng.h). */
#include "rng.h"

#include <Random123/philox.h>
#include <math.h>

void rng_normal(double *out, size_t n, const RngStream *s) {
    philox4x32_key_t key = {{(uint32_t)s->seed, (uint32_t)(s->seed >> 32)}};
    for (size_t j = 0; 2 * j < n; j++) {
        philox4x32_ctr_t ctr = {{(uint32_t)j, s->context, (s->position & 0xffffu) | (s->sample << 16),
                                 (s->site_id & 0xffffffu) | (s->intervention << 24)}};
        philox4x32_ctr_t r = philox4x32(ctr, key);
        uint64_t a = ((uint64_t)r.v[0] << 32) | r.v[1], b = ((uint64_t)r.v[2] << 32) | r.v[3];
        double u1 = ((double)(a >> 11) + 0.5) * 0x1p-53, u2 = ((double)(b >> 11) + 0.5) * 0x1p-53;
        double rad = sqrt(-2.0 * log(u1)), th = 6.283185307179586 * u2;
        out[2 * j] = rad * cos(th);
        if (2 * j + 1 < n) out[2 * j + 1] = rad * sin(th);
    }
}
