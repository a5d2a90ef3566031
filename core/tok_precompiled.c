/* tok_precompiled.c — SentencePiece's precompiled charsmap normalizer (HF "Precompiled").
 *
 * This module decodes the base64 charsmap, validates it against hostile input, walks its
 * Darts-clone double array the way spm_precompiled does, and applies it over extended grapheme
 * clusters the way tokenizers' normalizers/precompiled.rs does (SPEC-HF.md E.3). It is not a
 * Unicode normalizer of its own: everything NFKC-like comes from the charsmap's rules.
 *
 * Charsmap layout: [u32 LE trie_size][trie_size/4 u32 LE units][blob of NUL-terminated UTF-8].
 * Unit u: has_leaf = (u>>8)&1; value = u & 0x7FFFFFFF; label = u & 0x800000FF;
 * offset = (u>>10) << ((u & 0x200) >> 6).
 *
 * Hostile charsmaps: tokpc_create walks every transition the search could ever take (each unit
 * index at most once, so a cyclic array cannot hang it) and checks every leaf value it can reach.
 * The search itself also bounds-checks each index, so a lookup never reads outside the array.
 */
#include "tok_precompiled.h"
#include "tok_util.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* SentencePiece only tries a whole grapheme cluster when it is shorter than this many bytes. */
#define PC_MAX_CLUSTER_BYTES 6

struct tokpc {
    uint32_t *units; /* (n_units,) the double array; NULL for the identity normalizer */
    size_t n_units;
    char *blob; /* (blob_len,) NUL-terminated replacement strings, valid UTF-8 */
    size_t blob_len;
};

