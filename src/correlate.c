/* correlate.c: Pearson / Spearman of the KL gap with ScaLAPACK (see correlate.h). */
#include "correlate.h"

#include "error.h"
#include "reprosum.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* BLACS and ScaLAPACK (Debian's libscalapack-openmpi ships no C header). */
extern int Csys2blacs_handle(MPI_Comm comm);
extern void Cfree_blacs_system_handle(int handle);
extern void Cblacs_gridinit(int *ctxt, const char *order, int nprow, int npcol);
extern void Cblacs_gridinfo(int ctxt, int *nprow, int *npcol, int *myrow, int *mycol);
extern void Cblacs_gridexit(int ctxt);
extern int numroc_(const int *n, const int *nb, const int *iproc, const int *isrcproc, const int *nprocs);
extern void descinit_(int *desc, const int *m, const int *n, const int *mb, const int *nb, const int *irsrc,
                      const int *icsrc, const int *ictxt, const int *lld, int *info);
extern void pdgemm_(const char *transa, const char *transb, const int *m, const int *n, const int *k,
                    const double *alpha, const double *a, const int *ia, const int *ja, const int *desca,
                    const double *b, const int *ib, const int *jb, const int *descb, const double *beta, double *c,
                    const int *ic, const int *jc, const int *descc);

typedef struct {
    int P, p;
    size_t M, M_loc, MB, Bc;  /* rows, local rows, rows per block, contexts per block */
    size_t K;
    double *G;                /* (M_loc, K) column-major local gap */
    unsigned char *valid;     /* (M_loc) */
    int64_t M_valid;
} Local;

/* global row of local row i */
static size_t global_row(const Local *L, size_t i) {
    size_t blk = i / L->MB, off = i % L->MB;
    return (blk * (size_t)L->P + (size_t)L->p) * L->MB + off;
}

static void read_gap(Local *L, H5Out *h, const CorrInput *in, MPI_Comm comm) {
    size_t Wk = in->Wk, maxrows = L->Bc * Wk;
    float *a = sg_xcalloc(maxrows * in->S_iv, sizeof(float)), *e = sg_xcalloc(maxrows * in->S_eps, sizeof(float));
    size_t n_blocks = (in->n + L->Bc - 1) / L->Bc;
    size_t i0 = 0;
    for (size_t b = (size_t)L->p; b < n_blocks; b += (size_t)L->P) {
        size_t c0 = b * L->Bc, nc = in->n - c0 < L->Bc ? in->n - c0 : L->Bc, rows = nc * Wk;
        for (size_t k = 0; k < in->K; k++) {
            h5out_read_rows(h, in->ds_iv[k], c0, nc, a);
            h5out_read_rows(h, in->ds_eps[k], c0, nc, e);
            for (size_t t = 0; t < rows; t++) {
                double iv = 0, eps = 0;
                for (size_t s = 0; s < in->S_iv; s++) iv += a[t * in->S_iv + s];
                for (size_t s = 0; s < in->S_eps; s++) eps += e[t * in->S_eps + s];
                L->G[k * L->M_loc + i0 + t] = iv / (double)in->S_iv - eps / (double)in->S_eps;
            }
        }
        i0 += rows;
    }
    free(a);
    free(e);
    int64_t mv = 0;
    for (size_t i = 0; i < L->M_loc; i++) {
        int ok = 1;
        for (size_t k = 0; k < in->K; k++) ok &= isfinite(L->G[k * L->M_loc + i]) != 0;
        L->valid[i] = (unsigned char)ok;
        mv += ok;
    }
    SG_MPI(MPI_Allreduce(&mv, &L->M_valid, 1, MPI_INT64_T, MPI_SUM, comm), "counting usable tokens failed");
}

typedef struct { double v; uint64_t row; } Entry;

static int cmp_entry(const void *a, const void *b) {
    const Entry *x = a, *y = b;
    if (x->v != y->v) return x->v < y->v ? -1 : 1;
    return x->row < y->row ? -1 : (x->row > y->row);
}

/* Replaces each valid value of column k by its average rank (1-based) among all valid values,
 * the column ranked by rank k % P. */
