/* tok_regex.c — Oniguruma-syntax patterns on PCRE2 (UTF, UCP, JIT), and HF's find_matches.
 *
 * Translation is deliberately small: `\s` / `\S` become explicit White_Space classes (outside a
 * character class; inside one `\s` becomes the class body), `\h` / `\H` (Oniguruma: hex digit)
 * become [0-9a-fA-F]. Everything else — \p{L}, \p{N}, (?i:…), lookahead — is read by PCRE2 as
 * Oniguruma reads it. This module is not a general regex layer: it exists for tokenizer.json.
 */
#include "tok_regex.h"

#include <stdlib.h>
#include <string.h>

#include "tok_util.h"

struct tok_regex {
    pcre2_code *code; /* NULL: the empty literal, which never matches */
};

/* Unicode White_Space, the set Oniguruma's \s matches. */
#define WS_BODY                                                                                    \
    "\\t-\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}"                \
    "\\x{205F}\\x{3000}"

int tokspans_push(tok_spans *sp, size_t s, size_t e, int m)
{
    if (sp->n == sp->cap) {
        size_t c = sp->cap ? sp->cap * 2 : 64;
        tok_span *v = realloc(sp->v, c * sizeof *v);
        if (!v) return LR_ENOMEM;
        sp->v = v;
        sp->cap = c;
    }
    sp->v[sp->n++] = (tok_span){s, e, m};
    return 0;
}

static int translate(const char *p, size_t n, tok_buf *o)
{
    int in_class = 0, rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        char c = p[i];
        if (c == '\\' && i + 1 < n) {
            char d = p[++i];
            if (d == 's')
                rc = tokbuf_put(o, in_class ? WS_BODY : "[" WS_BODY "]",
                                strlen(WS_BODY) + (in_class ? 0 : 2));
            else if (d == 'S' && !in_class)
                rc = tokbuf_put(o, "[^" WS_BODY "]", strlen(WS_BODY) + 3);
            else if (d == 'h')
                rc = tokbuf_put(o, in_class ? "0-9a-fA-F" : "[0-9a-fA-F]", in_class ? 9 : 11);
            else if (d == 'H' && !in_class)
                rc = tokbuf_put(o, "[^0-9a-fA-F]", 12);
            else {
                rc = tokbuf_putc(o, '\\');
                if (!rc) rc = tokbuf_putc(o, d);
            }
            continue;
        }
        if (c == '[') {
            /* A ']' right after '[' or '[^' is a literal member, not the end. */
            if (!in_class) {
                rc = tokbuf_putc(o, c);
                in_class = 1;
                if (i + 1 < n && p[i + 1] == '^') rc = rc ? rc : tokbuf_putc(o, p[++i]);
                if (i + 1 < n && p[i + 1] == ']') rc = rc ? rc : tokbuf_putc(o, p[++i]);
                continue;
            }
            in_class++; /* nested class (Oniguruma set operations) */
        } else if (c == ']' && in_class) {
            in_class--;
        }
        rc = tokbuf_putc(o, c);
    }
    return rc;
}

int tokre_compile(const char *pattern, size_t len, int literal, const char *what, lr_error *err,
                  tok_regex **out)
{
    tok_regex *re = calloc(1, sizeof *re);
    tok_buf t = {0};
    if (!re) return lr_error_set(err, LR_ENOMEM, "%s: out of memory", what);
    if (literal && len == 0) {
        *out = re;
        return 0;
    }
    uint32_t opts = PCRE2_UTF | PCRE2_UCP;
    if (literal) {
        opts = PCRE2_UTF | PCRE2_LITERAL; /* PCRE2 refuses UCP with LITERAL; it is moot there */
        if (tokbuf_put(&t, pattern, len)) goto oom;
    } else if (translate(pattern, len, &t) || tokbuf_put(&t, "", 0)) {
        goto oom;
    }
    int ec;
    PCRE2_SIZE eo;
    re->code = pcre2_compile((PCRE2_SPTR)t.p, t.n, opts, &ec, &eo, NULL);
    if (!re->code) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        lr_error_set(err, LR_EUNSUPPORTED, "%s: regex '%.*s' is not supported (%s at offset %zu)",
                     what, (int)(len > 200 ? 200 : len), pattern, (char *)msg, (size_t)eo);
        free(t.p);
        free(re);
        return LR_EUNSUPPORTED;
    }
    /* JIT is an accelerator only: without it (e.g. no JIT support) pcre2_match interprets. */
    pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE);
    free(t.p);
    *out = re;
    return 0;
oom:
    free(t.p);
    free(re);
    return lr_error_set(err, LR_ENOMEM, "%s: out of memory", what);
}

void tokre_destroy(tok_regex *re)
{
    if (!re) return;
    pcre2_code_free(re->code);
    free(re);
}

int tokre_find(const tok_regex *re, pcre2_match_data *md, const char *s, size_t n, tok_spans *out)
{
    if (n == 0) return tokspans_push(out, 0, 0, 0);
    size_t prev = 0, pos = 0;
    while (re->code && pos <= n) {
        int rc = pcre2_match(re->code, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        /* The JIT's default 32 KB stack can run out on long subjects with nested repeats; the
         * interpreter keeps its backtracking frames on the heap, so retry there. */
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
            rc = pcre2_match(re->code, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md,
                             NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) return LR_EINTERNAL;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t ms = ov[0], me = ov[1];
        if (ms < pos || me < ms || me > n) /* \K or lookbehind tricks: refuse */
            return LR_EINTERNAL;
        if (prev != ms && tokspans_push(out, prev, ms, 0)) return LR_ENOMEM;
        if (tokspans_push(out, ms, me, 1)) return LR_ENOMEM;
        prev = me;
        if (me == ms) {
            /* Empty match: step over one character, as Oniguruma's find_iter does. */
            if (me >= n) break;
            uint32_t cp;
            pos = me + (size_t)tok_utf8_next(s + me, n - me, &cp);
        } else {
            pos = me;
        }
    }
    if (prev != n && tokspans_push(out, prev, n, 0)) return LR_ENOMEM;
    return 0;
}
