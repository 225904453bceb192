/* textfile.h: small text files (config.json, cfg.json) read whole, with clear errors. */
#ifndef SAEGAP_TEXTFILE_H
#define SAEGAP_TEXTFILE_H

#include <stddef.h>

struct cJSON;

/* NUL-terminated contents (free with free), or NULL with a pending error naming the path:
 * missing, not a regular file, larger than max_bytes, unreadable. */
char *textfile_read(const char *path, size_t max_bytes);

/* The file's top-level JSON object (free with cJSON_Delete), or NULL with a pending error naming
 * the path: unreadable (as textfile_read), not valid JSON, or valid JSON but not an object. */
struct cJSON *json_object_file(const char *path, size_t max_bytes);

/* A JSON value as written in JSON (cJSON_PrintUnformatted: strings quoted and escaped, 1e20 as
 * 1e+20, null as null), cut to cap - 1 bytes with "..." when longer; "(absent)" for NULL. For
 * messages that refuse a value: the user sees what the file says, not a converted number.
 * Returns buf. */
const char *json_text(const struct cJSON *v, char *buf, size_t cap);

#endif
