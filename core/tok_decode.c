/* tok_decode.c — HF decoders over a list of strings kept in one buffer.
 *
 * A list is (text buffer, [off,len] per string); each decoder reads one list and writes the
 * next, so a chain costs two buffers however long the output. Semantics per tokenizers
 * decoders/ sources: ByteLevel maps byte-alphabet chars back to bytes and decodes the whole stream
 * lossily (Rust from_utf8_lossy); ByteFallback turns runs of <0xHH> tokens into their UTF-8, or
 * one U+FFFD per byte if the run is not valid UTF-8 as a whole; Strip removes up to `start`
 * leading / `stop` trailing copies of one char per token; Metaspace deletes the replacement in
 * the first token (unless prepend_scheme is never) and turns it into ' ' elsewhere.
 */
#include "tok_decode.h"

#include <stdlib.h>
#include <string.h>

#include "tok_norm.h"
#include "tok_pretok.h"

typedef enum {
    D_SEQUENCE,
    D_BYTELEVEL,
    D_REPLACE,
    D_BYTEFALLBACK,
    D_FUSE,
    D_STRIP,
    D_METASPACE
} dkind;

struct tok_decoder {
    dkind kind;
    tok_decoder **sub;
    size_t n_sub;
    tok_regex *re; /* Replace pattern */
    char *content; /* Replace content */
    size_t content_len;
    uint32_t ch;     /* Strip content / Metaspace replacement */
    int start, stop; /* Strip */
    int first_strip; /* Metaspace: delete the replacement in token 0 */
};

typedef struct strlist {
    tok_buf text;
    tok_pieces s;
} strlist;

void tokdec_destroy(tok_decoder *d)
{
    if (!d) return;
    for (size_t i = 0; i < d->n_sub; i++)
        tokdec_destroy(d->sub[i]);
    free(d->sub);
    tokre_destroy(d->re);
    free(d->content);
    free(d);
}

static int one_char(const json_t *v, uint32_t *cp)
{
    if (!json_is_string(v) || json_string_length(v) == 0) return -1;
    return tok_utf8_next(json_string_value(v), json_string_length(v), cp) ==
                   (int)json_string_length(v)
               ? 0
               : -1;
}

int tokdec_load(const json_t *j, const char *file, lr_error *err, tok_decoder **out)
{
    *out = NULL;
    if (!j || json_is_null(j)) return 0;
    const char *type = json_string_value(json_object_get(j, "type"));
    if (!type) return lr_error_set(err, LR_EFORMAT, "%s: decoder without a 'type'", file);
    tok_decoder *d = calloc(1, sizeof *d);
    if (!d) return lr_error_set(err, LR_ENOMEM, "%s: out of memory", file);
    int rc = 0;
    if (!strcmp(type, "Sequence")) {
        const json_t *a = json_object_get(j, "decoders");
        d->kind = D_SEQUENCE;
        if (!json_is_array(a)) {
            rc = lr_error_set(err, LR_EFORMAT, "%s: decoder Sequence needs 'decoders'", file);
            goto out;
        }
        if (!(d->sub = calloc(json_array_size(a) + 1, sizeof *d->sub))) {
            rc = lr_error_set(err, LR_ENOMEM, "%s: out of memory", file);
            goto out;
        }
        for (size_t i = 0; i < json_array_size(a); i++) {
            if ((rc = tokdec_load(json_array_get(a, i), file, err, &d->sub[d->n_sub]))) goto out;
            if (d->sub[d->n_sub]) d->n_sub++;
        }
    } else if (!strcmp(type, "ByteLevel")) {
        d->kind = D_BYTELEVEL;
    } else if (!strcmp(type, "ByteFallback")) {
        d->kind = D_BYTEFALLBACK;
    } else if (!strcmp(type, "Fuse")) {
        d->kind = D_FUSE;
    } else if (!strcmp(type, "Replace")) {
        const json_t *c = json_object_get(j, "content");
        d->kind = D_REPLACE;
        if (!json_is_string(c)) {
            rc =
                lr_error_set(err, LR_EFORMAT, "%s: decoder Replace needs a string 'content'", file);
            goto out;
        }
        d->content_len = json_string_length(c);
        if (!(d->content = malloc(d->content_len + 1))) {
            rc = lr_error_set(err, LR_ENOMEM, "%s: out of memory", file);
            goto out;
        }
        memcpy(d->content, json_string_value(c), d->content_len + 1);
        rc = tok_load_pattern(json_object_get(j, "pattern"), "decoder Replace", file, err, &d->re);
    } else if (!strcmp(type, "Strip")) {
        const json_t *st = json_object_get(j, "start"), *sp = json_object_get(j, "stop");
        d->kind = D_STRIP;
        if (one_char(json_object_get(j, "content"), &d->ch) || !json_is_integer(st) ||
            !json_is_integer(sp) || json_integer_value(st) < 0 || json_integer_value(sp) < 0) {
            rc = lr_error_set(err, LR_EFORMAT,
                              "%s: decoder Strip needs one-char 'content' and integer start/stop",
                              file);
            goto out;
        }
        d->start = json_integer_value(st) > 1000000 ? 1000000 : (int)json_integer_value(st);
        d->stop = json_integer_value(sp) > 1000000 ? 1000000 : (int)json_integer_value(sp);
    } else if (!strcmp(type, "Metaspace")) {
        const json_t *ps = json_object_get(j, "prepend_scheme");
        d->kind = D_METASPACE;
        if (one_char(json_object_get(j, "replacement"), &d->ch)) {
            rc = lr_error_set(err, LR_EFORMAT, "%s: decoder Metaspace needs a one-char replacement",
                              file);
            goto out;
        }
        /* prepend_scheme as in the pre-tokenizer (HF shares the struct): default "always";
         * add_prefix_space=false is an error unless the scheme is "never". */
        const char *sch = json_is_string(ps) ? json_string_value(ps) : "always";
        if (strcmp(sch, "always") && strcmp(sch, "first") && strcmp(sch, "never")) {
            rc = lr_error_set(err, LR_EUNSUPPORTED,
                              "%s: decoder Metaspace prepend_scheme '%.40s' is not supported", file,
                              sch);
            goto out;
        }
        d->first_strip = strcmp(sch, "never") != 0;
        if (json_is_false(json_object_get(j, "add_prefix_space")) && d->first_strip) {
            rc = lr_error_set(err, LR_EUNSUPPORTED,
                              "%s: decoder Metaspace add_prefix_space false does not match "
                              "prepend_scheme",
                              file);
            goto out;
        }
    } else {
        rc = lr_error_set(err, LR_EUNSUPPORTED, "%s: decoder type '%.100s' is not supported", file,
                          type);
    }
out:
    if (rc) {
        tokdec_destroy(d);
        return rc;
    }
    *out = d;
    return 0;
}

