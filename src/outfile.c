/* outfile.c: a result file's creation under a temporary name, its lock, its disk space and
 * its final name (outfile.h). No HDF5 here: these are the operating system's files. */
#define _GNU_SOURCE /* F_OFD_SETLK, fallocate */
#include "outfile.h"

#include "error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <dirent.h>
#include <unistd.h>

static int lock_fd(int fd, const char *path);

int out_partial_path(const char *path, char *buf, size_t cap) {
    int n = snprintf(buf, cap, "%s.creating", path);
    return n < 0 || (size_t)n >= cap ? sg_errorf(path, "path too long") : 0;
}

int out_partial_claim(const char *out, const char *partial) {
    for (int attempt = 0; attempt < 2; attempt++) {
        int fd = open(partial, O_RDWR | O_CREAT | O_EXCL, 0666);
        if (fd >= 0) return lock_fd(fd, partial);
        if (errno != EEXIST)
            return sg_errorf(out, "cannot create the output file (does its folder exist and is it writable?): %s",
                             strerror(errno));
        /* there already: another run creating it (locked), or what a killed run left (unlocked) */
        int lfd = out_lock_acquire(partial);
        if (lfd < 0) return -1;
        int rc = unlink(partial) == 0 ? 0 : -1, e = errno;
        out_lock_release(lfd);
        if (rc != 0)
            return sg_errorf(partial, "cannot remove this half-created result of an interrupted run: %s", strerror(e));
    }
    return sg_errorf(partial, "another saegap run keeps creating this file; refusing a second writer");
}

int out_publish(const char *partial, const char *path, MPI_Comm comm) {
    int rank, rc = 0;
    SG_MPI(MPI_Comm_rank(comm, &rank), "rank");
    SG_MPI(MPI_Barrier(comm), "barrier before naming %s", path);
    if (rank == 0) {
        if (link(partial, path) == 0) {
            if (unlink(partial) != 0) rc = sg_errorf(partial, "cannot remove after linking it to %s: %s", path, strerror(errno));
        } else if (errno == EEXIST) {
            rc = sg_errorf(path, "output file already exists (created while this run started); refusing to overwrite it");
        } else if (errno == EPERM || errno == ENOTSUP || errno == EOPNOTSUPP || errno == EMLINK) {
            /* no hard links on this filesystem: rename, after checking the name is still free */
            if (access(path, F_OK) == 0)
                rc = sg_errorf(path, "output file already exists (created while this run started); refusing to overwrite it");
            else if (rename(partial, path) != 0)
                rc = sg_errorf(path, "cannot rename %s to it: %s", partial, strerror(errno));
        } else {
            rc = sg_errorf(path, "cannot give %s its final name: %s", partial, strerror(errno));
        }
    }
    return sg_agree(comm, rc) ? -1 : 0;
}

int out_lock_acquire(const char *path) {
    int fd = open(path, O_RDWR);
    if (fd < 0) return sg_errorf(path, "cannot open to lock: %s", strerror(errno));
    return lock_fd(fd, path);
}

/* Takes the writer lock on fd (open on path): fd, or -1 (fd closed) with a pending error. */
static int lock_fd(int fd, const char *path) {
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
    if (fcntl(fd, F_OFD_SETLK, &fl) != 0) {
        int e = errno;
        close(fd);
        if (e == EAGAIN || e == EACCES)
            return sg_errorf(path, "is being written by another saegap run (file locked); refusing a second writer");
        return sg_errorf(path, "cannot lock: %s", strerror(e));
    }
    return fd;
}

void out_lock_release(int fd) {
    if (fd >= 0) close(fd);
}

/* Bytes the file system can still give this path's folder (unprivileged), or UINT64_MAX. */
uint64_t out_free_bytes(const char *path) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if (slash == dir) dir[1] = 0;
    else *slash = 0;
    struct statvfs v;
    if (statvfs(dir, &v) != 0) return UINT64_MAX;
    return (uint64_t)v.f_bavail * (uint64_t)v.f_frsize;
}

static void mb(char *buf, size_t cap, uint64_t bytes) { snprintf(buf, cap, "%.1f MB", (double)bytes / 1e6); }

int out_check_space(const char *path, uint64_t need, MPI_Comm comm) {
    int rank, rc = 0;
    SG_MPI(MPI_Comm_rank(comm, &rank), "rank");
    if (rank == 0) {
        uint64_t have = out_free_bytes(path);
        if (have < need) {
            char a[32], b[32];
            mb(a, sizeof a, need), mb(b, sizeof b, have);
            rc = sg_errorf(path, "no space left on device: the result needs about %s, %s are free", a, b);
        }
    }
    return sg_agree(comm, rc);
}

