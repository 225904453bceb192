/* gemm.c: BLIS sgemm wrappers (see gemm.h). */
#include "gemm.h"

#include <blis.h>
#include <string.h>

void gemm_set_threads(int n) { bli_thread_set_num_threads(n > 0 ? n : 1); }
int gemm_get_threads(void) { return (int)bli_thread_get_num_threads(); }

void gemm_strided(size_t M, size_t N, size_t K, float alpha, const float *A, ptrdiff_t rsa, ptrdiff_t csa,
                  const float *B, ptrdiff_t rsb, ptrdiff_t csb, float beta, float *C, ptrdiff_t rsc, ptrdiff_t csc) {
    if (M == 0 || N == 0) return;
    float a = alpha, b = beta;
    bli_sgemm(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, (dim_t)M, (dim_t)N, (dim_t)K, &a, (float *)A, (inc_t)rsa,
              (inc_t)csa, (float *)B, (inc_t)rsb, (inc_t)csb, &b, C, (inc_t)rsc, (inc_t)csc);
}

void gemm_xw_bias(float *out, const float *x, const float *w, const float *bias, size_t M, size_t K, size_t N) {
    float beta = 0.0f;
    if (bias) {
        for (size_t i = 0; i < M; i++) memcpy(out + i * N, bias, N * sizeof(float));
        beta = 1.0f;
    }
    gemm_strided(M, N, K, 1.0f, x, (ptrdiff_t)K, 1, w, (ptrdiff_t)N, 1, beta, out, (ptrdiff_t)N, 1);
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
