/* h5out.c: HDF5 reading of token matrices and the parallel result-file writer (see h5out.h). */
#define _GNU_SOURCE /* F_OFD_SETLK */
#include "h5out.h"

#include "checksum.h"
#include "error.h"
#include "h5guard.h"
#include "outfile.h"

#include <hdf5.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <time.h>
#include <unistd.h>

/* Every HDF5 call that should not fail once inputs are checked goes through this: one line
 * with the reason found at the bottom of HDF5's error stack (the OS's or MPI-IO's words, e.g.
 * "no space left on device"), then every rank ends (sg_fatal). HDF5's own stack is printed only
 * when SAEGAP_HDF5_ERRORS is set. */
#define SG_H5(call, ...)                                                               \
    do {                                                                               \
        if ((call) < 0) h5_fatal(__FILE__, __LINE__, __VA_ARGS__);                     \
    } while (0)

typedef struct { char text[512]; } H5Reason;

static herr_t collect_reason(unsigned n, const H5E_error2_t *e, void *data) {
    (void)n;
    H5Reason *r = data;
    if (e->desc && e->desc[0]) snprintf(r->text, sizeof r->text, "%s", e->desc); /* the innermost wins */
    return 0;
}

/* The OS's reason behind an HDF5 failure, on one line. */
static void h5_reason(char *buf, size_t cap) {
    H5Reason r = {""};
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect_reason, &r);
    for (char *p = r.text; *p; p++)
        if (*p == '\n' || *p == '\r' || *p == '\t') *p = ' ';
    char lower[512];
    size_t i = 0;
    for (; r.text[i] && i + 1 < sizeof lower; i++) lower[i] = (char)(r.text[i] >= 'A' && r.text[i] <= 'Z' ? r.text[i] + 32 : r.text[i]);
    lower[i] = 0;
    if (strstr(lower, "no space") || strstr(lower, "not enough space") || strstr(lower, "no_space") ||
        strstr(lower, "quota"))
        snprintf(buf, cap, "no space left on device (%s)", strstr(lower, "quota") ? "disk quota exceeded" : r.text);
    else snprintf(buf, cap, "%s", r.text[0] ? r.text : "HDF5 gave no reason");
}


/* MPI-IO often reports a failed write to HDF5 without the OS's reason (Open MPI's OMPIO prints
 * it on stderr itself): a full folder is the usual one, so say it when it is so. */
static void h5_reason_for(const char *path, char *buf, size_t cap) {
    h5_reason(buf, cap);
    if (path && !strstr(buf, "no space") && out_free_bytes(path) < ((uint64_t)64 << 10)) {
        char inner[600];
        snprintf(inner, sizeof inner, "%.500s", buf);
        snprintf(buf, cap, "no space left on device (HDF5: %.400s)", inner);
    }
}

static const char *g_h5_path; /* the result file being written, for h5_reason_for */

