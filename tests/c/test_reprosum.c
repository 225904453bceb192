/* Reproducible 128-bit fixed-point sums (src/reprosum.c): exact on values of the 2^-40 grid
 * (against an integer reference), the same bits in any order and any grouping of partial sums,
 * rounding to the nearest grid point (ties to even), the int64 pair form of result files, and
 * overflow turning a sum into REPRO_OVERFLOW for good (NaN, Inf, |v| >= 2^86, sums leaving the
 * 128-bit range), through additions, merges and the MPI reduction. Named cases (check.h); exits
 * non-zero on any failure. */
#include "reprosum.h"

#include "check.h"

#include <float.h>
#include <math.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { N_TERMS = 20000 };
static double vals[N_TERMS]; /* the terms of the sums, rewritten by each case */

#define SEED 88172645463325252ull
static uint64_t g_state = SEED;
static uint64_t xorshift(void) {
    g_state ^= g_state << 13, g_state ^= g_state >> 7, g_state ^= g_state << 17;
    return g_state;
}
static double uniform(void) { return (double)(xorshift() >> 11) * 0x1p-53 - 0.5; }

static void shuffle(double *v, size_t n) {
    for (size_t i = n - 1; i > 0; i--) {
        size_t j = (size_t)(xorshift() % (i + 1));
        double t = v[i];
        v[i] = v[j], v[j] = t;
    }
}

static ReproSum sum_of(const double *v, size_t n) {
    ReproSum a = 0;
    for (size_t i = 0; i < n; i++)
        if (repro_add_checked(&a, v[i]) != 0) return REPRO_OVERFLOW;
    return a;
}

static int same(ReproSum a, ReproSum b) { return memcmp(&a, &b, sizeof a) == 0; }

/* values on the 2^-40 grid: the sum is the exact integer sum, nothing lost */
static void case_grid_sums(void) {
    enum { n = N_TERMS };
    g_state = SEED; /* the same terms whichever cases ran before */
    __int128 ref = 0;
    for (size_t i = 0; i < n; i++) {
        /* integers up to 2^52 times 2^-40: from 2^-40 to 4096, both signs, exact doubles */
        int64_t k = (int64_t)(xorshift() >> (12 + xorshift() % 52)) * ((xorshift() & 1) ? 1 : -1);
        ref += k;
        vals[i] = ldexp((double)k, -40);
    }
    ReproSum a = sum_of(vals, n);
    CHECK(same(a, (ReproSum)ref), "grid sum differs from the exact integer sum by %lld units of 2^-40",
          (long long)(a - ref));
    CHECK(repro_value(a) == ldexp((double)ref, -40), "repro_value %.17g, expected %.17g", repro_value(a),
          ldexp((double)ref, -40));
    /* a sum far beyond double's 53 bits: 2^60 + 2^-40 + 2^-40 keeps both small terms */
    ReproSum b = 0;
    CHECK(repro_add_checked(&b, 0x1p60) == 0 && repro_add_checked(&b, 0x1p-40) == 0 &&
              repro_add_checked(&b, 0x1p-40) == 0 && repro_add_checked(&b, -0x1p60) == 0,
          "adding grid values failed");
    CHECK(same(b, (ReproSum)2), "2^60 + 2 x 2^-40 - 2^60 = %lld units, expected 2", (long long)b);
    /* the largest term: just below 2^86, exactly representable */
    ReproSum c = 0;
    double big = nextafter(0x1p86, 0);
    CHECK(repro_add_checked(&c, big) == 0 && same(c, (ReproSum)ldexp(big, 40)), "term just below 2^86 refused");
    CHECK(repro_add_checked(&c, -big) == 0 && same(c, 0), "big - big != 0");
}

/* rounding to the grid: nearest, ties to even, symmetric in sign */
static void case_rounding(void) {
    static const struct { double v; long long units; } cases[] = {
        {0x1p-41, 0},         {3 * 0x1p-41, 2},   {5 * 0x1p-41, 2},   {7 * 0x1p-41, 4},
        {-3 * 0x1p-41, -2},   {5 * 0x1p-42, 1},   {3 * 0x1p-42, 1},   {-3 * 0x1p-42, -1},
        {0x1p-100, 0},        {-0x1p-100, 0},     {1e-300, 0},        {0x1.8p-40, 2},
        {1.0, 1LL << 40},     {-0.5, -(1LL << 39)}, {0.0, 0},         {-0.0, 0}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ReproSum a = 0;
        int rc = repro_add_checked(&a, cases[i].v);
        CHECK(rc == 0 && same(a, (ReproSum)cases[i].units), "%a rounds to %lld units, expected %lld", cases[i].v,
              (long long)a, cases[i].units);
    }
}

