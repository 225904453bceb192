/* schedule.h: work units, their order, and the dynamic queue that hands them out.
 *
 * A unit is (block of contexts, group of sites). Blocks are whole forward batches (B contexts,
 * fixed by T), at most 128 of them; site groups split the SAE sites only when there are too
 * few blocks to keep the ranks busy. The layout is chosen when the file is created and stored
 * in it, so a resumed run (with any number of ranks) uses the same units. Units only decide
 * who computes what: every number depends on the batch composition alone, which never
 * changes, so results are identical for any layout and rank count.
 *
 * The queue is a counter in an MPI window on rank 0 (passive-target MPI_Fetch_and_op): a rank
 * that finishes takes the next pending unit at once, so a slow node does not hold the others,
 * and rank 0 works too. A second word of the window is the stop request (SIGTERM). */
#ifndef SAEGAP_SCHEDULE_H
#define SAEGAP_SCHEDULE_H

#include <mpi.h>
#include <stddef.h>

/* Contexts per forward batch of `saegap run`: about 256 tokens, 1 to 8 contexts, fixed by the
 * context length T alone. BLIS may pick other kernels for other matrix heights, so a batch
 * that never depends on the rank count is what keeps results identical for any rank count.
 * Stored in the result file (unit_batch_contexts) and required equal on --resume. */
size_t schedule_batch_contexts(size_t T);
/* The same rule for `saegap dump`, whose batches are about 512 tokens: its own constant, kept
 * so that its files do not change. */
size_t schedule_dump_batch_contexts(size_t T);

/* Static split of n items, in batches of B, over `size` ranks: rank `rank` takes the items
 * [*lo, *hi), whole batches in a contiguous run (only the last batch of all may be short).
 * For passes whose results do not depend on who computes what (dump, the statistics pass). */
void schedule_static_range(size_t n, size_t B, int rank, int size, size_t *lo, size_t *hi);

typedef struct {
    size_t n_contexts, B;          /* contexts, contexts per forward batch */
    size_t batches_per_block, n_blocks;
    size_t n_sites, n_groups, n_units;
} UnitLayout;

/* A new layout for n contexts in batches of B, K sites, on `ranks` ranks. */
void schedule_layout(UnitLayout *u, size_t n, size_t B, size_t K, int ranks);
/* Rebuilds a layout from the values stored in a result file (--resume, verify). */
void schedule_layout_from(UnitLayout *u, size_t n, size_t B, size_t K, size_t batches_per_block, size_t n_groups);

void unit_parts(const UnitLayout *u, size_t unit, size_t *block, size_t *group); /* block-major */
void block_contexts(const UnitLayout *u, size_t block, size_t *c0, size_t *c1);
void group_sites(const UnitLayout *u, size_t group, size_t *s0, size_t *s1);

typedef struct {
    MPI_Win win;
    int *base;      /* rank 0: {next pending index, stop request} */
    size_t n_pending;
} UnitQueue;

/* Collective. n_pending units (indices into the caller's pending list). */
void queue_open(UnitQueue *q, size_t n_pending, MPI_Comm comm);
/* Next index into the pending list, or -1 when all are taken or a stop was requested. */
long queue_next(UnitQueue *q);
/* Asks every rank to stop taking units. */
void queue_request_stop(UnitQueue *q);
void queue_close(UnitQueue *q); /* collective */

#endif
