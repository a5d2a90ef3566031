/* tok_decode.h — tokenizer.json decoders: token strings → text (SPEC-HF.md E.6).
 *
 * ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence. Each decoder maps a list
 * of strings to a list of strings; the result is their concatenation. A tok_decoder is
 * immutable after loading.
 */
#ifndef LR_TOK_DECODE_H
#define LR_TOK_DECODE_H

#include <jansson.h>

#include "err.h"
#include "tok_util.h"

typedef struct tok_decoder tok_decoder;

int tokdec_load(const json_t *j, const char *file, lr_error *err, tok_decoder **out);
void tokdec_destroy(tok_decoder *d);

/* Decode n token strings (tok[i], len[i] bytes) and APPEND the text to out. d may be NULL: HF
 * then joins the tokens with " ". Returns 0, LR_ENOMEM or LR_EINTERNAL. */
int tokdec_run(const tok_decoder *d, const char *const *tok, const size_t *len, size_t n,
               tok_buf *out);

#endif