__attribute__((format(printf, 3, 4))) _Noreturn static void h5_fatal(const char *file, int line, const char *fmt, ...) {
    char what[1024], why[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    h5_reason_for(g_h5_path, why, sizeof why);
    if (getenv("SAEGAP_HDF5_ERRORS")) H5Eprint2(H5E_DEFAULT, stderr);
    /* the result file when there is one: the message names the file, as every other does */
    if (g_h5_path) sg_fatal_at(file, line, g_h5_path, "HDF5: %s: %s", what, why);
    sg_fatal_at(file, line, "HDF5", "%s: %s", what, why);
}

struct H5Out {
    char *path;
    int resuming, readonly;
    int dry;            /* h5out_dry: counts the bytes of the datasets, writes nothing */
    uint64_t dry_bytes;
    hid_t file;
    hid_t *dsets;
    H5OutType *types;
    char **found;       /* h5out_find_dataset's name of each handle (NULL: not found by name) */
    int n_dsets, cap_dsets;
};

static void quiet_hdf5(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }
static hid_t mem_type(H5OutType t);

/* A dataset's declared shape is only a claim: before memory is sized by it, the bytes it needs
 * must be stored in the file (a 2 KB file declaring 2.7e9 tokens would otherwise allocate and
 * zero 21 GB). Unfiltered data needs its full size stored; filtered (compressed) data at least
 * 1/1032 of it, deflate's largest ratio. An unwritten dataset (storage 0) is refused too: it
 * would read back as fill values, not tokens. */
static int stored_enough(hid_t f, hid_t d, hid_t t, size_t n, const char *dataset, char *why, size_t cap) {
    size_t tsize = H5Tget_size(t), need = 0;
    if (tsize == 0 || sg_mul_overflow(n, tsize, &need)) {
        snprintf(why, cap, "dataset '%s' declares more bytes than this machine can address", dataset);
        return -1;
    }
    if (n == 0) return 0;
    hsize_t stored = H5Dget_storage_size(d), file_bytes = 0;
    /* the file's size bounds a damaged dataset's claimed storage; the file run has open
     * for parallel writing reports none (0 or an error from H5Fget_filesize): no bound then */
    if (H5Fget_filesize(f, &file_bytes) < 0) file_bytes = 0;
    hid_t dcpl = H5Dget_create_plist(d);
    int filtered = dcpl >= 0 && H5Pget_nfilters(dcpl) > 0;
    if (dcpl >= 0) H5Pclose(dcpl);
    uint64_t can_hold = file_bytes > 0 && stored > file_bytes ? file_bytes : stored;
    if (filtered) can_hold = can_hold > UINT64_MAX / 1032 ? UINT64_MAX : can_hold * 1032;
    if (stored == 0 || (uint64_t)need > can_hold) {
        snprintf(why, cap,
                 "dataset '%s' declares %llu values (%llu bytes) but the file stores %llu bytes of it "
                 "(file of %llu bytes): damaged, truncated or never written",
                 dataset, (unsigned long long)n, (unsigned long long)need, (unsigned long long)stored,
                 (unsigned long long)file_bytes);
        return -1;
    }
    return 0;
}

static int read_int_matrix(const char *path, const char *dataset, int64_t **vals, size_t *rows, size_t *cols) {
    quiet_hdf5();
    *vals = NULL;
    if (H5Fis_hdf5(path) <= 0) return sg_errorf(path, "not an HDF5 file");
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return sg_errorf(path, "cannot open as HDF5");
    int rc = -1;
    hid_t d = H5I_INVALID_HID, s = H5I_INVALID_HID, t = H5I_INVALID_HID;
    if (H5Lexists(f, dataset, H5P_DEFAULT) <= 0) { sg_errorf(path, "has no dataset '%s'", dataset); goto done; }
    d = H5Dopen2(f, dataset, H5P_DEFAULT);
    if (d < 0) { sg_errorf(path, "'%s' is not a dataset", dataset); goto done; }
    t = H5Dget_type(d);
    if (H5Tget_class(t) != H5T_INTEGER) { sg_errorf(path, "dataset '%s' is not of an integer type", dataset); goto done; }
    s = H5Dget_space(d);
    if (s < 0) { sg_errorf(path, "cannot read the shape of dataset '%s'", dataset); goto done; }
    int nd = H5Sget_simple_extent_ndims(s);
    if (nd != 2) { sg_errorf(path, "dataset '%s' has %d dimension(s); expected [n_contexts, ctx]", dataset, nd); goto done; }
    hsize_t dims[2];
    H5Sget_simple_extent_dims(s, dims, NULL);
    *rows = dims[0], *cols = dims[1];
    size_t n = 0, bytes = 0;
    if (sg_mul_overflow(dims[0], dims[1], &n) || sg_add_overflow(n, 1, &n) || sg_mul_overflow(n, sizeof(int64_t), &bytes)) {
        sg_errorf(path, "dataset '%s' declares %llu x %llu values: more elements than this machine can address", dataset,
                  (unsigned long long)dims[0], (unsigned long long)dims[1]);
        goto done;
    }
    char why[512];
    if (stored_enough(f, d, t, n - 1, dataset, why, sizeof why) != 0) {
        sg_errorf(path, "%s", why);
        goto done;
    }
    h5guard_allow(bytes); /* checked against the stored bytes above: not libhdf5's runaway */
    *vals = sg_xcalloc(n, sizeof(int64_t));
    if (dims[0] != 0 && dims[1] != 0 && H5Dread(d, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, *vals) < 0) {
        sg_errorf(path, "cannot read dataset '%s'", dataset);
        goto done;
    }
    rc = 0;
done:
    if (t >= 0) H5Tclose(t);
    if (s >= 0) H5Sclose(s);
    if (d >= 0) H5Dclose(d);
    H5Fclose(f);
    if (rc != 0) { free(*vals); *vals = NULL; }
    return rc;
}

int h5_read_int_matrix(const char *path, const char *dataset, int64_t **vals, size_t *rows, size_t *cols) {
    h5guard_enter(path, 1);
    int r = read_int_matrix(path, dataset, vals, rows, cols);
    h5guard_leave();
    return r;
}

static H5Out *create_file(const char *path, MPI_Comm comm, unsigned flags);

H5Out *h5out_create(const char *path, MPI_Comm comm) { return create_file(path, comm, H5F_ACC_EXCL); }

H5Out *h5out_create_claimed(const char *partial, MPI_Comm comm) {
    /* TRUNC: rank 0 created (and locked) the empty file in out_partial_claim */
    return create_file(partial, comm, H5F_ACC_TRUNC);
}

/* Open MPI 4.1's MPI-IO (OMPIO) tests file locking on "<path>.locktest.<rank>" built with
 * sprintf into 256 bytes, so MPI_File_open of a longer path aborts the process ("buffer
 * overflow detected"). Such a path is refused with a message instead: -1 with a pending error. */
static int mpio_path_fits(const char *path, MPI_Comm comm) {
#ifdef OPEN_MPI
    int size = 1;
    SG_MPI(MPI_Comm_size(comm, &size), "MPI_Comm_size failed");
    char probe[32];
    int suffix = snprintf(probe, sizeof probe, ".locktest.%d", size - 1);
    size_t limit = 255 - (size_t)suffix, n = strlen(path);
    if (n > limit)
        return sg_errorf(path, "Open MPI's MPI-IO cannot open a file whose path is longer than %zu characters (it aborts "
                               "on one), this one has %zu: give a shorter path (a relative one counts from the current "
                               "folder)", limit, n);
#else
    (void)path, (void)comm;
#endif
    return 0;
}

static H5Out *create_file(const char *path, MPI_Comm comm, unsigned flags) {
    quiet_hdf5();
    if (mpio_path_fits(path, comm)) return NULL;
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    SG_H5(fapl, "creating a file-access property list");
    /* REQUIRED: every rank opens the one file through MPI-IO */
    SG_H5(H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL), "selecting the MPI-IO driver for %s", path);
    /* OPTIONAL: metadata reads and writes as collective operations (fewer small I/Os) */
    SG_H5(H5Pset_all_coll_metadata_ops(fapl, 1), "setting collective metadata reads");
    SG_H5(H5Pset_coll_metadata_write(fapl, 1), "setting collective metadata writes");
    hid_t f = H5Fcreate(path, flags, H5P_DEFAULT, fapl);
    H5Pclose(fapl);
    if (f < 0) {
        sg_errorf(path, access(path, F_OK) == 0 ? "output file already exists; refusing to overwrite it"
                                                : "cannot create the output file (does its folder exist and is it writable?)");
        return NULL;
    }
    H5Out *h = sg_xcalloc(1, sizeof *h);
    h->path = sg_xstrdup(path);
    h->file = f;
    g_h5_path = h->path;
    return h;
}

