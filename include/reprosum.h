/* reprosum.h: order-independent (reproducible) sums.
 *
 * Values are rounded to fixed point (2^-40 resolution) and added as 128-bit integers. Integer
 * addition is associative, so a total is bit-identical whatever the number of ranks, the order
 * units finish in, or how a resumed run splits the work. Used for every aggregate saegap
 * writes (means, covariances, explained variance, mean KL). Resolution 9e-13 absolute per
 * term, range +-2^86.
 */
#ifndef SAEGAP_REPROSUM_H
#define SAEGAP_REPROSUM_H

#include <mpi.h>
#include <stddef.h>

typedef __int128 ReproSum;

void repro_add(ReproSum *acc, double v);
double repro_value(ReproSum acc);

/* Collective: acc[0..n) summed over comm, result on every rank (exact). */
void repro_allreduce(ReproSum *acc, size_t n, MPI_Comm comm);

#endif
