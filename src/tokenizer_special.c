/* tokenizer_special.c: SAELens's special token ids from a model folder's tokenizer files
 * (tokenizer_special.h says which, and why). */
#include "tokenizer_special.h"

#include "error.h"
#include "textfile.h"

#include <cjson/cJSON.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define SMALL_JSON_MAX (64u << 20)    /* tokenizer_config.json, special_tokens_map.json */
#define TOKENIZER_JSON_MAX (256u << 20) /* tokenizer.json: Gemma-2's is 17 MB, Gemma-3's 33 MB */

/* the keys of transformers' SPECIAL_TOKENS_ATTRIBUTES whose *_token_id SAELens collects */
static const char *const KEYS[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                   "pad_token", "cls_token", "mask_token"};
#define N_KEYS (sizeof KEYS / sizeof KEYS[0])

typedef struct {
    const char *dir;
    char tc_path[4096], sm_path[4096], tj_path[4096];
    cJSON *tc, *sm, *tj;
    int has_tc, has_sm, has_tj, tj_read;
    size_t vocab_size;
    long *ids;
    size_t n;
} Ctx;

static int exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* A special-token value as transformers serialises it: "text", {"content": "text", ...}
 * (AddedToken), or null (none). */
static int token_name(const cJSON *v, const char *path, const char *key, const char **out) {
    *out = NULL;
    if (!v || cJSON_IsNull(v)) return 0;
    if (cJSON_IsString(v)) { *out = v->valuestring; return 0; }
    const cJSON *c = cJSON_IsObject(v) ? cJSON_GetObjectItemCaseSensitive(v, "content") : NULL;
    if (cJSON_IsString(c)) { *out = c->valuestring; return 0; }
    char t[96];
    return sg_errorf(path, "%s is %s: neither a token string nor {\"content\": string}", key, json_text(v, t, sizeof t));
}

/* An id as a JSON number: a non-negative integer below 2^31. */
static int json_id(const cJSON *v, const char *path, const char *what, long *out) {
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0) || v->valuedouble >= 2147483648.0 ||
        v->valuedouble != floor(v->valuedouble)) {
        char t[96];
        return sg_errorf(path, "%s: id %s is not a non-negative integer", what, json_text(v, t, sizeof t));
    }
    *out = (long)v->valuedouble;
    return 0;
}

static int add_id(Ctx *x, long id, const char *path) {
    if (id < 0 || (size_t)id >= x->vocab_size) return 0; /* no token of a run can have it */
    for (size_t i = 0; i < x->n; i++)
        if (x->ids[i] == id) return 0;
    if (x->n == SG_MAX_SPECIAL_IDS)
        return sg_errorf(path, "more than %d special token ids: saegap keeps at most %d", SG_MAX_SPECIAL_IDS,
                         SG_MAX_SPECIAL_IDS);
    x->ids[x->n++] = id;
    return 0;
}

static int read_tj(Ctx *x) {
    if (x->tj_read) return 0;
    x->tj_read = 1;
    if (!x->has_tj) return 0;
    x->tj = json_object_file(x->tj_path, TOKENIZER_JSON_MAX);
    if (!x->tj) return -1;
    const cJSON *at = cJSON_GetObjectItemCaseSensitive(x->tj, "added_tokens");
    if (at && !cJSON_IsNull(at) && !cJSON_IsArray(at)) return sg_errorf(x->tj_path, "added_tokens is not a list");
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(x->tj, "model");
    if (model && !cJSON_IsNull(model) && !cJSON_IsObject(model)) return sg_errorf(x->tj_path, "model is not an object");
    return 0;
}

/* The id convert_tokens_to_ids gives name: tokenizer_config.json's added_tokens_decoder, then
 * tokenizer.json's added_tokens, then its model vocabulary (BPE/WordPiece/WordLevel: an object
 * token -> id; Unigram: a list of [token, score], the index is the id). 0 found, 1 not, -1 error. */
static int resolve(Ctx *x, const char *name, long *id) {
    const cJSON *dec = x->tc ? cJSON_GetObjectItemCaseSensitive(x->tc, "added_tokens_decoder") : NULL;
    if (dec && !cJSON_IsNull(dec)) {
        if (!cJSON_IsObject(dec)) return sg_errorf(x->tc_path, "added_tokens_decoder is not an object");
        const cJSON *e;
        cJSON_ArrayForEach(e, dec) {
            const char *content = NULL;
            if (token_name(e, x->tc_path, "an added_tokens_decoder entry", &content)) return -1;
            if (!content || strcmp(content, name) != 0) continue;
            char *end = NULL;
            errno = 0;
            long v = strtol(e->string, &end, 10);
            if (!e->string[0] || *end || errno || v < 0 || v > 2147483647L)
                return sg_errorf(x->tc_path, "added_tokens_decoder: key \"%.60s\" of '%.60s' is not an id", e->string,
                                 name);
            *id = v;
            return 0;
        }
    }
    if (read_tj(x)) return -1;
    if (!x->tj) return 1;
    const cJSON *at = cJSON_GetObjectItemCaseSensitive(x->tj, "added_tokens"), *e;
    const cJSON *list = cJSON_IsArray(at) ? at : NULL;
    cJSON_ArrayForEach(e, list) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "content");
        if (!cJSON_IsObject(e) || !cJSON_IsString(c))
            return sg_errorf(x->tj_path, "an added_tokens entry has no \"content\" string");
        if (strcmp(c->valuestring, name) == 0)
            return json_id(cJSON_GetObjectItemCaseSensitive(e, "id"), x->tj_path, "added_tokens", id);
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(x->tj, "model");
    const cJSON *vocab = cJSON_IsObject(model) ? cJSON_GetObjectItemCaseSensitive(model, "vocab") : NULL;
    if (cJSON_IsObject(vocab)) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(vocab, name);
        return v ? json_id(v, x->tj_path, "model.vocab", id) : 1;
    }
    if (cJSON_IsArray(vocab)) {
        long i = 0;
        cJSON_ArrayForEach(e, vocab) {
            const cJSON *piece = cJSON_IsArray(e) ? cJSON_GetArrayItem(e, 0) : NULL;
            if (cJSON_IsString(piece) && strcmp(piece->valuestring, name) == 0) { *id = i; return 0; }
            i++;
        }
    }
    return 1;
}

