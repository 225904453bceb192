/* gemm.h: the only door to BLIS. Every matmul of the forward pass and the SAE goes
 * through here, row-major float32, so the BLAS can be swapped or instrumented in one place. */
#ifndef SAEGAP_GEMM_H
#define SAEGAP_GEMM_H

#include <stddef.h>

/* Chooses BLIS's kernels before BLIS starts (call first in main, before any thread exists).
 * BLIS 0.9.0 (Debian 12) does not know CPUs newer than its release: on an AMD Zen 4 it falls
 * back to its portable 'generic' kernels, measured at 32 GFLOP/s per core there against 150
 * for its 'skx' AVX-512 kernels, which such a CPU runs. On a CPU with AVX-512 F/DQ/BW/VL this
 * selects 'skx' (what BLIS picks itself on the Intel CPUs it knows) through BLIS_ARCH_TYPE,
 * unless the user set BLIS_ARCH_TYPE. */
void gemm_select_kernels(void);
/* The kernels BLIS runs ("skx", "haswell", "zen3", "generic", ...); a note for the log when
 * they are BLIS's portable fallback on a CPU with AVX2 and FMA ("" otherwise). */
const char *gemm_kernels(void);
const char *gemm_kernels_warning(void);

/* Threads BLIS may use in this process (ranks x threads should not exceed the cores). */
void gemm_set_threads(int n);
int gemm_get_threads(void);

/* fn(ctx) runs before every GEMM that the calling thread starts (never on another thread), until
 * set to NULL: rank 0 answers the other ranks' requests for work there while it computes
 * (schedule.h), at most one GEMM's time after they ask. */
void gemm_set_poll(void (*fn)(void *), void *ctx);

/* out (M,N) = x (M,K) @ w (K,N) + bias (N); bias may be NULL. */
void gemm_xw_bias(float *out, const float *x, const float *w, const float *bias, size_t M, size_t K, size_t N);

/* out (M,N) = x (M,K) @ W + bias (N) for a layer's W in either layout: w (K,N) (GPT-2's
 * Conv1D) or, with w_out_in, w stored (N,K) (PyTorch's Linear), read through its strides. */
void gemm_linear(float *out, const float *x, const float *w, const float *bias, size_t M, size_t K, size_t N,
                 int w_out_in);

/* out (M,N) = x (M,K) @ w^T with w stored (N,K): the tied unembedding x @ wte^T. */
void gemm_xwt(float *out, const float *x, const float *w, size_t M, size_t K, size_t N);

/* General strided form: C = alpha * A @ B + beta * C, with A (M,K), B (K,N), C (M,N), each
 * given by a row stride and a column stride (used for per-head attention on views). */
void gemm_strided(size_t M, size_t N, size_t K, float alpha, const float *A, ptrdiff_t rsa, ptrdiff_t csa,
                  const float *B, ptrdiff_t rsb, ptrdiff_t csb, float beta, float *C, ptrdiff_t rsc, ptrdiff_t csc);

/* gemm_strided on the calling thread only: for many small GEMMs run side by side on the rank's
 * threads (per-head attention). BLIS never splits the K loop, so the values are the same as
 * with any thread count. */
void gemm_strided_serial(size_t M, size_t N, size_t K, float alpha, const float *A, ptrdiff_t rsa, ptrdiff_t csa,
                         const float *B, ptrdiff_t rsb, ptrdiff_t csb, float beta, float *C, ptrdiff_t rsc,
                         ptrdiff_t csc);

/* out (d,d) = X^T X for X (m,d) row-major, double: covariance partial sums. */
void gemm_d_xtx(double *out, const double *X, size_t m, size_t d);

#endif