/* ---- base64 -------------------------------------------------------------------------------- */

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Strict standard base64 with canonical padding (what Rust's BASE64_STANDARD accepts): length a
 * multiple of 4, '=' only as the last one or two characters, unused trailing bits zero. */
static int b64_decode(const char *s, size_t len, uint8_t **out, size_t *out_len, lr_error *err)
{
    if (len % 4 != 0)
        return lr_error_set(err, LR_EFORMAT,
                            "precompiled_charsmap: base64 length %zu is not a multiple of 4", len);
    size_t pad = 0;
    if (len >= 1 && s[len - 1] == '=') pad = (len >= 2 && s[len - 2] == '=') ? 2 : 1;
    uint8_t *buf = malloc(len / 4 * 3 + 1);
    if (!buf)
        return lr_error_set(err, LR_ENOMEM, "precompiled_charsmap: out of memory decoding base64");
    size_t o = 0;
    for (size_t i = 0; i < len; i += 4) {
        int v[4];
        int last = (i + 4 == len);
        for (int k = 0; k < 4; k++) {
            int is_pad = last && (size_t)k >= 4 - pad;
            v[k] = is_pad ? 0 : b64_value((unsigned char)s[i + k]);
            if (v[k] < 0) {
                free(buf);
                return lr_error_set(err, LR_EFORMAT,
                                    "precompiled_charsmap: invalid base64 character 0x%02x at "
                                    "offset %zu",
                                    (unsigned char)s[i + k], i + k);
            }
        }
        uint32_t w =
            (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        size_t keep = last ? 3 - pad : 3;
        /* Canonical padding: the bits that fall off the end must be zero. */
        if (last && pad && (w & ((1u << (8 * pad)) - 1)) != 0) {
            free(buf);
            return lr_error_set(err, LR_EFORMAT,
                                "precompiled_charsmap: non-canonical base64 padding at the end");
        }
        for (size_t k = 0; k < keep; k++)
            buf[o++] = (uint8_t)(w >> (16 - 8 * k));
    }
    *out = buf;
    *out_len = o;
    return 0;
}

/* ---- the double array ---------------------------------------------------------------------- */

static inline int unit_has_leaf(uint32_t u)
{
    return (u >> 8) & 1;
}
static inline uint32_t unit_value(uint32_t u)
{
    return u & 0x7FFFFFFFu;
}
static inline uint32_t unit_label(uint32_t u)
{
    return u & 0x800000FFu;
}
static inline size_t unit_offset(uint32_t u)
{
    return (size_t)(u >> 10) << ((u & 0x200) >> 6);
}

/* Common-prefix search, stopping at the first (shortest) key that is a prefix of key[0:n];
 * a 0x00 byte ends the key as in Darts. Returns 1 and the blob offset in *value, or 0.
 * An index outside the array is a mismatch (create() guarantees leaf values are in range). */
static int pc_shortest_match(const tokpc *p, const uint8_t *key, size_t n, uint32_t *value)
{
    size_t pos = unit_offset(p->units[0]);
    for (size_t i = 0; i < n && key[i] != 0; i++) {
        pos ^= key[i];
        if (pos >= p->n_units) return 0;
        uint32_t u = p->units[pos];
        if (unit_label(u) != key[i]) return 0;
        pos ^= unit_offset(u);
        if (unit_has_leaf(u)) {
            if (pos >= p->n_units) return 0;
            *value = unit_value(p->units[pos]);
            return 1;
        }
    }
    return 0;
}

/* Visit every unit the search can reach (by any byte string) and check each reachable leaf:
 * its value unit is inside the array and its value is an offset in the blob at a character
 * start. Each unit index is expanded at most once, so the cost is O(n_units * 255). */
static int pc_validate_trie(const tokpc *p, lr_error *err)
{
    size_t n = p->n_units;
    uint8_t *seen = calloc(n / 8 + 1, 1);
    uint32_t *stack = malloc(n * sizeof *stack);
    int rc = 0;
    if (!seen || !stack) {
        rc = lr_error_set(err, LR_ENOMEM, "precompiled_charsmap: out of memory validating trie");
        goto out;
    }
    size_t top = 0;
    size_t from = unit_offset(p->units[0]); /* the node position children are XORed from */
    for (;;) {
        for (unsigned c = 1; c < 256; c++) {
            size_t q = from ^ c;
            if (q >= n || unit_label(p->units[q]) != c || (seen[q / 8] >> (q % 8) & 1)) continue;
            seen[q / 8] |= (uint8_t)(1u << (q % 8));
            stack[top++] = (uint32_t)q;
        }
        if (top == 0) break;
        size_t q = stack[--top];
        uint32_t u = p->units[q];
        from = q ^ unit_offset(u);
        if (!unit_has_leaf(u)) continue;
        if (from >= n) {
            rc = lr_error_set(err, LR_EFORMAT,
                              "precompiled_charsmap: trie unit %zu has a leaf at index %zu, past "
                              "the %zu units of the trie",
                              q, from, n);
            goto out;
        }
        uint32_t v = unit_value(p->units[from]);
        if (v >= p->blob_len) {
            rc = lr_error_set(err, LR_EFORMAT,
                              "precompiled_charsmap: trie value %u points past the %zu-byte "
                              "normalized blob",
                              v, p->blob_len);
            goto out;
        }
        if (((unsigned char)p->blob[v] & 0xC0) == 0x80) {
            rc = lr_error_set(err, LR_EFORMAT,
                              "precompiled_charsmap: trie value %u points inside a UTF-8 "
                              "character of the normalized blob",
                              v);
            goto out;
        }
    }
out:
    free(seen);
    free(stack);
    return rc;
}

int tokpc_create(const char *charsmap_base64, lr_error *err, tokpc **out)
{
    tokpc *p = calloc(1, sizeof *p);
    uint8_t *raw = NULL;
    size_t raw_len = 0;
    int rc;
    if (!p) return lr_error_set(err, LR_ENOMEM, "precompiled_charsmap: out of memory");
    if (!charsmap_base64) goto done; /* identity */
    rc = b64_decode(charsmap_base64, strlen(charsmap_base64), &raw, &raw_len, err);
    if (rc) goto fail;
    if (raw_len < 4) {
        rc = lr_error_set(err, LR_EFORMAT,
                          "precompiled_charsmap: %zu bytes, too short for the trie size field",
                          raw_len);
        goto fail;
    }
    uint32_t trie_size =
        (uint32_t)raw[0] | (uint32_t)raw[1] << 8 | (uint32_t)raw[2] << 16 | (uint32_t)raw[3] << 24;
    if (trie_size == 0 || trie_size % 4 != 0 || trie_size > raw_len - 4) {
        rc = lr_error_set(err, LR_EFORMAT,
                          "precompiled_charsmap: trie size field %u is zero, not a multiple of "
                          "4, or larger than the %zu bytes that follow it",
                          trie_size, raw_len - 4);
        goto fail;
    }
    p->n_units = trie_size / 4;
    p->blob_len = raw_len - 4 - trie_size;
    p->units = malloc(p->n_units * sizeof *p->units);
    p->blob = malloc(p->blob_len + 1);
    if (!p->units || !p->blob) {
        rc = lr_error_set(err, LR_ENOMEM, "precompiled_charsmap: out of memory");
        goto fail;
    }
    for (size_t i = 0; i < p->n_units; i++) {
        const uint8_t *b = raw + 4 + 4 * i;
        p->units[i] =
            (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    }
    memcpy(p->blob, raw + 4 + trie_size, p->blob_len);
    p->blob[p->blob_len] = '\0';
    if (p->blob_len > 0 && p->blob[p->blob_len - 1] != '\0') {
        rc = lr_error_set(err, LR_EFORMAT,
                          "precompiled_charsmap: the normalized blob (%zu bytes) does not end with "
                          "a NUL, so its last string is unterminated",
                          p->blob_len);
        goto fail;
    }
    if (!tok_utf8_valid(p->blob, p->blob_len)) {
        rc = lr_error_set(err, LR_EFORMAT,
                          "precompiled_charsmap: the normalized blob is not valid UTF-8");
        goto fail;
    }
    rc = pc_validate_trie(p, err);
    if (rc) goto fail;
done:
    free(raw);
    *out = p;
    return 0;
fail:
    free(raw);
    tokpc_destroy(p);
    return rc;
}

void tokpc_destroy(tokpc *p)
{
    if (!p) return;
    free(p->units);
    free(p->blob);
    free(p);
}

/* ---- normalization ------------------------------------------------------------------------- */

typedef struct pc_buf {
    char *s;
    size_t len, cap;
} pc_buf;

static int buf_put(pc_buf *b, const void *src, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 16;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *s = realloc(b->s, cap);
        if (!s) return LR_ENOMEM;
        b->s = s;
        b->cap = cap;
    }
    if (n) memcpy(b->s + b->len, src, n); /* src may be NULL when n is 0 */
    b->len += n;
    return 0;
}

/* Append the replacement for one cluster s[0:n] (already valid UTF-8). */
static int pc_emit_cluster(const tokpc *p, const uint8_t *s, size_t n, pc_buf *b)
{
    uint32_t v;
    if (n < PC_MAX_CLUSTER_BYTES && pc_shortest_match(p, s, n, &v))
        return buf_put(b, p->blob + v, strlen(p->blob + v));
    size_t i = 0;
    while (i < n) {
        utf8proc_int32_t cp;
        size_t k = (size_t)utf8proc_iterate(s + i, (utf8proc_ssize_t)(n - i), &cp);
        int rc = pc_shortest_match(p, s + i, k, &v) ? buf_put(b, p->blob + v, strlen(p->blob + v))
                                                    : buf_put(b, s + i, k);
        if (rc) return rc;
        i += k;
    }
    return 0;
}

int tokpc_normalize(const tokpc *p, const char *in, size_t n, char **out, size_t *out_len)
{
    LR_ASSERT(p && (in || n == 0) && out && out_len);
    const uint8_t *s = (const uint8_t *)in;
    pc_buf b = {0};
    int rc = buf_put(&b, "", 0);
    if (rc) goto fail;
    b.s[0] = '\0';
    if (!p->units) {
        if (n && !tok_utf8_valid((const char *)s, n)) {
            rc = LR_EINVAL;
            goto fail;
        }
        if ((rc = buf_put(&b, s, n))) goto fail;
        goto done;
    }
    /* Cluster boundaries from utf8proc's UAX #29 rules; the state carries the regional-indicator
     * and emoji-ZWJ context across calls, which must be made for every adjacent pair in order. */
    utf8proc_int32_t state = 0, prev = -1;
    size_t start = 0, i = 0;
    while (i < n) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate(s + i, (utf8proc_ssize_t)(n - i), &cp);
        if (k <= 0) {
            rc = LR_EINVAL;
            goto fail;
        }
        if (prev >= 0 && utf8proc_grapheme_break_stateful(prev, cp, &state)) {
            if ((rc = pc_emit_cluster(p, s + start, i - start, &b))) goto fail;
            start = i;
        }
        prev = cp;
        i += (size_t)k;
    }
    if (n > start && (rc = pc_emit_cluster(p, s + start, n - start, &b))) goto fail;
done:
    b.s[b.len] = '\0';
    *out = b.s;
    *out_len = b.len;
    return 0;
fail:
    free(b.s);
    *out = NULL;
    *out_len = 0;
    return rc;
}
