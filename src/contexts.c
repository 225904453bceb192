/* contexts.c: the job's context rule from its SAEs' conventions (contexts.h). */
#include "contexts.h"

#include "error.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

/* Formats whose cfg.json records no convention: what their trainers did (FAMILIES-FACTS 4a, 4b). */
static const struct {
    SaeFormat format;
    int prepend_bos;
    size_t context_size;
    const char *source;
} FORMAT_CONVENTION[] = {
    {SAE_FORMAT_SPARSIFY, 1, 0,
     "sparsify (chunk_and_tokenize starts each chunk with EOS, taken as the model's BOS; the trainer's ctx_len is "
     "not in cfg.json)"},
    {SAE_FORMAT_GEMMA_SCOPE, 1, 1024, "Gemma Scope (SAELens's cfg for it: prepend_bos true, context_size 1024)"},
};

SaeContexts contexts_of_sae(const Sae *s) {
    for (size_t i = 0; i < sizeof FORMAT_CONVENTION / sizeof FORMAT_CONVENTION[0]; i++)
        if (FORMAT_CONVENTION[i].format == s->format)
            return (SaeContexts){FORMAT_CONVENTION[i].prepend_bos, FORMAT_CONVENTION[i].context_size,
                                 FORMAT_CONVENTION[i].source};
    if (s->has_prepend_bos) return (SaeContexts){s->prepend_bos, s->context_size, "cfg.json"};
    return (SaeContexts){1, s->context_size,
                         "cfg.json without prepend_bos: true, as SAELens's handle_config_defaulting reads it"};
}

static const Sae *at(const Sae *saes, size_t stride, size_t i) {
    return (const Sae *)(const void *)((const char *)saes + i * stride);
}

static int parse_yes_no(const char *v, int *out) {
    if (!strcasecmp(v, "yes") || !strcasecmp(v, "true") || !strcmp(v, "1")) *out = 1;
    else if (!strcasecmp(v, "no") || !strcasecmp(v, "false") || !strcmp(v, "0")) *out = 0;
    else return sg_errorf("--prepend-bos", "'%s' is not yes or no (also true/false, 1/0)", v);
    return 0;
}

int contexts_resolve(ContextRule *r, const Sae *saes, size_t stride, size_t n, const char *prepend_opt, size_t ctx_opt,
                     int32_t bos, int flat) {
    memset(r, 0, sizeof *r);
    r->cut.bos = bos;
    /* the first SAE of each convention, and of each context size */
    size_t with = n, without = n, sized = n, other_size = n;
    for (size_t i = 0; i < n; i++) {
        SaeContexts c = contexts_of_sae(at(saes, stride, i));
        if (c.prepend_bos && with == n) with = i;
        if (!c.prepend_bos && without == n) without = i;
        if (c.context_size && sized == n) sized = i;
        else if (c.context_size && other_size == n && c.context_size != contexts_of_sae(at(saes, stride, sized)).context_size)
            other_size = i;
    }
    if (prepend_opt) {
        if (parse_yes_no(prepend_opt, &r->prepend_bos)) return -1;
        snprintf(r->prepend_bos_source, sizeof r->prepend_bos_source, "--prepend-bos %s", r->prepend_bos ? "yes" : "no");
        size_t other = r->prepend_bos ? without : with;
        if (other < n) {
            const Sae *s = at(saes, stride, other);
            sg_warnf("--prepend-bos %s overrides %s, whose convention is prepend_bos %s (%s)", r->prepend_bos ? "yes" : "no",
                     s->dir, r->prepend_bos ? "false" : "true", contexts_of_sae(s).source);
        }
    } else if (with < n && without < n) {
        const Sae *a = at(saes, stride, with), *b = at(saes, stride, without);
        return sg_errorf(a->dir, "its contexts started with BOS (%s) but those of %s did not (%s): SAEs of one job must "
                         "agree; --prepend-bos yes|no settles it", contexts_of_sae(a).source, b->dir,
                         contexts_of_sae(b).source);
    } else {
        r->prepend_bos = with < n;
        const Sae *s = at(saes, stride, with < n ? with : without < n ? without : 0);
        if (n) snprintf(r->prepend_bos_source, sizeof r->prepend_bos_source, "the SAEs' convention (%s: %s)", s->dir,
                        contexts_of_sae(s).source);
        else snprintf(r->prepend_bos_source, sizeof r->prepend_bos_source, "no SAE");
    }
    r->cut.prepend_bos = flat && r->prepend_bos;
    if (r->cut.prepend_bos && bos < 0)
        return sg_errorf("--prepend-bos", "contexts cut with BOS (%s) need the model's bos_token_id, which its config.json "
                         "does not give inside the vocabulary; --prepend-bos no cuts without", r->prepend_bos_source);
    if (ctx_opt) {
        r->cut.ctx = ctx_opt;
        size_t differ = n;
        for (size_t i = 0; i < n && differ == n; i++) {
            size_t cs = contexts_of_sae(at(saes, stride, i)).context_size;
            if (cs && cs != ctx_opt) differ = i;
        }
        if (flat && differ < n) {
            const Sae *s = at(saes, stride, differ);
            sg_warnf("--ctx %zu is honoured, but %s was trained on contexts of %zu tokens (%s context_size)", ctx_opt,
                     s->dir, contexts_of_sae(s).context_size, contexts_of_sae(s).source);
        }
    } else if (flat && other_size < n) {
        const Sae *a = at(saes, stride, sized), *b = at(saes, stride, other_size);
        return sg_errorf(a->dir, "its context_size is %zu but that of %s is %zu: SAEs of one job cut a flat token stream "
                         "one way; --ctx N settles it", contexts_of_sae(a).context_size, b->dir,
                         contexts_of_sae(b).context_size);
    } else if (flat && sized < n) {
        r->cut.ctx = contexts_of_sae(at(saes, stride, sized)).context_size;
    } else if (!flat) {
        /* a 2-D file: the context_size the SAEs' own cfgs record (not a format's convention) cuts
         * longer rows; SAEs that record different ones are refused, as on a flat stream */
        size_t first = n;
        for (size_t i = 0; i < n; i++) {
            const Sae *s = at(saes, stride, i);
            if (!s->context_size) continue;
            if (first == n) first = i, r->cut.rows_to = s->context_size;
            else if (s->context_size != r->cut.rows_to)
                return sg_errorf(at(saes, stride, first)->dir, "its context_size is %zu but that of %s is %zu: SAEs of one "
                                 "job use a token file's rows at one length; --ctx N settles it", r->cut.rows_to, s->dir,
                                 s->context_size);
        }
    }
    return 0;
}

void contexts_check_rows(const ContextRule *r, const TokenSet *ts, const char *path) {
    if (ts->flat || !ts->n || r->cut.bos < 0) return;
    size_t bad = 0, first = 0;
    for (size_t c = 0; c < ts->n; c++)
        if ((ts->ids[c * ts->ctx] == r->cut.bos) != (r->prepend_bos != 0) && bad++ == 0) first = c;
    if (bad)
        sg_warnf("%s: %zu of %zu rows %s BOS %d at position 0 (row %zu: first token %d), but the SAEs' contexts %s (%s); "
                 "rows are used as stored", path, bad, ts->n, r->prepend_bos ? "lack" : "start with", (int)r->cut.bos,
                 first, (int)ts->ids[first * ts->ctx], r->prepend_bos ? "started with BOS" : "did not start with BOS",
                 r->prepend_bos_source);
}
