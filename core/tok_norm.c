/* tok_norm.c — normalizers of HF tokenizers, on plain strings.
 *
 * HF normalizers work on a NormalizedString that tracks alignments to the original text; we
 * only need the normalized text, so each normalizer here maps a string to a string. Semantics
 * per tokenizers normalizers/ sources: Prepend only touches non-empty text; Replace replaces every
 * non-overlapping leftmost match (String patterns are literal); Lowercase is Rust's per-char
 * to_lowercase (full mapping: only U+0130 grows); Strip trims char::is_whitespace.
 * Not here: BertNormalizer, Nmt, ByteLevel normalizer (refused at load).
 */
#include "tok_norm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tok_precompiled.h"

typedef enum {
    NORM_SEQUENCE,
    NORM_PREPEND,
    NORM_REPLACE,
    NORM_UNICODE, /* NFC/NFD/NFKC/NFKD: utf8proc options in .flags */
    NORM_LOWERCASE,
    NORM_STRIP,
    NORM_STRIP_ACCENTS,
    NORM_PRECOMPILED,
} norm_kind;

struct tok_norm {
    norm_kind kind;
    tok_norm **sub; /* Sequence children */
    size_t n_sub;
    char *str; /* Prepend text / Replace content */
    size_t str_len;
    tok_regex *re; /* Replace pattern */
    int flags;     /* NF*: utf8proc options; Strip: 1 = left, 2 = right */
    tokpc *pc;     /* Precompiled */
};

void toknorm_destroy(tok_norm *n)
{
    if (!n) return;
    for (size_t i = 0; i < n->n_sub; i++)
        toknorm_destroy(n->sub[i]);
    free(n->sub);
    free(n->str);
    tokre_destroy(n->re);
    tokpc_destroy(n->pc);
    free(n);
}

/* Read {"String": s} or {"Regex": r} (the Replace/Split pattern object) into a compiled regex. */
int tok_load_pattern(const json_t *pat, const char *what, const char *file, lr_error *err,
                     tok_regex **out)
{
    const json_t *s = json_object_get(pat, "String"), *r = json_object_get(pat, "Regex");
    char where[256];
    snprintf(where, sizeof where, "%s: %s", file, what);
    if (json_is_string(s))
        return tokre_compile(json_string_value(s), json_string_length(s), 1, where, err, out);
    if (json_is_string(r))
        return tokre_compile(json_string_value(r), json_string_length(r), 0, where, err, out);
    return lr_error_set(err, LR_EUNSUPPORTED,
                        "%s: %s pattern must be {\"String\": …} or {\"Regex\": …}", file, what);
}

static int get_str(const json_t *j, const char *key, const char *what, const char *file,
                   lr_error *err, char **out, size_t *len)
{
    const json_t *v = json_object_get(j, key);
    if (!json_is_string(v))
        return lr_error_set(err, LR_EFORMAT, "%s: %s needs a string field '%s'", file, what, key);
    *len = json_string_length(v);
    *out = malloc(*len + 1);
    if (!*out) return lr_error_set(err, LR_ENOMEM, "%s: out of memory", file);
    memcpy(*out, json_string_value(v), *len + 1);
    return 0;
}

