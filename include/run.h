/* run.h: `saegap run`: clean + intervened passes, per-token metrics, one HDF5 file. */
#ifndef SAEGAP_RUN_H
#define SAEGAP_RUN_H

#include "cli.h"

#include <mpi.h>

/* Exit status of a run stopped by SIGTERM/SIGINT that left a resumable file (EX_TEMPFAIL):
 * job scripts requeue on it. */
#define SAEGAP_EXIT_INTERRUPTED 75

/* Collective over comm. Returns the process exit status. */
int run_command(const Options *o, MPI_Comm comm);

#endif
