/* safetensors_shards.c: a sharded Hugging Face checkpoint (model.safetensors.index.json and its
 * shard files) read as one Safetensors (safetensors.h). */
#include "safetensors.h"

#include "error.h"
#include "textfile.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The index's weight_map, validated: an object of tensor name -> shard file name. */
static int read_weight_map(const char *index_path, cJSON **root_out, const cJSON **map_out) {
    cJSON *root = json_object_file(index_path, 64u << 20);
    if (!root) return -1;
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(map) || !map->child) {
        cJSON_Delete(root);
        return sg_errorf(index_path, "has no \"weight_map\" object naming each tensor's shard");
    }
    for (const cJSON *e = map->child; e; e = e->next) {
        int rc = 0; /* the message first: it quotes strings of the tree */
        if (!cJSON_IsString(e) || !e->valuestring[0])
            rc = sg_errorf(index_path, "weight_map entry '%.200s' is not a shard file name", e->string);
        /* shards live beside the index: a path in the name could point anywhere */
        else if (strchr(e->valuestring, '/') || !strcmp(e->valuestring, ".") || !strcmp(e->valuestring, ".."))
            rc = sg_errorf(index_path, "weight_map entry '%.200s' names '%.200s': a shard must be a file name in "
                                       "the same folder", e->string, e->valuestring);
        if (rc) {
            cJSON_Delete(root);
            return rc;
        }
    }
    *root_out = root;
    *map_out = map;
    return 0;
}

int safetensors_open_sharded(Safetensors *st, const char *index_path) {
    memset(st, 0, sizeof *st);
    cJSON *root = NULL;
    const cJSON *map = NULL;
    if (read_weight_map(index_path, &root, &map)) return -1;
    st->path = sg_xstrdup(index_path);
    char dir[4096];
    const char *slash = strrchr(index_path, '/');
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - index_path) : 1, slash ? index_path : ".");

    /* the distinct shard names, in first-seen order */
    size_t n_entries = (size_t)cJSON_GetArraySize(map);
    const char **names = sg_xcalloc(n_entries, sizeof *names);
    size_t n_shards = 0;
    for (const cJSON *e = map->child; e; e = e->next) {
        size_t i = 0;
        while (i < n_shards && strcmp(names[i], e->valuestring) != 0) i++;
        if (i == n_shards) names[n_shards++] = e->valuestring;
    }
    st->shards = sg_xcalloc(n_shards, sizeof *st->shards);
    int rc = 0;
    size_t total = 0;
    for (size_t i = 0; i < n_shards && rc == 0; i++) {
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        rc = safetensors_open(&st->shards[i], path);
        if (rc == 0) {
            st->n_shards = i + 1;
            total += st->shards[i].n_tensors;
            st->map_size += st->shards[i].map_size;
        }
    }
    if (rc == 0) {
        st->tensors = sg_xcalloc(total ? total : 1, sizeof *st->tensors);
        st->by_name = sg_xcalloc(total ? total : 1, sizeof *st->by_name);
        for (size_t i = 0; i < st->n_shards; i++)
            for (size_t k = 0; k < st->shards[i].n_tensors; k++) st->tensors[st->n_tensors++] = st->shards[i].tensors[k];
        const char *twice = safetensors_sort_names(st);
        if (twice) rc = sg_errorf(index_path, "tensor '%s' is in two shards", twice);
    }
    /* every tensor the index names is in the shard it names */
    for (const cJSON *e = map->child; e && rc == 0; e = e->next) {
        const SafetensorsTensor *t = safetensors_find(st, e->string);
        const char *file = t ? strrchr(t->file, '/') : NULL;
        if (!t || strcmp(file ? file + 1 : t->file, e->valuestring) != 0)
            rc = sg_errorf(index_path, "weight_map puts tensor '%.200s' in %s, which does not hold it%s", e->string,
                           e->valuestring, t ? " (another shard does)" : "");
    }
    free(names);
    cJSON_Delete(root);
    if (rc != 0) safetensors_close(st);
    return rc;
}
