/* check_tok_unigram.c — the Unigram model (tok_unigram) and the Precompiled normalizer
 * (tok_precompiled), checked against independent references:
 *  - the real T5 tokenizer.json and the ids HF tokenizers / sentencepiece produced for every
 *    sentence of /work/shared/data/t5/expected_ids.json (pipeline rebuilt here by hand);
 *  - hand-built charsmaps and vocabularies whose results are derived by hand in the comments;
 *  - a brute-force enumeration of every segmentation for small random vocabularies.
 * Shared data: $LORAD_SHARED/data/t5, else ../shared/data/t5 relative to the repo root.
 */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tok_precompiled.h"
#include "tok_unigram.h"

/* ---- helpers ------------------------------------------------------------------------------- */

static const char *t5_path(const char *file, char *buf, size_t cap)
{
    const char *shared = getenv("LORAD_SHARED");
    snprintf(buf, cap, "%s/data/t5/%s", shared ? shared : "../shared", file);
    return buf;
}

static json_t *load_json(const char *file)
{
    char path[1024];
    json_error_t jerr;
    json_t *j = json_load_file(t5_path(file, path, sizeof path), 0, &jerr);
    ck_assert_msg(j != NULL, "cannot load %s: %s", path, jerr.text);
    return j;
}

/* Plain standard base64 with padding, written independently of the decoder under test. */
static char *b64_encode(const uint8_t *d, size_t n)
{
    static const char A[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *s = malloc((n + 2) / 3 * 4 + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t w = (uint32_t)d[i] << 16;
        if (i + 1 < n) w |= (uint32_t)d[i + 1] << 8;
        if (i + 2 < n) w |= d[i + 2];
        s[o++] = A[w >> 18 & 63];
        s[o++] = A[w >> 12 & 63];
        s[o++] = i + 1 < n ? A[w >> 6 & 63] : '=';
        s[o++] = i + 2 < n ? A[w & 63] : '=';
    }
    s[o] = '\0';
    return s;
}

/* Raw charsmap bytes from units and a blob, base64-encoded. size_field overrides the trie size
 * field when nonzero (to forge hostile headers). */
static char *charsmap_b64(const uint32_t *units, size_t n_units, const char *blob, size_t blob_len,
                          uint32_t size_field)
{
    size_t n = 4 + 4 * n_units + blob_len;
    uint8_t *raw = malloc(n);
    uint32_t sz = size_field ? size_field : (uint32_t)(4 * n_units);
    for (int k = 0; k < 4; k++)
        raw[k] = (uint8_t)(sz >> (8 * k));
    for (size_t i = 0; i < n_units; i++)
        for (int k = 0; k < 4; k++)
            raw[4 + 4 * i + (size_t)k] = (uint8_t)(units[i] >> (8 * k));
    memcpy(raw + 4 + 4 * n_units, blob, blob_len);
    char *s = b64_encode(raw, n);
    free(raw);
    return s;
}

/* Unit encodings (SPEC E.3): a node with label c, offset off (< 2^22, so bit 9 clear), leaf flag;
 * a value unit has bit 31 set so it never matches a label. */
static uint32_t node_unit(uint8_t c, uint32_t off, int leaf)
{
    return off << 10 | (leaf ? 1u << 8 : 0) | c;
}
static uint32_t value_unit(uint32_t v)
{
    return 0x80000000u | v;
}

/* A tiny hand-built charsmap, 256 units, root offset 0 so the root's children sit at index c:
 *   'a' (97): leaf, offset 1 → its node position is 97^1 = 96; unit[96] = value 0 → "xyz".
 *   "ab": child of node 96 along 'b' (98) at 96^98 = 2: leaf, offset 1 → value at 3 → 4 "uv".
 *   '\r' (13): leaf, offset 1 → node 12; unit[12] = value 7 → "_".
 *   "a\xCC\x81" (a + U+0301, one cluster): node 96 along 0xCC → 96^0xCC = 172, offset 1 → 173;
 *   along 0x81 → 173^0x81 = 44: leaf, offset 1 → value at 45 → 4 "uv". Only the SHORTEST
 *   prefix ("a") may be used, so this key is never the answer.
 * Blob: "xyz\0uv\0_\0". */
static void tiny_trie(uint32_t *units)
{
    memset(units, 0, 256 * sizeof *units);
    units[0] = node_unit(0, 0, 0);
    units[97] = node_unit('a', 1, 1);
    units[96] = value_unit(0);
    units[2] = node_unit('b', 1, 1);
    units[3] = value_unit(4);
    units[13] = node_unit('\r', 1, 1);
    units[12] = value_unit(7);
    units[172] = node_unit(0xCC, 1, 0);
    units[44] = node_unit(0x81, 1, 1);
    units[45] = value_unit(4);
}
static const char tiny_blob[] = "xyz\0uv\0_"; /* plus the literal's own NUL: 10 bytes */

static tokpc *tiny_pc(void)
{
    uint32_t units[256];
    tiny_trie(units);
    char *b64 = charsmap_b64(units, 256, tiny_blob, sizeof tiny_blob, 0);
    lr_error err = {0};
    tokpc *p = NULL;
    int rc = tokpc_create(b64, &err, &p);
    ck_assert_msg(rc == 0, "tiny charsmap rejected: %s", err.msg);
    free(b64);
    return p;
}

static void expect_norm(const tokpc *p, const char *in, const char *want)
{
    char *out = NULL;
    size_t n = 0;
    ck_assert_int_eq(tokpc_normalize(p, in, strlen(in), &out, &n), 0);
    ck_assert_uint_eq(n, strlen(want));
    ck_assert_msg(memcmp(out, want, n) == 0 && out[n] == '\0',
                  "normalize(\"%s\") = \"%s\", want \"%s\"", in, out, want);
    free(out);
}

static void expect_create_fails(const char *b64, const char *what)
{
    lr_error err = {0};
    tokpc *p = (tokpc *)0x1;
    int rc = tokpc_create(b64, &err, &p);
    ck_assert_msg(rc == LR_EFORMAT, "%s: rc %d, want LR_EFORMAT", what, rc);
    ck_assert_msg(p == (tokpc *)0x1, "%s: *out written on error", what);
    ck_assert_msg(strstr(err.msg, "precompiled_charsmap") != NULL, "%s: message '%s'", what,
                  err.msg);
}

/* ---- the T5 model from the real tokenizer.json --------------------------------------------- */

typedef struct t5 {
    json_t *root;
    tokpc *pc;
    tokug *ug;
} t5;

static t5 t5_load(void)
{
    t5 m = {0};
    m.root = load_json("tokenizer.json");
    json_t *norms = json_object_get(json_object_get(m.root, "normalizer"), "normalizers");
    const char *charsmap = NULL;
    for (size_t i = 0; i < json_array_size(norms); i++) {
        json_t *nz = json_array_get(norms, i);
        if (strcmp(json_string_value(json_object_get(nz, "type")), "Precompiled") == 0)
            charsmap = json_string_value(json_object_get(nz, "precompiled_charsmap"));
    }
    ck_assert_ptr_nonnull(charsmap);
    lr_error err = {0};
    ck_assert_msg(tokpc_create(charsmap, &err, &m.pc) == 0, "%s", err.msg);

    json_t *model = json_object_get(m.root, "model");
    ck_assert_str_eq(json_string_value(json_object_get(model, "type")), "Unigram");
    json_t *vocab = json_object_get(model, "vocab");
    int n = (int)json_array_size(vocab);
    ck_assert_int_eq(n, 32100);
    const char **pieces = malloc((size_t)n * sizeof *pieces);
    double *scores = malloc((size_t)n * sizeof *scores);
    for (int i = 0; i < n; i++) {
        json_t *e = json_array_get(vocab, (size_t)i);
        pieces[i] = json_string_value(json_array_get(e, 0));
        scores[i] = json_number_value(json_array_get(e, 1));
    }
    int unk = (int)json_integer_value(json_object_get(model, "unk_id"));
    int bf = json_is_true(json_object_get(model, "byte_fallback"));
    ck_assert_msg(tokug_create(pieces, scores, n, unk, bf, &err, &m.ug) == 0, "%s", err.msg);
    free(pieces);
    free(scores);
    return m;
}

static void t5_free(t5 *m)
{
    tokpc_destroy(m->pc);
    tokug_destroy(m->ug);
    json_decref(m->root);
}

/* Rust char::is_whitespace (Unicode White_Space). */
static int is_ws(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

static size_t utf8_dec(const char *s, uint32_t *cp)
{
    const uint8_t *u = (const uint8_t *)s;
    if (u[0] < 0x80) {
        *cp = u[0];
        return 1;
    }
    if (u[0] < 0xE0) {
        *cp = (uint32_t)(u[0] & 0x1F) << 6 | (u[1] & 0x3F);
        return 2;
    }
    if (u[0] < 0xF0) {
        *cp = (uint32_t)(u[0] & 0x0F) << 12 | (uint32_t)(u[1] & 0x3F) << 6 | (u[2] & 0x3F);
        return 3;
    }
    *cp = (uint32_t)(u[0] & 0x07) << 18 | (uint32_t)(u[1] & 0x3F) << 12 |
          (uint32_t)(u[2] & 0x3F) << 6 | (u[3] & 0x3F);
    return 4;
}

#define META "\xE2\x96\x81" /* U+2581 ▁ */

/* The T5 tokenizer.json pipeline by hand: Precompiled → Strip(right) → Replace(" {2,}" → "▁")
 * → Metaspace(always, split) → Unigram per word → append </s> (1). */
static void t5_encode(const t5 *m, const char *text, size_t len, int add_eos, tok_ids *ids)
{
    char *norm;
    size_t n;
    ck_assert_int_eq(tokpc_normalize(m->pc, text, len, &norm, &n), 0);
    /* Strip right: cut after the last non-whitespace character. */
    size_t keep = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k = utf8_dec(norm + i, &cp);
        i += k;
        if (!is_ws(cp)) keep = i;
    }
    /* Replace runs of 2+ spaces by ▁, then Metaspace: every remaining ' ' → ▁. Both give ▁, so
     * one pass suffices; what matters is that a run of spaces becomes ONE ▁ and a single space
     * one ▁. Then prepend ▁ unless the (non-empty) string already starts with it. */
    char *buf = malloc(3 * keep + 4), *s = buf + 3; /* 3 bytes of headroom for the prepend */
    size_t o = 0;
    for (size_t i = 0; i < keep;) {
        if (norm[i] == ' ') {
            while (i < keep && norm[i] == ' ')
                i++;
            memcpy(s + o, META, 3);
            o += 3;
        } else {
            s[o++] = norm[i++];
        }
    }
    if (o > 0 && (o < 3 || memcmp(s, META, 3) != 0)) {
        s -= 3;
        memcpy(s, META, 3);
        o += 3;
    }
    /* Split before every ▁ (MergedWithNext); empty words dropped. */
    size_t start = 0;
    for (size_t i = 0; i <= o; i++) {
        int cut = (i == o) || (i > start && i + 3 <= o && memcmp(s + i, META, 3) == 0);
        if (!cut) continue;
        if (i > start) ck_assert_int_eq(tokug_encode(m->ug, s + start, i - start, ids), 0);
        start = i;
    }
    if (add_eos) {
        ids->v = realloc(ids->v, (ids->n + 1) * sizeof *ids->v);
        ids->v[ids->n++] = 1; /* </s> */
        ids->cap = ids->n;
    }
    free(buf);
    free(norm);
}

/* ---- T5 golden ----------------------------------------------------------------------------- */

static void expect_json_ids(const tok_ids *got, json_t *want, const char *what)
{
    int same = got->n == json_array_size(want);
    for (size_t i = 0; same && i < got->n; i++)
        same = got->v[i] == json_integer_value(json_array_get(want, i));
    if (!same) {
        char buf[2048];
        size_t o = 0;
        for (size_t i = 0; i < got->n && o + 16 < sizeof buf; i++)
            o += (size_t)snprintf(buf + o, sizeof buf - o, "%d ", got->v[i]);
        buf[o] = '\0';
        ck_abort_msg("\"%s\": got [%s] (%zu ids, want %zu)", what, buf, got->n,
                     json_array_size(want));
    }
}

START_TEST(test_t5_expected_ids)
{
    t5 m = t5_load();
    json_t *cases = load_json("expected_ids.json");
    ck_assert_uint_ge(json_array_size(cases), 14);
    for (size_t c = 0; c < json_array_size(cases); c++) {
        json_t *e = json_array_get(cases, c);
        const char *text = json_string_value(json_object_get(e, "text"));
        json_t *want = json_object_get(e, "ids");
        tok_ids got = {0};
        t5_encode(&m, text, strlen(text), 1, &got);
        expect_json_ids(&got, want, text);
        free(got.v);
    }
    json_decref(cases);
    t5_free(&m);
}
END_TEST

/* The repo's HF-tokenizers goldens (tests/data/tok/golden_t5.json, 119 hard strings: whitespace
 * runs, CR LF, NBSP, zero-width, combining/NFD, control chars incl. U+0000, emoji, CJK…): every
 * case without added-token text (not handled at this level) must give ids_plain exactly. */
START_TEST(test_t5_tokgold)
{
    t5 m = t5_load();
    json_error_t jerr;
    json_t *g = json_load_file("tests/data/tok/golden_t5.json", JSON_ALLOW_NUL, &jerr);
    ck_assert_msg(g != NULL, "tests/data/tok/golden_t5.json: %s", jerr.text);
    json_t *added = json_object_get(m.root, "added_tokens");
    json_t *cases = json_object_get(g, "cases");
    size_t checked = 0;
    for (size_t c = 0; c < json_array_size(cases); c++) {
        json_t *e = json_array_get(cases, c);
        json_t *jt = json_object_get(e, "text");
        const char *text = json_string_value(jt);
        size_t len = json_string_length(jt);
        int has_added = 0;
        for (size_t a = 0; a < json_array_size(added) && !has_added; a++) {
            const char *tok =
                json_string_value(json_object_get(json_array_get(added, a), "content"));
            has_added = memmem(text, len, tok, strlen(tok)) != NULL;
        }
        if (has_added) continue;
        tok_ids got = {0};
        t5_encode(&m, text, len, 0, &got);
        expect_json_ids(&got, json_object_get(e, "ids_plain"),
                        json_string_value(json_object_get(e, "tag")));
        free(got.v);
        checked++;
    }
    fprintf(stderr, "check_tok_unigram: %zu golden_t5 cases checked\n", checked);
    ck_assert_uint_ge(checked, 100);
    json_decref(g);
    t5_free(&m);
}
END_TEST

/* The real nmt_nfkc map: "\r" → " " and CR LF is one cluster, so "\r\n" → ONE space, while
 * "\n\r" is two clusters → two spaces. Also NFKC-like entries read straight from the blob. */
START_TEST(test_t5_charsmap_rules)
{
    t5 m = t5_load();
    expect_norm(m.pc, "a\r\nb", "a b");
    expect_norm(m.pc, "a\n\rb", "a  b");
    expect_norm(m.pc,
                "a\tb\xC2\xA0"
                "c",
                "a b c"); /* tab, NBSP → space */
    expect_norm(m.pc,
                "\xEF\xAC\x81"
                "ne",
                "fine");                                 /* U+FB01 ﬁ → fi */
    expect_norm(m.pc, "\xEF\xBC\xA1\xEF\xBC\xA2", "AB"); /* fullwidth Ａ Ｂ */
    expect_norm(m.pc, "e\xCC\x81", "\xC3\xA9");          /* e + U+0301 → é */
    expect_norm(m.pc, "x\x01y", "xy");                   /* control char dropped */
    expect_norm(m.pc, "", "");
    /* Invalid UTF-8 is an error, not a crash. */
    char *out = (char *)0x1;
    size_t n = 7;
    ck_assert_int_eq(tokpc_normalize(m.pc, "a\xC3", 2, &out, &n), LR_EINVAL);
    ck_assert_ptr_null(out);
    ck_assert_int_eq(tokpc_normalize(m.pc, "\xED\xA0\x80", 3, &out, &n), LR_EINVAL); /* surrogate */
    t5_free(&m);
}
END_TEST

/* ---- Precompiled on hand-built charsmaps ---------------------------------------------------- */

START_TEST(test_pc_tiny_rules)
{
    tokpc *p = tiny_pc();
    expect_norm(p, "a", "xyz");
    expect_norm(p, "bab", "bxyzb");
    /* "ab" is a key too but the SHORTEST match wins; and 'a','b' are separate clusters anyway. */
    expect_norm(p, "ab", "xyzb");
    /* "a" + U+0301 is one 3-byte cluster whose shortest matching prefix is "a": the WHOLE cluster
     * becomes "xyz" (the accent goes too). */
    expect_norm(p, "a\xCC\x81", "xyz");
    /* "a" + 2×U+0301 = 5 bytes < 6: still whole-cluster. */
    expect_norm(p, "a\xCC\x81\xCC\x81", "xyz");
    /* "a" + 3×U+0301 = 7 bytes ≥ 6: per code point, 'a' → xyz, the marks have no entry. */
    expect_norm(p, "a\xCC\x81\xCC\x81\xCC\x81", "xyz\xCC\x81\xCC\x81\xCC\x81");
    /* CR LF is one cluster: the prefix "\r" matches → the whole "\r\n" becomes "_". */
    expect_norm(p, "\r\n", "_");
    expect_norm(p, "\n\r", "\n_");
    expect_norm(p, "\r\r\n\n", "__\n");
    /* A NUL byte ends a Darts key: "\0" never matches and is kept. */
    char *out;
    size_t n;
    ck_assert_int_eq(tokpc_normalize(p, "a\0a", 3, &out, &n), 0);
    ck_assert_uint_eq(n, 7);
    ck_assert_int_eq(memcmp(out, "xyz\0xyz", 7), 0);
    free(out);
    tokpc_destroy(p);

    /* NULL charsmap = identity. */
    lr_error err = {0};
    ck_assert_int_eq(tokpc_create(NULL, &err, &p), 0);
    expect_norm(p, "a\r\n", "a\r\n");
    ck_assert_int_eq(tokpc_normalize(p, NULL, 0, &out, &n), 0);
    ck_assert_uint_eq(n, 0);
    ck_assert_str_eq(out, "");
    free(out);
    tokpc_destroy(p);
    tokpc_destroy(NULL);
}
END_TEST

START_TEST(test_pc_hostile)
{
    /* Bad base64. */
    expect_create_fails("", "empty");
    expect_create_fails("QUJD\n", "newline");
    expect_create_fails("abc", "length 3");
    expect_create_fails("ab!d", "bad character");
    expect_create_fails("QQ=A", "padding in the middle");
    expect_create_fails("QR==", "non-canonical trailing bits");
    expect_create_fails("====", "all padding");

    uint32_t units[256];
    char blob[16];
    memcpy(blob, tiny_blob, sizeof tiny_blob);
    char *b;

    /* Truncated: the real tiny charsmap cut short. */
    tiny_trie(units);
    b = charsmap_b64(units, 256, blob, sizeof tiny_blob, 0);
    b[40] = '\0'; /* 30 bytes: size field says 1024 */
    expect_create_fails(b, "truncated");
    free(b);
    /* Size field: zero, not a multiple of 4, larger than the data. */
    b = charsmap_b64(units, 256, blob, sizeof tiny_blob, 0xFFFFFFF0u);
    expect_create_fails(b, "huge size");
    free(b);
    b = charsmap_b64(units, 256, blob, sizeof tiny_blob, 1022);
    expect_create_fails(b, "size not multiple of 4");
    free(b);
    uint8_t zero[4] = {0, 0, 0, 0};
    b = b64_encode(zero, 4);
    expect_create_fails(b, "zero size");
    free(b);
    b = b64_encode(zero, 3);
    expect_create_fails(b, "3 bytes");
    free(b);

    /* A leaf value past the blob. */
    tiny_trie(units);
    units[96] = value_unit(500);
    b = charsmap_b64(units, 256, blob, sizeof tiny_blob, 0);
    expect_create_fails(b, "value past blob");
    free(b);
    /* A value equal to the blob length (one past the last NUL). */
    units[96] = value_unit(sizeof tiny_blob);
    b = charsmap_b64(units, 256, blob, sizeof tiny_blob, 0);
    expect_create_fails(b, "value at blob end");
    free(b);
    /* A leaf whose value unit lies past the array: offset 1024 → 97^1024 = 1121 ≥ 256. */
    tiny_trie(units);
    units[97] = node_unit('a', 1024, 1);
    b = charsmap_b64(units, 256, blob, sizeof tiny_blob, 0);
    expect_create_fails(b, "leaf index past array");
    free(b);
    /* Leaf reachable only deep in the trie ("ab") with a bad value. */
    tiny_trie(units);
    units[3] = value_unit(9999);
    b = charsmap_b64(units, 256, blob, sizeof tiny_blob, 0);
    expect_create_fails(b, "deep bad value");
    free(b);
    /* Blob without the final NUL. */
    tiny_trie(units);
    b = charsmap_b64(units, 256, blob, sizeof tiny_blob - 1, 0);
    expect_create_fails(b, "no NUL");
    free(b);
    /* A value pointing inside a UTF-8 character: blob "é\0", value 1. */
    units[96] = value_unit(1);
    b = charsmap_b64(units, 256, "\xC3\xA9", 3, 0);
    expect_create_fails(b, "mid-character value");
    free(b);
    /* Blob not valid UTF-8. */
    units[96] = value_unit(0);
    b = charsmap_b64(units, 256, "\xFF\0", 2, 0);
    expect_create_fails(b, "invalid UTF-8 blob");
    free(b);

    /* A cyclic array (node 'a' leads back to the root position) is not an error — it has no
     * bad leaf — but validation and search must terminate: 97 ^ 97 = 0, the root's position. */
    memset(units, 0, sizeof units);
    units[97] = node_unit('a', 97, 0);
    b = charsmap_b64(units, 256, "", 0, 0);
    lr_error err = {0};
    tokpc *p = NULL;
    ck_assert_msg(tokpc_create(b, &err, &p) == 0, "%s", err.msg);
    free(b);
    expect_norm(p, "aaaa", "aaaa");
    tokpc_destroy(p);
    /* Random corruption of the tiny trie: reachable nodes with random offsets, leaf flags and
     * values. create() must either reject the map or accept one that then normalizes without any
     * out-of-bounds read (ASan build). At least some of each must occur for the test to mean
     * anything. */
    uint32_t rng = 99;
#define RND32() (rng = rng * 1664525u + 1013904223u, rng ^ (rng >> 15))
    int accepted = 0, rejected = 0;
    for (int it = 0; it < 3000; it++) {
        tiny_trie(units);
        int flips = 1 + (int)(RND32() % 4);
        for (int f = 0; f < flips; f++) {
            uint32_t idx = RND32() % 256, r = RND32();
            if (r & 1) /* a node the root can reach (label = idx), random offset and leaf bit */
                units[idx] = node_unit((uint8_t)idx, (r >> 8) % 300, (r >> 4) & 1);
            else if (r & 2) /* a value unit with a random, often too large, value */
                units[idx] = value_unit((r >> 8) % 16);
            else
                units[idx] = r;
        }
        size_t bl = RND32() % (sizeof tiny_blob + 1);
        b = charsmap_b64(units, 256, tiny_blob, bl, 0);
        if (tokpc_create(b, &err, &p) != 0) {
            rejected++;
            free(b);
            continue;
        }
        accepted++;
        free(b);
        static const char *const probes[] = {"a",
                                             "ab",
                                             "a\xCC\x81",
                                             "\r\n",
                                             "xa\rb\x01\x7f",
                                             "\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80"};
        for (size_t k = 0; k < sizeof probes / sizeof probes[0]; k++) {
            char *o;
            size_t on;
            ck_assert_int_eq(tokpc_normalize(p, probes[k], strlen(probes[k]), &o, &on), 0);
            free(o);
        }
        char word[64];
        for (size_t k = 0; k < sizeof word; k++)
            word[k] = (char)(1 + RND32() % 127);
        char *o;
        size_t on;
        ck_assert_int_eq(tokpc_normalize(p, word, sizeof word, &o, &on), 0);
        free(o);
        tokpc_destroy(p);
    }
#undef RND32
    ck_assert_int_gt(accepted, 100);
    ck_assert_int_gt(rejected, 100);

    /* A root offset pointing far outside the array: every lookup misses, nothing is read OOB. */
    memset(units, 0, sizeof units);
    units[0] = node_unit(0, 1u << 21, 0);
    b = charsmap_b64(units, 256, "", 0, 0);
    ck_assert_msg(tokpc_create(b, &err, &p) == 0, "%s", err.msg);
    free(b);
    expect_norm(p, "abc", "abc");
    tokpc_destroy(p);
}
END_TEST

/* ---- Unigram on hand-built vocabularies ---------------------------------------------------- */

static tokug *mk_ug(const char *const *pieces, const double *scores, int n, int unk, int bf)
{
    lr_error err = {0};
    tokug *u = NULL;
    ck_assert_msg(tokug_create(pieces, scores, n, unk, bf, &err, &u) == 0, "%s", err.msg);
    return u;
}

static void expect_ids(const tokug *u, const char *word, const int32_t *want, size_t n_want)
{
    tok_ids got = {0};
    ck_assert_int_eq(tokug_encode(u, word, strlen(word), &got), 0);
    int same = got.n == n_want;
    for (size_t i = 0; same && i < n_want; i++)
        same = got.v[i] == want[i];
    ck_assert_msg(same, "encode(\"%s\"): got %zu ids (first %d), want %zu (first %d)", word, got.n,
                  got.n ? got.v[0] : -1, n_want, n_want ? want[0] : -1);
    free(got.v);
}
#define EXPECT_IDS(u, word, ...)                                                                   \
    do {                                                                                           \
        const int32_t w_[] = {__VA_ARGS__};                                                        \
        expect_ids(u, word, w_, sizeof w_ / sizeof w_[0]);                                         \
    } while (0)

START_TEST(test_ug_ties)
{
    /* ids: 0 <unk> 0.0, 1 "a" −1, 2 "b" −1, 3 "ab" −2, 4 "bc" −1, 5 "c" −1.
     * "ab": end 2 is first reached from start 0 by "ab" (−2); then from start 1 "a"+"b" also
     * gives −2: equal, not greater, so the earlier "ab" stays → [3]. */
    const char *p1[] = {"<unk>", "a", "b", "ab", "bc", "c"};
    const double s1[] = {0.0, -1.0, -1.0, -2.0, -1.0, -1.0};
    tokug *u = mk_ug(p1, s1, 6, 0, 0);
    EXPECT_IDS(u, "ab", 3);
    /* "abc": end 3 from start 1 via "bc": best[1] (−1) − 1 = −2; from start 2 via "c":
     * best[2] = −2 ("ab") − 1 = −3 → [a, bc] = [1, 4]. */
    EXPECT_IDS(u, "abc", 1, 4);
    tokug_destroy(u);

    /* Now make "ab" and "bc" tie at −1 each with "a","c" −1: "abc" = ab+c (−2, reached from
     * start 2) vs a+bc (−2, reached from start 1, found FIRST): a+bc kept → [1, 4]. */
    const double s2[] = {0.0, -1.0, -1.5, -1.0, -1.0, -1.0};
    u = mk_ug(p1, s2, 6, 0, 0);
    EXPECT_IDS(u, "abc", 1, 4);
    /* "ab": "ab" −1 beats a+b −2.5 → [3]. */
    EXPECT_IDS(u, "ab", 3);
    tokug_destroy(u);
}
END_TEST

START_TEST(test_ug_unk)
{
    /* ids: 0 <unk> 0, 1 "a" −1, 2 "b" −2; min −2 → unk score −12. 'x','y','z' have no piece. */
    const char *p[] = {"<unk>", "a", "b", "<0x78>", "<0x79>"};
    const double s[] = {0.0, -1.0, -2.0, -3.0, -3.0};
    tokug *u = mk_ug(p, s, 3, 0, 0);
    EXPECT_IDS(u, "axyb", 1, 0, 2); /* x,y fused into ONE unk */
    EXPECT_IDS(u, "xay", 0, 1, 0);
    EXPECT_IDS(u, "xyz", 0);
    EXPECT_IDS(u, "\xE4\xB8\xAD\xE6\x96\x87", 0); /* 中文: two 3-byte unknown chars, one unk */
    tok_ids none = {0};
    ck_assert_int_eq(tokug_encode(u, "", 0, &none), 0);
    ck_assert_uint_eq(none.n, 0);
    /* Invalid UTF-8: error, and out->n unchanged. */
    tok_ids got = {0};
    ck_assert_int_eq(tokug_encode(u, "ab", 2, &got), 0);
    ck_assert_int_eq(tokug_encode(u, "a\xC3", 2, &got), LR_EINVAL);
    ck_assert_uint_eq(got.n, 2);
    free(got.v);
    tokug_destroy(u);

    /* byte_fallback with <0x78> (x) and <0x79> (y): the fused run "xy" becomes bytes; "xz" does
     * not have all its bytes → one unk. */
    u = mk_ug(p, s, 5, 0, 1);
    EXPECT_IDS(u, "axyb", 1, 3, 4, 2);
    EXPECT_IDS(u, "axzb", 1, 0, 2);
    tokug_destroy(u);

    /* No unk id: an unknown character is an error. */
    u = mk_ug(p, s, 3, -1, 0);
    EXPECT_IDS(u, "ab", 1, 2);
    ck_assert_int_eq(tokug_encode(u, "axb", 3, &none), LR_EINVAL);
    ck_assert_uint_eq(none.n, 0);
    free(none.v);
    tokug_destroy(u);

    /* HF quirk: a fused unk run is looked up as a piece. Scores positive: "xy" 30 is min → unk
     * score 20; unk(x)+unk(y) = 40 > 30 so the unk path wins, and its text "xy" IS a piece → [1].
     */
    const char *q[] = {"<unk>", "xy"};
    const double qs[] = {50.0, 30.0};
    u = mk_ug(q, qs, 2, 0, 0);
    EXPECT_IDS(u, "xy", 1);
    tokug_destroy(u);

    /* Duplicates resolve to the last id (HF's HashMap insert), with that id's score. */
    const char *d[] = {"<unk>", "a", "a"};
    const double ds[] = {0.0, -1.0, -2.0};
    u = mk_ug(d, ds, 3, 0, 0);
    EXPECT_IDS(u, "aa", 2, 2);
    ck_assert_int_eq(tokug_piece_id(u, "a", 1), 2);
    ck_assert_int_eq(tokug_piece_id(u, "b", 1), -1);
    tokug_destroy(u);

    /* An empty piece never matches and does not disturb the others. */
    const char *ep[] = {"<unk>", "", "a"};
    u = mk_ug(ep, ds, 3, 0, 0);
    EXPECT_IDS(u, "aba", 2, 0, 2);
    ck_assert_int_eq(tokug_piece_id(u, "", 0), -1);
    tokug_destroy(u);

    /* Bad vocabularies. */
    lr_error err = {0};
    const char *bad[] = {"<unk>", "\xC3"};
    const double bs[] = {0.0, NAN};
    ck_assert_int_eq(tokug_create(bad, ds, 2, 0, 0, &err, &u), LR_EFORMAT);
    ck_assert_int_eq(tokug_create(p, bs, 2, 0, 0, &err, &u), LR_EFORMAT);
    ck_assert_int_eq(tokug_create(p, s, 3, 3, 0, &err, &u), LR_EINVAL);
    ck_assert_int_eq(tokug_create(p, s, 0, 0, 0, &err, &u), LR_EINVAL);
    tokug_destroy(NULL);
}
END_TEST

/* ---- Unigram vs brute force ---------------------------------------------------------------- */

/* Every segmentation of w[0:len] into lattice nodes (a piece, or a one-char unk node where no
 * one-char piece starts), its score, and its ids after fusing unk runs and HF's string lookup.
 * Collects the id sequences of all segmentations within 1e-9 of the best score. */
typedef struct bf {
    const char *const *pieces;
    const double *scores;
    int n;
    double unk_score;
    const char *w;
    size_t len;
    int seg_start[32], seg_id[32]; /* current path: node starts and ids (−1 = unk) */
    double best;
    int32_t opt[64][32]; /* optimal id sequences */
    int opt_n[64], n_opt;
} bf;

static int bf_lookup(const bf *b, const char *s, size_t len)
{
    int id = -1;
    for (int i = 0; i < b->n; i++)
        if (strlen(b->pieces[i]) == len && memcmp(b->pieces[i], s, len) == 0)
            id = i; /* last wins */
    return id;
}

static void bf_walk(bf *b, size_t pos, int k, double sc)
{
    if (pos == b->len) {
        int32_t ids[32];
        int m = 0;
        for (int i = 0; i < k; i++) {
            if (b->seg_id[i] != 0) {
                ids[m++] = b->seg_id[i];
                continue;
            }
            int j = i;
            while (j + 1 < k && b->seg_id[j + 1] == 0)
                j++;
            size_t e = j + 1 < k ? (size_t)b->seg_start[j + 1] : b->len;
            int id = bf_lookup(b, b->w + b->seg_start[i], e - (size_t)b->seg_start[i]);
            ids[m++] = id >= 0 ? id : 0;
            i = j;
        }
        if (sc > b->best + 1e-9) b->n_opt = 0, b->best = sc;
        if (sc >= b->best - 1e-9 && b->n_opt < 64) {
            memcpy(b->opt[b->n_opt], ids, (size_t)m * sizeof ids[0]);
            b->opt_n[b->n_opt++] = m;
        }
        return;
    }
    int single = 0;
    for (int i = 1; i < b->n; i++) { /* id 0 is <unk>, spelled "<unk>": never in these words */
        size_t l = strlen(b->pieces[i]);
        if (l == 0 || pos + l > b->len || memcmp(b->w + pos, b->pieces[i], l) != 0) continue;
        if (bf_lookup(b, b->pieces[i], l) != i) continue; /* a shadowed duplicate */
        single |= (l == 1);
        b->seg_start[k] = (int)pos;
        b->seg_id[k] = i;
        bf_walk(b, pos + l, k + 1, sc + b->scores[i]);
    }
    if (!single) {
        b->seg_start[k] = (int)pos;
        b->seg_id[k] = 0;
        bf_walk(b, pos + 1, k + 1, sc + b->unk_score);
    }
}

START_TEST(test_ug_bruteforce)
{
    uint64_t rng = 0x1234567ull;
#define RND() (rng = rng * 6364136223846793005ull + 1442695040888963407ull, (uint32_t)(rng >> 33))
    static char store[40][4];
    const char *pieces[40];
    double scores[40];
    for (int trial = 0; trial < 300; trial++) {
        /* Pieces of 1–3 letters over "abcd" ('d' never alone, so unknowns appear). */
        int n = 1 + (int)(RND() % 30);
        pieces[0] = "<unk>";
        scores[0] = 0.0;
        double min = 0.0;
        for (int i = 1; i < n; i++) {
            size_t l = 1 + RND() % 3;
            for (size_t j = 0; j < l; j++)
                store[i][j] = "abcd"[RND() % (l == 1 ? 3 : 4)];
            store[i][l] = '\0';
            pieces[i] = store[i];
            scores[i] = -(double)(RND() % 100000) / 7919.0;
            if (scores[i] < min) min = scores[i];
        }
        tokug *u = mk_ug(pieces, scores, n, 0, 0);
        for (int wi = 0; wi < 10; wi++) {
            char w[16];
            size_t len = 1 + RND() % 10;
            for (size_t j = 0; j < len; j++)
                w[j] = "abcd"[RND() % 4];
            w[len] = '\0';
            bf b = {.pieces = pieces,
                    .scores = scores,
                    .n = n,
                    .unk_score = min - 10.0,
                    .w = w,
                    .len = len,
                    .best = -INFINITY};
            bf_walk(&b, 0, 0, 0.0);
            tok_ids got = {0};
            ck_assert_int_eq(tokug_encode(u, w, len, &got), 0);
            int found = 0;
            for (int o = 0; o < b.n_opt && !found; o++)
                found = (size_t)b.opt_n[o] == got.n &&
                        memcmp(b.opt[o], got.v, got.n * sizeof got.v[0]) == 0;
            ck_assert_msg(found, "trial %d word \"%s\": Viterbi ids not among %d optimal paths",
                          trial, w, b.n_opt);
            free(got.v);
        }
        tokug_destroy(u);
    }
#undef RND
}
END_TEST

/* ---- big words ----------------------------------------------------------------------------- */

/* CPU time, not wall time: the bound is about our algorithm, not about how loaded the machine
 * running the tests is. */
static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

START_TEST(test_ug_large_word)
{
    t5 m = t5_load();
    size_t len = 1u << 20;
    char *w = malloc(len);
    /* 1 MiB of letters: "▁" + pseudo-random lowercase. */
    uint32_t r = 12345;
    memcpy(w, META, 3);
    for (size_t i = 3; i < len; i++) {
        r = r * 1103515245u + 12345u;
        w[i] = (char)('a' + (r >> 16) % 26);
    }
    tok_ids ids = {0};
    double t0 = now_s();
    ck_assert_int_eq(tokug_encode(m.ug, w, len, &ids), 0);
    double dt = now_s() - t0;
    fprintf(stderr, "check_tok_unigram: 1 MiB word → %zu ids in %.3f s CPU\n", ids.n, dt);
    ck_assert_msg(dt < 2.0, "1 MiB word took %.3f s", dt);
    /* Every letter is a T5 piece, so no unk, and the ids spell the word back. */
    size_t o = 0;
    for (size_t i = 0; i < ids.n; i++) {
        const char *piece = json_string_value(json_array_get(
            json_array_get(json_object_get(json_object_get(m.root, "model"), "vocab"),
                           (size_t)ids.v[i]),
            0));
        size_t l = strlen(piece);
        ck_assert_msg(o + l <= len && memcmp(w + o, piece, l) == 0, "id %zu does not spell", i);
        o += l;
    }
    ck_assert_uint_eq(o, len);
    free(ids.v);

    /* 1 MiB of one unknown CJK character repeated (中 is not a T5 piece): ONE fused unk. */
    size_t nch = len / 3;
    for (size_t i = 0; i < nch; i++)
        memcpy(w + 3 * i, "\xE4\xB8\xAD", 3);
    ids = (tok_ids){0};
    t0 = now_s();
    ck_assert_int_eq(tokug_encode(m.ug, w, 3 * nch, &ids), 0);
    dt = now_s() - t0;
    ck_assert_msg(dt < 2.0, "1 MiB unknown word took %.3f s", dt);
    ck_assert_uint_eq(ids.n, 1);
    ck_assert_int_eq(ids.v[0], 2);
    free(ids.v);

    /* And the normalizer over 1 MiB of mixed text. */
    for (size_t i = 0; i < len; i++)
        w[i] = "ab \r\n\tc"[i % 7];
    char *out;
    size_t n;
    t0 = now_s();
    ck_assert_int_eq(tokpc_normalize(m.pc, w, len, &out, &n), 0);
    dt = now_s() - t0;
    ck_assert_msg(dt < 2.0, "normalizing 1 MiB took %.3f s", dt);
    free(out);
    free(w);
    t5_free(&m);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("tok_unigram");
    struct {
        const char *name;
        const TTest *test;
    } cases[] = {
        {"t5_expected_ids", test_t5_expected_ids},
        {"t5_tokgold", test_t5_tokgold},
        {"t5_charsmap_rules", test_t5_charsmap_rules},
        {"precompiled_rules", test_pc_tiny_rules},
        {"precompiled_hostile", test_pc_hostile},
        {"unigram_ties", test_ug_ties},
        {"unigram_unk", test_ug_unk},
        {"unigram_bruteforce", test_ug_bruteforce},
        {"unigram_large_word", test_ug_large_word},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        TCase *tc = tcase_create(cases[i].name);
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, cases[i].test);
        suite_add_tcase(s, tc);
    }
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