int toknorm_load(const json_t *j, const char *file, lr_error *err, tok_norm **out)
{
    *out = NULL;
    if (!j || json_is_null(j)) return 0;
    const char *type = json_string_value(json_object_get(j, "type"));
    if (!type) return lr_error_set(err, LR_EFORMAT, "%s: normalizer without a 'type'", file);
    tok_norm *n = calloc(1, sizeof *n);
    if (!n) return lr_error_set(err, LR_ENOMEM, "%s: out of memory", file);
    int rc = 0;
    if (!strcmp(type, "Sequence")) {
        const json_t *a = json_object_get(j, "normalizers");
        n->kind = NORM_SEQUENCE;
        if (!json_is_array(a)) {
            rc = lr_error_set(err, LR_EFORMAT, "%s: normalizer Sequence needs 'normalizers'", file);
            goto out;
        }
        n->sub = calloc(json_array_size(a) + 1, sizeof *n->sub);
        if (!n->sub) goto oom;
        for (size_t i = 0; i < json_array_size(a); i++) {
            if ((rc = toknorm_load(json_array_get(a, i), file, err, &n->sub[n->n_sub]))) goto out;
            if (n->sub[n->n_sub]) n->n_sub++;
        }
    } else if (!strcmp(type, "Prepend")) {
        n->kind = NORM_PREPEND;
        rc = get_str(j, "prepend", "normalizer Prepend", file, err, &n->str, &n->str_len);
    } else if (!strcmp(type, "Replace")) {
        n->kind = NORM_REPLACE;
        if (!(rc = get_str(j, "content", "normalizer Replace", file, err, &n->str, &n->str_len)))
            rc = tok_load_pattern(json_object_get(j, "pattern"), "normalizer Replace", file, err,
                                  &n->re);
    } else if (!strcmp(type, "NFC") || !strcmp(type, "NFD") || !strcmp(type, "NFKC") ||
               !strcmp(type, "NFKD")) {
        n->kind = NORM_UNICODE;
        n->flags = UTF8PROC_STABLE |
                   (type[2] == 'C' || type[3] == 'C' ? UTF8PROC_COMPOSE : UTF8PROC_DECOMPOSE);
        if (type[2] == 'K') n->flags |= UTF8PROC_COMPAT;
    } else if (!strcmp(type, "Lowercase")) {
        n->kind = NORM_LOWERCASE;
    } else if (!strcmp(type, "Strip")) {
        const json_t *l = json_object_get(j, "strip_left"), *r = json_object_get(j, "strip_right");
        n->kind = NORM_STRIP;
        n->flags = (!l || json_is_true(l) ? 1 : 0) | (!r || json_is_true(r) ? 2 : 0);
    } else if (!strcmp(type, "StripAccents")) {
        n->kind = NORM_STRIP_ACCENTS;
    } else if (!strcmp(type, "Precompiled")) {
        const json_t *cm = json_object_get(j, "precompiled_charsmap");
        n->kind = NORM_PRECOMPILED;
        if (cm && !json_is_null(cm) && !json_is_string(cm)) {
            rc = lr_error_set(err, LR_EFORMAT,
                              "%s: normalizer Precompiled: precompiled_charsmap must be a string",
                              file);
            goto out;
        }
        if ((rc = tokpc_create(json_string_value(cm), err, &n->pc)))
            lr_error_prefix(err, "%s: normalizer Precompiled: ", file);
    } else {
        rc = lr_error_set(err, LR_EUNSUPPORTED, "%s: normalizer type '%.100s' is not supported",
                          file, type);
    }
    goto out;
oom:
    rc = lr_error_set(err, LR_ENOMEM, "%s: out of memory", file);
out:
    if (rc) {
        toknorm_destroy(n);
        return rc;
    }
    *out = n;
    return 0;
}

static int replace_all(const tok_norm *nm, const char *s, size_t len, tok_buf *out, int *shifted)
{
    tok_spans sp = {0};
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    int rc = md ? tokre_find(nm->re, md, s, len, &sp) : LR_ENOMEM;
    /* A match at 0 replaced by nothing: the text now starts at a later original char. */
    if (!rc && sp.n && sp.v[0].m && sp.v[0].e > 0 && nm->str_len == 0) *shifted = 1;
    for (size_t i = 0; !rc && i < sp.n; i++) {
        if (sp.v[i].m)
            rc = tokbuf_put(out, nm->str, nm->str_len);
        else
            rc = tokbuf_put(out, s + sp.v[i].s, sp.v[i].e - sp.v[i].s);
    }
    pcre2_match_data_free(md);
    free(sp.v);
    return rc;
}

