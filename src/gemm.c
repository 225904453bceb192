/* gemm.c: BLIS sgemm wrappers (see gemm.h). */
#include "gemm.h"

#include <blis.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void gemm_select_kernels(void) {
    if (getenv("BLIS_ARCH_TYPE")) return; /* the user's choice */
#if defined(__x86_64__) && defined(BLIS_CONFIG_SKX)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")) {
        char id[16]; /* BLIS 0.9 reads the arch_t number of the configuration */
        snprintf(id, sizeof id, "%d", (int)BLIS_ARCH_SKX);
        setenv("BLIS_ARCH_TYPE", id, 0);
    }
#endif
}

const char *gemm_kernels(void) { return bli_arch_string(bli_arch_query_id()); }

const char *gemm_kernels_warning(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (bli_arch_query_id() == BLIS_ARCH_GENERIC && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return "BLIS runs its portable 'generic' kernels on this CPU (it does not recognise it), several times "
               "slower than its AVX2 kernels: set BLIS_ARCH_TYPE to the number of BLIS's 'haswell' configuration "
               "(3 in BLIS 0.9) in the job's environment";
#endif
    return "";
}

void gemm_set_threads(int n) { bli_thread_set_num_threads(n > 0 ? n : 1); }
/* BLIS answers -1 until a count is set (or BLIS_NUM_THREADS is): the callers use this as an
 * OpenMP team size, so that means one thread */
int gemm_get_threads(void) {
    dim_t n = bli_thread_get_num_threads();
    return n > 0 ? (int)n : 1;
}

static void (*g_poll)(void *);
static void *g_poll_ctx;
static pthread_t g_poll_thread;

void gemm_set_poll(void (*fn)(void *), void *ctx) {
    g_poll = fn, g_poll_ctx = ctx;
    g_poll_thread = pthread_self();
}

void gemm_strided(size_t M, size_t N, size_t K, float alpha, const float *A, ptrdiff_t rsa, ptrdiff_t csa,
                  const float *B, ptrdiff_t rsb, ptrdiff_t csb, float beta, float *C, ptrdiff_t rsc, ptrdiff_t csc) {
    /* only on the thread that set it (MPI is called from the main thread alone) */
    if (g_poll && pthread_equal(pthread_self(), g_poll_thread)) g_poll(g_poll_ctx);
    if (M == 0 || N == 0) return;
    float a = alpha, b = beta;
    bli_sgemm(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, (dim_t)M, (dim_t)N, (dim_t)K, &a, (float *)A, (inc_t)rsa,
              (inc_t)csa, (float *)B, (inc_t)rsb, (inc_t)csb, &b, C, (inc_t)rsc, (inc_t)csc);
}

void gemm_strided_serial(size_t M, size_t N, size_t K, float alpha, const float *A, ptrdiff_t rsa, ptrdiff_t csa,
                         const float *B, ptrdiff_t rsb, ptrdiff_t csb, float beta, float *C, ptrdiff_t rsc,
                         ptrdiff_t csc) {
    if (M == 0 || N == 0) return;
    float a = alpha, b = beta;
    rntm_t one;
    bli_rntm_init(&one);
    bli_rntm_set_num_threads(1, &one);
    bli_sgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, (dim_t)M, (dim_t)N, (dim_t)K, &a, (float *)A, (inc_t)rsa,
                 (inc_t)csa, (float *)B, (inc_t)rsb, (inc_t)csb, &b, C, (inc_t)rsc, (inc_t)csc, NULL, &one);
}

void gemm_linear(float *out, const float *x, const float *w, const float *bias, size_t M, size_t K, size_t N,
                 int w_out_in) {
    float beta = 0.0f;
    if (bias) {
        /* on the team BLIS runs on (its threads would spin meanwhile) */
        const long rows = (long)M;
#pragma omp parallel for num_threads(gemm_get_threads()) schedule(static)
        for (long i = 0; i < rows; i++) memcpy(out + (size_t)i * N, bias, N * sizeof(float));
        beta = 1.0f;
    }
    /* w (K,N), or w (N,K) read as its transpose: row stride 1, column stride K */
    if (w_out_in) gemm_strided(M, N, K, 1.0f, x, (ptrdiff_t)K, 1, w, 1, (ptrdiff_t)K, beta, out, (ptrdiff_t)N, 1);
    else gemm_strided(M, N, K, 1.0f, x, (ptrdiff_t)K, 1, w, (ptrdiff_t)N, 1, beta, out, (ptrdiff_t)N, 1);
}

void gemm_xw_bias(float *out, const float *x, const float *w, const float *bias, size_t M, size_t K, size_t N) {
    gemm_linear(out, x, w, bias, M, K, N, 0);
}

void gemm_xwt(float *out, const float *x, const float *w, size_t M, size_t K, size_t N) {
    /* w (N,K) read as its transpose (K,N): row stride 1, column stride K */
    gemm_strided(M, N, K, 1.0f, x, (ptrdiff_t)K, 1, w, 1, (ptrdiff_t)K, 0.0f, out, (ptrdiff_t)N, 1);
}

void gemm_d_xtx(double *out, const double *X, size_t m, size_t d) {
    double one = 1.0, zero = 0.0;
    if (m == 0) {
        memset(out, 0, d * d * sizeof(double));
        return;
    }
    /* A = X^T (d,m): row stride 1, column stride d */
    bli_dgemm(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, (dim_t)d, (dim_t)d, (dim_t)m, &one, (double *)X, 1, (inc_t)d,
              (double *)X, (inc_t)d, 1, &zero, out, (inc_t)d, 1);
}
