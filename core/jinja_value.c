/* jinja_value.c — runtime values of the chat-template interpreter: the arena they live in, the
 * output buffer, and the Python behaviours templates observe: truthiness, str() and repr(),
 * json.dumps (as transformers' tojson calls it), equality and ordering, Unicode whitespace.
 * Not here: evaluation (jinja_eval.c). */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jinja_int.h"

/* ---- arena ---------------------------------------------------------------------------------- */

struct jj_chunk {
    jj_chunk *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
};

#define CHUNK_SIZE ((size_t)64 << 10)
#define CACHE_MAX 64 /* standard chunks kept per thread between renders (4 MiB) */

/* Freed standard-size chunks stay with the thread for its next render: fresh memory costs a
 * page fault per page, and malloc hands big freed blocks back to the kernel (measured: 2000
 * messages, 1.2 MB of prompt, rendered in 90-150 ms without the cache, 6-17 ms with it). */
typedef struct chunk_cache {
    jj_chunk *head;
    int n;
} chunk_cache;

static pthread_key_t cache_key;
static pthread_once_t cache_once = PTHREAD_ONCE_INIT;
static int cache_ok;

static void cache_destroy(void *p)
{
    chunk_cache *cc = p;
    while (cc->head) {
        jj_chunk *next = cc->head->next;
        free(cc->head);
        cc->head = next;
    }
    free(cc);
}

static void cache_init(void)
{
    cache_ok = pthread_key_create(&cache_key, cache_destroy) == 0;
}

static chunk_cache *cache_get(void)
{
    pthread_once(&cache_once, cache_init);
    if (!cache_ok) return NULL;
    chunk_cache *cc = pthread_getspecific(cache_key);
    if (!cc && (cc = calloc(1, sizeof *cc)) && pthread_setspecific(cache_key, cc) != 0) {
        free(cc);
        cc = NULL;
    }
    return cc;
}

void *jj_arena_alloc(jj_arena *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (n == 0) n = 16;
    jj_chunk *c = a->head;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > CHUNK_SIZE / 4 ? n : CHUNK_SIZE;
        if (a->limit && a->used + cap + sizeof(jj_chunk) > a->limit) return NULL;
        chunk_cache *cc = cap == CHUNK_SIZE ? cache_get() : NULL;
        if (cc && cc->head) {
            c = cc->head;
            cc->head = c->next;
            cc->n--;
        } else {
            c = malloc(sizeof(jj_chunk) + cap);
        }
        if (!c) return NULL;
        c->used = 0;
        c->cap = cap;
        a->used += cap + sizeof(jj_chunk);
        if (cap == n && a->head) { /* a big one-off block: keep the current chunk in front */
            c->next = a->head->next;
            a->head->next = c;
        } else {
            c->next = a->head;
            a->head = c;
        }
    }
    void *p = c->data + c->used;
    c->used += n;
    memset(p, 0, n);
    return p;
}

void jj_arena_free(jj_arena *a)
{
    jj_chunk *c = a->head;
    chunk_cache *cc = c ? cache_get() : NULL;
    while (c) {
        jj_chunk *next = c->next;
        if (cc && c->cap == CHUNK_SIZE && cc->n < CACHE_MAX) {
            c->next = cc->head;
            cc->head = c;
            cc->n++;
        } else {
            free(c);
        }
        c = next;
    }
    a->head = NULL;
    a->used = 0;
}

/* ---- output buffer ---------------------------------------------------------------------- */

int jj_buf_put(jj_buf *b, const char *s, size_t n)
{
    if (b->limit && n > b->limit - b->n) return LR_ETOOLARGE;
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->n + n + 1)
            nc *= 2;
        char *np = realloc(b->p, nc);
        if (!np) return LR_ENOMEM;
        b->p = np;
        b->cap = nc;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
    return 0;
}

int jj_buf_putc(jj_buf *b, char c)
{
    return jj_buf_put(b, &c, 1);
}

/* ---- UTF-8 helpers ------------------------------------------------------------------------- */

static uint32_t decode_at(const char *s, size_t n, size_t i, size_t *clen)
{
    const unsigned char *u = (const unsigned char *)s + i;
    size_t left = n - i;
    if (u[0] < 0x80 || left < 2) {
        *clen = 1;
        return u[0];
    }
    if ((u[0] & 0xE0) == 0xC0) {
        *clen = 2;
        return ((uint32_t)(u[0] & 0x1F) << 6) | (u[1] & 0x3F);
    }
    if ((u[0] & 0xF0) == 0xE0 && left >= 3) {
        *clen = 3;
        return ((uint32_t)(u[0] & 0x0F) << 12) | ((uint32_t)(u[1] & 0x3F) << 6) | (u[2] & 0x3F);
    }
    if ((u[0] & 0xF8) == 0xF0 && left >= 4) {
        *clen = 4;
        return ((uint32_t)(u[0] & 0x07) << 18) | ((uint32_t)(u[1] & 0x3F) << 12) |
               ((uint32_t)(u[2] & 0x3F) << 6) | (u[3] & 0x3F);
    }
    *clen = 1;
    return u[0];
}

