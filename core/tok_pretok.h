/* tok_pretok.h — tokenizer.json pre-tokenizers: split a normalized segment into words.
 *
 * Sequence, Metaspace, ByteLevel, Split, WhitespaceSplit, Whitespace, Digits, Punctuation,
 * BertPreTokenizer, CharDelimiterSplit, with HF's split behaviours (SPEC-HF.md E.1/E.2).
 * A tok_pretok is immutable after loading; the per-call state lives in a caller-owned
 * tok_pre_ctx.
 */
#ifndef LR_TOK_PRETOK_H
#define LR_TOK_PRETOK_H

#include <jansson.h>

#include "err.h"
#include "tok_regex.h"
#include "tok_util.h"

typedef struct tok_pretok tok_pretok;

/* One word: bytes [off, off+len) of the context's arena. orig0: its first char sits at offset 0
 * of the original input (Metaspace prepend_scheme "first" needs that). */
typedef struct tok_piece {
    size_t off, len;
    int orig0;
} tok_piece;

typedef struct tok_pieces {
    tok_piece *v;
    size_t n, cap;
} tok_pieces;

/* Per-call scratch; start from {0}, release with tokpre_ctx_free. */
typedef struct tok_pre_ctx {
    tok_buf arena; /* text of all pieces */
    tok_pieces tmp;
    tok_spans spans;
    pcre2_match_data *md;
} tok_pre_ctx;

void tokpre_ctx_free(tok_pre_ctx *c);
int tokpieces_push(tok_pieces *p, size_t off, size_t len, int orig0);

int tokpre_load(const json_t *j, const char *file, lr_error *err, tok_pretok **out);
void tokpre_destroy(tok_pretok *p);

/* Replace the pieces in *words (text in c->arena) by their pre-tokenization; empty pieces are
 * dropped. pt may be NULL (no pre-tokenizer: words unchanged). 0, LR_ENOMEM or LR_EINTERNAL. */
int tokpre_apply(const tok_pretok *pt, tok_pre_ctx *c, tok_pieces *words);

/* The GPT-2 byte → char map (bytes_to_unicode) and its inverse (-1: not a byte char). */
uint32_t tok_byte_char(unsigned char b);
int tok_char_byte(uint32_t cp);

#endif