static void rank_columns(double *R, const Local *L, MPI_Comm comm) {
    MPI_Datatype et;
    SG_MPI(MPI_Type_contiguous((int)sizeof(Entry), MPI_BYTE, &et), "cannot create the rank-entry type");
    SG_MPI(MPI_Type_commit(&et), "cannot create the rank-entry type");
    int m = 0;
    for (size_t i = 0; i < L->M_loc; i++) m += L->valid[i];
    Entry *mine = sg_xcalloc((size_t)m + 1, sizeof(Entry));
    int *counts = sg_xcalloc((size_t)L->P, sizeof(int)), *displs = sg_xcalloc((size_t)L->P, sizeof(int));
    for (size_t k = 0; k < L->K; k++) {
        int owner = (int)(k % (size_t)L->P), j = 0;
        for (size_t i = 0; i < L->M_loc; i++)
            if (L->valid[i]) mine[j++] = (Entry){L->G[k * L->M_loc + i], global_row(L, i)};
        SG_MPI(MPI_Gather(&m, 1, MPI_INT, counts, 1, MPI_INT, owner, comm), "gathering rank counts failed");
        Entry *all = NULL;
        int total = 0;
        if (L->p == owner) {
            for (int q = 0; q < L->P; q++) displs[q] = total, total += counts[q];
            all = sg_xcalloc((size_t)total + 1, sizeof(Entry));
        }
        SG_MPI(MPI_Gatherv(mine, m, et, all, counts, displs, et, owner, comm), "gathering a column to rank failed");
        if (L->p == owner) {
            /* sort a copy by value, then write average ranks back in arrival order */
            Entry *sorted = sg_xcalloc((size_t)total + 1, sizeof(Entry));
            for (int i = 0; i < total; i++) sorted[i] = (Entry){all[i].v, (uint64_t)i};
            qsort(sorted, (size_t)total, sizeof(Entry), cmp_entry);
            for (int i = 0; i < total;) {
                int e = i;
                while (e + 1 < total && sorted[e + 1].v == sorted[i].v) e++;
                double avg = 0.5 * ((double)i + (double)e) + 1.0;
                for (int q = i; q <= e; q++) all[sorted[q].row].v = avg;
                i = e + 1;
            }
            free(sorted);
        }
        SG_MPI(MPI_Scatterv(all, counts, displs, et, mine, m, et, owner, comm), "returning ranks failed");
        free(all);
        j = 0;
        for (size_t i = 0; i < L->M_loc; i++) R[k * L->M_loc + i] = L->valid[i] ? mine[j++].v : NAN;
    }
    free(mine);
    free(counts);
    free(displs);
    SG_MPI(MPI_Type_free(&et), "MPI_Type_free failed");
}

/* Z (in place): standardised, quantised columns; invalid rows 0. */
static void standardise(double *Z, const Local *L, MPI_Comm comm) {
    size_t K = L->K;
    ReproSum *s = sg_xcalloc(2 * K, sizeof(ReproSum));
    for (size_t k = 0; k < K; k++)
        for (size_t i = 0; i < L->M_loc; i++)
            if (L->valid[i]) repro_add(&s[k], Z[k * L->M_loc + i]);
    repro_allreduce(s, K, comm);
    double *mean = sg_xcalloc(K, sizeof(double));
    for (size_t k = 0; k < K; k++) mean[k] = repro_value(s[k]) / (double)L->M_valid;
    for (size_t k = 0; k < K; k++)
        for (size_t i = 0; i < L->M_loc; i++)
            if (L->valid[i]) {
                double c = Z[k * L->M_loc + i] - mean[k];
                repro_add(&s[K + k], c * c);
            }
    repro_allreduce(s + K, K, comm);
    /* every product and partial sum of the quantised columns stays below 2^53 ulps */
    int q = (int)floor((52.0 - ceil(log2((double)L->M_valid + 1.0))) / 2.0);
    for (size_t k = 0; k < K; k++) {
        double sd = sqrt(repro_value(s[K + k]) / (double)L->M_valid);
        for (size_t i = 0; i < L->M_loc; i++) {
            double *z = &Z[k * L->M_loc + i];
            *z = L->valid[i] && sd > 0 ? ldexp(nearbyint(ldexp((*z - mean[k]) / sd, q)), -q) : 0.0;
        }
    }
    free(s);
    free(mean);
}

/* BLACS calls return nothing (Csys2blacs_handle a table index): what can be checked is the
 * grid they built. It must be P x 1 with this rank at row p, as global_row and pearson_of assume. */