/* --resume, before anything opens the file for writing: libhdf5 1.10 opens an empty file for
 * RDWR as a new one and writes a superblock into it, so an empty or non-HDF5 file is refused
 * from a read-only look. -1 with a pending error. */
static int resumable(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return sg_errorf(path, "--resume: cannot read: %s", strerror(errno));
    struct stat sb;
    const int empty = fstat(fd, &sb) == 0 && sb.st_size == 0;
    close(fd);
    if (empty)
        return sg_errorf(path, "--resume: the file is empty (0 bytes), not a saegap result; refusing to resume it "
                               "(left as it is)");
    if (H5Fis_hdf5(path) <= 0)
        return sg_errorf(path, "--resume: not an HDF5 file (damaged, or not a saegap result; saegap verify tells); "
                               "refusing to resume it (left as it is)");
    return 0;
}

static H5Out *open_resume(const char *path, MPI_Comm comm) {
    quiet_hdf5();
    if (mpio_path_fits(path, comm)) return NULL;
    /* rank 0 looks, every rank follows: a collective open that some ranks skip would hang */
    int rank, ok = 1;
    SG_MPI(MPI_Comm_rank(comm, &rank), "MPI_Comm_rank failed");
    if (rank == 0) ok = resumable(path) == 0;
    SG_MPI(MPI_Bcast(&ok, 1, MPI_INT, 0, comm), "broadcasting whether %s can be resumed", path);
    if (!ok) {
        if (rank != 0) sg_errorf(path, "--resume: refused by rank 0");
        return NULL;
    }
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    SG_H5(fapl, "creating a file-access property list");
    SG_H5(H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL), "selecting the MPI-IO driver for %s", path);
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, fapl);
    H5Pclose(fapl);
    if (f < 0) {
        sg_errorf(path, "--resume: cannot open as HDF5 (damaged, or not a saegap result; saegap verify tells)");
        return NULL;
    }
    H5Out *h = sg_xcalloc(1, sizeof *h);
    h->path = sg_xstrdup(path);
    h->file = f;
    h->resuming = 1;
    g_h5_path = h->path;
    return h;
}

H5Out *h5out_open(const char *path, MPI_Comm comm) {
    h5guard_enter(path, 0);
    H5Out * r = open_resume(path, comm);
    h5guard_leave();
    return r;
}

static int get_attr_unguarded(H5Out *h, const char *obj, const char *name, hid_t mtype, void *out) {
    if (H5Oexists_by_name(h->file, obj, H5P_DEFAULT) <= 0) return -1;
    hid_t o = H5Oopen(h->file, obj, H5P_DEFAULT);
    if (o < 0) return -1;
    int rc = -1;
    if (H5Aexists(o, name) > 0) {
        hid_t a = H5Aopen(o, name, H5P_DEFAULT);
        if (a >= 0) {
            /* the caller's buffer holds one value of its class: a damaged attribute with more
             * elements (libhdf5 would write them all past it) or of another class is "absent" */
            hid_t sp = H5Aget_space(a), ft = H5Aget_type(a);
            int one = sp >= 0 && H5Sget_simple_extent_npoints(sp) == 1;
            int same = ft >= 0 && H5Tget_class(ft) == H5Tget_class(mtype);
            if (sp >= 0) H5Sclose(sp);
            if (ft >= 0) H5Tclose(ft);
            if (one && same) rc = H5Aread(a, mtype, out) < 0 ? -1 : 0;
            H5Aclose(a);
        }
    }
    H5Oclose(o);
    return rc;
}

static int get_attr(H5Out *h, const char *obj, const char *name, hid_t mtype, void *out) {
    h5guard_enter(h->path, 1);
    int r = get_attr_unguarded(h, obj, name, mtype, out);
    h5guard_leave();
    return r;
}

int h5out_get_attr_i64(H5Out *h, const char *obj, const char *name, int64_t *v) {
    return get_attr(h, obj, name, H5T_NATIVE_INT64, v);
}

int h5out_get_attr_f64(H5Out *h, const char *obj, const char *name, double *v) {
    return get_attr(h, obj, name, H5T_NATIVE_DOUBLE, v);
}

int h5out_get_attr_str(H5Out *h, const char *obj, const char *name, char *buf, size_t cap) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    char *s = NULL;
    int rc = get_attr(h, obj, name, t, &s);
    if (rc == 0 && s) {
        snprintf(buf, cap, "%s", s);
        H5free_memory(s);
    }
    H5Tclose(t);
    return rc;
}

static hid_t file_type(H5OutType t) {
    switch (t) {
    case H5OUT_F32: return H5T_IEEE_F32LE;
    case H5OUT_F64: return H5T_IEEE_F64LE;
    case H5OUT_I32: return H5T_STD_I32LE;
    case H5OUT_I64: return H5T_STD_I64LE;
    }
    return H5T_IEEE_F32LE;
}

static hid_t mem_type(H5OutType t) {
    switch (t) {
    case H5OUT_F32: return H5T_NATIVE_FLOAT;
    case H5OUT_F64: return H5T_NATIVE_DOUBLE;
    case H5OUT_I32: return H5T_NATIVE_INT32;
    case H5OUT_I64: return H5T_NATIVE_INT64;
    }
    return H5T_NATIVE_FLOAT;
}

static int add_handle(H5Out *h, hid_t d, H5OutType type) {
    if (h->n_dsets == h->cap_dsets) {
        h->cap_dsets = h->cap_dsets ? 2 * h->cap_dsets : 16;
        h->dsets = sg_xrealloc(h->dsets, (size_t)h->cap_dsets * sizeof *h->dsets);
        h->types = sg_xrealloc(h->types, (size_t)h->cap_dsets * sizeof *h->types);
        h->found = sg_xrealloc(h->found, (size_t)h->cap_dsets * sizeof *h->found);
    }
    h->dsets[h->n_dsets] = d;
    h->types[h->n_dsets] = type;
    h->found[h->n_dsets] = NULL;
    return h->n_dsets++;
}