/* off-grid values: the total is within n/2 units of the exact sum (each term off by <= 1/2) */
static void case_off_grid_sum(void) {
    enum { n = N_TERMS };
    g_state = SEED; /* the same terms whichever cases ran before */
    long double exact = 0;
    for (size_t i = 0; i < n; i++) vals[i] = uniform() * pow(10, (double)(i % 9) - 4), exact += vals[i];
    ReproSum a = sum_of(vals, n);
    double err = fabs(repro_value(a) - (double)exact);
    CHECK(err <= n * 0x1p-41 + 1e-15 * fabsl(exact), "off-grid sum %.17g vs long double %.17Lg (error %g)",
          repro_value(a), exact, err);
}

/* order and grouping: the same bits in any permutation and any split into partial sums */
static void case_order_and_grouping(void) {
    enum { n = N_TERMS };
    g_state = SEED; /* the same terms whichever cases ran before */
    for (size_t i = 0; i < n; i++) vals[i] = uniform() * pow(2, (double)(xorshift() % 60) - 30);
    ReproSum ref = sum_of(vals, n);
    int ok = 1;
    for (int perm = 0; perm < 6; perm++) {
        shuffle(vals, n);
        ok &= same(sum_of(vals, n), ref);
    }
    CHECK(ok, "a permutation of the terms gives another sum");
    /* reversed */
    ReproSum rev = 0;
    for (size_t i = n; i-- > 0;) repro_add_checked(&rev, vals[i]);
    CHECK(same(rev, ref), "the reversed order gives another sum");
    /* partial sums (as ranks and units produce them) merged in two different orders */
    for (size_t parts = 2; parts <= 7; parts++) {
        ReproSum part[7], m1 = 0, m2 = 0;
        for (size_t p = 0; p < parts; p++) part[p] = sum_of(vals + n * p / parts, n * (p + 1) / parts - n * p / parts);
        for (size_t p = 0; p < parts; p++) CHECK(repro_merge(&m1, part[p]) == 0, "merge failed");
        for (size_t p = parts; p-- > 0;) CHECK(repro_merge(&m2, part[p]) == 0, "merge failed");
        CHECK(same(m1, ref) && same(m2, ref), "%zu partial sums merged differ from the whole sum", parts);
    }
    /* but a double sum in two orders does differ here (so the comparison can fail) */
    double d1 = 0, d2 = 0;
    for (size_t i = 0; i < n; i++) d1 += vals[i];
    for (size_t i = n; i-- > 0;) d2 += vals[i];
    shuffle(vals, n);
    double d3 = 0;
    for (size_t i = 0; i < n; i++) d3 += vals[i];
    CHECK(d1 != d2 || d1 != d3, "plain double sums agree in every order: the terms test nothing");
    /* the old interface gives the same sum */
    ReproSum old = 0;
    for (size_t i = 0; i < n; i++) repro_add(&old, vals[i]);
    CHECK(same(old, ref), "repro_add differs from repro_add_checked");
}

/* the file form: (low, high) int64 pairs, round trip */
static void case_file_form(void) {
    g_state = SEED; /* the same pairs whichever cases ran before */
    const ReproSum one = 1;
    ReproSum v[] = {0,
                    1,
                    -1,
                    (ReproSum)INT64_MAX,
                    (ReproSum)INT64_MIN,
                    one << 64,
                    -(one << 64),
                    (one << 64) - 1,
                    one << 126,
                    -(one << 126),
                    (ReproSum)(((unsigned __int128)1 << 127) - 1), /* largest valid */
                    REPRO_OVERFLOW,
                    (ReproSum)0x0123456789abcdefLL * (one << 40) + 12345};
    const size_t m = sizeof v / sizeof v[0];
    int64_t pairs[2 * 13];
    ReproSum back[13];
    repro_pack(pairs, v, m);
    repro_unpack(back, pairs, m);
    CHECK(!memcmp(back, v, sizeof v), "pack then unpack does not give the sums back");
    CHECK(pairs[0] == 0 && pairs[1] == 0, "0 packs as (%lld, %lld)", (long long)pairs[0], (long long)pairs[1]);
    CHECK(pairs[2] == 1 && pairs[3] == 0, "1 packs as (%lld, %lld)", (long long)pairs[2], (long long)pairs[3]);
    CHECK(pairs[4] == -1 && pairs[5] == -1, "-1 packs as (%lld, %lld)", (long long)pairs[4], (long long)pairs[5]);
    CHECK(pairs[8] == INT64_MIN && pairs[9] == -1, "INT64_MIN packs as (%lld, %lld)", (long long)pairs[8],
          (long long)pairs[9]);
    CHECK(pairs[10] == 0 && pairs[11] == 1, "2^64 packs as (%lld, %lld)", (long long)pairs[10], (long long)pairs[11]);
    CHECK(pairs[12] == 0 && pairs[13] == -1, "-2^64 packs as (%lld, %lld)", (long long)pairs[12],
          (long long)pairs[13]);
    CHECK(pairs[22] == 0 && pairs[23] == INT64_MIN, "REPRO_OVERFLOW packs as (%lld, %lld)", (long long)pairs[22],
          (long long)pairs[23]);
    /* and from pairs: every (low, high) is some sum and comes back */
    int64_t p2[2 * 64], p3[2 * 64];
    ReproSum s2[64];
    for (int i = 0; i < 128; i++) p2[i] = (int64_t)xorshift();
    repro_unpack(s2, p2, 64);
    repro_pack(p3, s2, 64);
    CHECK(!memcmp(p2, p3, sizeof p2), "unpack then pack does not give the pairs back");
    CHECK(repro_overflowed(back[11]) && !repro_overflowed(back[10]) && isnan(repro_value(back[11])),
          "REPRO_OVERFLOW lost in the file form");
    CHECK(repro_value(back[8]) == 0x1p86 && repro_value(back[9]) == -0x1p86, "value of 2^126 units");
}

