/* dump.h: `saegap dump`: TransformerLens-basis activations of chosen sites (+ logits). */
#ifndef SAEGAP_DUMP_H
#define SAEGAP_DUMP_H

#include "cli.h"

#include <mpi.h>

/* Collective over comm. Returns the process exit status (0, or 1 after one error message). */
int dump_command(const Options *o, MPI_Comm comm);

#endif
