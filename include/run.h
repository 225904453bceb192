/* run.h: `saegap run`: clean + intervened passes, per-token metrics, one HDF5 file. */
#ifndef SAEGAP_RUN_H
#define SAEGAP_RUN_H

#include "cli.h"

#include <mpi.h>

/* Exit status of a run stopped by SIGTERM/SIGINT/SIGUSR1 that left a resumable file (EX_TEMPFAIL):
 * job scripts requeue on it. */
#define SAEGAP_EXIT_INTERRUPTED 75

/* Collective over comm. Returns the process exit status. */
int run_command(const Options *o, MPI_Comm comm);

/* Called by main() before MPI_Init: a SIGUSR1 (the checkpoint request job scripts send through
 * mpirun/srun) that arrives while the program starts is kept for the run instead of killing
 * the process (USR1's default action). */
void run_catch_early_stop(void);

#endif
