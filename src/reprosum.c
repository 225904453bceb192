/* reprosum.c: fixed-point 128-bit accumulation and its MPI reduction (see reprosum.h). */
#include "reprosum.h"

#include "error.h"

#include <math.h>

#define REPRO_SCALE_BITS 40

void repro_add(ReproSum *acc, double v) {
    double scaled = ldexp(v, REPRO_SCALE_BITS);
    if (!(fabs(scaled) < 0x1p126)) sg_fatal("reprosum", "value %g is outside the accumulator's range", v);
    *acc += (ReproSum)nearbyint(scaled);
}

double repro_value(ReproSum acc) { return ldexp((double)acc, -REPRO_SCALE_BITS); }

static void add_op(void *in, void *inout, int *len, MPI_Datatype *dt) {
    (void)dt;
    ReproSum *a = in, *b = inout;
    for (int i = 0; i < *len; i++) b[i] += a[i];
}

void repro_allreduce(ReproSum *acc, size_t n, MPI_Comm comm) {
    MPI_Datatype t;
    MPI_Op op;
    if (MPI_Type_contiguous((int)sizeof(ReproSum), MPI_BYTE, &t) != MPI_SUCCESS || MPI_Type_commit(&t) != MPI_SUCCESS ||
        MPI_Op_create(add_op, 1, &op) != MPI_SUCCESS)
        sg_fatal("MPI", "cannot create the reproducible-sum reduction");
    const size_t chunk = 1 << 20;
    for (size_t i = 0; i < n; i += chunk) {
        int c = (int)(n - i < chunk ? n - i : chunk);
        if (MPI_Allreduce(MPI_IN_PLACE, acc + i, c, t, op, comm) != MPI_SUCCESS)
            sg_fatal("MPI", "MPI_Allreduce of %d sums failed", c);
    }
    MPI_Op_free(&op);
    MPI_Type_free(&t);
}
