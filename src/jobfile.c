/* jobfile.c: job-file syntax (see jobfile.h; the rules are documented in docs/cluster.md). */
#include "jobfile.h"

#include "error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void jobfile_free(JobFile *jf) {
    for (size_t i = 0; i < jf->n; i++) {
        free(jf->entry[i].key);
        free(jf->entry[i].value);
    }
    free(jf->entry);
    jf->entry = NULL;
    jf->n = 0;
}

/* Length of the valid UTF-8 sequence at p (n bytes left), 0 when it is not one: strict
 * (no overlong forms, no surrogates, nothing above U+10FFFF). */
static size_t utf8_len(const unsigned char *p, size_t n) {
    unsigned c = p[0], cp, min;
    size_t len;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) len = 2, cp = c & 0x1F, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF) len = 3, cp = c & 0x0F, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4) len = 4, cp = c & 0x07, min = 0x10000;
    else return 0;
    if (n < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80) return 0;
        cp = cp << 6 | (p[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return len;
}

/* Every byte of a line is a UTF-8 character and none is a control character but tab. */
static int check_bytes(const char *name, size_t line, const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    size_t column = 1;
    for (size_t i = 0; i < n; column++) {
        unsigned c = p[i];
        if (c == 0)
            return sg_errorf(name, "line %zu, column %zu: a NUL byte (a job file is text: key = value lines)", line,
                             column);
        if (c == '\r')
            return sg_errorf(name, "line %zu, column %zu: a carriage return inside the line (line ends are LF or CRLF)",
                             line, column);
        if ((c < 0x20 && c != '\t') || c == 0x7F)
            return sg_errorf(name, "line %zu, column %zu: control character 0x%02X (a job file is text)", line, column,
                             c);
        size_t len = utf8_len(p + i, n - i);
        if (len == 0)
            return sg_errorf(name, "line %zu, column %zu: byte 0x%02X is not UTF-8 (a job file is UTF-8 text; "
                                   "convert it, e.g. iconv -f latin1 -t utf-8)",
                             line, column, c);
        i += len;
    }
    return 0;
}

static int is_blank(char c) { return c == ' ' || c == '\t'; }

/* At most 40 bytes of s (n bytes, valid UTF-8), cut at a character boundary, for messages. */
static int shown_len(const char *s, size_t n) {
    if (n <= 40) return (int)n;
    size_t k = 37;
    while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
    return (int)k;
}

static char *copy(const char *s, size_t n) {
    char *d = sg_xcalloc(n + 1, 1);
    memcpy(d, s, n);
    return d;
}

/* One line without its line end: adds an entry, or nothing (blank, comment), or fails. */
static int parse_line(JobFile *jf, const char *name, size_t line, const char *s, const char *e, size_t *cap) {
    while (s < e && is_blank(*s)) s++;
    if (s == e || *s == '#' || *s == ';') return 0;
    if (*s == '[')
        return sg_errorf(name, "line %zu: sections ('%.*s') are not used in job files; write key = value lines", line,
                         shown_len(s, (size_t)(e - s)), s);
    const char *eq = memchr(s, '=', (size_t)(e - s));
    if (!eq)
        return sg_errorf(name, "line %zu: '%.*s%s' is not a key = value line (comments start with # or ;)", line,
                         shown_len(s, (size_t)(e - s)), s, (size_t)(e - s) > 40 ? "..." : "");
    const char *ke = eq;
    while (ke > s && is_blank(ke[-1])) ke--;
    if (ke == s) return sg_errorf(name, "line %zu: no key before '='", line);

    const char *v = eq + 1, *ve;
    while (v < e && is_blank(*v)) v++;
    if (v < e && (*v == '"' || *v == '\'')) {
        const char *q = memchr(v + 1, *v, (size_t)(e - v - 1));
        if (!q)
            return sg_errorf(name, "line %zu: the quote %c that opens the value of '%.*s' is not closed on this line",
                             line, *v, shown_len(s, (size_t)(ke - s)), s);
        const char *rest = q + 1;
        while (rest < e && is_blank(*rest)) rest++;
        if (rest < e && *rest != '#' && *rest != ';')
            return sg_errorf(name, "line %zu: text after the closing quote of the value of '%.*s' (a comment "
                                   "there starts with # or ;)",
                             line, shown_len(s, (size_t)(ke - s)), s);
        ve = q;
        v++;
    } else {
        /* an unquoted value ends at a # or ; that starts it or follows a blank: a comment */
        ve = v;
        while (ve < e && !((*ve == '#' || *ve == ';') && (ve == v || is_blank(ve[-1])))) ve++;
        while (ve > v && is_blank(ve[-1])) ve--;
    }
    if (ve == v)
        return sg_errorf(name, "line %zu: key '%.*s' has no value", line, shown_len(s, (size_t)(ke - s)), s);

    if (jf->n == *cap) {
        *cap = *cap ? 2 * *cap : 16;
        jf->entry = sg_xrealloc(jf->entry, *cap * sizeof *jf->entry);
    }
    jf->entry[jf->n++] = (JobEntry){copy(s, (size_t)(ke - s)), copy(v, (size_t)(ve - v)), line};
    return 0;
}

int jobfile_parse(JobFile *jf, const char *name, const char *data, size_t size) {
    memset(jf, 0, sizeof *jf);
    size_t cap = 0, line = 0;
    const char *p = data, *end = data + size;
    if (size >= 3 && !memcmp(p, "\xEF\xBB\xBF", 3)) p += 3; /* a UTF-8 byte-order mark (Windows editors) */
    while (p < end) {
        line++;
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *e = nl ? nl : end;
        if (e > p && e[-1] == '\r') e--; /* CRLF */
        if (check_bytes(name, line, p, (size_t)(e - p)) || parse_line(jf, name, line, p, e, &cap)) {
            jobfile_free(jf);
            return -1;
        }
        p = nl ? nl + 1 : end;
    }
    return 0;
}

int jobfile_read(JobFile *jf, const char *path) {
    memset(jf, 0, sizeof *jf);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return sg_errorf(path, "cannot open the job file: %s", strerror(errno));
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
        close(fd);
        return sg_errorf(path, "is a directory, not a job file");
    }
    /* read to the end (a pipe has no size), refusing more than JOBFILE_MAX_BYTES */
    size_t n = 0, cap = 4096;
    char *buf = sg_xrealloc(NULL, cap);
    int rc = 0;
    for (;;) {
        if (n == cap) {
            if (cap > JOBFILE_MAX_BYTES) {
                rc = sg_errorf(path, "larger than %zu MiB: not a job file (key = value lines)", JOBFILE_MAX_BYTES >> 20);
                break;
            }
            cap = cap * 2 > JOBFILE_MAX_BYTES ? JOBFILE_MAX_BYTES + 1 : cap * 2;
            buf = sg_xrealloc(buf, cap);
        }
        ssize_t got = read(fd, buf + n, cap - n);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            rc = sg_errorf(path, "cannot read the job file: %s", strerror(errno));
            break;
        }
        if (got == 0) break;
        n += (size_t)got;
    }
    close(fd);
    if (rc == 0) rc = jobfile_parse(jf, path, buf, n);
    free(buf);
    return rc;
}
