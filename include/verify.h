/* verify.h: `saegap verify RESULT.h5`: is a result complete, resumable, or damaged. */
#ifndef SAEGAP_VERIFY_H
#define SAEGAP_VERIFY_H

#include "cli.h"

#include <mpi.h>

#define SAEGAP_VERIFY_RESUMABLE 3 /* exit status: units left, `run --resume` finishes it */
#define SAEGAP_VERIFY_DAMAGED 4   /* exit status: unreadable or data that fails its checksum */

int verify_command(const Options *o, MPI_Comm comm);

#endif