/* Python's str.isspace() set (what str.strip() and the lexer's \s remove). */
int jj_is_space_at(const char *s, size_t n, size_t i, size_t *clen)
{
    uint32_t c = decode_at(s, n, i, clen);
    return (c >= 9 && c <= 13) || c == 32 || (c >= 0x1c && c <= 0x1f) || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

size_t jj_utf8_len(const char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += ((unsigned char)s[i] & 0xC0) != 0x80;
    return k;
}

size_t jj_utf8_offset(const char *s, size_t n, size_t cp)
{
    size_t i = 0, k = 0;
    while (i < n) {
        if (((unsigned char)s[i] & 0xC0) != 0x80) {
            if (k == cp) return i;
            k++;
        }
        i++;
    }
    return n;
}

/* ---- Python behaviours ---------------------------------------------------------------------- */

int jv_truthy(jv v)
{
    switch (v.t) {
    case JV_UNDEF:
    case JV_NONE:
        return 0;
    case JV_BOOL:
    case JV_INT:
        return v.u.i != 0;
    case JV_FLOAT:
        return v.u.f != 0.0;
    case JV_STR:
        return v.u.s.n != 0;
    case JV_LIST:
        return v.u.l->n != 0;
    case JV_DICT:
        return v.u.d->n != 0;
    default:
        return 1;
    }
}

const char *jv_type_name(jv v)
{
    static const char *const names[] = {"undefined", "none",     "bool",   "int",       "float",
                                        "string",    "list",     "dict",   "namespace", "loop",
                                        "macro",     "function", "method", "caller"};
    if (v.t == JV_LIST && v.tuple) return "tuple";
    return v.t < sizeof names / sizeof names[0] ? names[v.t] : "value";
}

/* Python repr(float): the shortest digits that round-trip, fixed notation for exponents in
 * [-4, 16), scientific otherwise, ".0" on integral values. */
static int put_float(jj_buf *b, double x, int json)
{
    char tmp[64];
    if (isnan(x)) return jj_buf_put(b, json ? "NaN" : "nan", json ? 3 : 3);
    if (isinf(x)) {
        const char *s = json ? (x > 0 ? "Infinity" : "-Infinity") : (x > 0 ? "inf" : "-inf");
        return jj_buf_put(b, s, strlen(s));
    }
    int p;
    for (p = 1; p <= 17; p++) {
        snprintf(tmp, sizeof tmp, "%.*e", p - 1, x);
        if (strtod(tmp, NULL) == x) break;
    }
    /* tmp = [-]d[.ddd]e[+-]XX */
    char digits[32];
    size_t nd = 0;
    const char *q = tmp;
    int neg = 0;
    if (*q == '-') {
        neg = 1;
        q++;
    }
    while (*q && *q != 'e') {
        if (*q != '.') digits[nd++] = *q;
        q++;
    }
    int e = atoi(q + 1);
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    char out[64];
    size_t o = 0;
    if (neg) out[o++] = '-';
    if (e >= -4 && e < 16) {
        if (e >= 0) {
            for (int k = 0; k <= e; k++)
                out[o++] = (size_t)k < nd ? digits[k] : '0';
            out[o++] = '.';
            if ((size_t)e + 1 < nd)
                for (size_t k = (size_t)e + 1; k < nd; k++)
                    out[o++] = digits[k];
            else
                out[o++] = '0';
        } else {
            out[o++] = '0';
            out[o++] = '.';
            for (int k = 0; k < -e - 1; k++)
                out[o++] = '0';
            for (size_t k = 0; k < nd; k++)
                out[o++] = digits[k];
        }
    } else {
        out[o++] = digits[0];
        if (nd > 1) {
            out[o++] = '.';
            for (size_t k = 1; k < nd; k++)
                out[o++] = digits[k];
        }
        o +=
            (size_t)snprintf(out + o, sizeof out - o, "e%c%02d", e < 0 ? '-' : '+', e < 0 ? -e : e);
    }
    return jj_buf_put(b, out, o);
}

static int put_int(jj_buf *b, int64_t i)
{
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, "%lld", (long long)i);
    return jj_buf_put(b, tmp, (size_t)n);
}