int h5out_dims(H5Out *h, int ds, int *ndims, uint64_t *dims) {
    if (h->dry || ds < 0 || ds >= h->n_dsets) return -1;
    hid_t sp = H5Dget_space(h->dsets[ds]);
    int nd = sp < 0 ? -1 : H5Sget_simple_extent_ndims(sp);
    hsize_t got[8];
    if (nd >= 0 && nd <= 8) H5Sget_simple_extent_dims(sp, got, NULL);
    if (sp >= 0) H5Sclose(sp);
    if (nd < 0 || nd > 8) return -1;
    *ndims = nd;
    for (int i = 0; i < nd; i++) dims[i] = got[i];
    return 0;
}

/* --resume: the stored type must be the one saegap creates the dataset with. libhdf5 converts
 * on every write, and a damaged float type crashed its conversion (H5T__conv_f_f, found by
 * fuzzing). */
static void require_stored_type(const H5Out *h, hid_t d, const char *name, hid_t want) {
    hid_t t = H5Dget_type(d);
    const htri_t same = t < 0 ? -1 : H5Tequal(t, want);
    if (t >= 0) H5Tclose(t);
    if (same <= 0)
        sg_fatal(h->path, "--resume: dataset %s is not stored as the type saegap writes (damaged file? saegap verify tells)",
                 name);
}

/* --resume: the dataset must exist with this shape (the job check makes a mismatch unlikely;
 * a damaged file lands here). */
static int open_dataset_unguarded(H5Out *h, const char *name, H5OutType type, int ndims, const uint64_t *dims) {
    hid_t d = H5Dopen2(h->file, name, H5P_DEFAULT);
    if (d < 0) sg_fatal(h->path, "--resume: dataset %s is missing (damaged file? saegap verify tells)", name);
    hid_t sp = H5Dget_space(d);
    hsize_t got[8];
    int nd = sp < 0 ? -1 : H5Sget_simple_extent_ndims(sp);
    if (nd < 0 || nd > 8) sg_fatal(h->path, "--resume: the shape of dataset %s is unreadable (damaged file? saegap verify tells)", name);
    H5Sget_simple_extent_dims(sp, got, NULL);
    H5Sclose(sp);
    int ok = nd == ndims;
    for (int i = 0; ok && i < nd; i++) ok = got[i] == dims[i];
    if (!ok) sg_fatal(h->path, "--resume: dataset %s has another shape than this job needs", name);
    require_stored_type(h, d, name, file_type(type));
    return add_handle(h, d, type);
}

static int open_dataset(H5Out *h, const char *name, H5OutType type, int ndims, const uint64_t *dims) {
    h5guard_enter(h->path, 1);
    int r = open_dataset_unguarded(h, name, type, ndims, dims);
    h5guard_leave();
    return r;
}

int h5out_resuming(const H5Out *h) { return h->resuming; }

static H5Out *open_readonly(const char *path) {
    quiet_hdf5();
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        /* not "cannot be read as an HDF5 file": an unreadable good result is not damaged */
        if (errno == ENOENT) sg_errorf(path, "no such file");
        else sg_errorf(path, "cannot read: %s", strerror(errno));
        return NULL;
    }
    close(fd);
    if (H5Fis_hdf5(path) <= 0) {
        sg_errorf(path, "cannot be read as an HDF5 file");
        return NULL;
    }
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        sg_errorf(path, "cannot be opened as HDF5 (truncated or damaged)");
        return NULL;
    }
    H5Out *h = sg_xcalloc(1, sizeof *h);
    h->path = sg_xstrdup(path);
    h->file = f;
    h->resuming = 1;
    h->readonly = 1;
    return h;
}

H5Out *h5out_open_readonly(const char *path) {
    h5guard_enter(path, 1);
    H5Out * r = open_readonly(path);
    h5guard_leave();
    return r;
}

static int find_dataset(H5Out *h, const char *name, H5OutType type, int *ndims, uint64_t *dims) {
    /* verify looks the same datasets up once per unit: one handle each, not one per lookup */
    for (int i = 0; i < h->n_dsets; i++)
        if (h->found[i] && h->types[i] == type && !strcmp(h->found[i], name)) return h5out_dims(h, i, ndims, dims) ? -1 : i;
    if (H5Lexists(h->file, name, H5P_DEFAULT) <= 0) return -1;
    hid_t d = H5Dopen2(h->file, name, H5P_DEFAULT);
    if (d < 0) return -1;
    hid_t sp = H5Dget_space(d);
    hsize_t got[8];
    int nd = sp < 0 ? -1 : H5Sget_simple_extent_ndims(sp);
    if (nd < 0 || nd > 8) {
        if (sp >= 0) H5Sclose(sp);
        H5Dclose(d);
        return -1;
    }
    H5Sget_simple_extent_dims(sp, got, NULL);
    H5Sclose(sp);
    /* its declared shape sizes the callers' buffers: it must be stored (stored_enough) */
    size_t n = 1;
    for (int i = 0; i < nd; i++)
        if (sg_mul_overflow(n, got[i], &n)) n = SIZE_MAX;
    hid_t t = H5Dget_type(d);
    char why[512];
    int ok = t >= 0 && n != SIZE_MAX && stored_enough(h->file, d, t, n, name, why, sizeof why) == 0;
    if (t >= 0) H5Tclose(t);
    if (!ok) {
        H5Dclose(d);
        return -1;
    }
    *ndims = nd;
    for (int i = 0; i < nd; i++) dims[i] = got[i];
    int ds = add_handle(h, d, type);
    h->found[ds] = sg_xstrdup(name);
    return ds;
}

