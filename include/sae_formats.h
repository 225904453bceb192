/* sae_formats.h: the table of SAE formats (one row each, sae_format.h) and the one place that
 * tells a folder's format. */
#ifndef SAEGAP_SAE_FORMATS_H
#define SAEGAP_SAE_FORMATS_H

#include "sae_format.h"

/* The row of a format. */
const SaeFormatOps *sae_format_row(SaeFormat f);

/* Whether dir holds a format's marker file (cfg.json, params.npz): an SAE folder. */
int sae_format_folder(const char *dir);

/* The format of the SAE folder dir: the first marker present decides which rows are asked (a
 * cfg.json before a params.npz; with neither, cfg.json, whose reading then says it is missing),
 * and the first of those rows that claims it is the format. *cfg gets the marker's JSON (NULL
 * for a marker that is not JSON; the caller frees it with cJSON_Delete) and cfg_path its path.
 * 0, or -1 with a pending error naming the file. */
int sae_format_detect(const char *dir, SaeFormat *out, struct cJSON **cfg, char *cfg_path, size_t cap);

#endif
