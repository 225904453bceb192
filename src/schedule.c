/* schedule.c: batch size, static split, unit layout and the dynamic unit queue (see schedule.h). */
#include "schedule.h"

#include "error.h"

#include <string.h>

#define MAX_BLOCKS 128

static size_t batch_of(size_t T, size_t tokens) {
    size_t B = T >= tokens ? 1 : tokens / T;
    return B > 8 ? 8 : B;
}

size_t schedule_batch_contexts(size_t T) { return batch_of(T, 256); }
size_t schedule_dump_batch_contexts(size_t T) { return batch_of(T, 512); }

void schedule_static_range(size_t n, size_t B, int rank, int size, size_t *lo, size_t *hi) {
    size_t nb = (n + B - 1) / B;
    *lo = nb * (size_t)rank / (size_t)size * B;
    *hi = nb * (size_t)(rank + 1) / (size_t)size * B;
    if (*hi > n) *hi = n;
    if (*lo > n) *lo = n;
}

void schedule_layout_from(UnitLayout *u, size_t n, size_t B, size_t K, size_t bpb, size_t G) {
    memset(u, 0, sizeof *u);
    u->n_contexts = n, u->B = B, u->n_sites = K;
    size_t n_batches = (n + B - 1) / B;
    u->batches_per_block = bpb ? bpb : 1;
    u->n_blocks = (n_batches + u->batches_per_block - 1) / u->batches_per_block;
    u->n_groups = G < 1 ? 1 : G > K ? K : G;
    u->n_units = u->n_blocks * u->n_groups;
}

void schedule_layout(UnitLayout *u, size_t n, size_t B, size_t K, int ranks) {
    size_t n_batches = (n + B - 1) / B;
    size_t bpb = (n_batches + MAX_BLOCKS - 1) / MAX_BLOCKS;
    if (bpb == 0) bpb = 1; /* no contexts (callers refuse that): an empty layout, not a division by zero */
    size_t n_blocks = (n_batches + bpb - 1) / bpb;
    /* split sites only when blocks alone cannot give every rank two units */
    size_t want = 2 * (size_t)ranks, G = 1;
    if (n_blocks > 0 && n_blocks < want) G = (want + n_blocks - 1) / n_blocks;
    schedule_layout_from(u, n, B, K, bpb, G);
}

void unit_parts(const UnitLayout *u, size_t unit, size_t *block, size_t *group) {
    *block = unit / u->n_groups;
    *group = unit % u->n_groups;
}

void block_contexts(const UnitLayout *u, size_t block, size_t *c0, size_t *c1) {
    size_t per = u->batches_per_block * u->B;
    *c0 = block * per;
    *c1 = *c0 + per < u->n_contexts ? *c0 + per : u->n_contexts;
}

void group_sites(const UnitLayout *u, size_t g, size_t *s0, size_t *s1) {
    *s0 = u->n_sites * g / u->n_groups;
    *s1 = u->n_sites * (g + 1) / u->n_groups;
}

void queue_open(UnitQueue *q, size_t n_pending, MPI_Comm comm) {
    int rank;
    SG_MPI(MPI_Comm_rank(comm, &rank), "MPI_Comm_rank failed");
    q->n_pending = n_pending;
    MPI_Aint bytes = rank == 0 ? 2 * (MPI_Aint)sizeof(int) : 0;
    SG_MPI(MPI_Win_allocate(bytes, sizeof(int), MPI_INFO_NULL, comm, &q->base, &q->win),
           "cannot create the unit queue window");
    if (rank == 0) q->base[0] = 0, q->base[1] = 0;
    SG_MPI(MPI_Barrier(comm), "barrier after creating the unit queue failed");
}

long queue_next(UnitQueue *q) {
    int one = 1, next = 0, stop = 0, dummy = 0;
    const char *what = "taking the next unit from rank 0 failed";
    SG_MPI(MPI_Win_lock(MPI_LOCK_SHARED, 0, 0, q->win), "%s", what);
    SG_MPI(MPI_Fetch_and_op(&dummy, &stop, MPI_INT, 0, 1, MPI_NO_OP, q->win), "%s", what);
    SG_MPI(MPI_Fetch_and_op(&one, &next, MPI_INT, 0, 0, MPI_SUM, q->win), "%s", what);
    SG_MPI(MPI_Win_unlock(0, q->win), "%s", what);
    if (stop || next < 0 || (size_t)next >= q->n_pending) return -1;
    return next;
}

void queue_request_stop(UnitQueue *q) {
    int one = 1, old = 0;
    SG_MPI(MPI_Win_lock(MPI_LOCK_SHARED, 0, 0, q->win), "requesting a stop failed");
    SG_MPI(MPI_Fetch_and_op(&one, &old, MPI_INT, 0, 1, MPI_REPLACE, q->win), "requesting a stop failed");
    SG_MPI(MPI_Win_unlock(0, q->win), "requesting a stop failed");
}

void queue_close(UnitQueue *q) {
    SG_MPI(MPI_Win_free(&q->win), "freeing the unit queue window failed");
    memset(q, 0, sizeof *q);
}
