/* textfile.h: small text files (config.json, cfg.json) read whole, with clear errors. */
#ifndef SAEGAP_TEXTFILE_H
#define SAEGAP_TEXTFILE_H

#include <stddef.h>

/* NUL-terminated contents (free with free), or NULL with a pending error naming the path:
 * missing, not a regular file, larger than max_bytes, unreadable. */
char *textfile_read(const char *path, size_t max_bytes);

#endif