static int add_str(strlist *l, const char *s, size_t n)
{
    size_t off = l->text.n;
    if (tokbuf_put(&l->text, s, n)) return LR_ENOMEM;
    return tokpieces_push(&l->s, off, n, 0);
}

/* Is s the 6-byte "<0xHH>"? Rust's u8::from_str_radix also takes a leading '+'. */
static int byte_token(const char *s, size_t n, unsigned *b)
{
    if (n != 6 || memcmp(s, "<0x", 3) || s[5] != '>') return 0;
    unsigned v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int x = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                : c == '+' && i == 3   ? 0
                                       : -1;
        if (x < 0) return 0;
        v = v * 16 + (unsigned)x;
    }
    *b = s[3] == '+' ? v % 16 : v;
    return 1;
}

static int flush_bytes(strlist *o, tok_buf *bytes)
{
    int rc = 0;
    if (!bytes->n) return 0;
    if (tok_utf8_valid(bytes->p, bytes->n))
        rc = add_str(o, bytes->p, bytes->n);
    else
        for (size_t i = 0; !rc && i < bytes->n; i++)
            rc = add_str(o, "\xEF\xBF\xBD", 3);
    bytes->n = 0;
    return rc;
}

/* One decoder step: in → o (o is empty on entry). */
static int step(const tok_decoder *d, const strlist *in, strlist *o)
{
    int rc = 0;
    const char *t = in->text.p ? in->text.p : ""; /* an empty list has no buffer */
    switch (d->kind) {
    case D_SEQUENCE:
        return LR_EINTERNAL; /* flattened by the caller */
    case D_BYTELEVEL: {
        tok_buf raw = {0};
        for (size_t i = 0; !rc && i < in->s.n; i++) {
            const char *s = t + in->s.v[i].off;
            size_t n = in->s.v[i].len, mark = raw.n;
            for (size_t k = 0; !rc && k < n;) {
                uint32_t cp;
                int cl = tok_utf8_next(s + k, n - k, &cp);
                int b = tok_char_byte(cp);
                if (b < 0) { /* not all in the byte alphabet: the token's own bytes */
                    raw.n = mark;
                    rc = tokbuf_put(&raw, s, n);
                    break;
                }
                rc = tokbuf_putc(&raw, (char)b);
                k += (size_t)cl;
            }
        }
        size_t off = o->text.n;
        if (!rc) rc = tok_utf8_lossy(&o->text, raw.p ? raw.p : "", raw.n);
        if (!rc) rc = tokpieces_push(&o->s, off, o->text.n - off, 0);
        free(raw.p);
        return rc;
    }
    case D_REPLACE: {
        pcre2_match_data *md = pcre2_match_data_create(1, NULL);
        tok_spans sp = {0};
        if (!md) return LR_ENOMEM;
        for (size_t i = 0; !rc && i < in->s.n; i++) {
            const char *s = t + in->s.v[i].off;
            size_t off = o->text.n;
            sp.n = 0;
            rc = tokre_find(d->re, md, s, in->s.v[i].len, &sp);
            for (size_t k = 0; !rc && k < sp.n; k++)
                rc = sp.v[k].m ? tokbuf_put(&o->text, d->content, d->content_len)
                               : tokbuf_put(&o->text, s + sp.v[k].s, sp.v[k].e - sp.v[k].s);
            if (!rc) rc = tokpieces_push(&o->s, off, o->text.n - off, 0);
        }
        free(sp.v);
        pcre2_match_data_free(md);
        return rc;
    }
    case D_BYTEFALLBACK: {
        tok_buf bytes = {0};
        for (size_t i = 0; !rc && i < in->s.n; i++) {
            unsigned b;
            if (byte_token(t + in->s.v[i].off, in->s.v[i].len, &b)) {
                rc = tokbuf_putc(&bytes, (char)b);
            } else {
                rc = flush_bytes(o, &bytes);
                if (!rc) rc = add_str(o, t + in->s.v[i].off, in->s.v[i].len);
            }
        }
        if (!rc) rc = flush_bytes(o, &bytes);
        free(bytes.p);
        return rc;
    }
    case D_FUSE: {
        size_t off = o->text.n;
        for (size_t i = 0; !rc && i < in->s.n; i++)
            rc = tokbuf_put(&o->text, t + in->s.v[i].off, in->s.v[i].len);
        return rc ? rc : tokpieces_push(&o->s, off, o->text.n - off, 0);
    }
    case D_STRIP:
        for (size_t i = 0; !rc && i < in->s.n; i++) {
            const char *s = t + in->s.v[i].off;
            size_t n = in->s.v[i].len, a = 0, z = n;
            uint32_t cp;
            for (int k = 0; k < d->start && a < n; k++) {
                int cl = tok_utf8_next(s + a, n - a, &cp);
                if (cp != d->ch) break;
                a += (size_t)cl;
            }
            for (int k = 0; k < d->stop && z > a; k++) {
                size_t p = z - 1;
                while (p > a && ((unsigned char)s[p] & 0xC0) == 0x80)
                    p--;
                tok_utf8_next(s + p, z - p, &cp);
                if (cp != d->ch) break;
                z = p;
            }
            rc = add_str(o, s + a, z - a);
        }
        return rc;
    case D_METASPACE:
        for (size_t i = 0; !rc && i < in->s.n; i++) {
            const char *s = t + in->s.v[i].off;
            size_t n = in->s.v[i].len, off = o->text.n;
            for (size_t k = 0; !rc && k < n;) {
                uint32_t cp;
                int cl = tok_utf8_next(s + k, n - k, &cp);
                if (cp != d->ch)
                    rc = tokbuf_put(&o->text, s + k, (size_t)cl);
                else if (!(i == 0 && d->first_strip))
                    rc = tokbuf_putc(&o->text, ' ');
                k += (size_t)cl;
            }
            if (!rc) rc = tokpieces_push(&o->s, off, o->text.n - off, 0);
        }
        return rc;
    }
    return LR_EINTERNAL;
}