static int repr_str(jj_buf *b, const char *s, size_t n)
{
    char q = (memchr(s, '\'', n) && !memchr(s, '"', n)) ? '"' : '\'';
    int rc = jj_buf_putc(b, q);
    for (size_t i = 0; !rc && i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        if (c == '\\' || c == (unsigned char)q) {
            esc[0] = '\\';
            esc[1] = (char)c;
            rc = jj_buf_put(b, esc, 2);
        } else if (c == '\n') {
            rc = jj_buf_put(b, "\\n", 2);
        } else if (c == '\r') {
            rc = jj_buf_put(b, "\\r", 2);
        } else if (c == '\t') {
            rc = jj_buf_put(b, "\\t", 2);
        } else if (c < 0x20 || c == 0x7f) {
            snprintf(esc, sizeof esc, "\\x%02x", c);
            rc = jj_buf_put(b, esc, 4);
        } else {
            rc = jj_buf_putc(b, (char)c);
        }
    }
    return rc ? rc : jj_buf_putc(b, q);
}

int jv_repr(jj_buf *b, jv v)
{
    int rc = 0;
    switch (v.t) {
    case JV_STR:
        return repr_str(b, v.u.s.p, v.u.s.n);
    case JV_LIST: {
        rc = jj_buf_putc(b, v.tuple ? '(' : '[');
        for (size_t i = 0; !rc && i < v.u.l->n; i++) {
            if (i) rc = jj_buf_put(b, ", ", 2);
            if (!rc) rc = jv_repr(b, v.u.l->v[i]);
        }
        if (!rc && v.tuple && v.u.l->n == 1) rc = jj_buf_putc(b, ',');
        return rc ? rc : jj_buf_putc(b, v.tuple ? ')' : ']');
    }
    case JV_DICT:
    case JV_NS: {
        if (v.t == JV_NS) rc = jj_buf_put(b, "<Namespace ", 11);
        if (!rc) rc = jj_buf_putc(b, '{');
        for (size_t i = 0; !rc && i < v.u.d->n; i++) {
            if (i) rc = jj_buf_put(b, ", ", 2);
            if (!rc) rc = repr_str(b, v.u.d->kv[i].k, v.u.d->kv[i].kn);
            if (!rc) rc = jj_buf_put(b, ": ", 2);
            if (!rc) rc = jv_repr(b, v.u.d->kv[i].v);
        }
        if (!rc) rc = jj_buf_putc(b, '}');
        if (!rc && v.t == JV_NS) rc = jj_buf_putc(b, '>');
        return rc;
    }
    case JV_UNDEF:
        return jj_buf_put(b, "Undefined", 9);
    default:
        return jv_str(b, v);
    }
}

int jv_str(jj_buf *b, jv v)
{
    switch (v.t) {
    case JV_UNDEF:
        return 0;
    case JV_NONE:
        return jj_buf_put(b, "None", 4);
    case JV_BOOL:
        return v.u.i ? jj_buf_put(b, "True", 4) : jj_buf_put(b, "False", 5);
    case JV_INT:
        return put_int(b, v.u.i);
    case JV_FLOAT:
        return put_float(b, v.u.f, 0);
    case JV_STR:
        return jj_buf_put(b, v.u.s.p, v.u.s.n);
    case JV_LIST:
    case JV_DICT:
    case JV_NS:
        return jv_repr(b, v);
    case JV_LOOP:
        return jj_buf_put(b, "<LoopContext>", 13);
    case JV_MACRO: {
        const jj_node *m = v.u.ptr;
        int rc = jj_buf_put(b, "<Macro '", 8);
        if (!rc) rc = jj_buf_put(b, m->s, m->slen);
        return rc ? rc : jj_buf_put(b, "'>", 2);
    }
    default:
        return jj_buf_put(b, "<function>", 10);
    }
}

