/* correlate.h: layer-by-layer correlation matrices of the per-token KL gap, computed with
 * ScaLAPACK on the distributed gap matrix. The only module that touches BLACS/ScaLAPACK.
 *
 * Gap matrix G (M tokens x K sites): G[t,k] = KL_iv - KL_eps_random (eps_random averaged over
 * its samples) at site k, token t = context * Wk + position. Tokens finite at every site are
 * used (the measured tokens are the same at every site). Distribution: block-cyclic rows on a
 * P x 1 BLACS grid of the run's communicator, blocks of whole contexts, each rank reading its
 * blocks from the result file. Columns are standardised with reproducible sums, then
 * quantised to a 2^-q grid chosen so that every product and every partial sum of Z^T Z is
 * exactly representable in double: pdgemm's result then does not depend on the process grid
 * or the BLAS kernel, and the matrices are bit-identical for any number of ranks.
 * Pearson r = C_ij / sqrt(C_ii C_jj) with C = Zq^T Zq (pdgemm); Spearman is the same on
 * average ranks (ties averaged), each column ranked by one owner rank. */
#ifndef SAEGAP_CORRELATE_H
#define SAEGAP_CORRELATE_H

#include "h5out.h"

#include <mpi.h>
#include <stddef.h>

typedef struct {
    size_t n, Wk;          /* contexts, recorded positions per context */
    size_t S_iv, S_eps;    /* samples axis of the iv and eps_random datasets (1 = none) */
    size_t K;              /* sites */
    const int *ds_iv;      /* (K) dataset handles of kl/<iv> */
    const int *ds_eps;     /* (K) dataset handles of kl/eps_random */
} CorrInput;

/* Collective. pearson and spearman (K, K) row-major are filled on rank 0 (NaN when fewer than
 * two tokens are usable). Returns the number of tokens used. */
long correlate_gap(double *pearson, double *spearman, H5Out *h, const CorrInput *in, MPI_Comm comm);

#endif
