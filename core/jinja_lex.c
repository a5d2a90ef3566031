/* jinja_lex.c — chat-template source to tokens, following Jinja2's lexer (lexer.py) with
 * transformers' settings trim_blocks=True and lstrip_blocks=True.
 *
 * \r\n and \r become \n and one trailing newline of the template goes (keep_trailing_newline=
 * False). Text runs up to the next "{{", "{%" or "{#". Before a tag, "{%-" / "{{-" / "{#-" strip
 * all whitespace at the end of the text; otherwise, for "{%" and "{#" (not "{{", and not with
 * "+"), lstrip_blocks removes the blanks between the last newline — or the start of a line — and
 * the tag. After a tag, "-%}" / "-}}" / "-#}" strip all whitespace that follows, "%}" and "#}"
 * take one newline (trim_blocks), "+%}" keeps it. Tag ends only count outside ( [ {. `{% raw %}`
 * blocks become text here. @huggingface/jinja approximates this with regexes on the source; the
 * two agree on everything the real templates contain (tests/jinja/gen.mjs notes the rest).
 * Every byte keeps its original offset so messages name the line and column a user sees.
 * All token text is copied into the template's arena. Not here: the grammar (jinja_parse.c).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jinja_int.h"

void jj_line_col(const char *src, size_t len, size_t pos, int *line, int *col)
{
    int l = 1, c = 1;
    for (size_t i = 0; i < pos && i < len; i++) {
        if (src[i] == '\n') {
            l++;
            c = 1;
        } else if (((unsigned char)src[i] & 0xC0) != 0x80) {
            c++;
        }
    }
    *line = l;
    *col = c;
}

/* ---- preprocessing -------------------------------------------------------------------------- */

typedef struct pre {
    char *p;
    uint32_t *map; /* original offset of every byte of p (plus one entry for the end) */
    size_t n;
} pre;

static int pre_alloc(pre *o, size_t n)
{
    o->p = malloc(n + 1);
    o->map = malloc((n + 1) * sizeof *o->map);
    o->n = 0;
    return (o->p && o->map) ? 0 : LR_ENOMEM;
}

static void pre_free(pre *o)
{
    free(o->p);
    free(o->map);
    o->p = NULL;
    o->map = NULL;
}

/* Jinja2's tokeniter: every \r\n and \r becomes \n, and one trailing newline of the template
 * goes (keep_trailing_newline=False). */