/* json.dumps string: ensure_ascii=False keeps every non-ASCII character (and DEL) as is. */
static int json_str_ascii(jj_buf *b, const char *s, size_t n)
{
    int rc = jj_buf_putc(b, '"');
    for (size_t i = 0; !rc && i < n;) {
        size_t cl;
        uint32_t cp = decode_at(s, n, i, &cl);
        char tmp[16];
        i += cl;
        if (cp == '"' || cp == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char)cp;
            rc = jj_buf_put(b, tmp, 2);
        } else if (cp == '\n' || cp == '\r' || cp == '\t' || cp == '\b' || cp == '\f') {
            tmp[0] = '\\';
            tmp[1] = cp == '\n'   ? 'n'
                     : cp == '\r' ? 'r'
                     : cp == '\t' ? 't'
                     : cp == '\b' ? 'b'
                                  : 'f';
            rc = jj_buf_put(b, tmp, 2);
        } else if (cp >= 0x20 && cp <= 0x7e) {
            rc = jj_buf_putc(b, (char)cp);
        } else if (cp >= 0x10000) {
            uint32_t v = cp - 0x10000;
            snprintf(tmp, sizeof tmp, "\\u%04x\\u%04x", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF));
            rc = jj_buf_put(b, tmp, 12);
        } else {
            snprintf(tmp, sizeof tmp, "\\u%04x", cp);
            rc = jj_buf_put(b, tmp, 6);
        }
    }
    return rc ? rc : jj_buf_putc(b, '"');
}

static int json_str(jj_buf *b, const char *s, size_t n)
{
    int rc = jj_buf_putc(b, '"');
    size_t run = 0;
    for (size_t i = 0; !rc && i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char tmp[8];
        switch (c) {
        case '"':
            esc = "\\\"";
            break;
        case '\\':
            esc = "\\\\";
            break;
        case '\n':
            esc = "\\n";
            break;
        case '\r':
            esc = "\\r";
            break;
        case '\t':
            esc = "\\t";
            break;
        case '\b':
            esc = "\\b";
            break;
        case '\f':
            esc = "\\f";
            break;
        default:
            if (c < 0x20) {
                snprintf(tmp, sizeof tmp, "\\u%04x", c);
                esc = tmp;
            }
        }
        if (!esc) continue;
        rc = jj_buf_put(b, s + run, i - run);
        if (!rc) rc = jj_buf_put(b, esc, strlen(esc));
        run = i + 1;
    }
    if (!rc) rc = jj_buf_put(b, s + run, n - run);
    return rc ? rc : jj_buf_putc(b, '"');
}

static int newline_indent(jj_buf *b, const char *ind, int depth)
{
    int rc = jj_buf_putc(b, '\n');
    size_t il = strlen(ind);
    for (int k = 0; !rc && k < depth; k++)
        rc = jj_buf_put(b, ind, il);
    return rc;
}

static int kv_cmp(const void *x, const void *y)
{
    const jj_kv *a = *(const jj_kv *const *)x, *b = *(const jj_kv *const *)y;
    size_t n = a->kn < b->kn ? a->kn : b->kn;
    int c = memcmp(a->k, b->k, n);
    return c ? c : (a->kn > b->kn) - (a->kn < b->kn);
}

/* Python json.dumps(v, ensure_ascii=False, indent, separators, sort_keys) (see jj_json_opts).
 * *why names what could not be serialized. */
int jv_tojson(jj_buf *b, jv v, const jj_json_opts *o, int depth, char **why)
{
    int indent = o->indent, sort_keys = o->sort_keys;
    int rc = 0;
    if (depth > 200) {
        *why = "nesting too deep";
        return LR_EINVAL;
    }
    switch (v.t) {
    case JV_NONE:
        return jj_buf_put(b, "null", 4);
    case JV_BOOL:
        return v.u.i ? jj_buf_put(b, "true", 4) : jj_buf_put(b, "false", 5);
    case JV_INT:
        return put_int(b, v.u.i);
    case JV_FLOAT:
        return put_float(b, v.u.f, 1);
    case JV_STR:
        return o->ensure_ascii ? json_str_ascii(b, v.u.s.p, v.u.s.n)
                               : json_str(b, v.u.s.p, v.u.s.n);
    case JV_LIST: {
        if (v.u.l->n == 0) return jj_buf_put(b, "[]", 2);
        rc = jj_buf_putc(b, '[');
        for (size_t i = 0; !rc && i < v.u.l->n; i++) {
            if (i) rc = jj_buf_put(b, o->item_sep, strlen(o->item_sep));
            if (!rc && indent >= 0) rc = newline_indent(b, o->indent_str, depth + 1);
            if (!rc) rc = jv_tojson(b, v.u.l->v[i], o, depth + 1, why);
        }
        if (!rc && indent >= 0) rc = newline_indent(b, o->indent_str, depth);
        return rc ? rc : jj_buf_putc(b, ']');
    }
    case JV_DICT: {
        size_t n = v.u.d->n;
        if (n == 0) return jj_buf_put(b, "{}", 2);
        const jj_kv **order = malloc(n * sizeof *order);
        if (!order) return LR_ENOMEM;
        for (size_t i = 0; i < n; i++)
            order[i] = &v.u.d->kv[i];
        if (sort_keys) qsort(order, n, sizeof *order, kv_cmp);
        rc = jj_buf_putc(b, '{');
        for (size_t i = 0; !rc && i < n; i++) {
            if (i) rc = jj_buf_put(b, o->item_sep, strlen(o->item_sep));
            if (!rc && indent >= 0) rc = newline_indent(b, o->indent_str, depth + 1);
            if (!rc)
                rc = o->ensure_ascii ? json_str_ascii(b, order[i]->k, order[i]->kn)
                                     : json_str(b, order[i]->k, order[i]->kn);
            if (!rc) rc = jj_buf_put(b, o->key_sep, strlen(o->key_sep));
            if (!rc) rc = jv_tojson(b, order[i]->v, o, depth + 1, why);
        }
        free(order);
        if (!rc && indent >= 0) rc = newline_indent(b, o->indent_str, depth);
        return rc ? rc : jj_buf_putc(b, '}');
    }
    default:
        *why = (char *)jv_type_name(v);
        return LR_EINVAL;
    }
}

