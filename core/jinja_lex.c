/* jinja_lex.c — chat-template source to tokens: preprocessing and lexing.
 *
 * Whitespace handling is done the way @huggingface/jinja does it, because its result equals
 * Jinja2's with trim_blocks=True and lstrip_blocks=True for everything real templates contain:
 * one trailing newline of the template is dropped (keep_trailing_newline=False), blanks before a
 * `{%` / `{#` at the start of a line are removed (lstrip_blocks; `{%+` opts out), the newline
 * right after `%}` / `#}` is removed (trim_blocks; `+%}` opts out), and `{%-` / `-%}` (likewise
 * for `{{ }}` and `{# #}`) trim all whitespace on that side. Every byte of the preprocessed text
 * keeps the offset it had in the original source so that messages name the line and column a
 * user sees in the template. `{% raw %}` blocks become text here. All token text is copied into
 * the template's arena. Not here: the grammar (jinja_parse.c).
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

/* Is i at a line start in the JS multiline sense (after \n, \r, U+2028, U+2029)? */
static int line_start(const char *p, size_t i)
{
    if (i == 0)
        return 1;
    if (p[i - 1] == '\n' || p[i - 1] == '\r')
        return 1;
    return i >= 3 && (unsigned char)p[i - 3] == 0xE2 && (unsigned char)p[i - 2] == 0x80 &&
           ((unsigned char)p[i - 1] == 0xA8 || (unsigned char)p[i - 1] == 0xA9);
}

static int tag_open(const char *p, size_t n, size_t i)
{
    return i + 1 < n && p[i] == '{' && (p[i + 1] == '#' || p[i + 1] == '%' || p[i + 1] == '-');
}

/* lstrip_blocks: /^[ \t]*({[#%-])/gm → "$1"; then trim_blocks: /([#%-]})\n/g → "$1". */
static int preprocess(const char *src, size_t len, pre *out)
{
    if (len > 0 && src[len - 1] == '\n')
        len--;
    pre a;
    if (pre_alloc(&a, len))
        return LR_ENOMEM;
    for (size_t i = 0; i < len;) {
        if (line_start(src, i)) {
            size_t j = i;
            while (j < len && (src[j] == ' ' || src[j] == '\t'))
                j++;
            /* "{%+" / "{#+" opt out of lstrip_blocks (Jinja2) */
            if (j > i && tag_open(src, len, j) && !(j + 2 < len && src[j + 2] == '+'))
                i = j;
        }
        a.map[a.n] = (uint32_t)i;
        a.p[a.n++] = src[i++];
    }
    a.map[a.n] = (uint32_t)len;
    if (pre_alloc(out, a.n)) {
        pre_free(&a);
        pre_free(out);
        return LR_ENOMEM;
    }
    for (size_t i = 0; i < a.n; i++) {
        out->map[out->n] = a.map[i];
        out->p[out->n++] = a.p[i];
        /* "+%}" opts out of trim_blocks (Jinja2) */
        if (a.p[i] == '}' && i > 0 && (a.p[i - 1] == '#' || a.p[i - 1] == '%' || a.p[i - 1] == '-') &&
            !(i > 1 && a.p[i - 2] == '+') && i + 1 < a.n && a.p[i + 1] == '\n')
            i++;
    }
    out->map[out->n] = a.map[a.n];
    out->p[out->n] = '\0';
    pre_free(&a);
    return 0;
}

/* ---- lexer ------------------------------------------------------------------------------------ */

typedef struct lexer {
    jj_template *t;
    lr_error *err;
    pre pp;
    jj_tok *v;
    size_t n, cap;
} lexer;

static int lex_fail(lexer *L, size_t at, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
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
        if (!nv)
            return NULL;
        L->v = nv;
        L->cap = nc;
    }
    jj_tok *k = &L->v[L->n++];
    memset(k, 0, sizeof *k);
    k->type = (uint8_t)type;
    k->pos = L->pp.map[at];
    return k;
}

