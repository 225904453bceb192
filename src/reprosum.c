/* reprosum.c: fixed-point 128-bit accumulation and its MPI reduction (see reprosum.h). */
#include "reprosum.h"

#include "error.h"

#include <math.h>

#define REPRO_SCALE_BITS 40

int repro_overflowed(ReproSum acc) { return acc == REPRO_OVERFLOW; }

int repro_merge(ReproSum *acc, ReproSum v) {
    ReproSum r;
    if (*acc == REPRO_OVERFLOW || v == REPRO_OVERFLOW || __builtin_add_overflow(*acc, v, &r) || r == REPRO_OVERFLOW) {
        *acc = REPRO_OVERFLOW;
        return -1;
    }
    *acc = r;
    return 0;
}

int repro_add_checked(ReproSum *acc, double v) {
    double scaled = ldexp(v, REPRO_SCALE_BITS);
    /* also false for NaN; 2^126 keeps the conversion below defined */
    if (!(fabs(scaled) < 0x1p126)) {
        *acc = REPRO_OVERFLOW;
        return -1;
    }
    return repro_merge(acc, (ReproSum)nearbyint(scaled));
}

size_t repro_first_overflow(const ReproSum *acc, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (acc[i] == REPRO_OVERFLOW) return i;
    return n;
}

void repro_add(ReproSum *acc, double v) {
    int was = *acc == REPRO_OVERFLOW;
    if (repro_add_checked(acc, v) == 0) return;
    if (!isfinite(v)) sg_fatal("reprosum", "a value to aggregate is %g (not finite)", v);
    if (!was && fabs(v) < REPRO_MAX_TERM)
        sg_fatal("reprosum", "adding %g makes an aggregate leave the range of an exact sum (|sum| < 2^87 = %.3g)", v,
                 0x1p87);
    sg_fatal("reprosum", "value %g is outside the range of an exact sum (|value| < 2^86 = %.3g)", v, REPRO_MAX_TERM);
}

double repro_value(ReproSum acc) {
    if (acc == REPRO_OVERFLOW) return NAN;
    return ldexp((double)acc, -REPRO_SCALE_BITS);
}

static void add_op(void *in, void *inout, int *len, MPI_Datatype *dt) {
    (void)dt;
    ReproSum *a = in, *b = inout;
    for (int i = 0; i < *len; i++) repro_merge(&b[i], a[i]);
}

int repro_allreduce(ReproSum *acc, size_t n, MPI_Comm comm) {
    MPI_Datatype t;
    MPI_Op op;
    SG_MPI(MPI_Type_contiguous((int)sizeof(ReproSum), MPI_BYTE, &t), "cannot create the reproducible-sum type");
    SG_MPI(MPI_Type_commit(&t), "cannot create the reproducible-sum type");
    SG_MPI(MPI_Op_create(add_op, 1, &op), "cannot create the reproducible-sum reduction");
    const size_t chunk = 1 << 20;
    for (size_t i = 0; i < n; i += chunk) {
        int c = (int)(n - i < chunk ? n - i : chunk);
        SG_MPI(MPI_Allreduce(MPI_IN_PLACE, acc + i, c, t, op, comm), "MPI_Allreduce of %d sums failed", c);
    }
    SG_MPI(MPI_Op_free(&op), "MPI_Op_free failed");
    SG_MPI(MPI_Type_free(&t), "MPI_Type_free failed");
    return repro_first_overflow(acc, n) < n ? -1 : 0;
}

void repro_pack(int64_t *pairs, const ReproSum *acc, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned __int128 u = (unsigned __int128)acc[i];
        pairs[2 * i] = (int64_t)(uint64_t)u, pairs[2 * i + 1] = (int64_t)(uint64_t)(u >> 64);
    }
}

void repro_unpack(ReproSum *acc, const int64_t *pairs, size_t n) {
    for (size_t i = 0; i < n; i++)
        acc[i] = (ReproSum)(((unsigned __int128)(uint64_t)pairs[2 * i + 1] << 64) | (uint64_t)pairs[2 * i]);
}
