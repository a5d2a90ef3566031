/* tok_norm.h — tokenizer.json normalizers (Sequence, Prepend, Replace, NF*, Lowercase, Strip,
 * StripAccents, Precompiled), applied to one text segment at a time (SPEC-HF.md E, step 2).
 * A tok_norm is immutable after loading.
 */
#ifndef LR_TOK_NORM_H
#define LR_TOK_NORM_H

#include <jansson.h>

#include "err.h"
#include "tok_regex.h"
#include "tok_util.h"

typedef struct tok_norm tok_norm;

/* Build from the "normalizer" JSON value (borrowed). null/absent gives *out = NULL (identity).
 * An unknown type or field value is LR_EUNSUPPORTED naming it and `file`. */
int toknorm_load(const json_t *j, const char *file, lr_error *err, tok_norm **out);
void toknorm_destroy(tok_norm *n);

/* Normalize s[0:len] (valid UTF-8) into out (reset first). nm may be NULL (copy).
 * *shifted (may be NULL; never cleared) is set to 1 when the normalized text no longer starts
 * at original offset 0 — Strip, Replace-by-nothing or StripAccents removed its first chars
 * (Precompiled does not count: HF keeps such a char in the next one's alignment) — which HF's
 * Metaspace prepend_scheme "first" looks at through NormalizedString alignments.
 * Returns 0, LR_ENOMEM or LR_EINTERNAL (regex engine gave up). */
int toknorm_apply(const tok_norm *nm, const char *s, size_t len, tok_buf *out, int *shifted);

/* Read a Replace/Split pattern object {"String": s} or {"Regex": r} (borrowed) into a new
 * compiled regex; `what` names the construct in errors ("pre_tokenizer Split"). */
int tok_load_pattern(const json_t *pat, const char *what, const char *file, lr_error *err,
                     tok_regex **out);

#endif