int h5out_find_dataset(H5Out *h, const char *name, H5OutType type, int *ndims, uint64_t *dims) {
    h5guard_enter(h->path, 1);
    int r = find_dataset(h, name, type, ndims, dims);
    h5guard_leave();
    return r;
}

static int try_read_rows(H5Out *h, int ds, uint64_t row0, uint64_t nrows, void *data) {
    hid_t d = h->dsets[ds];
    hid_t fspace = H5Dget_space(d);
    if (fspace < 0) return -1;
    int nd = H5Sget_simple_extent_ndims(fspace), rc = -1;
    hsize_t dims[8], start[8] = {0}, count[8];
    if (nd < 1 || nd > 8) {
        H5Sclose(fspace);
        return -1;
    }
    H5Sget_simple_extent_dims(fspace, dims, NULL);
    for (int i = 0; i < nd; i++) count[i] = dims[i];
    start[0] = row0, count[0] = nrows;
    if (nrows <= dims[0] && row0 <= dims[0] - nrows &&
        H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, NULL, count, NULL) >= 0) {
        hid_t mspace = H5Screate_simple(nd, count, NULL);
        if (mspace >= 0) {
            rc = H5Dread(d, mem_type(h->types[ds]), mspace, fspace, H5P_DEFAULT, data) < 0 ? -1 : 0;
            H5Sclose(mspace);
        }
    }
    H5Sclose(fspace);
    return rc;
}

int h5out_try_read_rows(H5Out *h, int ds, uint64_t row0, uint64_t nrows, void *data) {
    h5guard_enter(h->path, 1);
    int r = try_read_rows(h, ds, row0, nrows, data);
    h5guard_leave();
    return r;
}

static size_t type_size(H5OutType t) { return t == H5OUT_F32 || t == H5OUT_I32 ? 4 : 8; }

static int create_dataset(H5Out *h, const char *name, H5OutType type, int ndims, const uint64_t *dims);

int h5out_dataset(H5Out *h, const char *name, H5OutType type, int ndims, const uint64_t *dims) {
    if (h->dry) {
        uint64_t n = type_size(type);
        for (int i = 0; i < ndims; i++) n *= dims[i];
        h->dry_bytes += n;
        return add_handle(h, -1, type);
    }
    if (h->resuming) return open_dataset(h, name, type, ndims, dims);
    return create_dataset(h, name, type, ndims, dims);
}

int h5out_dataset_added(H5Out *h, const char *name, H5OutType type, int ndims, const uint64_t *dims) {
    if (h->dry || !h->resuming) return h5out_dataset(h, name, type, ndims, dims);
    h5guard_enter(h->path, 1);
    /* each prefix in turn: H5Lexists fails (not 0) below a group that does not exist */
    htri_t there = 1;
    char prefix[512];
    for (const char *p = name; there > 0 && p; p = strchr(p + 1, '/')) {
        size_t len = strcspn(p + (*p == '/'), "/") + (size_t)(p - name) + (*p == '/');
        if (len >= sizeof prefix) sg_fatal(h->path, "dataset name %s too long", name);
        memcpy(prefix, name, len), prefix[len] = '\0';
        there = H5Lexists(h->file, prefix, H5P_DEFAULT);
    }
    if (there > 0) {
        int r = open_dataset_unguarded(h, name, type, ndims, dims);
        h5guard_leave();
        return r;
    }
    h5guard_leave();
    return create_dataset(h, name, type, ndims, dims);
}

static int create_dataset(H5Out *h, const char *name, H5OutType type, int ndims, const uint64_t *dims) {
    hsize_t hd[8];
    for (int i = 0; i < ndims && i < 8; i++) hd[i] = dims[i];
    hid_t space = H5Screate_simple(ndims, hd, NULL);
    SG_H5(space, "creating the dataspace of %s", name);
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    SG_H5(H5Pset_create_intermediate_group(lcpl, 1), "setting intermediate group creation");
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    /* REQUIRED for crash safety: space allocated now, so later writes touch raw data only */
    SG_H5(H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY), "setting early allocation");
    /* Unwritten elements read back as NaN (floats): "not measured", never a plausible 0 */
    if (type == H5OUT_F32) {
        float nan = __builtin_nanf("");
        SG_H5(H5Pset_fill_value(dcpl, H5T_NATIVE_FLOAT, &nan), "setting the fill value");
    } else if (type == H5OUT_F64) {
        double nan = __builtin_nan("");
        SG_H5(H5Pset_fill_value(dcpl, H5T_NATIVE_DOUBLE, &nan), "setting the fill value");
    }
    SG_H5(H5Pset_fill_time(dcpl, H5D_FILL_TIME_ALLOC), "setting the fill time");
    hid_t d = H5Dcreate2(h->file, name, file_type(type), space, lcpl, dcpl, H5P_DEFAULT);
    SG_H5(d, "creating dataset %s in %s", name, h->path);
    H5Pclose(dcpl);
    H5Pclose(lcpl);
    H5Sclose(space);
    return add_handle(h, d, type);
}

/* File and memory dataspaces selecting rows [row0, row0+nrows) along the first dimension. */
static void select_rows(H5Out *h, int ds, uint64_t row0, uint64_t nrows, hid_t *fspace, hid_t *mspace) {
    *fspace = H5Dget_space(h->dsets[ds]);
    SG_H5(*fspace, "getting a dataspace of %s", h->path);
    int nd = H5Sget_simple_extent_ndims(*fspace);
    if (nd < 1 || nd > 8) sg_fatal(h->path, "a dataset of rank %d (1 to 8 expected)", nd);
    hsize_t dims[8], start[8] = {0}, count[8];
    H5Sget_simple_extent_dims(*fspace, dims, NULL);
    for (int i = 0; i < nd; i++) count[i] = dims[i];
    start[0] = row0, count[0] = nrows;
    SG_H5(H5Sselect_hyperslab(*fspace, H5S_SELECT_SET, start, NULL, count, NULL), "selecting rows of %s", h->path);
    *mspace = H5Screate_simple(nd, count, NULL);
    SG_H5(*mspace, "creating a memory dataspace for %s", h->path);
}

