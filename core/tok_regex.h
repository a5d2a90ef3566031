/* tok_regex.h — tokenizer.json regexes (written for Oniguruma) run through PCRE2 + JIT.
 *
 * HF tokenizers compiles Split/Replace patterns with Oniguruma. PCRE2 with UTF|UCP reads the
 * same syntax for everything real files use; the one semantic difference we rewrite is `\s`,
 * which in Oniguruma is exactly Unicode White_Space (PCRE2 UCP also matches U+180E).
 * A tok_regex is immutable after compilation; matching needs a caller-owned match data.
 */
#ifndef LR_TOK_REGEX_H
#define LR_TOK_REGEX_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stddef.h>

#include "err.h"

typedef struct tok_regex tok_regex;

/* A span [s, e) of bytes; m = 1 if it is a match, 0 if the text between matches. */
typedef struct tok_span {
    size_t s, e;
    int m;
} tok_span;

typedef struct tok_spans {
    tok_span *v;
    size_t n, cap;
} tok_spans;

int tokspans_push(tok_spans *sp, size_t s, size_t e, int m); /* 0 or LR_ENOMEM */

/* Compile an Oniguruma-syntax pattern. literal=1: the pattern is a plain string to find.
 * Errors (LR_EUNSUPPORTED) name the pattern and PCRE2's complaint; `what` prefixes it. */
int tokre_compile(const char *pattern, size_t len, int literal, const char *what, lr_error *err,
                  tok_regex **out);
void tokre_destroy(tok_regex *re);

/* All non-overlapping leftmost matches in s[0:n] in order, as HF's find_matches does: appends
 * spans covering s completely, alternating unmatched (m=0) and matched (m=1) pieces; an empty
 * subject gives one empty unmatched span. md: match data from pcre2_match_data_create(1,..).
 * Returns 0, LR_ENOMEM, or LR_EINTERNAL if PCRE2 gives up (limits). */
int tokre_find(const tok_regex *re, pcre2_match_data *md, const char *s, size_t n, tok_spans *out);

#endif