static int preprocess(const char *src, size_t len, pre *out)
{
    if (pre_alloc(out, len)) return LR_ENOMEM;
    for (size_t i = 0; i < len; i++) {
        out->map[out->n] = (uint32_t)i;
        if (src[i] == '\r') {
            out->p[out->n++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n') i++;
        } else {
            out->p[out->n++] = src[i];
        }
    }
    if (out->n > 0 && out->p[out->n - 1] == '\n') out->n--;
    out->map[out->n] = (uint32_t)len;
    out->p[out->n] = '\0';
    return 0;
}

/* ---- lexer ------------------------------------------------------------------------------------
 */

typedef struct lexer {
    jj_template *t;
    int line_starting; /* the last tag ended a line (Jinja2's line_starting, for lstrip_blocks) */
    lr_error *err;
    pre pp;
    jj_tok *v;
    size_t n, cap;
} lexer;

static int lex_fail(lexer *L, size_t at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int lex_fail(lexer *L, size_t at, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    int line, col;
    jj_line_col(L->t->src, L->t->len, L->pp.map[at < L->pp.n ? at : L->pp.n], &line, &col);
    return lr_error_set(L->err, LR_EFORMAT, "chat template line %d, column %d: %s", line, col, msg);
}

static jj_tok *lex_push(lexer *L, int type, size_t at)
{
    if (L->n == L->cap) {
        size_t nc = L->cap ? L->cap * 2 : 256;
        jj_tok *nv = realloc(L->v, nc * sizeof *nv);
        if (!nv) return NULL;
        L->v = nv;
        L->cap = nc;
    }
    jj_tok *k = &L->v[L->n++];
    memset(k, 0, sizeof *k);
    k->type = (uint8_t)type;
    k->pos = L->pp.map[at];
    return k;
}

static size_t skip_space(const char *p, size_t n, size_t i)
{
    size_t cl;
    while (i < n && jj_is_space_at(p, n, i, &cl))
        i += cl;
    return i;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static size_t put_utf8(char *o, uint32_t cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* A quoted string starting at p[i] (the quote). Python escapes; unknown escapes stay as
 * written (backslash kept), as Python's string literal rules do. */
static int lex_string(lexer *L, size_t *ip)
{
    const char *p = L->pp.p;
    size_t n = L->pp.n, i = *ip;
    char q = p[i++];
    size_t start = i;
    while (i < n && p[i] != q) {
        if (p[i] == '\\' && i + 1 < n) i++;
        i++;
    }
    if (i >= n) return lex_fail(L, *ip, "unterminated string literal");
    char *o = jj_arena_alloc(&L->t->arena, (i - start) + 1);
    if (!o) return LR_ENOMEM;
    size_t on = 0;
    for (size_t j = start; j < i; j++) {
        if (p[j] != '\\') {
            o[on++] = p[j];
            continue;
        }
        char e = p[++j];
        int width = e == 'x' ? 2 : e == 'u' ? 4 : e == 'U' ? 8 : 0;
        if (width) {
            uint32_t cp = 0;
            int ok = j + width < i + 1;
            for (int d = 1; ok && d <= width; d++) {
                int h = j + d < i ? hexval(p[j + d]) : -1;
                if (h < 0)
                    ok = 0;
                else
                    cp = cp * 16 + (uint32_t)h;
            }
            if (!ok || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
                return lex_fail(L, j - 1, "bad \\%c escape in string literal", e);
            /* \xHH and \uHHHH can take more bytes in UTF-8 than in the source: the buffer
             * has (i - start) bytes, and each escape is at least 4 source bytes for ≤ 4 out. */
            on += put_utf8(o + on, cp);
            j += (size_t)width;
            continue;
        }
        switch (e) {
        case 'n':
            o[on++] = '\n';
            break;
        case 't':
            o[on++] = '\t';
            break;
        case 'r':
            o[on++] = '\r';
            break;
        case 'b':
            o[on++] = '\b';
            break;
        case 'f':
            o[on++] = '\f';
            break;
        case 'v':
            o[on++] = '\v';
            break;
        case 'a':
            o[on++] = '\a';
            break;
        case '0':
            o[on++] = '\0';
            break;
        case '\\':
            o[on++] = '\\';
            break;
        case '\'':
            o[on++] = '\'';
            break;
        case '"':
            o[on++] = '"';
            break;
        case '\n':
            break; /* line continuation */
        default:
            o[on++] = '\\';
            o[on++] = e;
        }
    }
    jj_tok *k = lex_push(L, TK_STR, *ip);
    if (!k) return LR_ENOMEM;
    k->s = o;
    k->n = on;
    *ip = i + 1;
    return 0;
}

static const char *const OPS[] = {"**", "//", "==", "!=", "<=", ">=", "+", "-", "*",
                                  "/",  "%",  "~",  "<",  ">",  "=",  "(", ")", "[",
                                  "]",  "{",  "}",  ",",  ".",  ":",  "|"};

/* The tokens inside one {% %} or {{ }} tag, starting after the opener; *ip ends after the closer.
 */
static int lex_tag(lexer *L, size_t *ip, int block)
{
    const char *p = L->pp.p;
    size_t n = L->pp.n, i = *ip;
    /* open ( [ { inside the tag: like Jinja2, the closer only counts when they are balanced */
    int depth = 0;
    for (;;) {
        i = skip_space(p, n, i);
        if (i >= n) return lex_fail(L, *ip, "unclosed %s tag", block ? "{%" : "{{");
        const char *close = block ? "%}" : "}}";
        if (depth == 0 && p[i] == '-' && i + 2 < n && p[i + 1] == close[0] &&
            p[i + 2] == close[1]) {
            if (!lex_push(L, block ? TK_BE : TK_VE, i)) return LR_ENOMEM;
            *ip = skip_space(p, n, i + 3); /* "-%}\s*" */
            L->line_starting = *ip > i + 3 && p[*ip - 1] == '\n';
            return 0;
        }
        if (depth == 0 && block && p[i] == '+' && i + 2 < n && p[i + 1] == '%' && p[i + 2] == '}') {
            if (!lex_push(L, TK_BE, i)) return LR_ENOMEM;
            *ip = i + 3; /* "+%}": no trim_blocks */
            L->line_starting = 0;
            return 0;
        }
        if (depth == 0 && i + 1 < n && p[i] == close[0] && p[i + 1] == close[1]) {
            if (!lex_push(L, block ? TK_BE : TK_VE, i)) return LR_ENOMEM;
            *ip = i + 2;
            L->line_starting = 0;
            if (block && *ip < n && p[*ip] == '\n') { /* trim_blocks: "%}\n?" */
                (*ip)++;
                L->line_starting = 1;
            }
            return 0;
        }
        char c = p[i];
        if (c == '\'' || c == '"') {
            int rc = lex_string(L, &i);
            if (rc) return rc;
            continue;
        }
        if (c >= '0' && c <= '9') {
            size_t s = i;
            int isf = 0;
            while (i < n && p[i] >= '0' && p[i] <= '9')
                i++;
            int after_dot = L->n > 0 && L->v[L->n - 1].type == TK_OP && L->v[L->n - 1].s[0] == '.';
            if (!after_dot && i + 1 < n && p[i] == '.' && p[i + 1] >= '0' && p[i + 1] <= '9') {
                isf = 1;
                i++;
                while (i < n && p[i] >= '0' && p[i] <= '9')
                    i++;
            }
            if (!after_dot && i < n && (p[i] == 'e' || p[i] == 'E')) {
                size_t j = i + 1;
                if (j < n && (p[j] == '+' || p[j] == '-')) j++;
                if (j < n && p[j] >= '0' && p[j] <= '9') {
                    isf = 1;
                    while (j < n && p[j] >= '0' && p[j] <= '9')
                        j++;
                    i = j;
                }
            }
            jj_tok *k = lex_push(L, isf ? TK_FLOAT : TK_INT, s);
            if (!k) return LR_ENOMEM;
            char tmp[64];
            size_t len = i - s < sizeof tmp - 1 ? i - s : sizeof tmp - 1;
            memcpy(tmp, p + s, len);
            tmp[len] = '\0';
            if (isf) {
                k->f = strtod(tmp, NULL);
            } else {
                errno = 0;
                k->i = strtoll(tmp, NULL, 10);
                if (errno == ERANGE || i - s > 19)
                    return lex_fail(L, s, "integer literal does not fit in 64 bits");
            }
            continue;
        }
        if (c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
            size_t s = i;
            while (i < n && (p[i] == '_' || (p[i] >= 'a' && p[i] <= 'z') ||
                             (p[i] >= 'A' && p[i] <= 'Z') || (p[i] >= '0' && p[i] <= '9')))
                i++;
            jj_tok *k = lex_push(L, TK_NAME, s);
            char *nm = jj_arena_alloc(&L->t->arena, i - s + 1);
            if (!k || !nm) return LR_ENOMEM;
            memcpy(nm, p + s, i - s); /* the preprocessed text is freed after parsing */
            k->s = nm;
            k->n = i - s;
            continue;
        }
        size_t o;
        for (o = 0; o < sizeof OPS / sizeof OPS[0]; o++) {
            size_t ol = strlen(OPS[o]);
            if (i + ol <= n && memcmp(p + i, OPS[o], ol) == 0) break;
        }
        if (o == sizeof OPS / sizeof OPS[0]) return lex_fail(L, i, "unexpected character '%c'", c);
        jj_tok *k = lex_push(L, TK_OP, i);
        if (!k) return LR_ENOMEM;
        k->s = OPS[o];
        k->n = strlen(OPS[o]);
        if (c == '{' || c == '(' || c == '[')
            depth++;
        else if ((c == '}' || c == ')' || c == ']') && depth > 0)
            depth--;
        i += k->n;
    }
}

/* Is p[i] "{%[-+] name [-+]%}" (whitespace around name)? *after = just past it (and past the
 * whitespace a "-%}" removes); *strip = that "-" was there. */
static int raw_tag(const char *p, size_t n, size_t i, const char *name, size_t *after, int *strip)
{
    size_t j = i + 2, nl = strlen(name);
    if (j < n && (p[j] == '-' || p[j] == '+')) j++;
    j = skip_space(p, n, j);
    if (j + nl > n || memcmp(p + j, name, nl) != 0) return 0;
    j = skip_space(p, n, j + nl);
    int minus = 0, plus_before_close = 0;
    if (j < n && (p[j] == '-' || p[j] == '+')) {
        minus = p[j] == '-';
        plus_before_close = p[j] == '+';
        j++;
    }
    if (j + 1 >= n || p[j] != '%' || p[j + 1] != '}') return 0;
    j += 2;
    if (strip) *strip = minus;
    *after = minus ? skip_space(p, n, j) : j;
    /* "{% endraw %}" takes trim_blocks' newline; "{% raw %}" does not (Jinja2's rules) */
    if (!minus && plus_before_close == 0 && strcmp(name, "endraw") == 0 && j < n && p[j] == '\n')
        *after = j + 1;
    return 1;
}

/* The end of p[s:e] without trailing whitespace (Python str.rstrip()). */
static size_t rstrip_end(const char *p, size_t s, size_t e)
{
    while (e > s) {
        size_t k = e - 1, cl;
        while (k > s && ((unsigned char)p[k] & 0xC0) == 0x80)
            k--;
        if (!jj_is_space_at(p, e, k, &cl) || k + cl != e) break;
        e = k;
    }
    return e;
}

/* Jinja2's OptionalLStrip for the text p[s:e] before a tag: sign '-' strips all trailing
 * whitespace; otherwise, for block and comment tags (lstrip_blocks), whitespace between the last
 * newline (or the start of a line) and the tag goes. Returns the new end. */
static size_t tag_strip(const lexer *L, const char *p, size_t s, size_t e, char sign, int is_var)
{
    if (sign == '-') return rstrip_end(p, s, e);
    if (sign == '+' || is_var) return e;
    size_t l = e;
    while (l > s && p[l - 1] != '\n')
        l--;
    if (l == s && !L->line_starting) return e;
    return (e > l && rstrip_end(p, l, e) == l) ? l : e;
}

static int emit_text(lexer *L, const char *p, size_t s, size_t e)
{
    if (e <= s) return 0;
    jj_tok *k = lex_push(L, TK_TEXT, s);
    char *c = jj_arena_alloc(&L->t->arena, e - s);
    if (!k || !c) return LR_ENOMEM;
    memcpy(c, p + s, e - s);
    k->s = c;
    k->n = e - s;
    return 0;
}

/* Jinja2's root state: text up to the next "{{" / "{%" / "{#" (with an optional - or + sign). */
static int lex(lexer *L)
{
    const char *p = L->pp.p;
    size_t n = L->pp.n, i = 0;
    L->line_starting = 1;
    while (i < n) {
        size_t s = i;
        while (i < n && !(p[i] == '{' && i + 1 < n &&
                          (p[i + 1] == '%' || p[i + 1] == '{' || p[i + 1] == '#')))
            i++;
        if (i >= n) {
            if (emit_text(L, p, s, n)) return LR_ENOMEM;
            break;
        }
        char kind = p[i + 1];
        char sign = (p[i + 2] == '-' || p[i + 2] == '+') ? p[i + 2] : 0; /* p[n] is NUL */
        size_t after, raw_end = 0, raw_after = 0;
        int raw_strip_in = 0;
        if (kind == '%' && raw_tag(p, n, i, "raw", &after, &raw_strip_in)) {
            /* {% raw %}…{% endraw %}: the text between, uninterpreted */
            for (size_t j = after; j + 1 < n; j++)
                if (p[j] == '{' && p[j + 1] == '%' &&
                    raw_tag(p, n, j, "endraw", &raw_after, NULL)) {
                    raw_end = j;
                    break;
                }
            if (!raw_end)
                return lex_fail(L, i, "'{%% raw %%}' is never closed (expected '{%% endraw %%}')");
        }
        if (emit_text(L, p, s, tag_strip(L, p, s, i, sign, kind == '{'))) return LR_ENOMEM;
        L->line_starting = 0;
        if (raw_end) {
            char esign = (p[raw_end + 2] == '-' || p[raw_end + 2] == '+') ? p[raw_end + 2] : 0;
            if (emit_text(L, p, after, tag_strip(L, p, after, raw_end, esign, 0))) return LR_ENOMEM;
            i = raw_after;
            L->line_starting = i > 0 && p[i - 1] == '\n';
            continue;
        }
        if (kind == '#') {
            /* Jinja2: (.*?)(\+#}|-#}\s*|#}\n?) */
            size_t j = i + 2 + (sign ? 1 : 0);
            while (
                j + 1 < n && !(p[j] == '#' && p[j + 1] == '}') &&
                !((p[j] == '-' || p[j] == '+') && j + 2 < n && p[j + 1] == '#' && p[j + 2] == '}'))
                j++;
            if (j + 1 >= n) return lex_fail(L, i, "unclosed comment");
            if (p[j] == '-') {
                i = skip_space(p, n, j + 3);
                L->line_starting = i > j + 3 && p[i - 1] == '\n';
            } else if (p[j] == '+') {
                i = j + 3;
            } else {
                i = j + 2;
                if (i < n && p[i] == '\n') {
                    i++;
                    L->line_starting = 1;
                }
            }
            continue;
        }
        jj_tok *k = lex_push(L, kind == '%' ? TK_BB : TK_VB, i);
        if (!k) return LR_ENOMEM;
        i += sign ? 3 : 2;
        int rc = lex_tag(L, &i, kind == '%');
        if (rc) return rc;
    }
    return lex_push(L, TK_EOF, n) ? 0 : LR_ENOMEM;
}

int jj_lex(jj_template *t, lr_error *err, jj_tok **out, size_t *n)
{
    lexer L = {.t = t, .err = err};
    *out = NULL;
    *n = 0;
    int rc = preprocess(t->src, t->len, &L.pp);
    if (rc) return lr_error_set(err, rc, "chat template: out of memory");
    rc = lex(&L);
    if (rc && !err->code) lr_error_set(err, rc, "chat template: out of memory while lexing");
    pre_free(&L.pp);
    if (rc) {
        free(L.v);
        return rc;
    }
    *out = L.v;
    *n = L.n;
    return 0;
}