/* Run d (recursing into Sequences) with ping-pong lists *a (input, then result). */
static int run(const tok_decoder *d, strlist *a, strlist *b)
{
    if (d->kind == D_SEQUENCE) {
        for (size_t i = 0; i < d->n_sub; i++) {
            int rc = run(d->sub[i], a, b);
            if (rc) return rc;
        }
        return 0;
    }
    b->text.n = 0;
    b->s.n = 0;
    int rc = step(d, a, b);
    strlist t = *a;
    *a = *b;
    *b = t;
    return rc;
}

int tokdec_run(const tok_decoder *d, const char *const *tok, const size_t *len, size_t n,
               tok_buf *out)
{
    int rc = 0;
    if (!d) {
        for (size_t i = 0; !rc && i < n; i++)
            rc = (i ? tokbuf_putc(out, ' ') : 0) || tokbuf_put(out, tok[i], len[i]) ? LR_ENOMEM : 0;
        return rc ? rc : tokbuf_put(out, "", 0);
    }
    strlist a = {0}, b = {0};
    for (size_t i = 0; !rc && i < n; i++)
        rc = add_str(&a, tok[i], len[i]);
    if (!rc) rc = run(d, &a, &b);
    for (size_t i = 0; !rc && i < a.s.n; i++)
        rc = tokbuf_put(out, (a.text.p ? a.text.p : "") + a.s.v[i].off, a.s.v[i].len);
    if (!rc) rc = tokbuf_put(out, "", 0);
    free(a.text.p);
    free(a.s.v);
    free(b.text.p);
    free(b.s.v);
    return rc;
}