/* JS String.prototype.trimEnd on the last text token (whitespace control `{%-`). */
static void strip_last_text(lexer *L)
{
    if (L->n == 0 || L->v[L->n - 1].type != TK_TEXT)
        return;
    jj_tok *k = &L->v[L->n - 1];
    size_t n = k->n;
    while (n > 0) {
        size_t i = n - 1, cl;
        while (i > 0 && ((unsigned char)k->s[i] & 0xC0) == 0x80)
            i--;
        if (!jj_is_space_at(k->s, n, i, &cl) || i + cl != n)
            break;
        n = i;
    }
    k->n = n;
    if (n == 0)
        L->n--;
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
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
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
        if (p[i] == '\\' && i + 1 < n)
            i++;
        i++;
    }
    if (i >= n)
        return lex_fail(L, *ip, "unterminated string literal");
    char *o = jj_arena_alloc(&L->t->arena, (i - start) + 1);
    if (!o)
        return LR_ENOMEM;
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
        case 'n': o[on++] = '\n'; break;
        case 't': o[on++] = '\t'; break;
        case 'r': o[on++] = '\r'; break;
        case 'b': o[on++] = '\b'; break;
        case 'f': o[on++] = '\f'; break;
        case 'v': o[on++] = '\v'; break;
        case 'a': o[on++] = '\a'; break;
        case '0': o[on++] = '\0'; break;
        case '\\': o[on++] = '\\'; break;
        case '\'': o[on++] = '\''; break;
        case '"': o[on++] = '"'; break;
        case '\n': break; /* line continuation */
        default:
            o[on++] = '\\';
            o[on++] = e;
        }
    }
    jj_tok *k = lex_push(L, TK_STR, *ip);
    if (!k)
        return LR_ENOMEM;
    k->s = o;
    k->n = on;
    *ip = i + 1;
    return 0;
}

static const char *const OPS[] = {"**", "//", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~",
                                  "<", ">", "=", "(", ")", "[", "]", "{", "}", ",", ".", ":", "|"};

/* The tokens inside one {% %} or {{ }} tag, starting after the opener; *ip ends after the closer. */
static int lex_tag(lexer *L, size_t *ip, int block)
{
    const char *p = L->pp.p;
    size_t n = L->pp.n, i = *ip;
    int depth = 0; /* open { inside the tag: "}}" closes a {{ }} tag only at depth 0 */
    for (;;) {
        i = skip_space(p, n, i);
        if (i >= n)
            return lex_fail(L, *ip, "unclosed %s tag", block ? "{%" : "{{");
        const char *close = block ? "%}" : "}}";
        if (p[i] == '-' && i + 2 < n + 0 && p[i + 1] == close[0] && p[i + 2] == close[1] &&
            (block || depth == 0)) {
            if (!lex_push(L, block ? TK_BE : TK_VE, i))
                return LR_ENOMEM;
            *ip = skip_space(p, n, i + 3);
            return 0;
        }
        if (block && p[i] == '+' && i + 2 < n && p[i + 1] == '%' && p[i + 2] == '}') {
            if (!lex_push(L, TK_BE, i))
                return LR_ENOMEM;
            *ip = i + 3;
            return 0;
        }
        if (i + 1 < n && p[i] == close[0] && p[i + 1] == close[1] && (block || depth == 0)) {
            if (!lex_push(L, block ? TK_BE : TK_VE, i))
                return LR_ENOMEM;
            *ip = i + 2;
            return 0;
        }
        char c = p[i];
        if (c == '\'' || c == '"') {
            int rc = lex_string(L, &i);
            if (rc)
                return rc;
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
                if (j < n && (p[j] == '+' || p[j] == '-'))
                    j++;
                if (j < n && p[j] >= '0' && p[j] <= '9') {
                    isf = 1;
                    while (j < n && p[j] >= '0' && p[j] <= '9')
                        j++;
                    i = j;
                }
            }
            jj_tok *k = lex_push(L, isf ? TK_FLOAT : TK_INT, s);
            if (!k)
                return LR_ENOMEM;
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
            if (!k || !nm)
                return LR_ENOMEM;
            memcpy(nm, p + s, i - s); /* the preprocessed text is freed after parsing */
            k->s = nm;
            k->n = i - s;
            continue;
        }
        size_t o;
        for (o = 0; o < sizeof OPS / sizeof OPS[0]; o++) {
            size_t ol = strlen(OPS[o]);
            if (i + ol <= n && memcmp(p + i, OPS[o], ol) == 0)
                break;
        }
        if (o == sizeof OPS / sizeof OPS[0])
            return lex_fail(L, i, "unexpected character '%c'", c);
        jj_tok *k = lex_push(L, TK_OP, i);
        if (!k)
            return LR_ENOMEM;
        k->s = OPS[o];
        k->n = strlen(OPS[o]);
        if (c == '{')
            depth++;
        else if (c == '}' && depth > 0)
            depth--;
        i += k->n;
    }
}

/* Is p[i] "{%[-+] name [-+]%}" (whitespace around name)? *after = just past it (and past the
 * whitespace a "-%}" removes); *strip = that "-" was there. */
