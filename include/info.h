/* info.h: `saegap info PATH`: what a model folder, SAE folder, token file or result file holds. */
#ifndef SAEGAP_INFO_H
#define SAEGAP_INFO_H

#include "cli.h"

#include <mpi.h>

int info_command(const Options *o, MPI_Comm comm);

#endif
