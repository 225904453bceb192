/* nofallocate.c: LD_PRELOAD shim for the disk-full tests (tests/python/test_disk_full.py).
 *
 * Makes this machine's file systems behave like those without fallocate() that clusters still
 * have (NFSv3, ZFS before 2.2, older Lustre): fallocate() fails with EOPNOTSUPP, and
 * posix_fallocate() falls back to writing a byte in every block, as glibc's emulation does on
 * such a file system (sysdeps/posix/posix_fallocate.c). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

int fallocate(int fd, int mode, off_t offset, off_t len) {
    (void)fd, (void)mode, (void)offset, (void)len;
    errno = EOPNOTSUPP;
    return -1;
}

int fallocate64(int fd, int mode, off_t offset, off_t len) { return fallocate(fd, mode, offset, len); }

/* glibc's emulation (sysdeps/posix/posix_fallocate.c), errors included: a zero byte written in
 * every block of the range that reads as zero (or lies past the end), the last byte of the range
 * included, so the blocks are allocated. It reads before it writes, so an fd opened O_WRONLY
 * fails with EBADF there, as it does on a real file system without fallocate. */
int posix_fallocate(int fd, off_t offset, off_t len) {
    struct stat st;
    if (offset < 0 || len <= 0) return EINVAL;
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || (flags & O_APPEND) != 0) return EBADF;
    if (fstat(fd, &st) != 0) return EBADF;
    const off_t step = st.st_blksize > 0 ? st.st_blksize : 4096, end = offset + len;
    for (off_t o = offset;; o += step) {
        if (o > end - 1) o = end - 1;
        if (o < st.st_size) {
            unsigned char c = 0;
            ssize_t got = pread(fd, &c, 1, o);
            if (got < 0) return errno;
            if (got == 1 && c != 0) goto next;
        }
        if (pwrite(fd, "", 1, o) != 1) return errno;
    next:
        if (o == end - 1) break;
    }
    return 0;
}

int posix_fallocate64(int fd, off_t offset, off_t len) { return posix_fallocate(fd, offset, len); }
