/* fuzz_common.c: MPI singleton, temp files, sg_fatal caught, HDF5 clean-up (fuzz_common.h). */
#include "fuzz_common.h"

#include "error.h"
#include "gemm.h"
#include "h5guard.h"
#include "model.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <mpi.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <dirent.h>
#include <unistd.h>

#ifndef SAEGAP_FUZZ_FIXTURE
#define SAEGAP_FUZZ_FIXTURE "tests/fuzz/fixture"
#endif

static char g_root[512];        /* per-process directory on tmpfs */
static unsigned long g_seq;     /* file names are never reused (HDF5 keeps per-file state) */
static char g_made[16][640];    /* this iteration's files and directories */
static int g_n_made;
static FILE *g_err;             /* the real stderr (libFuzzer's -close_fd_mask=2 discards fd 2) */
static jmp_buf g_jmp;
static volatile int g_armed;
static int g_fatal_crash;       /* SAEGAP_FUZZ_FATAL=crash */
static const char *g_target = "?";
static const uint8_t *g_data;
static size_t g_size;

/* messages already reported (normalised: digits removed), at most 256 kept */
static uint32_t g_seen[256];
static int g_n_seen;

uint32_t fuzz_hash(const uint8_t *data, size_t size) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < size; i++) h = (h ^ data[i]) * 16777619u;
    return h;
}

static void die(const char *what) {
    fprintf(g_err ? g_err : stderr, "saegap-fuzz: %s: %s\n", what, strerror(errno));
    abort();
}

static void remove_tree(const char *path) {
    struct stat sb;
    if (lstat(path, &sb) != 0) return;
    if (S_ISDIR(sb.st_mode)) {
        DIR *d = opendir(path);
        if (d) {
            struct dirent *e;
            while ((e = readdir(d))) {
                if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
                char sub[1024];
                snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
                remove_tree(sub);
            }
            closedir(d);
        }
        rmdir(path);
    } else {
        unlink(path);
    }
}

static void at_exit(void) {
    if (g_root[0]) remove_tree(g_root);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    int fd = dup(2);
    g_err = fd >= 0 ? fdopen(fd, "w") : stderr;
    if (g_err) setvbuf(g_err, NULL, _IOLBF, 0);
    const char *f = getenv("SAEGAP_FUZZ_FATAL");
    g_fatal_crash = f && !strcmp(f, "crash");
    int init = 0;
    MPI_Initialized(&init);
    if (!init && MPI_Init(NULL, NULL) != MPI_SUCCESS) {
        fprintf(g_err, "saegap-fuzz: MPI_Init failed\n");
        abort();
    }
    sg_set_comm(MPI_COMM_SELF, 1);
    const char *base = getenv("SAEGAP_FUZZ_TMP");
    if (!base || !base[0]) base = "/dev/shm";
    snprintf(g_root, sizeof g_root, "%s/saegap-fuzz.%ld", base, (long)getpid());
    remove_tree(g_root);
    if (mkdir(g_root, 0700) != 0) die(g_root);
    atexit(at_exit);
    return 0;
}

static const char *track(const char *path) {
    if (g_n_made == (int)(sizeof g_made / sizeof g_made[0])) {
        fprintf(g_err, "saegap-fuzz: too many files in one iteration\n");
        abort();
    }
    snprintf(g_made[g_n_made], sizeof g_made[0], "%s", path);
    return g_made[g_n_made++];
}

static void write_file(const char *path, const uint8_t *data, size_t size) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) die(path);
    for (size_t off = 0; off < size;) {
        ssize_t w = write(fd, data + off, size - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) die(path);
        off += (size_t)w;
    }
    if (close(fd) != 0) die(path);
}

const char *fuzz_write(const char *suffix, const uint8_t *data, size_t size) {
    char path[640];
    snprintf(path, sizeof path, "%s/in-%lu%s", g_root, ++g_seq, suffix ? suffix : "");
    write_file(path, data, size);
    return track(path);
}

const char *fuzz_mkdir(void) {
    char path[640];
    snprintf(path, sizeof path, "%s/dir-%lu", g_root, ++g_seq);
    if (mkdir(path, 0700) != 0) die(path);
    return track(path);
}

void fuzz_write_in(const char *dir, const char *name, const uint8_t *data, size_t size) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    write_file(path, data, size);
}

void fuzz_link_in(const char *dir, const char *name, const char *target) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (symlink(target, path) != 0) die(path);
}

void fuzz_done(void) {
    for (int i = g_n_made - 1; i >= 0; i--) remove_tree(g_made[i]);
    g_n_made = 0;
}

void fuzz_begin(const char *target, const uint8_t *data, size_t size) {
    g_target = target, g_data = data, g_size = size;
}

static Gpt2Model g_model;
static int g_model_loaded;

static void load_fixture_model(void *arg) {
    (void)arg;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/model", fuzz_fixture());
    g_model_loaded = model_load(&g_model, dir) == 0;
}

const Gpt2Model *fuzz_fixture_model(void) {
    if (!g_model_loaded) {
        gemm_set_threads(1);
        if (fuzz_guard(load_fixture_model, NULL) != 0 || !g_model_loaded) {
            fprintf(stderr, "saegap-fuzz: cannot load the fixture model %s/model\n", fuzz_fixture());
            abort();
        }
    }
    return &g_model;
}

