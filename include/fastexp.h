/* fastexp.h: an expf that vectorises, with the same bits on every vector width.
 *
 * glibc's expf is a scalar call: in the GELU, the attention softmax and the KL/CE reduction over
 * the vocabulary it was the largest cost outside BLIS once BLIS ran its AVX-512 kernels (perf:
 * the GELU alone took 2.5x the time of its c_fc GEMM). libmvec's vector expf needs -ffast-math
 * and its bits depend on the instruction set chosen at run time. This one is plain C: a
 * Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, then a degree-7 Taylor polynomial in
 * Horner form, with no fused multiply-add (ISO C mode: -ffp-contract=off), so a loop computes
 * the same value whether the compiler makes it scalar, SSE2, AVX2 or AVX-512.
 * Accuracy: within 2 ulp of exp over [-87.3, 88] (tests/c/test_fastexp.c: 1.21 ulp at worst over
 * 2^24 points against double exp; not always monotone at the ulp level); 0 below -87.3 (where
 * expf is subnormal or 0), exp(88) above 88. */
#ifndef SAEGAP_FASTEXP_H
#define SAEGAP_FASTEXP_H

#include <stdint.h>
#include <string.h>

/* For the functions whose loops call sg_expf: compiled for AVX-512, AVX2 and plain x86-64, the
 * version chosen when the program starts (GCC's target_clones); the values are the same in each. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define SG_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default"), noinline))
#else
#define SG_VECTOR_CLONES __attribute__((noinline))
#endif

static inline float sg_expf(float x) {
    const float lo = -87.3f, hi = 88.0f;
    const float xc = x < lo ? lo : (x > hi ? hi : x);
    /* n = round(x / ln2): adding 1.5 * 2^23 rounds to an integer in the default rounding mode */
    const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    /* ln2 split in two: n * ln2_hi is exact for |n| < 256 (ln2_hi has 16 significant bits) */
    float r = xc - n * 0.693145751953125f;
    r = r - n * 1.42860676533018704e-6f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int32_t e = ((int32_t)n + 127) << 23; /* 2^n, n in [-126, 127] */
    float scale;
    memcpy(&scale, &e, sizeof scale);
    return x < lo ? 0.0f : p * scale;
}

/* tanh with the same discipline, for Gemma-2's soft-caps (cap * tanh(x / cap) on every attention
 * score and every logit: glibc's scalar tanhf was 11% of a Gemma-2 forward). |x| < 0.55: the odd
 * Taylor series to x^15 (the next term is below 5e-8 relative there); beyond it
 * (1 - e) / (1 + e) with e = exp(-2|x|) <= 0.33, so no cancellation. Both are computed and one
 * is selected, with no clamp GCC could thread jumps through, so a loop vectorises (AVX2
 * included). Within 3 ulp of tanh (tests/c/test_fastexp.c); odd; +-1 far out. */
static inline float sg_tanhf(float x) {
    const float a = x < 0 ? -x : x;
    const float a2 = a * a;
    float p = -929569.0f / 638512875.0f;
    p = p * a2 + 21844.0f / 6081075.0f;
    p = p * a2 + -1382.0f / 155925.0f;
    p = p * a2 + 62.0f / 2835.0f;
    p = p * a2 + -17.0f / 315.0f;
    p = p * a2 + 2.0f / 15.0f;
    p = p * a2 + -1.0f / 3.0f;
    const float small = a + a * a2 * p;
    const float e = sg_expf(-2.0f * a); /* <= exp(-1.1) where it is used; 0 far out: tanh = 1 */
    const float large = (1.0f - e) / (1.0f + e);
    const float t = a < 0.55f ? small : large;
    return x < 0 ? -t : t;
}

#endif
