/* tok_util.c — buffers, hash maps, UTF-8 and character classes for the tokenizer.
 *
 * The maps are open addressing with linear probing and power-of-two capacity, kept at most half
 * full; a vocabulary of 262k entries costs one key pool plus two flat arrays, no per-key malloc.
 * Character classes follow Rust's char methods as used by HF tokenizers (utf8proc categories).
 */
#include "tok_util.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "err.h"

int tokbuf_reserve(tok_buf *b, size_t extra)
{
    if (b->n + extra + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->n + extra + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return LR_ENOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

int tokbuf_put(tok_buf *b, const char *s, size_t n)
{
    if (tokbuf_reserve(b, n)) return LR_ENOMEM;
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
    return 0;
}

int tokbuf_putc(tok_buf *b, char c)
{
    return tokbuf_put(b, &c, 1);
}

int tokbuf_put_cp(tok_buf *b, uint32_t cp)
{
    char u[4];
    int n = (int)utf8proc_encode_char((utf8proc_int32_t)cp, (utf8proc_uint8_t *)u);
    return tokbuf_put(b, u, (size_t)n);
}

int tokids_push(tok_ids *v, int32_t id)
{
    if (v->n == v->cap) {
        size_t c = v->cap ? v->cap * 2 : 64;
        int32_t *p = realloc(v->v, c * sizeof *p);
        if (!p) return LR_ENOMEM;
        v->v = p;
        v->cap = c;
    }
    v->v[v->n++] = id;
    return 0;
}

/* FNV-1a: short keys, good enough spread for vocabularies. */
static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

static int strmap_grow(tok_strmap *m)
{
    size_t cap = m->cap ? m->cap * 2 : 1024;
    uint32_t *slots = calloc(cap, sizeof *slots);
    if (!slots) return LR_ENOMEM;
    for (size_t i = 0; i < m->n; i++) {
        const struct tok_strent *e = &m->ent[i];
        size_t h = hash_bytes(m->pool.p + e->off, e->len) & (cap - 1);
        while (slots[h])
            h = (h + 1) & (cap - 1);
        slots[h] = (uint32_t)(i + 1);
    }
    free(m->slots);
    m->slots = slots;
    m->cap = cap;
    return 0;
}

int tokmap_put(tok_strmap *m, const char *key, size_t len, int32_t val)
{
    if (len > UINT32_MAX) return LR_EINVAL;
    if ((m->n + 1) * 2 > m->cap && strmap_grow(m)) return LR_ENOMEM;
    size_t h = hash_bytes(key, len) & (m->cap - 1);
    while (m->slots[h]) {
        struct tok_strent *e = &m->ent[m->slots[h] - 1];
        if (e->len == len && memcmp(m->pool.p + e->off, key, len) == 0) {
            e->val = val;
            return 0;
        }
        h = (h + 1) & (m->cap - 1);
    }
    if (m->n == m->ent_cap) {
        size_t c = m->ent_cap ? m->ent_cap * 2 : 512;
        void *p = realloc(m->ent, c * sizeof *m->ent);
        if (!p) return LR_ENOMEM;
        m->ent = p;
        m->ent_cap = c;
    }
    /* Keys are NUL-separated in the pool so a stored key is also a C string. */
    size_t off = m->pool.n;
    if (tokbuf_put(&m->pool, key, len) || tokbuf_putc(&m->pool, '\0')) return LR_ENOMEM;
    m->ent[m->n] = (struct tok_strent){off, (uint32_t)len, val};
    m->slots[h] = (uint32_t)(++m->n);
    return 0;
}

int32_t tokmap_get(const tok_strmap *m, const char *key, size_t len)
{
    if (!m->cap) return -1;
    size_t h = hash_bytes(key, len) & (m->cap - 1);
    while (m->slots[h]) {
        const struct tok_strent *e = &m->ent[m->slots[h] - 1];
        if (e->len == len && memcmp(m->pool.p + e->off, key, len) == 0) return e->val;
        h = (h + 1) & (m->cap - 1);
    }
    return -1;
}

void tokmap_free(tok_strmap *m)
{
    free(m->slots);
    free(m->ent);
    free(m->pool.p);
    memset(m, 0, sizeof *m);
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

int tokpair_put(tok_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t id)
{
    if ((m->n + 1) * 2 > m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 1024;
        struct tok_pairent *s = calloc(cap, sizeof *s);
        if (!s) return LR_ENOMEM;
        for (size_t i = 0; i < m->cap; i++) {
            if (!m->slots[i].key) continue;
            size_t h = mix64(m->slots[i].key) & (cap - 1);
            while (s[h].key)
                h = (h + 1) & (cap - 1);
            s[h] = m->slots[i];
        }
        free(m->slots);
        m->slots = s;
        m->cap = cap;
    }
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t h = mix64(key) & (m->cap - 1);
    while (m->slots[h].key && m->slots[h].key != key)
        h = (h + 1) & (m->cap - 1);
    if (!m->slots[h].key) m->n++;
    m->slots[h] = (struct tok_pairent){key, rank, id};
    return 0;
}

int tokpair_get(const tok_pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *id)
{
    if (!m->cap) return 0;
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t h = mix64(key) & (m->cap - 1);
    while (m->slots[h].key) {
        if (m->slots[h].key == key) {
            *rank = m->slots[h].rank;
            *id = m->slots[h].id;
            return 1;
        }
        h = (h + 1) & (m->cap - 1);
    }
    return 0;
}

void tokpair_free(tok_pairmap *m)
{
    free(m->slots);
    memset(m, 0, sizeof *m);
}

int tok_utf8_next(const char *s, size_t n, uint32_t *cp)
{
    const unsigned char *u = (const unsigned char *)s;
    if (u[0] < 0x80 || n < 2) {
        *cp = u[0];
        return 1;
    }
    if (u[0] < 0xE0) {
        *cp = ((uint32_t)(u[0] & 0x1F) << 6) | (u[1] & 0x3F);
        return 2;
    }
    if (u[0] < 0xF0 || n < 4) {
        *cp = ((uint32_t)(u[0] & 0x0F) << 12) | ((uint32_t)(u[1] & 0x3F) << 6) | (u[2] & 0x3F);
        return 3;
    }
    *cp = ((uint32_t)(u[0] & 0x07) << 18) | ((uint32_t)(u[1] & 0x3F) << 12) |
          ((uint32_t)(u[2] & 0x3F) << 6) | (u[3] & 0x3F);
    return 4;
}

/* How many bytes of a valid sequence start at s (Unicode table 3-7), 0 if s[0] is not a valid
 * lead byte. *good gets how many of them are present and correct, for lossy decoding. */
static int utf8_probe(const unsigned char *s, size_t n, int *good)
{
    unsigned c = s[0];
    int need;
    unsigned lo = 0x80, hi = 0xBF;
    if (c < 0x80) {
        *good = 1;
        return 1;
    } else if (c >= 0xC2 && c <= 0xDF) {
        need = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        *good = 0;
        return 0;
    }
    int k = 1;
    if (k < (int)n && s[k] >= lo && s[k] <= hi) {
        k++;
        while (k < need && k < (int)n && s[k] >= 0x80 && s[k] <= 0xBF)
            k++;
    }
    *good = k;
    return need;
}

int tok_utf8_valid_at(const unsigned char *s, size_t n)
{
    int good, need = utf8_probe(s, n, &good);
    return need && good == need ? need : 0;
}

int tok_utf8_valid(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        int k = tok_utf8_valid_at(u + i, n - i);
        if (!k) return 0;
        i += (size_t)k;
    }
    return 1;
}

int tok_utf8_lossy(tok_buf *out, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0;
    if (tokbuf_reserve(out, n)) return LR_ENOMEM;
    while (i < n) {
        int good, need = utf8_probe(u + i, n - i, &good);
        if (need && good == need) {
            i += (size_t)need;
            continue;
        }
        /* Flush the valid run before i, then one U+FFFD for the maximal invalid prefix
         * (at least one byte), as Rust's Utf8Chunks does. */
        if (tokbuf_put(out, s + run, i - run) || tokbuf_put(out, "\xEF\xBF\xBD", 3))
            return LR_ENOMEM;
        i += (size_t)(good > 0 ? good : 1);
        run = i;
    }
    return tokbuf_put(out, s + run, n - run);
}

int tok_is_whitespace(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

static int cat(uint32_t c)
{
    return (int)utf8proc_category((utf8proc_int32_t)c);
}

int tok_is_numeric(uint32_t c)
{
    int k = cat(c);
    return k == UTF8PROC_CATEGORY_ND || k == UTF8PROC_CATEGORY_NL || k == UTF8PROC_CATEGORY_NO;
}

int tok_is_alnum(uint32_t c)
{
    int k = cat(c);
    return (k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO) || tok_is_numeric(c);
}

int tok_is_word(uint32_t c)
{
    int k = cat(c);
    return (k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO) ||
           (k >= UTF8PROC_CATEGORY_MN && k <= UTF8PROC_CATEGORY_ME) || k == UTF8PROC_CATEGORY_ND ||
           k == UTF8PROC_CATEGORY_PC || k == UTF8PROC_CATEGORY_NL;
}

int tok_is_punct(uint32_t c)
{
    if (c < 0x80)
        return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) ||
               (c >= 0x7B && c <= 0x7E);
    int k = cat(c);
    return k >= UTF8PROC_CATEGORY_PC && k <= UTF8PROC_CATEGORY_PO;
}

int tok_is_mark_nonspacing(uint32_t c)
{
    return cat(c) == UTF8PROC_CATEGORY_MN;
}
