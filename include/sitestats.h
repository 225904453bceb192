/* sitestats.h: the statistics pass: mean, covariance and mean norm of a site's activations
 * over the run's measured tokens (mean_ablation, cov_random, expected_average_only_in).
 * Partial sums per batch are formed in double (BLIS dgemm for X^T X) and accumulated as
 * reproducible fixed-point sums (reprosum.h), so the result is bit-identical for any number
 * of ranks and any order of batches. */
#ifndef SAEGAP_SITESTATS_H
#define SAEGAP_SITESTATS_H

#include "reprosum.h"

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    size_t d;
    int want_cov;
    int64_t count;      /* measured tokens */
    ReproSum *sum;      /* (d) */
    ReproSum *xtx;      /* (d*d) when want_cov */
    ReproSum norm_sum;  /* sum ||x|| */
    double *scratch;    /* (rows, d) + (d, d) */
    size_t scratch_rows;
} SiteStats;

void sitestats_init(SiteStats *s, size_t d, int want_cov);
void sitestats_free(SiteStats *s);

/* Adds the rows of x (N, d) with mask[r] != 0. */
void sitestats_add(SiteStats *s, const float *x, const unsigned char *mask, size_t N);

/* Collective: every rank ends with the totals. */
void sitestats_reduce(SiteStats *s, MPI_Comm comm);

/* mean (d); when chol is given, the lower Cholesky factor (d,d, row-major) of
 * Sigma + 0.01 I (Sigma with divisor N) from LAPACK dpotrf; mean_norm = E||x||.
 * 0, or -1 with a pending error (no measured tokens, factorisation failed). */
int sitestats_finish(const SiteStats *s, const char *site, double *mean, double *chol, double *mean_norm);

#endif
