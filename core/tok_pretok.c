/* tok_pretok.c — HF pre-tokenizers on a list of pieces in one arena.
 *
 * Every splitting pre-tokenizer is "find matches, then apply a SplitDelimiterBehavior"
 * (tokenizers normalizer.rs NormalizedString::split): a finder produces spans covering the
 * piece, alternating unmatched/matched; a char predicate makes every matching char its own
 * match; the behaviour then keeps, drops or merges the matched spans; empty results are
 * dropped. Transforming steps (Metaspace's ' '→'▁' and prepend, ByteLevel's byte→char map)
 * append new text to the arena. Offsets into the arena are used, never pointers, because
 * appending may move it.
 */
#include "tok_pretok.h"

#include <stdlib.h>
#include <string.h>

#include "tok_norm.h"

typedef enum { B_REMOVED, B_ISOLATED, B_MERGED_PREV, B_MERGED_NEXT, B_CONTIGUOUS } behavior;
typedef enum { F_REGEX, F_WHITESPACE, F_NUMERIC, F_PUNCT, F_CHAR } finder;

typedef enum {
    PT_SEQUENCE,
    PT_SPLIT, /* generic finder + behaviour (Split, WhitespaceSplit, Whitespace, Digits, …) */
    PT_METASPACE,
    PT_BYTELEVEL,
    PT_BERT,
} pt_kind;

struct tok_pretok {
    pt_kind kind;
    tok_pretok **sub;
    size_t n_sub;
    finder find;
    tok_regex *re;
    behavior beh;
    int invert;
    uint32_t ch; /* F_CHAR / Metaspace replacement */
    char rep[8]; /* Metaspace replacement, UTF-8 */
    int rep_len;
    int scheme;           /* Metaspace: 0 always, 1 first, 2 never */
    int split;            /* Metaspace split */
    int add_prefix_space; /* ByteLevel */
};

/* GPT-2's 68 non-printable bytes map to U+0100 + n in increasing byte order:
 * 0x00–0x20 → U+0100–U+0120, 0x7F–0xA0 → U+0121–U+0142, 0xAD → U+0143. */
uint32_t tok_byte_char(unsigned char b)
{
    if (b <= 0x20) return 0x100 + b;
    if (b >= 0x7F && b <= 0xA0) return 0x121 + (uint32_t)(b - 0x7F);
    if (b == 0xAD) return 0x143;
    return b;
}

int tok_char_byte(uint32_t cp)
{
    if ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0xFF))
        return (int)cp;
    if (cp >= 0x100 && cp <= 0x120) return (int)(cp - 0x100);
    if (cp >= 0x121 && cp <= 0x142) return (int)(cp - 0x121 + 0x7F);
    if (cp == 0x143) return 0xAD;
    return -1;
}

void tokpre_ctx_free(tok_pre_ctx *c)
{
    free(c->arena.p);
    free(c->tmp.v);
    free(c->spans.v);
    pcre2_match_data_free(c->md);
    memset(c, 0, sizeof *c);
}

int tokpieces_push(tok_pieces *p, size_t off, size_t len, int orig0)
{
    if (p->n == p->cap) {
        size_t c = p->cap ? p->cap * 2 : 64;
        tok_piece *v = realloc(p->v, c * sizeof *v);
        if (!v) return LR_ENOMEM;
        p->v = v;
        p->cap = c;
    }
    p->v[p->n++] = (tok_piece){off, len, orig0};
    return 0;
}

void tokpre_destroy(tok_pretok *p)
{
    if (!p) return;
    for (size_t i = 0; i < p->n_sub; i++)
        tokpre_destroy(p->sub[i]);
    free(p->sub);
    tokre_destroy(p->re);
    free(p);
}

static int load_behavior(const json_t *j, const char *file, lr_error *err, behavior *b)
{
    static const char *names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext",
                                  "Contiguous"};
    const char *s = json_string_value(json_object_get(j, "behavior"));
    for (int i = 0; s && i < 5; i++)
        if (!strcmp(s, names[i])) {
            *b = (behavior)i;
            return 0;
        }
    return lr_error_set(err, LR_EUNSUPPORTED,
                        "%s: pre_tokenizer split behavior '%.60s' is not supported", file,
                        s ? s : "(missing)");
}

