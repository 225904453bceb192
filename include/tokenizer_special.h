/* tokenizer_special.h: the special token ids of a model folder's Hugging Face tokenizer, as
 * SAELens's scores leave them out.
 *
 * SAELens (sae_lens/evals.py run_evals, exclude_special_tokens=True by default, at 91ca16c, v6.18)
 * ignores `get_special_token_ids(model.tokenizer)` (sae_lens/util.py): every tokenizer attribute
 * named *_token_id that is not None (bos, eos, unk, sep, pad, cls, mask), and the id of every
 * token of `tokenizer.special_tokens_map` (those seven and `additional_special_tokens`: for
 * Gemma <start_of_turn>, <end_of_turn>). Both come from the same names, so the set is: the ids of
 * the tokens named by the keys bos_token, eos_token, unk_token, sep_token, pad_token, cls_token,
 * mask_token and additional_special_tokens of special_tokens_map.json, else of
 * tokenizer_config.json (transformers reads both; special_tokens_map.json's values win), each
 * name resolved to its id as `convert_tokens_to_ids` does: tokenizer_config.json's
 * added_tokens_decoder, tokenizer.json's added_tokens, then tokenizer.json's model vocabulary.
 * A folder with tokenizer.json alone names no special tokens by key: its added_tokens marked
 * "special": true are used instead (the tokens Hugging Face would skip when decoding).
 */
#ifndef SAEGAP_TOKENIZER_SPECIAL_H
#define SAEGAP_TOKENIZER_SPECIAL_H

#include <stddef.h>

#define SG_MAX_SPECIAL_IDS 1024

/* Reads the tokenizer files of model folder dir. Returns 0 with ids[0..*n) sorted and unique
 * (ids outside [0, vocab_size) left out: no token of a run can have them) and source naming the
 * files read; 1 when the folder holds none of tokenizer.json, tokenizer_config.json,
 * special_tokens_map.json (nothing written); -1 with a pending error naming the file and the
 * problem (malformed JSON, a special-token value that is not a string or {"content": string},
 * an id that is not a non-negative integer, more than SG_MAX_SPECIAL_IDS ids). A name no file
 * maps to an id is left out with a warning (Hugging Face would give the unk id, already in the
 * set). */
int tokenizer_special_ids(const char *dir, size_t vocab_size, long *ids, size_t *n, char *source,
                          size_t source_cap);

#endif
