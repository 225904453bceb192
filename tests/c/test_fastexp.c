/* sg_expf and sg_tanhf (fastexp.h) against double exp and tanh: error in ulp over their whole
 * ranges, their edges, and the same bits from a scalar loop and from loops vectorised for SSE2, AVX2 and AVX-512 (a run's
 * values must not depend on which vector width the machine picked). Named cases (check.h); exits non-zero on failure. */
#include "fastexp.h"

#include "check.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* distance in units of the last place of the float nearest to the exact value */
static double ulp_error(float got, double want) {
    float w = (float)want;
    double ulp = (double)nextafterf(w, INFINITY) - (double)w;
    return fabs((double)got - want) / ulp;
}

/* The same loop over FN four ways: scalar (vectoriser off), and vectorised for SSE2, AVX2 and
 * AVX-512 (a run's values must not depend on the vector width the machine picked). */
typedef void (*Loop)(float *y, const float *x, size_t n);
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define WIDE_LOOPS(NAME, FN)                                                                                 \
    __attribute__((target("avx2"), noinline)) static void NAME##_avx2(float *y, const float *x, size_t n) {  \
        _Pragma("omp simd") for (size_t i = 0; i < n; i++) y[i] = FN(x[i]);                                  \
    }                                                                                                          \
    __attribute__((target("avx512f"), noinline)) static void NAME##_avx512(float *y, const float *x, size_t n) { \
        _Pragma("omp simd") for (size_t i = 0; i < n; i++) y[i] = FN(x[i]);                                  \
    }
#define WIDE(NAME) NAME##_avx2, NAME##_avx512
#else
#define WIDE_LOOPS(NAME, FN)
#define WIDE(NAME) NULL, NULL
#endif
#define LOOPS(NAME, FN)                                                                                       \
    __attribute__((optimize("no-tree-vectorize"), noinline)) static void NAME##_scalar(float *y, const float *x, \
                                                                                        size_t n) {             \
        for (size_t i = 0; i < n; i++) y[i] = FN(x[i]);                                                        \
    }                                                                                                          \
    __attribute__((noinline)) static void NAME##_sse2(float *y, const float *x, size_t n) {                    \
        _Pragma("omp simd") for (size_t i = 0; i < n; i++) y[i] = FN(x[i]);                                  \
    }                                                                                                          \
    WIDE_LOOPS(NAME, FN)                                                                                       \
    static const Loop NAME##_loops[4] = {NAME##_scalar, NAME##_sse2, WIDE(NAME)};

LOOPS(exp, sg_expf)
LOOPS(tanh, sg_tanhf)

/* The vectorised loops give y's bits (y: the scalar loop's values), on every width this CPU has. */
static void check_same_bits(const char *what, const Loop loops[4], const float *y, const float *x, float *z, size_t n) {
    static const char *const NAMES[4] = {"scalar", "SSE2", "AVX2", "AVX-512"};
    for (int k = 1; k < 4; k++) {
        if (!loops[k]) continue;
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
        /* __builtin_cpu_supports takes a literal */
        if ((k == 2 && !__builtin_cpu_supports("avx2")) || (k == 3 && !__builtin_cpu_supports("avx512f"))) continue;
#endif
        memset(z, 0, n * sizeof *z);
        loops[k](z, x, n);
        CHECK(!memcmp(y, z, n * sizeof *y), "%s: the %s loop differs from the scalar one", what, NAMES[k]);
    }
}

/* sg_tanhf over [-12, 12] (every float from 1e-6 up is covered on a log grid too), its oddness,
 * and the same bits scalar and vectorised. */
static void case_tanhf(void) {
    const size_t n = (size_t)1 << 22;
    float *x = malloc(2 * n * sizeof *x), *y = malloc(2 * n * sizeof *y), *z = malloc(2 * n * sizeof *z);
    if (!x || !y || !z) exit(2);
    for (size_t i = 0; i < n; i++) x[i] = -12.0f + 24.0f * (float)((double)i / (double)(n - 1));
    for (size_t i = 0; i < n; i++) x[n + i] = (float)(1e-6 * pow(1.2e7, (double)i / (double)(n - 1))); /* 1e-6 .. 12 */
    x[0] = 0.0f, x[1] = -0.0f, x[2] = 0.55f, x[3] = nextafterf(0.55f, 0.0f), x[4] = 9.5f, x[5] = 1e30f, x[6] = -1e30f;
    tanh_loops[0](y, x, 2 * n);
    double worst = 0;
    float at = 0;
    for (size_t i = 0; i < 2 * n; i++) {
        double e = ulp_error(y[i], tanh((double)x[i]));
        if (e > worst) worst = e, at = x[i];
        CHECK(sg_tanhf(-x[i]) == -y[i], "sg_tanhf is not odd at x = %.9g", x[i]);
    }
    printf("sg_tanhf: worst error %.2f ulp at x = %.9g over %zu points; odd; same bits scalar and vectorised\n", worst, at, 2 * n);
    CHECK(worst <= 3.0, "sg_tanhf is %.2f ulp off at x = %.9g (limit 3)", worst, at);
    CHECK(sg_tanhf(0.0f) == 0.0f && sg_tanhf(1e30f) == 1.0f && sg_tanhf(-1e30f) == -1.0f, "sg_tanhf edges");
    check_same_bits("sg_tanhf", tanh_loops, y, x, z, 2 * n);
    free(x), free(y), free(z);
}

/* sg_expf over [-87.3, 88] (2^24 points and a few exact and edge points): within 2 ulp of double
 * exp, and the same bits scalar and vectorised. */
static void case_expf_range(void) {
    const size_t n = (size_t)1 << 24;
    const float lo = -87.3f, hi = 88.0f;
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y), *z = malloc(n * sizeof *z);
    if (!x || !y || !z) exit(2);
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * (float)((double)i / (double)(n - 1));
    /* a few exact and edge points */
    x[0] = lo, x[1] = 0.0f, x[2] = -0.0f, x[3] = 1.0f, x[4] = -1.0f, x[5] = 0.34657359f, x[6] = -0.34657359f;
    x[7] = 88.0f, x[8] = 1e-8f, x[9] = -1e-8f;
    exp_loops[0](y, x, n);
    double worst = 0;
    float at = 0;
    for (size_t i = 0; i < n; i++) {
        double e = ulp_error(y[i], exp((double)x[i]));
        if (e > worst) worst = e, at = x[i];
    }
    printf("sg_expf: worst error %.2f ulp at x = %.9g over %zu points in [%g, %g]; same bits scalar and vectorised\n", worst, at, n, lo, hi);
    CHECK(worst <= 2.0, "sg_expf is %.2f ulp off at x = %.9g (limit 2)", worst, at);
    check_same_bits("sg_expf", exp_loops, y, x, z, n);
    free(x), free(y), free(z);
}

/* sg_expf's edges: exp(0) = 1, 0 below the range, exp(88) above it */
static void case_expf_edges(void) {
    CHECK(sg_expf(0.0f) == 1.0f, "sg_expf(0) = %.9g", sg_expf(0.0f));
    CHECK(sg_expf(-100.0f) == 0.0f && sg_expf(-1e30f) == 0.0f, "below the range: not 0");
    CHECK(sg_expf(1e30f) == sg_expf(88.0f) && isfinite(sg_expf(1e30f)), "above the range: not exp(88)");
}

int main(int argc, char **argv) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
    __builtin_cpu_init();
#endif
    static const CheckCase CASES[] = {CASE(expf_range), CASE(expf_edges), CASE(tanhf)};
    return check_run_cases("test_fastexp", CASES, CHECK_COUNT(CASES), argc, argv);
}