/* The GPT-2 pattern of the ByteLevel pre-tokenizer (use_regex). */
static const char GPT2_RE[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

int tokpre_load(const json_t *j, const char *file, lr_error *err, tok_pretok **out)
{
    *out = NULL;
    if (!j || json_is_null(j)) return 0;
    const char *type = json_string_value(json_object_get(j, "type"));
    if (!type) return lr_error_set(err, LR_EFORMAT, "%s: pre_tokenizer without a 'type'", file);
    tok_pretok *p = calloc(1, sizeof *p);
    if (!p) return lr_error_set(err, LR_ENOMEM, "%s: out of memory", file);
    int rc = 0;
    char where[300];
    snprintf(where, sizeof where, "%s: pre_tokenizer %s", file, type);
    if (!strcmp(type, "Sequence")) {
        const json_t *a = json_object_get(j, "pretokenizers");
        p->kind = PT_SEQUENCE;
        if (!json_is_array(a)) {
            rc = lr_error_set(err, LR_EFORMAT, "%s needs 'pretokenizers'", where);
            goto out;
        }
        p->sub = calloc(json_array_size(a) + 1, sizeof *p->sub);
        if (!p->sub) {
            rc = lr_error_set(err, LR_ENOMEM, "%s: out of memory", file);
            goto out;
        }
        for (size_t i = 0; i < json_array_size(a); i++) {
            if ((rc = tokpre_load(json_array_get(a, i), file, err, &p->sub[p->n_sub]))) goto out;
            if (p->sub[p->n_sub]) p->n_sub++;
        }
    } else if (!strcmp(type, "Split")) {
        p->kind = PT_SPLIT;
        p->find = F_REGEX;
        p->invert = json_is_true(json_object_get(j, "invert"));
        if (!(rc = load_behavior(j, file, err, &p->beh)))
            rc = tok_load_pattern(json_object_get(j, "pattern"), "pre_tokenizer Split", file, err,
                                  &p->re);
    } else if (!strcmp(type, "WhitespaceSplit")) {
        p->kind = PT_SPLIT;
        p->find = F_WHITESPACE;
        p->beh = B_REMOVED;
    } else if (!strcmp(type, "Whitespace")) {
        /* HF: split(Invert(\w+|[^\w\s]+), Removed) — keep the matches. */
        p->kind = PT_SPLIT;
        p->find = F_REGEX;
        p->beh = B_REMOVED;
        p->invert = 1;
        static const char ws_re[] = "\\w+|[^\\w\\s]+";
        rc = tokre_compile(ws_re, sizeof ws_re - 1, 0, where, err, &p->re);
    } else if (!strcmp(type, "CharDelimiterSplit")) {
        const json_t *dl = json_object_get(j, "delimiter");
        p->kind = PT_SPLIT;
        p->find = F_CHAR;
        p->beh = B_REMOVED;
        if (!json_is_string(dl) || json_string_length(dl) == 0 ||
            tok_utf8_next(json_string_value(dl), json_string_length(dl), &p->ch) !=
                (int)json_string_length(dl)) {
            rc = lr_error_set(err, LR_EFORMAT, "%s: delimiter must be one character", where);
            goto out;
        }
    } else if (!strcmp(type, "Digits")) {
        p->kind = PT_SPLIT;
        p->find = F_NUMERIC;
        p->beh = json_is_true(json_object_get(j, "individual_digits")) ? B_ISOLATED : B_CONTIGUOUS;
    } else if (!strcmp(type, "Punctuation")) {
        p->kind = PT_SPLIT;
        p->find = F_PUNCT;
        p->beh = B_ISOLATED;
        if (json_object_get(j, "behavior")) rc = load_behavior(j, file, err, &p->beh);
    } else if (!strcmp(type, "BertPreTokenizer")) {
        p->kind = PT_BERT;
    } else if (!strcmp(type, "Metaspace")) {
        const json_t *rep = json_object_get(j, "replacement"),
                     *aps = json_object_get(j, "add_prefix_space"),
                     *ps = json_object_get(j, "prepend_scheme"), *sp = json_object_get(j, "split");
        p->kind = PT_METASPACE;
        if (!json_is_string(rep) || json_string_length(rep) == 0 ||
            tok_utf8_next(json_string_value(rep), json_string_length(rep), &p->ch) !=
                (int)json_string_length(rep)) {
            rc = lr_error_set(err, LR_EFORMAT, "%s: replacement must be one character", where);
            goto out;
        }
        p->rep_len = (int)json_string_length(rep);
        memcpy(p->rep, json_string_value(rep), (size_t)p->rep_len);
        p->scheme = 0;
        if (json_is_string(ps)) {
            const char *s = json_string_value(ps);
            p->scheme = !strcmp(s, "always")  ? 0
                        : !strcmp(s, "first") ? 1
                        : !strcmp(s, "never") ? 2
                                              : -1;
            if (p->scheme < 0) {
                rc = lr_error_set(err, LR_EUNSUPPORTED,
                                  "%s: prepend_scheme '%.40s' is not supported", where, s);
                goto out;
            }
        }
        /* HF 0.22: the old add_prefix_space=false is only accepted beside prepend_scheme
         * "never" (the scheme defaults to "always" first); add_prefix_space=true changes nothing.
         */
        if (json_is_false(aps) && p->scheme != 2) {
            rc = lr_error_set(err, LR_EUNSUPPORTED,
                              "%s: add_prefix_space false does not match prepend_scheme", where);
            goto out;
        }
        p->split = sp ? json_is_true(sp) : 1;
    } else if (!strcmp(type, "ByteLevel")) {
        p->kind = PT_BYTELEVEL;
        p->add_prefix_space = json_is_true(json_object_get(j, "add_prefix_space"));
        const json_t *ur = json_object_get(j, "use_regex");
        if (!ur || json_is_true(ur))
            rc = tokre_compile(GPT2_RE, sizeof GPT2_RE - 1, 0, where, err, &p->re);
    } else {
        rc = lr_error_set(err, LR_EUNSUPPORTED, "%s: pre_tokenizer type '%.100s' is not supported",
                          file, type);
    }
out:
    if (rc) {
        tokpre_destroy(p);
        return rc;
    }
    *out = p;
    return 0;
}

/* Spans of a char predicate: every matching char is its own match (HF's Pattern for Fn(char)). */
static int find_chars(finder f, uint32_t ch, const char *s, size_t n, tok_spans *sp)
{
    size_t last = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int k = tok_utf8_next(s + i, n - i, &cp);
        int hit = f == F_WHITESPACE ? tok_is_whitespace(cp)
                  : f == F_NUMERIC  ? tok_is_numeric(cp)
                  : f == F_PUNCT    ? tok_is_punct(cp)
                                    : cp == ch;
        if (hit) {
            if (last < i && tokspans_push(sp, last, i, 0)) return LR_ENOMEM;
            if (tokspans_push(sp, i, i + (size_t)k, 1)) return LR_ENOMEM;
            last = i + (size_t)k;
        }
        i += (size_t)k;
    }
    if (last < n && tokspans_push(sp, last, n, 0)) return LR_ENOMEM;
    return 0;
}

