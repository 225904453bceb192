/* plan.h: `saegap plan JOB_FILE --ranks N [--threads-per-rank T]`: FLOPs by part, expected
 * wall time from a GEMM rate measured here and now, memory per rank and output size, before
 * anything runs; warnings for wasteful choices. */
#ifndef SAEGAP_PLAN_H
#define SAEGAP_PLAN_H

#include "cli.h"

#include <mpi.h>

int plan_command(const Options *o, MPI_Comm comm);

#endif
