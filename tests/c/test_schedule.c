/* The work schedule (src/schedule.c): batch sizes, the static split, the unit layout (blocks of
 * contexts x groups of sites) and the unit queue, against the promises of schedule.h: every
 * context and every (context, site) pair covered exactly once, whole batches, at most 128 blocks,
 * sites split only when blocks alone cannot give every rank two units, and a layout rebuilt from
 * its stored values equal to the original. Named cases (check.h); exits non-zero on any failure.
 * Under mpiexec every rank runs every case; queue_across_ranks needs more than one rank. */
#include "schedule.h"

#include "check.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static size_t ceil_div(size_t a, size_t b) { return (a + b - 1) / b; }

/* Busy for `seconds`, calling queue_poll every millisecond when q is given (rank 0's GEMMs). */
static void compute(double seconds, UnitQueue *q) {
    double t0 = MPI_Wtime(), next_poll = t0;
    while (MPI_Wtime() - t0 < seconds)
        if (q && MPI_Wtime() >= next_poll) queue_poll(q), next_poll += 1e-3;
}

/* The queue on several ranks (mpiexec -np 3 test_schedule): every unit handed out exactly once;
 * while rank 0 computes long units, the others, asking between their short ones, wait about one
 * poll interval, not one of rank 0's units; a stop from any rank ends every rank's loop. */