/* Apply behaviour b to the spans of piece `pc` and push the resulting pieces to out. */
static int emit_split(const tok_piece *pc, tok_spans *sp, behavior b, tok_pieces *out)
{
    tok_span *v = sp->v;
    size_t n = 0;
    int prev_match = 0;
    /* Rewrite v in place into the list of kept ranges (m reused as "keep"). */
    switch (b) {
    case B_REMOVED:
        for (size_t i = 0; i < sp->n; i++)
            if (!v[i].m) v[n++] = v[i];
        break;
    case B_ISOLATED:
        n = sp->n;
        break;
    case B_MERGED_PREV:
        for (size_t i = 0; i < sp->n; i++) {
            int m = v[i].m;
            if (m && !prev_match && n > 0)
                v[n - 1].e = v[i].e;
            else
                v[n++] = v[i];
            prev_match = m;
        }
        break;
    case B_MERGED_NEXT: {
        /* Same fold from the right: a match joins the piece that follows it. */
        size_t w = sp->n;
        for (size_t i = sp->n; i-- > 0;) {
            int m = v[i].m;
            if (m && !prev_match && w < sp->n)
                v[w].s = v[i].s;
            else
                v[--w] = v[i];
            prev_match = m;
        }
        memmove(v, v + w, (sp->n - w) * sizeof *v);
        n = sp->n - w;
        break;
    }
    case B_CONTIGUOUS:
        for (size_t i = 0; i < sp->n; i++) {
            int m = v[i].m;
            if (m == prev_match && n > 0)
                v[n - 1].e = v[i].e;
            else
                v[n++] = v[i];
            prev_match = m;
        }
        break;
    }
    for (size_t i = 0; i < n; i++)
        if (v[i].e > v[i].s &&
            tokpieces_push(out, pc->off + v[i].s, v[i].e - v[i].s, pc->orig0 && v[i].s == 0))
            return LR_ENOMEM;
    return 0;
}

static int split_step(const tok_pretok *p, finder f, behavior b, tok_pre_ctx *c, tok_pieces *w)
{
    int rc = 0;
    c->tmp.n = 0;
    for (size_t i = 0; !rc && i < w->n; i++) {
        const char *s = c->arena.p + w->v[i].off;
        c->spans.n = 0;
        if (f == F_REGEX) {
            rc = tokre_find(p->re, c->md, s, w->v[i].len, &c->spans);
            if (p->invert)
                for (size_t k = 0; k < c->spans.n; k++)
                    c->spans.v[k].m = !c->spans.v[k].m;
        } else {
            rc = find_chars(f, p ? p->ch : 0, s, w->v[i].len, &c->spans);
        }
        if (!rc) rc = emit_split(&w->v[i], &c->spans, b, &c->tmp);
    }
    tok_pieces t = *w;
    *w = c->tmp;
    c->tmp = t;
    return rc;
}

