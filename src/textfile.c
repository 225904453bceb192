/* textfile.c: read a small text file whole (see textfile.h). */
#include "textfile.h"

#include "error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

char *textfile_read(const char *path, size_t max_bytes) {
    struct stat sb;
    if (stat(path, &sb) == 0 && !S_ISREG(sb.st_mode)) { sg_errorf(path, "is not a regular file"); return NULL; }
    FILE *f = fopen(path, "rb");
    if (!f) { sg_errorf(path, "cannot open: %s", strerror(errno)); return NULL; }
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) { cap = cap ? 2 * cap : 8192; buf = sg_xrealloc(buf, cap); }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
        if (n > max_bytes) { fclose(f); free(buf); sg_errorf(path, "file larger than %zu bytes", max_bytes); return NULL; }
    }
    int err = ferror(f);
    fclose(f);
    if (err) { free(buf); sg_errorf(path, "read error"); return NULL; }
    buf[n] = '\0';
    return buf;
}