static int is_num(jv v)
{
    return v.t == JV_BOOL || v.t == JV_INT || v.t == JV_FLOAT;
}

static double num(jv v)
{
    return v.t == JV_FLOAT ? v.u.f : (double)v.u.i;
}

jv *jj_dict_get(const jj_dict *d, const char *k, size_t kn)
{
    for (size_t i = 0; i < d->n; i++)
        if (d->kv[i].kn == kn && memcmp(d->kv[i].k, k, kn) == 0) return &d->kv[i].v;
    return NULL;
}

int jv_equal(jv a, jv b)
{
    if (is_num(a) && is_num(b)) {
        if (a.t != JV_FLOAT && b.t != JV_FLOAT) return a.u.i == b.u.i;
        return num(a) == num(b);
    }
    if (a.t != b.t) return 0;
    switch (a.t) {
    case JV_UNDEF:
    case JV_NONE:
        return 1;
    case JV_STR:
        return a.u.s.n == b.u.s.n && memcmp(a.u.s.p, b.u.s.p, a.u.s.n) == 0;
    case JV_LIST:
        if (a.tuple != b.tuple || a.u.l->n != b.u.l->n) return 0;
        for (size_t i = 0; i < a.u.l->n; i++)
            if (!jv_equal(a.u.l->v[i], b.u.l->v[i])) return 0;
        return 1;
    case JV_DICT:
        if (a.u.d->n != b.u.d->n) return 0;
        for (size_t i = 0; i < a.u.d->n; i++) {
            jv *o = jj_dict_get(b.u.d, a.u.d->kv[i].k, a.u.d->kv[i].kn);
            if (!o || !jv_equal(a.u.d->kv[i].v, *o)) return 0;
        }
        return 1;
    case JV_FUNC:
        return a.u.i == b.u.i;
    default:
        return a.u.ptr == b.u.ptr;
    }
}

static int fold_cmp(const char *a, size_t an, const char *b, size_t bn, int fold)
{
    size_t n = an < bn ? an : bn;
    for (size_t i = 0; i < n; i++) {
        unsigned char x = (unsigned char)a[i], y = (unsigned char)b[i];
        if (fold) {
            if (x >= 'A' && x <= 'Z') x = (unsigned char)(x + 32);
            if (y >= 'A' && y <= 'Z') y = (unsigned char)(y + 32);
        }
        if (x != y) return x < y ? -1 : 1;
    }
    return an < bn ? -1 : an > bn ? 1 : 0;
}

int jv_compare(jv a, jv b, int fold)
{
    if (is_num(a) && is_num(b)) {
        if (a.t != JV_FLOAT && b.t != JV_FLOAT) return a.u.i < b.u.i ? -1 : a.u.i > b.u.i;
        double x = num(a), y = num(b);
        if (isnan(x) || isnan(y)) return -2;
        return x < y ? -1 : x > y;
    }
    if (a.t == JV_STR && b.t == JV_STR) return fold_cmp(a.u.s.p, a.u.s.n, b.u.s.p, b.u.s.n, fold);
    if (a.t == JV_UNDEF && b.t == JV_UNDEF) return 0;
    if (a.t == JV_LIST && b.t == JV_LIST) {
        size_t n = a.u.l->n < b.u.l->n ? a.u.l->n : b.u.l->n;
        for (size_t i = 0; i < n; i++) {
            if (jv_equal(a.u.l->v[i], b.u.l->v[i])) continue;
            return jv_compare(a.u.l->v[i], b.u.l->v[i], 0); /* Jinja2 folds only str keys */
        }
        return a.u.l->n < b.u.l->n ? -1 : a.u.l->n > b.u.l->n;
    }
    return -2;
}