/* Append text to the arena; src may point into the arena itself. */
static int arena_put(tok_pre_ctx *c, size_t src_off, const char *lit, size_t n)
{
    if (tokbuf_reserve(&c->arena, n)) return LR_ENOMEM;
    memcpy(c->arena.p + c->arena.n, lit ? lit : c->arena.p + src_off, n);
    c->arena.n += n;
    c->arena.p[c->arena.n] = '\0';
    return 0;
}

static int metaspace(const tok_pretok *p, tok_pre_ctx *c, tok_pieces *w)
{
    for (size_t i = 0; i < w->n; i++) {
        tok_piece *pc = &w->v[i];
        size_t start = c->arena.n;
        /* Worst case every byte is a space that grows to rep_len bytes. */
        if (tokbuf_reserve(&c->arena, pc->len * (size_t)p->rep_len + (size_t)p->rep_len))
            return LR_ENOMEM;
        const char *s = c->arena.p + pc->off;
        char *d = c->arena.p + start;
        int starts_rep = (pc->len > 0 && s[0] == ' ') ||
                         (pc->len >= (size_t)p->rep_len && !memcmp(s, p->rep, (size_t)p->rep_len));
        size_t k = 0;
        if (!starts_rep && (p->scheme == 0 || (p->scheme == 1 && pc->orig0))) {
            memcpy(d, p->rep, (size_t)p->rep_len);
            k = (size_t)p->rep_len;
        }
        for (size_t j = 0; j < pc->len; j++) {
            if (s[j] == ' ') {
                memcpy(d + k, p->rep, (size_t)p->rep_len);
                k += (size_t)p->rep_len;
            } else {
                d[k++] = s[j];
            }
        }
        c->arena.n = start + k;
        c->arena.p[c->arena.n] = '\0';
        pc->off = start;
        pc->len = k;
    }
    if (!p->split) return 0;
    return split_step(p, F_CHAR, B_MERGED_NEXT, c, w);
}

static int bytelevel(const tok_pretok *p, tok_pre_ctx *c, tok_pieces *w)
{
    int rc;
    if (p->add_prefix_space) {
        for (size_t i = 0; i < w->n; i++) {
            tok_piece *pc = &w->v[i];
            if (pc->len && c->arena.p[pc->off] == ' ') continue;
            size_t start = c->arena.n;
            if (arena_put(c, 0, " ", 1) || arena_put(c, pc->off, NULL, pc->len)) return LR_ENOMEM;
            pc->off = start;
            pc->len++;
        }
    }
    if (p->re && (rc = split_step(p, F_REGEX, B_ISOLATED, c, w))) return rc;
    /* Map every byte to its printable char (2 bytes of UTF-8 at most). */
    for (size_t i = 0; i < w->n; i++) {
        tok_piece *pc = &w->v[i];
        size_t start = c->arena.n;
        if (tokbuf_reserve(&c->arena, pc->len * 2)) return LR_ENOMEM;
        const unsigned char *s = (const unsigned char *)c->arena.p + pc->off;
        char *d = c->arena.p + start;
        size_t k = 0;
        for (size_t j = 0; j < pc->len; j++) {
            uint32_t cp = tok_byte_char(s[j]);
            if (cp < 0x80) {
                d[k++] = (char)cp;
            } else {
                d[k++] = (char)(0xC0 | (cp >> 6));
                d[k++] = (char)(0x80 | (cp & 0x3F));
            }
        }
        c->arena.n = start + k;
        c->arena.p[c->arena.n] = '\0';
        pc->off = start;
        pc->len = k;
    }
    return 0;
}

int tokpre_apply(const tok_pretok *p, tok_pre_ctx *c, tok_pieces *w)
{
    if (!p) return 0;
    if (!c->md && !(c->md = pcre2_match_data_create(1, NULL))) return LR_ENOMEM;
    int rc = 0;
    switch (p->kind) {
    case PT_SEQUENCE:
        for (size_t i = 0; !rc && i < p->n_sub; i++)
            rc = tokpre_apply(p->sub[i], c, w);
        return rc;
    case PT_SPLIT:
        return split_step(p, p->find, p->beh, c, w);
    case PT_BERT:
        if ((rc = split_step(p, F_WHITESPACE, B_REMOVED, c, w))) return rc;
        return split_step(p, F_PUNCT, B_ISOLATED, c, w);
    case PT_METASPACE:
        return metaspace(p, c, w);
    case PT_BYTELEVEL:
        return bytelevel(p, c, w);
    }
    return LR_EINTERNAL;
}