/* independent transfers: ranks finish their units at different times (no collective rounds) */
static hid_t independent_dxpl(void) {
    hid_t dxpl = H5Pcreate(H5P_DATASET_XFER);
    SG_H5(H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_INDEPENDENT), "setting independent transfers");
    return dxpl;
}

/* Tests only: SAEGAP_FAULT_WRITE_ROWS=N makes this rank's N-th row write fail as a failed
 * write would, to check that a write error mid-run ends every rank and keeps finished units. */
static void fault_injection(const H5Out *h) {
    static long countdown = -2;
    if (countdown == -2) {
        const char *v = getenv("SAEGAP_FAULT_WRITE_ROWS");
        countdown = v ? atol(v) : -1;
    }
    if (countdown > 0 && --countdown == 0)
        sg_fatal("HDF5", "writing rows of %s: injected write fault (SAEGAP_FAULT_WRITE_ROWS)", h->path);
}

void h5out_write_rows(H5Out *h, int ds, uint64_t row0, uint64_t nrows, const void *data) {
    if (h->dry) return;
    fault_injection(h);
    hid_t fspace, mspace, dxpl = independent_dxpl();
    select_rows(h, ds, row0, nrows, &fspace, &mspace);
    SG_H5(H5Dwrite(h->dsets[ds], mem_type(h->types[ds]), mspace, fspace, dxpl, data), "writing rows %llu..%llu of %s",
          (unsigned long long)row0, (unsigned long long)(row0 + nrows), h->path);
    H5Pclose(dxpl);
    H5Sclose(mspace);
    H5Sclose(fspace);
}

void h5out_read_rows(H5Out *h, int ds, uint64_t row0, uint64_t nrows, void *data) {
    hid_t fspace, mspace, dxpl = independent_dxpl();
    select_rows(h, ds, row0, nrows, &fspace, &mspace);
    SG_H5(H5Dread(h->dsets[ds], mem_type(h->types[ds]), mspace, fspace, dxpl, data), "reading rows %llu..%llu of %s",
          (unsigned long long)row0, (unsigned long long)(row0 + nrows), h->path);
    H5Pclose(dxpl);
    H5Sclose(mspace);
    H5Sclose(fspace);
}

#define H5OUT_STRLEN 128

static hid_t string_type(void) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5OUT_STRLEN);
    H5Tset_strpad(t, H5T_STR_NULLTERM);
    H5Tset_cset(t, H5T_CSET_UTF8);
    return t;
}

int h5out_dataset_strings(H5Out *h, const char *name, uint64_t n) {
    if (h->dry) {
        h->dry_bytes += n * H5OUT_STRLEN;
        return add_handle(h, -1, H5OUT_I32);
    }
    if (h->resuming) {
        h5guard_enter(h->path, 1);
        hid_t d = H5Dopen2(h->file, name, H5P_DEFAULT);
        if (d < 0) sg_fatal(h->path, "--resume: dataset %s is missing", name);
        hid_t want = string_type();
        require_stored_type(h, d, name, want);
        H5Tclose(want);
        h5guard_leave();
        return add_handle(h, d, H5OUT_I32);
    }
    hsize_t dims[1] = {n};
    hid_t space = H5Screate_simple(1, dims, NULL);
    SG_H5(space, "creating the dataspace of %s", name);
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    SG_H5(H5Pset_create_intermediate_group(lcpl, 1), "setting intermediate group creation");
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    SG_H5(H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY), "setting early allocation");
    hid_t t = string_type();
    hid_t d = H5Dcreate2(h->file, name, t, space, lcpl, dcpl, H5P_DEFAULT);
    SG_H5(d, "creating dataset %s in %s", name, h->path);
    H5Tclose(t);
    H5Pclose(dcpl);
    H5Pclose(lcpl);
    H5Sclose(space);
    return add_handle(h, d, H5OUT_I32); /* type unused for strings */
}

void h5out_write_strings(H5Out *h, int ds, const char *const *strings, uint64_t n) {
    if (h->dry) return;
    char *buf = sg_xcalloc(n ? n : 1, H5OUT_STRLEN);
    for (uint64_t i = 0; i < n; i++) snprintf(buf + i * H5OUT_STRLEN, H5OUT_STRLEN, "%s", strings[i]);
    hid_t t = string_type();
    hid_t dxpl = H5Pcreate(H5P_DATASET_XFER);
    SG_H5(H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_INDEPENDENT), "setting independent transfers");
    SG_H5(H5Dwrite(h->dsets[ds], t, H5S_ALL, H5S_ALL, dxpl, buf), "writing strings in %s", h->path);
    H5Pclose(dxpl);
    H5Tclose(t);
    free(buf);
}

static hid_t open_obj(H5Out *h, const char *obj) {
    hid_t o = H5Oopen(h->file, obj, H5P_DEFAULT);
    SG_H5(o, "opening %s in %s", obj, h->path);
    return o;
}

