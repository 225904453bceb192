/* sitestats.c: mean / covariance / norm statistics of a site (see sitestats.h). */
#include "sitestats.h"

#include "error.h"
#include "gemm.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* LAPACK (Debian's liblapack3 on BLIS): Cholesky factorisation. */
extern void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info);

void sitestats_init(SiteStats *s, size_t d, int want_cov) {
    memset(s, 0, sizeof *s);
    s->d = d;
    s->want_cov = want_cov;
    s->sum = sg_xcalloc(d, sizeof *s->sum);
    if (want_cov) s->xtx = sg_xcalloc(d * d, sizeof *s->xtx);
}

void sitestats_free(SiteStats *s) {
    free(s->sum);
    free(s->xtx);
    free(s->scratch);
    memset(s, 0, sizeof *s);
}

void sitestats_add(SiteStats *s, const float *x, const unsigned char *mask, size_t N) {
    size_t d = s->d;
    if (s->scratch_rows < N) {
        free(s->scratch);
        s->scratch = sg_xcalloc(N * d + d * d, sizeof(double));
        s->scratch_rows = N;
    }
    double *X = s->scratch, *XtX = s->scratch + N * d;
    size_t m = 0;
    for (size_t r = 0; r < N; r++) {
        if (!mask[r]) continue;
        double nn = 0;
        for (size_t i = 0; i < d; i++) {
            X[m * d + i] = x[r * d + i];
            nn += (double)x[r * d + i] * x[r * d + i];
        }
        repro_add_checked(&s->norm_sum, sqrt(nn));
        m++;
    }
    s->count += (int64_t)m;
    for (size_t i = 0; i < d; i++) {
        double acc = 0;
        for (size_t r = 0; r < m; r++) acc += X[r * d + i];
        repro_add_checked(&s->sum[i], acc);
    }
    if (s->want_cov && m) {
        gemm_d_xtx(XtX, X, m, d);
        for (size_t i = 0; i < d * d; i++) repro_add_checked(&s->xtx[i], XtX[i]);
    }
}

void sitestats_reduce(SiteStats *s, MPI_Comm comm) {
    int64_t c = s->count;
    SG_MPI(MPI_Allreduce(MPI_IN_PLACE, &c, 1, MPI_INT64_T, MPI_SUM, comm), "reducing token counts failed");
    s->count = c;
    repro_allreduce(s->sum, s->d, comm);
    repro_allreduce(&s->norm_sum, 1, comm);
    if (s->want_cov) repro_allreduce(s->xtx, s->d * s->d, comm);
}

int sitestats_finish(const SiteStats *s, const char *site, double *mean, double *chol, double *mean_norm) {
    size_t d = s->d;
    if (s->count == 0) return sg_errorf(site, "no measured tokens for the statistics pass");
    /* an overflowed sum (poisoned, kept by the reduction) is named, never used */
    if (repro_overflowed(s->norm_sum) || repro_first_overflow(s->sum, d) < d)
        return sg_errorf(site, "the statistics pass's sum of x (mean of the activations, for mean_ablation, cov_random "
                               "and the norm scaling factor) overflows: activations beyond about 1e25 (check the model's "
                               "and the SAE's weights)");
    if (s->want_cov && repro_first_overflow(s->xtx, d * d) < d * d)
        return sg_errorf(site, "the statistics pass's sum of x x^T (covariance, for cov_random) overflows: activations "
                               "beyond about 1e12 (check the model's and the SAE's weights)");
    double N = (double)s->count;
    for (size_t i = 0; i < d; i++) mean[i] = repro_value(s->sum[i]) / N;
    if (mean_norm) *mean_norm = repro_value(s->norm_sum) / N;
    if (!chol) return 0;
    for (size_t i = 0; i < d; i++)
        for (size_t j = 0; j < d; j++) {
            double cov = repro_value(s->xtx[i * d + j]) / N - mean[i] * mean[j];
            chol[i * d + j] = cov + (i == j ? 0.01 : 0.0);
        }
    /* Row-major A is its own transpose; LAPACK's column-major upper factor U (A = U^T U) read
     * row-major is the lower L with L L^T = A. */
    int n = (int)d, info = 0;
    dpotrf_("U", &n, chol, &n, &info);
    if (info != 0) return sg_errorf(site, "Cholesky factorisation of the covariance + 0.01 I failed (LAPACK info %d)", info);
    for (size_t i = 0; i < d; i++)
        for (size_t j = i + 1; j < d; j++) chol[i * d + j] = 0.0;
    return 0;
}