static int add_name(Ctx *x, const char *name, const char *path, const char *key) {
    if (!name) return 0;
    long id = -1;
    int r = resolve(x, name, &id);
    if (r < 0) return -1;
    if (r == 1) {
        sg_warnf("%s: %s names the special token '%.80s', which no tokenizer file of %s maps to an id: left out of "
                 "SAELens's special tokens (Hugging Face would give the unk id)", path, key, name, x->dir);
        return 0;
    }
    return add_id(x, id, path);
}

/* The names of special_tokens_map.json, else tokenizer_config.json, key by key. */
static int named_specials(Ctx *x) {
    for (size_t k = 0; k <= N_KEYS; k++) {
        const char *key = k < N_KEYS ? KEYS[k] : "additional_special_tokens";
        const cJSON *v = NULL;
        const char *path = NULL;
        if (x->sm && cJSON_GetObjectItemCaseSensitive(x->sm, key))
            v = cJSON_GetObjectItemCaseSensitive(x->sm, key), path = x->sm_path;
        else if (x->tc)
            v = cJSON_GetObjectItemCaseSensitive(x->tc, key), path = x->tc_path;
        if (!v) continue;
        if (k < N_KEYS) {
            const char *name;
            if (token_name(v, path, key, &name) || add_name(x, name, path, key)) return -1;
            continue;
        }
        if (cJSON_IsNull(v)) continue;
        if (!cJSON_IsArray(v)) return sg_errorf(path, "additional_special_tokens is not a list");
        const cJSON *e;
        cJSON_ArrayForEach(e, v) {
            const char *name;
            if (token_name(e, path, "an additional_special_tokens entry", &name) ||
                add_name(x, name, path, "additional_special_tokens"))
                return -1;
        }
    }
    return 0;
}

/* tokenizer.json alone: its added tokens marked special */
static int marked_specials(Ctx *x) {
    if (read_tj(x)) return -1;
    const cJSON *at = cJSON_GetObjectItemCaseSensitive(x->tj, "added_tokens"), *e;
    const cJSON *list = cJSON_IsArray(at) ? at : NULL;
    cJSON_ArrayForEach(e, list) {
        const cJSON *sp = cJSON_IsObject(e) ? cJSON_GetObjectItemCaseSensitive(e, "special") : NULL;
        if (!cJSON_IsObject(e) || (sp && !cJSON_IsBool(sp)))
            return sg_errorf(x->tj_path, "an added_tokens entry is not an object with a true/false \"special\"");
        long id;
        if (!cJSON_IsTrue(sp)) continue;
        if (json_id(cJSON_GetObjectItemCaseSensitive(e, "id"), x->tj_path, "added_tokens", &id) ||
            add_id(x, id, x->tj_path))
            return -1;
    }
    return 0;
}

static int cmp_long(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

int tokenizer_special_ids(const char *dir, size_t vocab_size, long *ids, size_t *n, char *source,
                          size_t source_cap) {
    Ctx x;
    memset(&x, 0, sizeof x);
    x.dir = dir, x.vocab_size = vocab_size, x.ids = ids;
    snprintf(x.tc_path, sizeof x.tc_path, "%s/tokenizer_config.json", dir);
    snprintf(x.sm_path, sizeof x.sm_path, "%s/special_tokens_map.json", dir);
    snprintf(x.tj_path, sizeof x.tj_path, "%s/tokenizer.json", dir);
    x.has_tc = exists(x.tc_path), x.has_sm = exists(x.sm_path), x.has_tj = exists(x.tj_path);
    *n = 0;
    if (!x.has_tc && !x.has_sm && !x.has_tj) return 1;
    int rc = -1;
    if (x.has_sm && !(x.sm = json_object_file(x.sm_path, SMALL_JSON_MAX))) goto done;
    if (x.has_tc && !(x.tc = json_object_file(x.tc_path, SMALL_JSON_MAX))) goto done;
    if ((x.sm || x.tc) ? named_specials(&x) : marked_specials(&x)) goto done;
    qsort(ids, x.n, sizeof *ids, cmp_long);
    *n = x.n;
    if (x.sm || x.tc)
        snprintf(source, source_cap, "the special tokens named by %s%s%s%s",
                 x.sm ? "special_tokens_map.json" : "", x.sm && x.tc ? " and " : "",
                 x.tc ? "tokenizer_config.json" : "", x.tj ? ", ids from tokenizer.json" : "");
    else
        snprintf(source, source_cap, "the added tokens tokenizer.json marks special (no special_tokens_map.json "
                                     "or tokenizer_config.json)");
    rc = 0;
done:
    cJSON_Delete(x.tc), cJSON_Delete(x.sm), cJSON_Delete(x.tj);
    return rc;
}