int out_partial_reserve(const char *partial, const char *out, uint64_t bytes) {
    int fd = open(partial, O_RDWR);
    int e = fd < 0 ? errno : fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, (off_t)bytes) != 0 ? errno : 0;
    /* no fallocate (NFSv3, ZFS before 2.2, older Lustre): reserve by writing instead (glibc's
     * posix_fallocate writes a byte in every block). The file's size grows to `bytes`, which
     * HDF5 cuts back to its own end at the first flush, after every dataset is written in
     * blocks that already exist. */
    if (e == EOPNOTSUPP || e == ENOSYS) e = posix_fallocate(fd, 0, (off_t)bytes);
    if (fd >= 0) close(fd);
    if (e == ENOSPC || e == EDQUOT) {
        char a[32], b[32];
        mb(a, sizeof a, bytes), mb(b, sizeof b, out_free_bytes(partial));
        return sg_errorf(out, "no space left on device: reserving the result's %s failed (%s free)", a, b);
    }
    if (e) return sg_errorf(out, "cannot reserve the result's space on disk: %s", strerror(e));
    return 0;
}

int out_reserve(const char *path, uint64_t slack, const char *name) {
    int rc = 0;
    {
        /* after a flush the file's size is HDF5's end of allocation (H5Fget_filesize fails
         * under the MPI-IO driver in 1.10) */
        off_t size = 0;
        int fd = open(path, O_RDWR); /* posix_fallocate reads before it writes where fallocate is missing */
        struct stat sb;
        int e = fd < 0 ? errno : fstat(fd, &sb) != 0 ? errno : 0;
        if (!e) size = sb.st_size;
        /* back every byte of the file, and `slack` bytes past its end for the metadata written
         * at the end (attributes, checksums), without changing the size HDF5 sees */
        if (!e && size > 0) e = posix_fallocate(fd, 0, size);
        if (!e && fallocate(fd, FALLOC_FL_KEEP_SIZE, size, (off_t)slack) != 0) {
            e = errno;
            if (e == EOPNOTSUPP || e == ENOSYS) e = out_free_bytes(path) >= slack ? 0 : ENOSPC;
        }
        if (fd >= 0) close(fd);
        if (e == ENOSPC || e == EDQUOT) {
            char a[32], b[32];
            mb(a, sizeof a, (uint64_t)size + slack), mb(b, sizeof b, out_free_bytes(path));
            rc = sg_errorf(name, "no space left on device: reserving the result's %s failed (%s free)", a, b);
        } else if (e) {
            rc = sg_errorf(name, "cannot reserve the result's space on disk: %s", strerror(e));
        }
    }
    return rc;
}

void out_release_reserve(const char *path) {
    /* blocks fallocate(KEEP_SIZE) reserved past the end: a truncate to the same size frees them
     * (ext4, XFS, tmpfs); a hole punched past the end is not freed by ext4 */
    int fd = open(path, O_WRONLY);
    struct stat sb;
    if (fd >= 0 && fstat(fd, &sb) == 0) (void)ftruncate(fd, sb.st_size);
    if (fd >= 0) close(fd);
}

/* "<base>-<digits>-<digits>.lock": the name Open MPI's shared-file-pointer component
 * (sharedfp/lockedfile, which it selects when a file's ranks span several nodes) gives its lock
 * file: the opened name, the job id, rank 0's pid. pid 0: any pid. */
static int is_mpiio_lock(const char *entry, const char *base, long pid) {
    size_t n = strlen(base);
    if (strncmp(entry, base, n) != 0 || entry[n] != '-') return 0;
    const char *p = entry + n + 1, *q = p;
    while (*q >= '0' && *q <= '9') q++;
    if (q == p || *q != '-') return 0;
    p = ++q;
    long got = 0;
    while (*q >= '0' && *q <= '9' && q - p < 10) got = got * 10 + (*q++ - '0');
    if (q == p || strcmp(q, ".lock") != 0) return 0;
    return pid == 0 || got == pid;
}

/* Calls fn on each matching lock file in path's folder; -1 when the folder is unreadable. */
static int each_mpiio_lock(const char *path, long pid, void (*fn)(const char *lock, void *ctx), void *ctx) {
    char dir[OUT_PARTIAL_MAX];
    const char *slash = strrchr(path, '/'), *base = slash ? slash + 1 : path;
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if (slash == path) snprintf(dir, sizeof dir, "/");
    else snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    DIR *d = opendir(dir);
    if (!d) return -1;
    for (struct dirent *e; (e = readdir(d));) {
        if (!is_mpiio_lock(e->d_name, base, pid)) continue;
        char full[2 * OUT_PARTIAL_MAX];
        snprintf(full, sizeof full, "%s/%s", dir, e->d_name);
        fn(full, ctx);
    }
    closedir(d);
    return 0;
}

static void remove_lock(const char *lock, void *ctx) {
    (void)ctx;
    if (unlink(lock) == 0) sg_warnf("%s: removed this lock file that MPI-IO left behind an interrupted run", lock);
}

void out_remove_stale_mpiio_locks(const char *path) {
    char partial[OUT_PARTIAL_MAX];
    each_mpiio_lock(path, 0, remove_lock, NULL);
    if (out_partial_path(path, partial, sizeof partial) == 0) each_mpiio_lock(partial, 0, remove_lock, NULL);
    else sg_error_clear();
}

static void remember_lock(const char *lock, void *ctx) { snprintf(ctx, OUT_MPIIO_LOCK_MAX, "%s", lock); }

void out_mpiio_lock_of_this_run(const char *opened, char *buf) {
    buf[0] = '\0';
    each_mpiio_lock(opened, (long)getpid(), remember_lock, buf);
}