static void check_grid(int ctxt, const Local *L) {
    int nprow = -1, npcol = -1, myrow = -1, mycol = -1;
    Cblacs_gridinfo(ctxt, &nprow, &npcol, &myrow, &mycol);
    if (nprow != L->P || npcol != 1 || myrow != L->p || mycol != 0)
        sg_fatal("BLACS", "the %d x 1 process grid was not set up: got %d x %d with rank %d at (%d, %d)", L->P, nprow,
                 npcol, L->p, myrow, mycol);
}

/* C (K,K) on rank 0 = Z^T Z with pdgemm; r = C_ij / sqrt(C_ii C_jj). */
static void pearson_of(double *out, double *Z, const Local *L, int ctxt) {
    int M = (int)L->M, K = (int)L->K, MB = (int)L->MB, zero = 0, one_i = 1, info = 0;
    int lld = L->M_loc > 0 ? (int)L->M_loc : 1, myrow = L->p;
    int descZ[9], descC[9];
    descinit_(descZ, &M, &K, &MB, &K, &zero, &zero, &ctxt, &lld, &info);
    if (info != 0) sg_fatal("ScaLAPACK", "descinit of the gap matrix failed (info %d)", info);
    int P = L->P;
    int c_rows = numroc_(&K, &K, &myrow, &zero, &P), lldc = c_rows > 0 ? c_rows : 1;
    descinit_(descC, &K, &K, &K, &K, &zero, &zero, &ctxt, &lldc, &info);
    if (info != 0) sg_fatal("ScaLAPACK", "descinit of the correlation matrix failed (info %d)", info);
    double *C = sg_xcalloc((size_t)lldc * (size_t)K, sizeof(double));
    double alpha = 1.0, beta = 0.0;
    pdgemm_("T", "N", &K, &K, &M, &alpha, Z, &one_i, &one_i, descZ, Z, &one_i, &one_i, descZ, &beta, C, &one_i,
            &one_i, descC);
    if (L->p == 0)
        for (int i = 0; i < K; i++)
            for (int j = 0; j < K; j++) {
                double cii = C[i + (size_t)i * K], cjj = C[j + (size_t)j * K], cij = C[i + (size_t)j * K];
                out[(size_t)i * K + j] = i == j && cii > 0 ? 1.0 : cij / sqrt(cii * cjj);
            }
    free(C);
}

long correlate_gap(double *pearson, double *spearman, H5Out *h, const CorrInput *in, MPI_Comm comm) {
    Local L;
    memset(&L, 0, sizeof L);
    SG_MPI(MPI_Comm_size(comm, &L.P), "MPI_Comm_size failed");
    SG_MPI(MPI_Comm_rank(comm, &L.p), "MPI_Comm_rank failed");
    L.K = in->K;
    L.M = in->n * in->Wk;
    L.Bc = in->Wk >= 4096 ? 1 : 4096 / in->Wk; /* blocks of whole contexts, ~4096 tokens */
    L.MB = L.Bc * in->Wk;
    int M = (int)L.M, MB = (int)L.MB, zero = 0, p = L.p, P = L.P;
    L.M_loc = (size_t)numroc_(&M, &MB, &p, &zero, &P);
    L.G = sg_xcalloc(L.M_loc * L.K + 1, sizeof(double));
    L.valid = sg_xcalloc(L.M_loc + 1, 1);
    read_gap(&L, h, in, comm);
    if (L.M_valid < 2) {
        for (size_t i = 0; i < L.K * L.K; i++) pearson[i] = spearman[i] = NAN;
        free(L.G), free(L.valid);
        return (long)L.M_valid;
    }
    int handle = Csys2blacs_handle(comm), ctxt = handle;
    Cblacs_gridinit(&ctxt, "Row", L.P, 1);
    check_grid(ctxt, &L);
    double *R = sg_xcalloc(L.M_loc * L.K + 1, sizeof(double));
    rank_columns(R, &L, comm);
    standardise(L.G, &L, comm);
    pearson_of(pearson, L.G, &L, ctxt);
    standardise(R, &L, comm);
    pearson_of(spearman, R, &L, ctxt);
    Cblacs_gridexit(ctxt);
    Cfree_blacs_system_handle(handle);
    free(R), free(L.G), free(L.valid);
    return (long)L.M_valid;
}
