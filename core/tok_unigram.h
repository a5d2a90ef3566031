/* tok_unigram.h — the Unigram model of HF tokenizer.json (T5, SentencePiece unigram).
 *
 * Viterbi segmentation of one pre-tokenized word with f64 piece scores, exactly as tokenizers'
 * Unigram::encode_optimized + Unigram::tokenize (SPEC-HF.md E.3). A tokug is immutable after
 * creation and safe to use from many threads at once (encode keeps its scratch per call).
 */
#ifndef LR_TOK_UNIGRAM_H
#define LR_TOK_UNIGRAM_H

#include <stddef.h>

#include "err.h"
/* tokenizer.h (not ours) has a "/" "*" inside a comment at the time of writing; keep that
 * cosmetic -Wcomment from breaking -Werror builds of this module. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wcomment"
#include "tokenizer.h"
#pragma GCC diagnostic pop

typedef struct tokug tokug;

/* pieces[i] is the UTF-8 piece of id i with log-prob scores[i]; both copied (borrowed).
 * unk_id: the id of the unknown token, or -1 for none (then a word needing <unk> fails to encode).
 * byte_fallback: an unknown piece becomes <0xHH> byte tokens when all of them exist.
 * Duplicate pieces resolve to the LAST id, as HF's token→id map does. Empty pieces never match.
 * Returns 0 and a new model in *out, or LR_EINVAL (n < 0, unk_id out of range, NULL piece),
 * LR_EFORMAT (piece not valid UTF-8, non-finite score), LR_ETOOLARGE (2^24 trie nodes or more)
 * or LR_ENOMEM, with *err filled; *out is untouched on error. */
int tokug_create(const char *const *pieces, const double *scores, int n, int unk_id,
                 int byte_fallback, lr_error *err, tokug **out);
void tokug_destroy(tokug *u);

/* Viterbi-encode one pre-tokenized word (len bytes of UTF-8) and APPEND its ids to out.
 * Cost O(len · max_piece_len) time and O(len) scratch, allocated once per call.
 * Returns 0, LR_EINVAL (invalid UTF-8, or an unknown character with no unk id) or LR_ENOMEM;
 * on error out->n is restored to its value on entry. */
int tokug_encode(const tokug *u, const char *word, size_t len, tok_ids *out);

/* The id of the piece spelled exactly s[0:len], or -1 (last id for duplicates). */
int tokug_piece_id(const tokug *u, const char *s, size_t len);

#endif