const char *fuzz_fixture(void) {
    const char *e = getenv("SAEGAP_FUZZ_FIXTURE");
    return e && e[0] ? e : SAEGAP_FUZZ_FIXTURE;
}

/* Reports a finding that is not a crash once per kind and key (the sg_fatal call site);
 * saves the input under $SAEGAP_FUZZ_NOTES/<target>-<kind>-<hash of the input> when that is
 * a directory. */
static void note(const char *kind, const char *key, const char *msg) {
    uint32_t h = 2166136261u;
    for (const char *p = kind; *p; p++) h = (h ^ (uint8_t)*p) * 16777619u;
    for (const char *p = key; *p; p++) h = (h ^ (uint8_t)*p) * 16777619u;
    for (int i = 0; i < g_n_seen; i++)
        if (g_seen[i] == h) return;
    if (g_n_seen < 256) g_seen[g_n_seen++] = h;
    char saved[700] = "";
    const char *dir = getenv("SAEGAP_FUZZ_NOTES");
    if (dir && dir[0] && g_data) {
        snprintf(saved, sizeof saved, "%s/%s-%s-%08x", dir, g_target, kind, fuzz_hash(g_data, g_size));
        int fd = open(saved, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            ssize_t w = write(fd, g_data, g_size);
            (void)w;
            close(fd);
        } else {
            saved[0] = 0;
        }
    }
    fprintf(g_err, "saegap-fuzz: NOTE %s %s: %s%s%s%s\n", g_target, kind, msg, saved[0] ? " (input: " : "", saved,
            saved[0] ? ")" : "");
}

/* Replaces error.c's sg_fatal_at in the fuzz executables (see fuzz_common.h). */
_Noreturn void sg_fatal_at(const char *file, int line, const char *where, const char *fmt, ...) {
    char msg[SG_ERROR_MAX], full[SG_ERROR_MAX + 300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(full, sizeof full, "sg_fatal: %s: %s (%s:%d)", where ? where : "saegap", msg, file, line);
    if (!g_armed || g_fatal_crash) {
        fprintf(g_err ? g_err : stderr, "saegap-fuzz: %s\n", full);
        abort();
    }
    char key[300];
    snprintf(key, sizeof key, "%s:%d", file, line);
    note("fatal", key, full);
    longjmp(g_jmp, 1);
}

/* Replaces h5guard.c's sg_h5_fault: libhdf5 crashed or looped on a damaged file and saegap's
 * guard caught it (the user gets one message and status 1). That is the intended outcome, not
 * a finding; but libhdf5's state after a fault inside it cannot be trusted (locks, caches, the
 * damaged file still open), so this process ends here with status 0 and libFuzzer (-fork, or
 * run.sh's replay of one input per process) goes on in a fresh one. */
_Noreturn void sg_h5_fault(const char *message) {
    fprintf(g_err ? g_err : stderr, "saegap-fuzz: NOTE %s libhdf5-fault (ends this process): %s", g_target, message);
    _exit(0);
}

static long close_hdf5_unguarded(void);

/* Closes every HDF5 object still open; returns how many there were. */
static long close_hdf5(void) {
    /* closing a damaged file can crash libhdf5: the same guard as saegap's own closes */
    h5guard_enter("(fuzz clean-up: closing the HDF5 objects left open)", 1);
    long n = close_hdf5_unguarded();
    h5guard_leave();
    return n;
}

static long close_hdf5_unguarded(void) {
    ssize_t n = H5Fget_obj_count((hid_t)H5F_OBJ_ALL, H5F_OBJ_ALL);
    if (n <= 0) return 0;
    hid_t *ids = calloc((size_t)n, sizeof *ids);
    if (!ids) abort();
    n = H5Fget_obj_ids((hid_t)H5F_OBJ_ALL, H5F_OBJ_ALL, (size_t)n, ids);
    /* objects before files */
    for (int pass = 0; pass < 2; pass++)
        for (ssize_t i = 0; i < n; i++) {
            H5I_type_t t = H5Iget_type(ids[i]);
            if (pass == 0 && t == H5I_DATASET) H5Dclose(ids[i]);
            else if (pass == 0 && t == H5I_GROUP) H5Gclose(ids[i]);
            else if (pass == 0 && t == H5I_ATTR) H5Aclose(ids[i]);
            else if (pass == 0 && t == H5I_DATATYPE) H5Tclose(ids[i]);
            else if (pass == 1 && t == H5I_FILE) H5Fclose(ids[i]);
        }
    free(ids);
    return (long)n;
}

int fuzz_guard(void (*fn)(void *), void *arg) {
    sg_error_clear();
    if (setjmp(g_jmp) != 0) {
        g_armed = 0;
        h5guard_reset(); /* an sg_fatal inside a guarded read */
        close_hdf5();
        sg_error_clear();
        return -1;
    }
    g_armed = 1;
    fn(arg);
    g_armed = 0;
    long open = close_hdf5();
    if (open > 0) {
        char msg[128];
        snprintf(msg, sizeof msg, "%ld HDF5 object(s) left open after the call returned", open);
        if (g_fatal_crash) {
            fprintf(g_err, "saegap-fuzz: %s\n", msg);
            abort();
        }
        note("hdf5-leak", "", msg);
    }
    sg_error_clear();
    return 0;
}
