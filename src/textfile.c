/* textfile.c: read a small text file whole (see textfile.h). */
#include "textfile.h"

#include "error.h"

#include <cjson/cJSON.h>

#include <errno.h>
#include <math.h>
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

cJSON *json_object_file(const char *path, size_t max_bytes) {
    char *text = textfile_read(path, max_bytes);
    if (!text) return NULL;
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!root) {
        sg_errorf(path, "not valid JSON");
        return NULL;
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        sg_errorf(path, "not a JSON object");
        return NULL;
    }
    return root;
}

const char *json_text(const cJSON *v, char *buf, size_t cap) {
    if (!cap) return buf;
    if (!v) {
        snprintf(buf, cap, "(absent)");
        return buf;
    }
    if (cJSON_IsNumber(v) && !isfinite(v->valuedouble)) { /* cJSON would print null */
        snprintf(buf, cap, "a number beyond the range of a double");
        return buf;
    }
    char *text = cJSON_PrintUnformatted(v);
    if (!text) snprintf(buf, cap, "(unprintable)");
    else if (strlen(text) < cap) snprintf(buf, cap, "%s", text);
    else if (cap > 4) snprintf(buf, cap, "%.*s...", (int)(cap - 4), text);
    else buf[0] = 0;
    cJSON_free(text);
    return buf;
}
