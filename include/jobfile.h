/* jobfile.h: the syntax of a job file (`saegap run JOB_FILE`), nothing else.
 *
 * A job file is UTF-8 text of `key = value` lines (docs/cluster.md, "Job files"). This module
 * turns its bytes into (key, value, line) entries in file order, or refuses the file with one
 * pending error (error.h) naming the file and the line. What keys mean, unknown keys and
 * repeated keys are cli.c's: the option table decides, so a job file and a command line
 * follow the same rules. Lines may be of any length (the file is limited to
 * JOBFILE_MAX_BYTES, far above any real job). jobfile_parse takes a buffer, for fuzzing. */
#ifndef SAEGAP_JOBFILE_H
#define SAEGAP_JOBFILE_H

#include <stddef.h>

#define JOBFILE_MAX_BYTES ((size_t)16 << 20)

typedef struct {
    char *key;   /* as written, without surrounding whitespace */
    char *value; /* without surrounding whitespace, quotes or trailing comment; never empty */
    size_t line; /* 1-based */
} JobEntry;

typedef struct {
    JobEntry *entry;
    size_t n;
} JobFile;

/* 0 and jf filled, or -1 with a pending error "<path>: ..." and jf empty. */
int jobfile_read(JobFile *jf, const char *path);
/* The same on size bytes of data (not NUL-terminated); name is used in messages. */
int jobfile_parse(JobFile *jf, const char *name, const char *data, size_t size);
void jobfile_free(JobFile *jf);

#endif
