/* saegap.h: the whole tool as a function of a communicator (as IOR's ior_run), so tests can
 * run it on sub-communicators; main.c only initialises MPI and calls it. */
#ifndef SAEGAP_SAEGAP_H
#define SAEGAP_SAEGAP_H

#include <mpi.h>

/* Returns the exit status every rank should exit with (0 success, 1 user error). */
int saegap_run(int argc, char **argv, MPI_Comm comm);

#endif