/* overflow: reported by the return value, sticky in the accumulator */
static void case_overflow(void) {
    static const double bad[] = {NAN, -NAN, INFINITY, -INFINITY, 0x1p86, -0x1p86, 1e30, -1e300, DBL_MAX};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ReproSum a = 12345;
        CHECK(repro_add_checked(&a, bad[i]) == -1 && repro_overflowed(a), "term %g accepted", bad[i]);
        CHECK(repro_add_checked(&a, 1.0) == -1 && repro_overflowed(a) && isnan(repro_value(a)),
              "overflow not kept after term %g", bad[i]);
    }
    /* a sum leaving the range: three terms just below 2^86 (each alone is fine) */
    double big = nextafter(0x1p86, 0);
    ReproSum a = 0;
    CHECK(repro_add_checked(&a, big) == 0 && repro_add_checked(&a, big) == 0, "two big terms refused");
    CHECK(!repro_overflowed(a) && repro_value(a) > 0x1.fffp86, "two big terms: %g", repro_value(a));
    CHECK(repro_add_checked(&a, big) == -1 && repro_overflowed(a), "a sum above 2^127 units was accepted");
    CHECK(repro_add_checked(&a, -big) == -1 && repro_overflowed(a), "overflow undone by a term of the other sign");
    a = 0;
    for (int i = 0; i < 2; i++) repro_add_checked(&a, -big);
    CHECK(repro_add_checked(&a, -big) == -1 && repro_overflowed(a), "a sum below -2^127 units was accepted");
    /* a merge landing exactly on INT128_MIN (the poison value itself) is an overflow too */
    const ReproSum half = (ReproSum)1 << 126;
    ReproSum b = -half;
    CHECK(repro_merge(&b, -half) == -1 && repro_overflowed(b), "-2^126 + -2^126 units accepted as a valid sum");
    b = half;
    CHECK(repro_merge(&b, half) == -1 && repro_overflowed(b), "2^126 + 2^126 units accepted");
    b = half - 1;
    CHECK(repro_merge(&b, half) == 0 && same(b, (ReproSum)(((unsigned __int128)1 << 127) - 1)),
          "2^127 - 1 units refused");
    b = 7;
    CHECK(repro_merge(&b, REPRO_OVERFLOW) == -1 && repro_overflowed(b), "merging an overflowed sum");
    b = REPRO_OVERFLOW;
    CHECK(repro_merge(&b, 7) == -1 && repro_overflowed(b), "merging into an overflowed sum");
    ReproSum arr[5] = {1, 2, 3, REPRO_OVERFLOW, REPRO_OVERFLOW};
    CHECK(repro_first_overflow(arr, 5) == 3 && repro_first_overflow(arr, 3) == 3 && repro_first_overflow(arr, 0) == 0,
          "repro_first_overflow");
}

/* the MPI reduction (one rank): values unchanged, overflow reported */
static void case_mpi_reduction(void) {
    ReproSum v[4] = {5, -((ReproSum)1 << 100), 0, 123456789};
    ReproSum w[4];
    memcpy(w, v, sizeof v);
    CHECK(repro_allreduce(w, 4, MPI_COMM_WORLD) == 0 && !memcmp(w, v, sizeof v), "allreduce on one rank changed sums");
    w[2] = REPRO_OVERFLOW;
    CHECK(repro_allreduce(w, 4, MPI_COMM_WORLD) == -1 && repro_first_overflow(w, 4) == 2 && same(w[3], v[3]),
          "allreduce did not report an overflowed sum");
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    static const CheckCase CASES[] = {
        CASE(grid_sums),
        CASE(rounding),
        CASE(off_grid_sum),
        CASE(order_and_grouping),
        CASE(file_form),
        CASE(overflow),
        CASE(mpi_reduction),
    };
    int rc = check_run_cases("test_reprosum", CASES, CHECK_COUNT(CASES), argc, argv);
    MPI_Finalize();
    return rc;
}