static void write_attr(H5Out *h, const char *obj, const char *name, hid_t ftype, hid_t mtype, const void *value) {
    if (h->dry) return;
    hid_t o = open_obj(h, obj);
    if (H5Aexists(o, name) > 0) {
        /* the same type and one value: rewritten in place, so the metadata needs no new space
         * (resultfile.c creates the end of the run's attributes up front for this) */
        hid_t a = H5Aopen(o, name, H5P_DEFAULT), t = a < 0 ? -1 : H5Aget_type(a), sp = a < 0 ? -1 : H5Aget_space(a);
        int same = t >= 0 && sp >= 0 && H5Tequal(t, ftype) > 0 && H5Sget_simple_extent_type(sp) == H5S_SCALAR;
        if (sp >= 0) H5Sclose(sp);
        if (t >= 0) H5Tclose(t);
        if (same) SG_H5(H5Awrite(a, mtype, value), "writing attribute %s on %s", name, obj);
        if (a >= 0) H5Aclose(a);
        if (same) {
            H5Oclose(o);
            return;
        }
        SG_H5(H5Adelete(o, name), "replacing attribute %s", name);
    }
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(o, name, ftype, space, H5P_DEFAULT, H5P_DEFAULT);
    SG_H5(a, "creating attribute %s on %s", name, obj);
    SG_H5(H5Awrite(a, mtype, value), "writing attribute %s on %s", name, obj);
    H5Aclose(a);
    H5Sclose(space);
    H5Oclose(o);
}

void h5out_attr_str(H5Out *h, const char *obj, const char *name, const char *value) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    write_attr(h, obj, name, t, t, &value);
    H5Tclose(t);
}

void h5out_attr_i64(H5Out *h, const char *obj, const char *name, int64_t value) {
    write_attr(h, obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value);
}

void h5out_attr_f64(H5Out *h, const char *obj, const char *name, double value) {
    write_attr(h, obj, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &value);
}

void h5out_attr_provenance(H5Out *h, const char *command_line) {
    char created[32];
    time_t now = time(NULL);
    strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    h5out_attr_str(h, "/", "saegap_version", SAEGAP_VERSION);
    h5out_attr_str(h, "/", "command_line", command_line);
    h5out_attr_str(h, "/", "created", created);
}

void h5out_flush(H5Out *h) {
    if (h->dry) return;
    SG_H5(H5Fflush(h->file, H5F_SCOPE_GLOBAL), "flushing %s", h->path);
}

H5Out *h5out_dry(void) {
    H5Out *h = sg_xcalloc(1, sizeof *h);
    h->dry = 1;
    h->file = -1;
    h->path = sg_xstrdup("(dry)");
    return h;
}

uint64_t h5out_dry_bytes(const H5Out *h) { return h->dry_bytes; }

void h5out_close(H5Out *h) {
    if (!h) return;
    for (int i = 0; i < h->n_dsets; i++) free(h->found[i]);
    free(h->found);
    if (h->dry) {
        free(h->dsets), free(h->types), free(h->path), free(h);
        return;
    }
    /* closing flushes libhdf5's caches of what it read: a damaged user's file can crash it here
     * too (guarded; no CPU watchdog when other ranks may be waiting in the close) */
    if (h->resuming) h5guard_enter(h->path, h->readonly);
    for (int i = 0; i < h->n_dsets; i++) H5Dclose(h->dsets[i]);
    if (g_h5_path == h->path) g_h5_path = NULL;
    if (h->readonly) H5Fclose(h->file); /* a damaged file may fail to close: nothing was written */
    else {
        SG_H5(H5Fclose(h->file), "closing %s", h->path);
    }
    if (h->resuming) h5guard_leave();
    free(h->dsets);
    free(h->types);
    free(h->path);
    free(h);
}

/* ---- final checksum: every dataset written after the units, visited in name order ---- */

/* file: stored_enough needs the file's id (H5Fget_filesize); H5Ovisit2 hands the callback the
 * location it started from, which is not one */
typedef struct {
    uint64_t h;
    int bad;
    int (*wanted)(const char *);
    int (*attr_wanted)(const char *object, const char *attr); /* NULL: no attributes */
    hid_t file;
    const char *object; /* the object whose attributes fold_attribute sees */
} FinalSum;

/* Folds the dataset's bytes into fs->h in blocks of whole rows of about 8 MB: the same hash as
 * one read of the whole dataset, in memory that does not grow with the file (verify runs on
 * a login node beside other users' jobs). */
static int fold_rows(FinalSum *fs, hid_t d, hid_t t, hid_t fspace, size_t total_bytes) {
    hsize_t dims[8], start[8] = {0}, count[8];
    int nd = H5Sget_simple_extent_ndims(fspace);
    if (nd < 0 || nd > 8) return -1;
    H5Sget_simple_extent_dims(fspace, dims, NULL);
    if (total_bytes == 0) return 0;
    size_t row_bytes = nd == 0 || dims[0] == 0 ? total_bytes : total_bytes / dims[0];
    hsize_t rows = nd == 0 ? 1 : dims[0], block = (hsize_t)((8u << 20) / (row_bytes ? row_bytes : 1));
    if (block < 1) block = 1;
    if (block > rows) block = rows;
    hid_t mt = H5Tget_native_type(t, H5T_DIR_ASCEND);
    unsigned char *buf = sg_xcalloc((size_t)block, row_bytes);
    int rc = mt < 0 ? -1 : 0;
    for (hsize_t r0 = 0; rc == 0 && r0 < rows; r0 += block) {
        hsize_t n = rows - r0 < block ? rows - r0 : block;
        hid_t ms = H5S_ALL, fs_sel = H5S_ALL;
        if (nd > 0) {
            for (int i = 0; i < nd; i++) count[i] = dims[i];
            start[0] = r0, count[0] = n;
            fs_sel = H5Scopy(fspace);
            ms = H5Screate_simple(nd, count, NULL);
            if (fs_sel < 0 || ms < 0 || H5Sselect_hyperslab(fs_sel, H5S_SELECT_SET, start, NULL, count, NULL) < 0) rc = -1;
        }
        if (rc == 0 && H5Dread(d, mt, ms, fs_sel, H5P_DEFAULT, buf) < 0) rc = -1;
        if (rc == 0) fs->h = fnv1a(fs->h, buf, (size_t)n * row_bytes);
        if (nd > 0) {
            if (ms >= 0) H5Sclose(ms);
            if (fs_sel >= 0) H5Sclose(fs_sel);
        }
    }
    if (mt >= 0) H5Tclose(mt);
    free(buf);
    return rc;
}