static int raw_tag(const char *p, size_t n, size_t i, const char *name, size_t *after, int *strip)
{
    size_t j = i + 2, nl = strlen(name);
    if (j < n && (p[j] == '-' || p[j] == '+'))
        j++;
    j = skip_space(p, n, j);
    if (j + nl > n || memcmp(p + j, name, nl) != 0)
        return 0;
    j = skip_space(p, n, j + nl);
    int minus = 0;
    if (j < n && (p[j] == '-' || p[j] == '+')) {
        minus = p[j] == '-';
        j++;
    }
    if (j + 1 >= n || p[j] != '%' || p[j + 1] != '}')
        return 0;
    j += 2;
    if (strip)
        *strip = minus;
    *after = minus ? skip_space(p, n, j) : j;
    return 1;
}

static int lex(lexer *L)
{
    const char *p = L->pp.p;
    size_t n = L->pp.n, i = 0;
    while (i < n) {
        size_t s = i;
        while (i < n && !(p[i] == '{' && i + 1 < n && (p[i + 1] == '%' || p[i + 1] == '{' || p[i + 1] == '#')))
            i++;
        if (i > s) {
            jj_tok *k = lex_push(L, TK_TEXT, s);
            if (!k)
                return LR_ENOMEM;
            char *c = jj_arena_alloc(&L->t->arena, i - s);
            if (!c)
                return LR_ENOMEM;
            memcpy(c, p + s, i - s);
            k->s = c;
            k->n = i - s;
        }
        if (i >= n)
            break;
        char kind = p[i + 1];
        int minus = i + 2 < n && p[i + 2] == '-';
        if (minus)
            strip_last_text(L);
        if (kind == '#') {
            size_t j = i + 2;
            while (j + 1 < n && !(p[j] == '#' && p[j + 1] == '}'))
                j++;
            if (j + 1 >= n)
                return lex_fail(L, i, "unclosed comment");
            /* "{#- … -#}": the '-' before "#}" must not be the one right after "{#" */
            int strip_after = p[j - 1] == '-' && j - 1 >= i + 2 + (size_t)minus;
            i = j + 2;
            if (strip_after)
                i = skip_space(p, n, i);
            continue;
        }
        if (kind == '%') {
            size_t after;
            int strip_in;
            if (raw_tag(p, n, i, "raw", &after, &strip_in)) {
                /* {% raw %}…{% endraw %}: the text between, uninterpreted */
                size_t j = after, end_start = 0, end_after = 0;
                int strip_end = 0;
                while (j + 1 < n) {
                    if (p[j] == '{' && p[j + 1] == '%' && raw_tag(p, n, j, "endraw", &end_after, NULL)) {
                        end_start = j;
                        strip_end = j + 2 < n && p[j + 2] == '-';
                        break;
                    }
                    j++;
                }
                if (!end_start)
                    return lex_fail(L, i, "'{%% raw %%}' is never closed (expected '{%% endraw %%}')");
                size_t a = strip_in ? skip_space(p, end_start, after) : after, b = end_start;
                jj_tok *k = lex_push(L, TK_TEXT, a < n ? a : i);
                char *c = jj_arena_alloc(&L->t->arena, b - a + 1);
                if (!k || !c)
                    return LR_ENOMEM;
                memcpy(c, p + a, b - a);
                k->s = c;
                k->n = b - a;
                if (strip_end)
                    strip_last_text(L);
                i = end_after;
                continue;
            }
        }
        jj_tok *k = lex_push(L, kind == '%' ? TK_BB : TK_VB, i);
        if (!k)
            return LR_ENOMEM;
        i += (minus || p[i + 2] == '+') ? 3 : 2;
        int rc = lex_tag(L, &i, kind == '%');
        if (rc)
            return rc;
    }
    return lex_push(L, TK_EOF, n) ? 0 : LR_ENOMEM;
}

int jj_lex(jj_template *t, lr_error *err, jj_tok **out, size_t *n)
{
    lexer L = {.t = t, .err = err};
    *out = NULL;
    *n = 0;
    int rc = preprocess(t->src, t->len, &L.pp);
    if (rc)
        return lr_error_set(err, rc, "chat template: out of memory");
    rc = lex(&L);
    if (rc && !err->code)
        lr_error_set(err, rc, "chat template: out of memory while lexing");
    pre_free(&L.pp);
    if (rc) {
        free(L.v);
        return rc;
    }
    *out = L.v;
    *n = L.n;
    return 0;
}