static void case_queue_across_ranks(void) {
    int size0;
    MPI_Comm_size(MPI_COMM_WORLD, &size0);
    if (size0 == 1) {
        case_skip("one rank (ctest c_schedule_mpi runs it on 3)");
        return;
    }
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    enum { N = 60 };
    const double rank0_unit = 0.3, other_unit = 0.005;
    int taken[N] = {0};
    UnitQueue q;
    queue_open(&q, MPI_COMM_WORLD);
    queue_start(&q, N);
    for (long k; (k = queue_next(&q)) >= 0;) {
        if (k < N) taken[k]++;
        compute(rank == 0 ? rank0_unit : other_unit, rank == 0 ? &q : NULL);
    }
    double longest = q.longest_wait;
    queue_close(&q);
    MPI_Allreduce(MPI_IN_PLACE, taken, N, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    int once = 1;
    for (int k = 0; k < N; k++) once &= taken[k] == 1;
    CHECK(once, "rank %d: a unit was handed out %s", rank, "not exactly once");
    /* without rank 0's polls a request waits for the end of its 0.3 s unit */
    if (rank != 0) CHECK(longest < 0.1, "rank %d waited %.3f s for a unit while rank 0 computed", rank, longest);
    MPI_Allreduce(MPI_IN_PLACE, &longest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (rank == 0) printf("test_schedule: %d ranks, longest wait for a unit %.4f s (rank 0's units %.1f s)\n", size,
                          longest, rank0_unit);

    /* a stop from the last rank after its second unit: every rank's loop ends, nothing hangs */
    int mine = 0, total = 0;
    queue_open(&q, MPI_COMM_WORLD);
    queue_start(&q, 1000);
    for (long k; (k = queue_next(&q)) >= 0;) {
        mine++;
        compute(0.002, rank == 0 ? &q : NULL);
        if (rank == size - 1 && mine == 2) {
            queue_request_stop(&q);
            break;
        }
    }
    queue_close(&q);
    MPI_Allreduce(&mine, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    CHECK(total < 1000, "a stop did not end the queue (%d units handed out)", total);
}

/* Checks every promise of a layout of n contexts in batches of B and K sites; `ranks` > 0 when
 * u came from schedule_layout for that many ranks. Returns the failures it found. */
static int check_layout(const UnitLayout *u, size_t n, size_t B, size_t K, int ranks) {
    int before = failures;
    char tag[96];
    snprintf(tag, sizeof tag, "n=%zu B=%zu K=%zu ranks=%d", n, B, K, ranks);
    size_t n_batches = ceil_div(n, B);
    CHECK(u->n_contexts == n && u->B == B && u->n_sites == K, "%s: sizes not recorded", tag);
    CHECK(u->batches_per_block >= 1 && u->n_blocks == ceil_div(n_batches, u->batches_per_block),
          "%s: %zu blocks of %zu batches for %zu batches", tag, u->n_blocks, u->batches_per_block, n_batches);
    CHECK(u->n_groups >= 1 && u->n_groups <= K, "%s: %zu site groups for %zu sites", tag, u->n_groups, K);
    CHECK(u->n_units == u->n_blocks * u->n_groups, "%s: n_units %zu != %zu x %zu", tag, u->n_units, u->n_blocks,
          u->n_groups);
    if (ranks > 0) {
        CHECK(u->n_blocks <= 128, "%s: %zu blocks (at most 128)", tag, u->n_blocks);
        /* the fewest batches per block that keeps to 128 blocks */
        CHECK(u->batches_per_block == ceil_div(n_batches, 128), "%s: %zu batches per block, expected %zu", tag,
              u->batches_per_block, ceil_div(n_batches, 128));
        /* sites split only when there are fewer blocks than two per rank, and then enough to
         * give every rank two units (or as many as there are sites) */
        if (u->n_blocks >= 2 * (size_t)ranks)
            CHECK(u->n_groups == 1, "%s: %zu blocks yet sites split in %zu groups", tag, u->n_blocks, u->n_groups);
        else
            CHECK(u->n_units >= 2 * (size_t)ranks || u->n_groups == K,
                  "%s: %zu units for %d ranks (%zu blocks, %zu groups)", tag, u->n_units, ranks, u->n_blocks,
                  u->n_groups);
        /* and no more groups than that needs */
        if (u->n_groups > 1)
            CHECK(u->n_blocks * (u->n_groups - 1) < 2 * (size_t)ranks, "%s: %zu groups, fewer would do", tag,
                  u->n_groups);
    }
    /* blocks: whole batches, back to back, covering [0, n); none empty */
    size_t next = 0;
    for (size_t b = 0; b < u->n_blocks; b++) {
        size_t c0, c1;
        block_contexts(u, b, &c0, &c1);
        CHECK(c0 == next && c1 > c0 && c1 <= n, "%s: block %zu holds [%zu, %zu), expected to start at %zu", tag, b, c0,
              c1, next);
        CHECK(c0 % B == 0 && (c1 == n || (c1 - c0) == u->batches_per_block * B),
              "%s: block %zu [%zu, %zu) is not %zu whole batches", tag, b, c0, c1, u->batches_per_block);
        next = c1;
    }
    CHECK(next == n, "%s: blocks cover [0, %zu), not [0, %zu)", tag, next, n);
    /* groups: back to back over [0, K), none empty */
    next = 0;
    for (size_t g = 0; g < u->n_groups; g++) {
        size_t s0, s1;
        group_sites(u, g, &s0, &s1);
        CHECK(s0 == next && s1 > s0 && s1 <= K, "%s: group %zu holds sites [%zu, %zu)", tag, g, s0, s1);
        next = s1;
    }
    CHECK(next == K, "%s: groups cover [0, %zu) of %zu sites", tag, next, K);
    /* units: block-major, one to one onto blocks x groups */
    for (size_t unit = 0; unit < u->n_units; unit++) {
        size_t b, g;
        unit_parts(u, unit, &b, &g);
        if (b != unit / u->n_groups || g != unit % u->n_groups || b >= u->n_blocks) {
            CHECK(0, "%s: unit %zu is (block %zu, group %zu)", tag, unit, b, g);
            break;
        }
    }
    /* every (context, site) exactly once, counted cell by cell where that is small */
    if (n * K <= 200000) {
        unsigned char *seen = calloc(n * K, 1);
        for (size_t unit = 0; unit < u->n_units; unit++) {
            size_t b, g, c0, c1, s0, s1;
            unit_parts(u, unit, &b, &g);
            block_contexts(u, b, &c0, &c1);
            group_sites(u, g, &s0, &s1);
            if (c1 > n || s1 > K) continue; /* reported above; do not write outside `seen` */
            for (size_t c = c0; c < c1; c++)
                for (size_t s = s0; s < s1; s++) seen[c * K + s]++;
        }
        size_t wrong = 0;
        for (size_t i = 0; i < n * K; i++) wrong += seen[i] != 1;
        CHECK(wrong == 0, "%s: %zu (context, site) pairs not covered exactly once", tag, wrong);
        free(seen);
    }
    return failures - before;
}

/* contexts per batch: about 256 (run) or 512 (dump) tokens, 1 to 8 contexts */
static void case_batch_contexts(void) {
    static const size_t T[] = {1, 2, 31, 32, 33, 64, 100, 128, 129, 255, 256, 257, 512, 1024, 100000};
    static const size_t run[] = {8, 8, 8, 8, 7, 4, 2, 2, 1, 1, 1, 1, 1, 1, 1};
    static const size_t dump[] = {8, 8, 8, 8, 8, 8, 5, 4, 3, 2, 2, 1, 1, 1, 1};
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++) {
        CHECK(schedule_batch_contexts(T[i]) == run[i], "run batch for T=%zu: %zu, expected %zu", T[i],
              schedule_batch_contexts(T[i]), run[i]);
        CHECK(schedule_dump_batch_contexts(T[i]) == dump[i], "dump batch for T=%zu: %zu, expected %zu", T[i],
              schedule_dump_batch_contexts(T[i]), dump[i]);
    }
    for (size_t t = 1; t <= 4096; t++) {
        size_t b = schedule_batch_contexts(t), d = schedule_dump_batch_contexts(t);
        /* the most contexts (up to 8) that fit in 256 tokens, and 1 when one does not fit */
        int ok_b = b >= 1 && b <= 8 && (b == 1 || b * t <= 256) && (b == 8 || (b + 1) * t > 256);
        int ok_d = d >= 1 && d <= 8 && (d == 1 || d * t <= 512) && (d == 8 || (d + 1) * t > 512);
        if (!ok_b || !ok_d) {
            CHECK(0, "T=%zu: run batch %zu, dump batch %zu", t, b, d);
            break;
        }
    }
}

/* static split: contiguous runs of whole batches, every item exactly once */
static void case_static_split(void) {
    int bad = 0;
    for (size_t n = 0; n <= 70 && !bad; n++)
        for (size_t B = 1; B <= 9 && !bad; B++)
            for (int size = 1; size <= 5 && !bad; size++) {
                size_t next = 0, min_b = (size_t)-1, max_b = 0;
                for (int r = 0; r < size; r++) {
                    size_t lo = 99999, hi = 99999;
                    schedule_static_range(n, B, r, size, &lo, &hi);
                    /* starts where the previous rank ended, at a batch boundary */
                    if (lo != next || hi < lo || hi > n || (lo < n && lo % B != 0) ||
                        (hi < n && (hi - lo) % B != 0)) {
                        CHECK(0, "n=%zu B=%zu size=%d: rank %d takes [%zu, %zu) after %zu", n, B, size, r, lo, hi,
                              next);
                        bad = 1;
                        break;
                    }
                    size_t batches = ceil_div(hi - lo, B);
                    if (batches < min_b) min_b = batches;
                    if (batches > max_b) max_b = batches;
                    next = hi;
                }
                if (bad) break;
                CHECK(next == n, "n=%zu B=%zu size=%d: ranks cover [0, %zu)", n, B, size, next);
                /* balanced: batch counts differ by at most one */
                CHECK(max_b - min_b <= 1, "n=%zu B=%zu size=%d: %zu to %zu batches per rank", n, B, size, min_b,
                      max_b);
                if (next != n || max_b - min_b > 1) bad = 1;
            }
}

/* static split of large counts: no overflow in the split */
static void case_static_split_large(void) {
    size_t lo, hi;
    schedule_static_range((size_t)1 << 40, 8, 4, 5, &lo, &hi);
    CHECK(hi == (size_t)1 << 40 && lo % 8 == 0 && lo > ((size_t)1 << 40) / 5 * 4 - 8, "2^40 items: [%zu, %zu)", lo,
          hi);
}

/* unit layouts over 18 x 4 x 5 x 5 cases, and each rebuilt from its stored values */
static void case_unit_layouts(void) {
    static const size_t ns[] = {1, 2, 3, 7, 8, 9, 17, 100, 255, 256, 257, 1000, 1023, 1024, 1025, 2049, 5000, 100000};
    static const size_t Bs[] = {1, 2, 5, 8};
    static const size_t Ks[] = {1, 2, 3, 7, 50};
    int bad = 0;
    for (size_t i = 0; i < sizeof ns / sizeof ns[0] && !bad; i++)
        for (size_t j = 0; j < sizeof Bs / sizeof Bs[0] && !bad; j++)
            for (size_t k = 0; k < sizeof Ks / sizeof Ks[0] && !bad; k++)
                for (int ranks = 1; ranks <= 5 && !bad; ranks++) {
                    UnitLayout u, v;
                    schedule_layout(&u, ns[i], Bs[j], Ks[k], ranks);
                    bad |= check_layout(&u, ns[i], Bs[j], Ks[k], ranks) != 0;
                    /* rebuilt from the stored values (--resume, verify): the same layout */
                    schedule_layout_from(&v, ns[i], Bs[j], Ks[k], u.batches_per_block, u.n_groups);
                    CHECK(!memcmp(&u, &v, sizeof u), "n=%zu B=%zu K=%zu ranks=%d: rebuilt layout differs", ns[i],
                          Bs[j], Ks[k], ranks);
                }
}

/* known layouts, and stored values out of range clamped */
static void case_unit_layouts_known(void) {
    UnitLayout u;
    schedule_layout(&u, 1024, 8, 10, 4); /* 128 batches: 128 blocks of 1, no split */
    CHECK(u.batches_per_block == 1 && u.n_blocks == 128 && u.n_groups == 1 && u.n_units == 128,
          "1024/8: bpb %zu blocks %zu groups %zu", u.batches_per_block, u.n_blocks, u.n_groups);
    schedule_layout(&u, 1032, 8, 10, 4); /* 129 batches: blocks of 2, 65 blocks */
    CHECK(u.batches_per_block == 2 && u.n_blocks == 65 && u.n_groups == 1, "1032/8: bpb %zu blocks %zu",
          u.batches_per_block, u.n_blocks);
    schedule_layout(&u, 16, 8, 10, 5); /* 2 blocks for 5 ranks: 5 groups of 2 sites */
    CHECK(u.n_blocks == 2 && u.n_groups == 5 && u.n_units == 10, "16/8 on 5 ranks: blocks %zu groups %zu",
          u.n_blocks, u.n_groups);
    schedule_layout(&u, 3, 8, 3, 5); /* 1 block, 10 wanted, 3 sites: 3 groups of one site */
    CHECK(u.n_blocks == 1 && u.n_groups == 3 && u.n_units == 3, "3/8 K=3 on 5 ranks: groups %zu", u.n_groups);
    size_t s0, s1;
    group_sites(&u, 2, &s0, &s1);
    CHECK(s0 == 2 && s1 == 3, "group 2 of 3 sites: [%zu, %zu)", s0, s1);
    schedule_layout(&u, 0, 8, 3, 2); /* no contexts: no units (and no division by zero) */
    CHECK(u.n_blocks == 0 && u.n_units == 0, "0 contexts: blocks %zu units %zu", u.n_blocks, u.n_units);
    /* stored values out of range are clamped: bpb 0 -> 1, groups 0 -> 1, groups > K -> K */
    schedule_layout_from(&u, 100, 4, 6, 0, 0);
    CHECK(u.batches_per_block == 1 && u.n_groups == 1 && u.n_blocks == 25 && u.n_units == 25,
          "layout_from(bpb 0, G 0): bpb %zu groups %zu", u.batches_per_block, u.n_groups);
    check_layout(&u, 100, 4, 6, 0);
    schedule_layout_from(&u, 100, 4, 6, 7, 50);
    CHECK(u.batches_per_block == 7 && u.n_blocks == 4 && u.n_groups == 6 && u.n_units == 24,
          "layout_from(bpb 7, G 50): blocks %zu groups %zu", u.n_blocks, u.n_groups);
    check_layout(&u, 100, 4, 6, 0);
}

/* any stored layout (from any rank count) covers everything exactly once */
static void case_unit_layouts_stored(void) {
    UnitLayout u;
    for (size_t bpb = 1; bpb <= 30; bpb += 3)
        for (size_t G = 1; G <= 9; G += 2) {
            schedule_layout_from(&u, 77, 3, 8, bpb, G);
            if (check_layout(&u, 77, 3, 8, 0)) break;
        }
}

/* the unit queue on one rank: 0, 1, ..., n-1, then -1; a stop ends it early (on MPI_COMM_SELF:
 * every rank of a multi-rank run checks its own) */
static void case_queue_one_rank(void) {
UnitQueue q;
queue_open(&q, MPI_COMM_SELF);
queue_start(&q, 7);
long got[9];
for (int i = 0; i < 9; i++) got[i] = queue_next(&q);
int in_order = 1;
for (int i = 0; i < 7; i++) in_order &= got[i] == i;
CHECK(in_order && got[7] == -1 && got[8] == -1, "queue handed out %ld %ld %ld ... %ld %ld", got[0], got[1],
      got[2], got[7], got[8]);
queue_close(&q);
queue_open(&q, MPI_COMM_SELF);
queue_start(&q, 5);
long a = queue_next(&q), b = queue_next(&q);
queue_request_stop(&q);
long c = queue_next(&q);
CHECK(a == 0 && b == 1 && c == -1, "queue with a stop: %ld %ld %ld", a, b, c);
queue_close(&q);
queue_open(&q, MPI_COMM_SELF);
queue_start(&q, 0);
CHECK(queue_next(&q) == -1, "an empty queue handed out a unit");
queue_close(&q);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    static const CheckCase CASES[] = {
        CASE(batch_contexts),
        CASE(static_split),
        CASE(static_split_large),
        CASE(unit_layouts),
        CASE(unit_layouts_known),
        CASE(unit_layouts_stored),
        CASE(queue_one_rank),
        CASE(queue_across_ranks),
    };
    int rc = check_run_cases("test_schedule", CASES, CHECK_COUNT(CASES), argc, argv);
    MPI_Finalize();
    return rc;
}