int toknorm_apply(const tok_norm *nm, const char *s, size_t len, tok_buf *out, int *shifted)
{
    int dummy = 0;
    if (!shifted) shifted = &dummy;
    out->n = 0;
    if (tokbuf_reserve(out, len)) return LR_ENOMEM;
    out->p[0] = '\0';
    if (!nm) return tokbuf_put(out, s, len);
    switch (nm->kind) {
    case NORM_SEQUENCE: {
        /* Ping-pong between out and a temporary buffer. */
        tok_buf a = {0};
        int rc = tokbuf_put(&a, s, len);
        for (size_t i = 0; !rc && i < nm->n_sub; i++) {
            rc = toknorm_apply(nm->sub[i], a.p, a.n, out, shifted);
            tok_buf t = a;
            a = *out;
            *out = t;
        }
        if (!rc) {
            tok_buf t = a;
            a = *out;
            *out = t;
        }
        free(a.p);
        return rc;
    }
    case NORM_PREPEND:
        if (len && tokbuf_put(out, nm->str, nm->str_len)) return LR_ENOMEM;
        return tokbuf_put(out, s, len);
    case NORM_REPLACE:
        return replace_all(nm, s, len, out, shifted);
    case NORM_UNICODE: {
        utf8proc_uint8_t *d = NULL;
        utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)len, &d,
                                          (utf8proc_option_t)nm->flags);
        if (r < 0) return r == UTF8PROC_ERROR_NOMEM ? LR_ENOMEM : LR_EINTERNAL;
        int rc = tokbuf_put(out, (const char *)d, (size_t)r);
        free(d);
        return rc;
    }
    case NORM_LOWERCASE:
    case NORM_STRIP_ACCENTS:
        for (size_t i = 0; i < len;) {
            uint32_t cp;
            int k = tok_utf8_next(s + i, len - i, &cp);
            int rc = 0;
            if (nm->kind == NORM_LOWERCASE) {
                if (cp == 0x130) /* the one unconditional multi-char lowercase mapping */
                    rc = tokbuf_put(out, "i\xCC\x87", 3);
                else
                    rc = tokbuf_put_cp(out, (uint32_t)utf8proc_tolower((utf8proc_int32_t)cp));
            } else {
                int c = utf8proc_category((utf8proc_int32_t)cp);
                if (c < UTF8PROC_CATEGORY_MN || c > UTF8PROC_CATEGORY_ME)
                    rc = tokbuf_put(out, s + i, (size_t)k);
                else if (out->n == 0)
                    *shifted = 1;
            }
            if (rc) return rc;
            i += (size_t)k;
        }
        return 0;
    case NORM_STRIP: {
        size_t a = 0, b = len;
        uint32_t cp;
        while ((nm->flags & 1) && a < b) {
            int k = tok_utf8_next(s + a, b - a, &cp);
            if (!tok_is_whitespace(cp)) break;
            a += (size_t)k;
        }
        while ((nm->flags & 2) && b > a) {
            size_t p = b - 1;
            while (p > a && ((unsigned char)s[p] & 0xC0) == 0x80)
                p--;
            tok_utf8_next(s + p, b - p, &cp);
            if (!tok_is_whitespace(cp)) break;
            b = p;
        }
        if (a > 0) *shifted = 1;
        return tokbuf_put(out, s + a, b - a);
    }
    case NORM_PRECOMPILED: {
        char *d = NULL;
        size_t dn = 0;
        int rc = tokpc_normalize(nm->pc, s, len, &d, &dn);
        if (!rc) rc = tokbuf_put(out, d, dn);
        free(d);
        /* No *shifted here: HF's Precompiled transform keeps a dropped leading char (e.g. a
         * control char under nmt_nfkc) inside the next char's alignment, so the start stays at
         * offset 0 (checked with the HF crate on T5 with prepend_scheme "first"). */
        return rc;
    }
    }
    return LR_EINTERNAL;
}
