/* schedule.c: batch size, static split, unit layout and the dynamic unit queue (see schedule.h). */
#include "schedule.h"

#include "error.h"

#include <stdint.h>
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

/* The queue's messages: a request (REQ, or LEAVE from a rank that stops taking units) and its
 * answer, a pending-list index or -1. On a duplicate communicator, so they meet nothing else. */
enum { TAG_REQUEST = 1, TAG_ANSWER = 2 };
enum { MSG_REQ = 1, MSG_LEAVE = 2 };

/* Rank 0: the next pending index for a rank that asks, or -1 when none is left or a stop was
 * requested. */
static long take(UnitQueue *q) {
    if (q->stop || q->next >= q->n_pending) return -1;
    return (long)q->next++;
}

static void post_receive(UnitQueue *q) {
    SG_MPI(MPI_Irecv(&q->msg, 1, MPI_INT, MPI_ANY_SOURCE, TAG_REQUEST, q->comm, &q->request),
           "waiting for requests for units");
}

/* Rank 0: the message the posted receive got, answered; then the next receive posted, or none
 * once every other rank is done with the queue. */
static void serve(UnitQueue *q, const MPI_Status *st) {
    if (q->msg == MSG_LEAVE) { /* it takes no more units and waits for no answer */
        q->stop = 1;
        q->ranks_out++;
    } else {
        int64_t k = take(q);
        if (k < 0) q->ranks_out++;
        /* the asking rank waits in MPI_Recv for this answer: an 8-byte send completes at once */
        SG_MPI(MPI_Send(&k, 1, MPI_INT64_T, st->MPI_SOURCE, TAG_ANSWER, q->comm),
               "answering rank %d's request for a unit", st->MPI_SOURCE);
    }
    if (q->ranks_out == q->size - 1) q->request = MPI_REQUEST_NULL;
    else post_receive(q);
}

void queue_poll(UnitQueue *q) {
    if (q->rank != 0 || q->size == 1 || q->request == MPI_REQUEST_NULL) return;
    while (q->request != MPI_REQUEST_NULL) {
        int arrived = 0;
        MPI_Status st;
        SG_MPI(MPI_Test(&q->request, &arrived, &st), "checking for requests for units");
        if (!arrived) return;
        serve(q, &st);
    }
}

void queue_open(UnitQueue *q, MPI_Comm comm) {
    memset(q, 0, sizeof *q);
    SG_MPI(MPI_Comm_dup(comm, &q->comm), "creating the unit queue's communicator");
    SG_MPI(MPI_Comm_rank(q->comm, &q->rank), "MPI_Comm_rank failed");
    SG_MPI(MPI_Comm_size(q->comm, &q->size), "MPI_Comm_size failed");
    q->request = MPI_REQUEST_NULL;
}

void queue_start(UnitQueue *q, size_t n_pending) {
    q->n_pending = n_pending;
    q->started = 1;
    if (q->rank == 0 && q->size > 1) post_receive(q);
}

long queue_next(UnitQueue *q) {
    if (!q->started) sg_fatal("saegap run", "internal error: the unit queue was not started");
    double t0 = MPI_Wtime();
    long k;
    if (q->rank == 0) {
        queue_poll(q);
        k = take(q);
    } else if (q->left) {
        k = -1;
    } else {
        int req = MSG_REQ;
        int64_t answer = -1;
        SG_MPI(MPI_Send(&req, 1, MPI_INT, 0, TAG_REQUEST, q->comm), "asking rank 0 for a unit");
        SG_MPI(MPI_Recv(&answer, 1, MPI_INT64_T, 0, TAG_ANSWER, q->comm, MPI_STATUS_IGNORE),
               "receiving a unit from rank 0");
        k = answer >= 0 && (size_t)answer < q->n_pending ? (long)answer : -1;
        if (k < 0) q->left = 1;
    }
    double waited = MPI_Wtime() - t0;
    q->last_wait = waited;
    if (k >= 0) {
        q->seconds_waiting += waited;
        if (waited > q->longest_wait) q->longest_wait = waited;
    }
    return k;
}

void queue_request_stop(UnitQueue *q) {
    if (q->rank == 0) {
        q->stop = 1;
        return;
    }
    if (q->left) return;
    int leave = MSG_LEAVE;
    SG_MPI(MPI_Send(&leave, 1, MPI_INT, 0, TAG_REQUEST, q->comm), "telling rank 0 this rank stops");
    q->left = 1;
}

void queue_close(UnitQueue *q) {
    /* rank 0 answers until every other rank has heard "no more units" or left */
    while (q->rank == 0 && q->request != MPI_REQUEST_NULL) {
        MPI_Status st;
        SG_MPI(MPI_Wait(&q->request, &st), "waiting for the other ranks to finish their units");
        serve(q, &st);
    }
    SG_MPI(MPI_Comm_free(&q->comm), "freeing the unit queue's communicator");
    q->comm = MPI_COMM_NULL;
}
