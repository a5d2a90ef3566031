/* tokenizer.h — HuggingFace tokenizer.json, exactly as the HF tokenizers library does it.
 *
 * A tok_tokenizer is immutable after loading and safe to use from many threads at once
 * (encode/decode keep their scratch per call). See SPEC-HF.md section E for the semantics.
 */
#ifndef LR_TOKENIZER_H
#define LR_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

typedef struct tok_tokenizer tok_tokenizer;

/* A growable id vector, caller-owned; free v with free(). Start from {0}. */
typedef struct tok_ids {
    int32_t *v;
    size_t n, cap;
} tok_ids;

/* Load tokenizer.json (path) and, if config_path is non-NULL and exists, tokenizer_config.json
 * (bos/eos, add_bos_token/add_eos_token, added_tokens_decoder, clean_up_tokenization_spaces).
 * Unknown constructs (a normalizer or model type we do not implement) are an error naming the
 * construct and the file. */
int tok_load_files(const char *tokenizer_json, const char *config_json, lr_error *err,
                   tok_tokenizer **out);
/* Load DIR/tokenizer.json + DIR/tokenizer_config.json. */
int tok_load_dir(const char *dir, lr_error *err, tok_tokenizer **out);
void tok_destroy(tok_tokenizer *t);

/* Encode UTF-8 text (len bytes; invalid UTF-8 is an LR_EINVAL error) and APPEND the ids to out.
 * add_special: apply the post-processor (BOS/EOS templates). Special-token text in `text` is
 * always matched as the special token, as HF does. Other errors: LR_ENOMEM, LR_EINTERNAL (a
 * tokenizer.json regex hit PCRE2's match limits). On error out->n is back to its entry value. */
int tok_encode(const tok_tokenizer *t, const char *text, size_t len, int add_special, tok_ids *out);
/* Decode ids to UTF-8 (HF decode(ids, skip_special_tokens), no clean-up pass). *out is a new
 * malloc'd NUL-terminated string (free it), *len its length. Unknown ids → LR_ERANGE. */
int tok_decode(const tok_tokenizer *t, const int32_t *ids, size_t n, int skip_special, char **out,
               size_t *len);

int tok_vocab_size(const tok_tokenizer *t); /* model vocab + added tokens (max id + 1) */
const char *tok_id_to_piece(const tok_tokenizer *t, int32_t id);    /* raw vocab string or NULL */
int32_t tok_piece_to_id(const tok_tokenizer *t, const char *piece); /* -1 if absent */
int tok_is_special(const tok_tokenizer *t, int32_t id);
int32_t tok_bos_id(const tok_tokenizer *t); /* from tokenizer_config.json; -1 if none */
int32_t tok_eos_id(const tok_tokenizer *t);
const char *tok_bos_text(const tok_tokenizer *t); /* "" if none */
const char *tok_eos_text(const tok_tokenizer *t);

/* tokenizer_config.json clean_up_tokenization_spaces (default false when absent). */
int tok_clean_up_spaces(const tok_tokenizer *t);
/* transformers' clean_up_tokenization on s[0:n] in place (" ." → ".", " n't" → "n't", …);
 * returns the new length and NUL-terminates. Apply after tok_decode when the flag is set. */
size_t tok_clean_up_apply(char *s, size_t n);

/* Streaming detokenisation (HF DecodeStream semantics, SPEC E.6): feed ids one at a time; text
 * is appended to *out only once final, never half a UTF-8 character. The output is exactly what
 * HF's DecodeStream yields, which decodes each new id with one id of preceding context. For
 * every decoder chain real tokenizers ship (ByteLevel; Metaspace; Replace + ByteFallback + Fuse +
 * Strip(start ≤ 1)) the concatenation of all outputs (plus tok_stream_flush) equals tok_decode of
 * all ids — the goldens check it for every case. A chain that strips more than one leading
 * character (Strip with start ≥ 2, seen only in synthetic files) can lose text at the start of a
 * stream, as it does in HF; we match HF rather than diverge from it. */
typedef struct tok_stream tok_stream;
int tok_stream_create(const tok_tokenizer *t, int skip_special, tok_stream **out);
void tok_stream_destroy(tok_stream *s);
/* Feed one id. Appends newly final text (possibly nothing) to buf: *buf is malloc'd/realloc'd by
 * the callee, *len and *cap track it (start {NULL,0,0}). LR_ERANGE for an unknown id (the stream
 * is unchanged); LR_EINTERNAL where HF raises DecodeStreamError::InvalidPrefix. */
int tok_stream_step(tok_stream *s, int32_t id, char **buf, size_t *len, size_t *cap);
/* End of stream: append whatever is still held back (lossy, as whole decode would give). */
int tok_stream_flush(tok_stream *s, char **buf, size_t *len, size_t *cap);

#endif
