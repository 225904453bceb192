/* nodeblock.h: one block of memory for every rank of a node (an MPI-3 shared window).
 *
 * Weights that saegap derives or converts (the padded wte, F16/BF16 tensors, the folded value
 * bias) would otherwise be copied by every rank: on a 64-core node that is 64 copies. A node
 * block holds them once: one rank of the node (its node rank 0) allocates and fills it, every
 * rank reads it. With node == MPI_COMM_NULL it is a private calloc (tools and tests that run
 * without MPI collectives).
 *
 *   int fill;
 *   float *w = nodeblock_alloc(&b, node, bytes, zero_from, &fill);   collective over node
 *   if (fill) { ... write w ... }
 *   nodeblock_ready(&b);                                   collective: writes visible to all
 *   ... read w (never write it) ...
 *   nodeblock_free(&b);                                    collective
 *
 * Bytes [zero_from, bytes) come zeroed; the fillers write every byte before zero_from. Large fills may be split over the node's ranks: nodeblock_share
 * gives this rank's part of the work (its node rank, and the node's size); every rank writes
 * only its part before nodeblock_ready.
 */
#ifndef SAEGAP_NODEBLOCK_H
#define SAEGAP_NODEBLOCK_H

#include <mpi.h>
#include <stddef.h>

typedef struct {
    void *base;  /* NULL: nothing allocated (a zeroed block) */
    int shared;  /* 1: a window on a node communicator; 0: private memory */
    int part, parts; /* this rank's node rank and the node's size (0 and 1 when private) */
    MPI_Win win;
} NodeBlock;

/* The node's ranks: a communicator of the ranks of comm that share memory with this one. */
MPI_Comm nodeblock_node_comm(MPI_Comm comm);

void *nodeblock_alloc(NodeBlock *b, MPI_Comm node, size_t bytes, size_t zero_from, int *fill);
void nodeblock_share(const NodeBlock *b, int *part, int *parts);
void nodeblock_ready(NodeBlock *b);
void nodeblock_free(NodeBlock *b); /* accepts a zeroed or freed block */

#endif
