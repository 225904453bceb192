/* schedule.h: work units, their order, and the dynamic queue that hands them out.
 *
 * A unit is (block of contexts, group of sites). Blocks are whole forward batches (B contexts,
 * fixed by T), at most 128 of them; site groups split the SAE sites only when there are too
 * few blocks to keep the ranks busy. The layout is chosen when the file is created and stored
 * in it, so a resumed run (with any number of ranks) uses the same units. Units only decide
 * who computes what: every number depends on the batch composition alone, which never
 * changes, so results are identical for any layout and rank count.
 *
 * The queue lives on rank 0, which works too: a rank that finishes a unit asks rank 0 for the
 * next one with a two-sided message, so a slow node does not hold the others. Rank 0 answers
 * between its own GEMMs. (Until issue 27 it was a counter in an MPI window, read with
 * passive-target MPI_Fetch_and_op: across nodes with Debian's Open MPI no one-sided component
 * serves such a window, and where one did, a fetch waited until rank 0 next entered MPI.) */
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
    MPI_Comm comm;            /* a duplicate of the run's communicator */
    int rank, size;
    size_t n_pending;
    /* rank 0: the queue itself */
    size_t next;              /* next pending index to hand out */
    int stop;                 /* a stop was requested: hand out nothing more */
    int ranks_out;            /* other ranks told "no more units" or gone */
    int msg;                  /* the posted receive's message */
    MPI_Request request;      /* the posted receive (MPI_REQUEST_NULL: none) */
    /* other ranks */
    int left;                 /* heard "no more units" or stopped: asks no more */
    int started;              /* queue_start was called */
    /* this rank's figures (every rank) */
    double seconds_waiting;   /* in queue_next, for units it got */
    double longest_wait;      /* the longest of those waits */
    double last_wait;         /* the last call's */
} UnitQueue;

/* Collective: made before the result file exists. Needs only two-sided point-to-point messages,
 * which every MPI build carries between nodes. */
void queue_open(UnitQueue *q, MPI_Comm comm);
/* Every rank: the units are n_pending (indices into the caller's pending list). After it, every
 * rank calls queue_next until -1 or calls queue_request_stop, then queue_close; a queue never
 * started may be closed at once (a run that ends before its units). */
void queue_start(UnitQueue *q, size_t n_pending);
/* Next index into the pending list, or -1 when all are taken or a stop was requested. Rank 0
 * takes its own units locally; the others ask rank 0 and wait for its answer. */
long queue_next(UnitQueue *q);
/* Rank 0: answers the requests that have arrived (cheap when none has). Called between rank 0's
 * GEMMs (gemm_set_poll), so that a rank asking for work waits at most about one GEMM of rank 0,
 * not a whole unit: a request is served only while rank 0 is inside an MPI call, and across
 * nodes no MPI library progresses messages for a rank that is computing. No-op elsewhere. */
void queue_poll(UnitQueue *q);
/* Asks every rank to stop taking units. */
void queue_request_stop(UnitQueue *q);
/* Collective. Rank 0 answers the remaining requests until every rank has finished. */
void queue_close(UnitQueue *q);

#endif
