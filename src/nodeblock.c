/* nodeblock.c: memory shared by the ranks of a node (see nodeblock.h). */
#include "nodeblock.h"

#include "error.h"

#include <stdlib.h>
#include <string.h>

MPI_Comm nodeblock_node_comm(MPI_Comm comm) {
    int rank;
    MPI_Comm node;
    SG_MPI(MPI_Comm_rank(comm, &rank), "rank");
    SG_MPI(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node),
           "splitting the ranks by node");
    return node;
}

void *nodeblock_alloc(NodeBlock *b, MPI_Comm node, size_t bytes, size_t zero_from, int *fill) {
    memset(b, 0, sizeof *b);
    if (node == MPI_COMM_NULL) {
        *fill = 1;
        b->parts = 1;
        b->base = sg_xcalloc(bytes ? bytes : 1, 1);
        return b->base;
    }
    int rank, size;
    SG_MPI(MPI_Comm_rank(node, &rank), "rank on the node");
    SG_MPI(MPI_Comm_size(node, &size), "ranks on the node");
    *fill = rank == 0;
    b->part = rank, b->parts = size;
    b->shared = 1;
    if (bytes > (size_t)(MPI_Aint)(((size_t)-1) >> 1)) sg_fatal("node memory", "a block of %zu bytes", bytes);
    void *mine = NULL;
    /* the whole block on node rank 0; the others attach to it */
    int rc = MPI_Win_allocate_shared(rank == 0 ? (MPI_Aint)(bytes ? bytes : 1) : 0, 1, MPI_INFO_NULL, node, &mine,
                                     &b->win);
    int failed = rc != MPI_SUCCESS;
    SG_MPI(MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, node), "agreeing on node-shared memory");
    if (failed) {
        /* an MPI without shared windows (every MPI-3 library has them; a build may not): each
         * rank keeps its own copy and fills all of it, as before node blocks existed */
        if (rc == MPI_SUCCESS) SG_MPI(MPI_Win_free(&b->win), "freeing a node-shared window");
        static int warned;
        if (!warned++ && rank == 0) {
            char why[MPI_MAX_ERROR_STRING] = "";
            int len = 0;
            if (rc != MPI_SUCCESS) MPI_Error_string(rc, why, &len);
            sg_warnf("MPI cannot share memory between the ranks of a node here (MPI_Win_allocate_shared: %s): every "
                     "rank keeps its own copy of the converted weights (more memory per node)",
                     *why ? why : "failed on another rank of the node");
        }
        b->shared = 0;
        b->part = 0, b->parts = 1;
        *fill = 1;
        b->base = sg_xcalloc(bytes ? bytes : 1, 1);
        return b->base;
    }
    MPI_Aint got;
    int disp;
    SG_MPI(MPI_Win_shared_query(b->win, 0, &got, &disp, &b->base), "attaching to the node's weights");
    SG_MPI(MPI_Win_fence(0, b->win), "opening the node's weights");
    /* [zero_from, bytes) zeroed by every rank of the node, a slice each; the fillers write all of
     * the rest (zeroing gigabytes of weights first would touch every page twice) */
    if (zero_from > bytes) zero_from = bytes;
    const size_t z = bytes - zero_from, lo = zero_from + z / (size_t)size * (size_t)rank,
                 hi = rank == size - 1 ? bytes : lo + z / (size_t)size;
    memset((char *)b->base + lo, 0, hi - lo);
    SG_MPI(MPI_Win_fence(0, b->win), "zeroing the node's weights"); /* then an epoch for the fillers */
    return b->base;
}

void nodeblock_share(const NodeBlock *b, int *part, int *parts) {
    *part = b->part, *parts = b->parts;
}

void nodeblock_ready(NodeBlock *b) {
    if (!b->shared) return;
    SG_MPI(MPI_Win_fence(0, b->win), "publishing the node's weights");
}

void nodeblock_free(NodeBlock *b) {
    if (!b->base) return;
    if (b->shared) SG_MPI(MPI_Win_free(&b->win), "freeing the node's weights");
    else free(b->base);
    memset(b, 0, sizeof *b);
}