/* An attribute's value, whatever type h5py or saegap stored it with: strings as their bytes,
 * integers as int64, floats as double (so that the value, not the storage, is checksummed).
 * Anything else, or more than 4096 values, is not a saegap attribute: -1. */
#define ATTR_FOLD_MAX 4096
static int fold_attribute_value(FinalSum *fs, hid_t a) {
    hid_t t = H5Aget_type(a), sp = H5Aget_space(a);
    hssize_t n = sp < 0 ? -1 : H5Sget_simple_extent_npoints(sp);
    H5T_class_t cls = t < 0 ? H5T_NO_CLASS : H5Tget_class(t);
    int rc = -1;
    if (n < 0 || n > ATTR_FOLD_MAX) goto done;
    if (cls == H5T_INTEGER || cls == H5T_FLOAT) {
        void *buf = sg_xcalloc((size_t)(n ? n : 1), 8);
        rc = H5Aread(a, cls == H5T_INTEGER ? H5T_NATIVE_INT64 : H5T_NATIVE_DOUBLE, buf) < 0 ? -1 : 0;
        if (rc == 0) fs->h = fnv1a(fs->h, buf, (size_t)n * 8);
        free(buf);
    } else if (cls == H5T_STRING && H5Tis_variable_str(t) > 0) {
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, H5T_VARIABLE);
        H5Tset_cset(mt, H5Tget_cset(t));
        char **strs = sg_xcalloc((size_t)(n ? n : 1), sizeof *strs);
        rc = H5Aread(a, mt, strs) < 0 ? -1 : 0;
        for (hssize_t i = 0; i < n; i++) {
            if (rc == 0) fs->h = fnv1a(fs->h, strs[i] ? strs[i] : "", strs[i] ? strlen(strs[i]) + 1 : 1);
            if (strs[i]) H5free_memory(strs[i]);
        }
        free(strs);
        H5Tclose(mt);
    } else if (cls == H5T_STRING) {
        size_t len = H5Tget_size(t), bytes = 0;
        if (len == 0 || len > (1u << 16) || sg_mul_overflow(len, (size_t)(n ? n : 1), &bytes)) goto done;
        char *buf = sg_xcalloc(bytes, 1);
        rc = H5Aread(a, t, buf) < 0 ? -1 : 0;
        if (rc == 0) fs->h = fnv1a(fs->h, buf, bytes);
        free(buf);
    }
done:
    if (sp >= 0) H5Sclose(sp);
    if (t >= 0) H5Tclose(t);
    return rc;
}

static herr_t fold_attribute(hid_t obj, const char *name, const H5A_info_t *info, void *op) {
    (void)info;
    FinalSum *fs = op;
    if (!fs->attr_wanted(fs->object, name)) return 0;
    fs->h = fnv1a(fs->h, fs->object, strlen(fs->object) + 1);
    fs->h = fnv1a(fs->h, name, strlen(name) + 1);
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a < 0 || fold_attribute_value(fs, a) != 0) fs->bad = 1;
    if (a >= 0) H5Aclose(a);
    return 0;
}

static herr_t fold_object(hid_t loc, const char *name, const H5O_info_t *info, void *op) {
    FinalSum *fs = op;
    if (fs->attr_wanted && (info->type == H5O_TYPE_GROUP || info->type == H5O_TYPE_DATASET)) {
        /* the object's attributes in name order, before its data */
        fs->object = name;
        hsize_t idx = 0;
        if (H5Aiterate_by_name(loc, name, H5_INDEX_NAME, H5_ITER_INC, &idx, fold_attribute, fs, H5P_DEFAULT) < 0)
            fs->bad = 1;
    }
    if (info->type != H5O_TYPE_DATASET) return 0;
    if (!fs->wanted(name)) return 0;
    hid_t d = H5Dopen2(loc, name, H5P_DEFAULT);
    if (d < 0) { fs->bad = 1; return 0; }
    hid_t t = H5Dget_type(d), sp = H5Dget_space(d);
    hssize_t npts = H5Sget_simple_extent_npoints(sp);
    size_t tsize = H5Tget_size(t);
    char why[512];
    if (npts < 0 || tsize == 0 || stored_enough(fs->file, d, t, (size_t)npts, name, why, sizeof why) != 0) fs->bad = 1;
    else {
        fs->h = fnv1a(fs->h, name, strlen(name));
        if (fold_rows(fs, d, t, sp, (size_t)npts * tsize) != 0) fs->bad = 1;
    }
    H5Sclose(sp);
    H5Tclose(t);
    H5Dclose(d);
    return 0;
}

static int checksum_final(H5Out *h, int (*wanted)(const char *), int (*attr_wanted)(const char *, const char *),
                          uint64_t *sum) {
    FinalSum fs = {FNV1A_INIT, 0, wanted, attr_wanted, h->file, ""};
    if (H5Ovisit2(h->file, H5_INDEX_NAME, H5_ITER_INC, fold_object, &fs, H5O_INFO_BASIC) < 0) fs.bad = 1;
    *sum = fs.h;
    return fs.bad ? -1 : 0;
}

int h5out_checksum_final(H5Out *h, int (*wanted)(const char *dataset),
                         int (*attr_wanted)(const char *object, const char *attr), uint64_t *sum) {
    h5guard_enter(h->path, 1);
    int rc = checksum_final(h, wanted, attr_wanted, sum);
    h5guard_leave();
    return rc;
}

void h5out_renamed(H5Out *h, const char *path) {
    free(h->path);
    h->path = sg_xstrdup(path);
    g_h5_path = h->path;
}
