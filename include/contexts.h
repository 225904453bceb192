/* contexts.h: how a job's contexts are made, from the conventions its SAEs were trained with
 * (FAMILIES-FACTS section 4; docs/contexts.md). SAELens's ActivationsStore.from_sae takes
 * prepend_bos and context_size from the SAE's cfg (a cfg without prepend_bos means true:
 * handle_config_defaulting); sparsify's chunk_and_tokenize starts each chunk with EOS; Gemma
 * Scope's SAELens cfg says prepend_bos true, context_size 1024. --prepend-bos and --ctx settle
 * a job whose SAEs disagree, and override them (with a warning where they differ). */
#ifndef SAEGAP_CONTEXTS_H
#define SAEGAP_CONTEXTS_H

#include "sae.h"
#include "tokens.h"

#include <stddef.h>

/* One SAE's convention: whether its contexts started with BOS, their length (0: its format
 * records none), and where that comes from (recorded per site as context_convention). */
typedef struct {
    int prepend_bos;
    size_t context_size;
    const char *source;
} SaeContexts;
SaeContexts contexts_of_sae(const Sae *s);

typedef struct {
    int prepend_bos;                 /* what applies: BOS at position 0 of each context */
    char prepend_bos_source[1200];   /* "--prepend-bos", or the SAEs' convention (root attribute) */
    TokenCut cut;                    /* what tokens_load_cut gets (ctx: --ctx, else on a flat stream the SAEs') */
} ContextRule;

/* The job's rule from its n SAEs (stride bytes apart), --prepend-bos (NULL: not given; yes/no,
 * true/false, 1/0), --ctx (0: not given), the model's BOS id and whether the token file is a flat
 * stream. Refuses SAEs that disagree (prepend_bos; context_size on a flat stream) unless the
 * option that settles it is given, with one message naming both folders; warns once where an
 * option overrides a cfg. 0 or -1 with a pending error. */
int contexts_resolve(ContextRule *r, const Sae *saes, size_t stride, size_t n, const char *prepend_opt, size_t ctx_opt,
                     int32_t bos, int flat);

/* A 2-D token file is used row by row as stored: one warning when rows disagree with the rule
 * (no BOS at position 0 where it says BOS, BOS where it says none), naming a sample row. */
void contexts_check_rows(const ContextRule *r, const TokenSet *ts, const char *path);

#endif
