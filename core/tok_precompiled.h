/* tok_precompiled.h — the SentencePiece "Precompiled" normalizer of HF tokenizer.json.
 *
 * The charsmap is SentencePiece's compiled normalization rule set (e.g. T5's nmt_nfkc): a
 * Darts-clone double-array trie from UTF-8 keys to offsets in a blob of NUL-terminated
 * replacement strings. Semantics: SPEC-HF.md E.3 (spm_precompiled + tokenizers precompiled.rs).
 * A tokpc is immutable after creation and safe to use from many threads at once.
 */
#ifndef LR_TOK_PRECOMPILED_H
#define LR_TOK_PRECOMPILED_H

#include <stddef.h>

#include "err.h"

typedef struct tokpc tokpc;

/* Decode `charsmap_base64` (standard alphabet, canonical padding, as the Rust base64 crate
 * requires) and validate it completely: the trie size field must fit the data, every value the
 * trie can ever return must be an offset inside the blob at a UTF-8 character start, and the blob
 * must be valid UTF-8 ending in NUL. A NULL charsmap gives an identity normalizer (tokenizer.json
 * "precompiled_charsmap": null). Returns 0 and a new object in *out, or LR_EFORMAT (bad base64 or
 * hostile charsmap) / LR_ENOMEM with *err filled; *out is untouched on error. */
int tokpc_create(const char *charsmap_base64, lr_error *err, tokpc **out);
void tokpc_destroy(tokpc *p);

/* Normalize UTF-8 `in` (n bytes): per extended grapheme cluster, a cluster shorter than 6 bytes
 * whose shortest trie-matched prefix has an entry is replaced WHOLE by that entry; otherwise each
 * code point is replaced by its entry or kept. *out is a new malloc'd NUL-terminated string
 * (free it), *out_len its length without the NUL. Returns 0, LR_EINVAL for invalid UTF-8 in `in`
 * or LR_ENOMEM; on error *out is NULL. */
int tokpc_normalize(const tokpc *p, const char *in, size_t n, char **out, size_t *out_len);

#endif
