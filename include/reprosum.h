/* reprosum.h: order-independent (reproducible) sums.
 *
 * Values are rounded to fixed point (2^-40 resolution) and added as 128-bit integers. Integer
 * addition is associative, so a total is bit-identical whatever the number of ranks, the order
 * units finish in, or how a resumed run splits the work. Used for every aggregate saegap
 * writes (means, covariances, explained variance, mean KL). Resolution 9e-13 absolute per
 * term; each term must satisfy |v| < 2^86 (REPRO_MAX_TERM, 7.7e25) and every partial sum must
 * stay inside the signed 128-bit range (|sum| < 2^87 in value).
 *
 * Overflow is never undefined behaviour. A term that is not finite or too large, or an addition
 * that would leave the range, turns the accumulator into REPRO_OVERFLOW, a poison value that
 * every later addition, merge and MPI reduction keeps: the caller checks the accumulator (or
 * the return value) where it can name what the sum is, and reports that. */
#ifndef SAEGAP_REPROSUM_H
#define SAEGAP_REPROSUM_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

typedef __int128 ReproSum;

#define REPRO_MAX_TERM 0x1p86 /* exclusive bound of |v| for one term */
/* INT128_MIN: never a valid sum (valid sums are kept inside (-2^127, 2^127)) */
#define REPRO_OVERFLOW ((ReproSum)((unsigned __int128)1 << 127))

/* acc += v. 0, or -1 when v is not finite, |v| >= REPRO_MAX_TERM, the sum would leave the
 * range, or acc was already REPRO_OVERFLOW; then *acc is REPRO_OVERFLOW. */
int repro_add_checked(ReproSum *acc, double v);

/* acc += v for two sums (e.g. totals of records read back). Same rules as repro_add_checked. */
int repro_merge(ReproSum *acc, ReproSum v);

/* 1 when acc is REPRO_OVERFLOW. */
int repro_overflowed(ReproSum acc);

/* Index of the first of acc[0..n) that is REPRO_OVERFLOW, or n when none is. */
size_t repro_first_overflow(const ReproSum *acc, size_t n);

/* The old interface, kept: acc += v, ending the run with sg_fatal (a generic message naming
 * the value, not the site or the metric) when repro_add_checked would fail. Prefer
 * repro_add_checked where the caller can name the site and the metric. */
void repro_add(ReproSum *acc, double v);

/* The value of a sum; NaN for REPRO_OVERFLOW. */
double repro_value(ReproSum acc);

/* The file form of n sums: pairs (low 64 bits, high 64 bits) as int64, 2n values. */
void repro_pack(int64_t *pairs, const ReproSum *acc, size_t n);
void repro_unpack(ReproSum *acc, const int64_t *pairs, size_t n);

/* Collective: acc[0..n) summed over comm, result on every rank (exact; REPRO_OVERFLOW is kept
 * and an overflowing addition gives it). Returns 0, or -1 on every rank alike when any result
 * is REPRO_OVERFLOW (repro_first_overflow says which). */
int repro_allreduce(ReproSum *acc, size_t n, MPI_Comm comm);

#endif
