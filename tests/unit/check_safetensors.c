/* check_safetensors.c — the strict safetensors reader against hand-built files.
 *
 * Files are assembled here byte by byte (8-byte little-endian length, header text, data) by a
 * writer that shares nothing with the reader, so a good file's round trip and every hostile
 * file's refusal are checked against what the format says, not against the reader itself.
 */
#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "safetensors.h"

/* ---- a tiny independent writer ---------------------------------------------------------- */

/* Build [N as u64 LE][header padded with spaces to pad bytes (0 = no padding)][data]. */
static uint8_t *build(const char *hdr, size_t pad, const void *data, size_t dlen, size_t *len)
{
    size_t h = strlen(hdr);
    size_t n = pad > h ? pad : h;
    *len = 8 + n + dlen;
    uint8_t *b = malloc(*len ? *len : 1);
    ck_assert_ptr_nonnull(b);
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)((uint64_t)n >> (8 * i));
    memcpy(b + 8, hdr, h);
    memset(b + 8 + h, ' ', n - h);
    if (dlen) memcpy(b + 8 + n, data, dlen);
    return b;
}

/* Build a file whose header length field is `n` regardless of what follows. */
static uint8_t *raw_len(uint64_t n, const char *rest, size_t *len)
{
    size_t r = strlen(rest);
    *len = 8 + r;
    uint8_t *b = malloc(*len);
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(n >> (8 * i));
    memcpy(b + 8, rest, r);
    return b;
}

static void write_file(const char *path, const void *buf, size_t len)
{
    FILE *fp = fopen(path, "wb");
    ck_assert_ptr_nonnull(fp);
    if (len) ck_assert_uint_eq(fwrite(buf, 1, len, fp), len);
    fclose(fp);
}

/* Expect st_open_mem to refuse buf with code and a message containing `needle`. */
static void expect_fail(const uint8_t *buf, size_t len, int code, const char *needle)
{
    lr_error e;
    lr_error_clear(&e);
    st_file *f = (st_file *)1;
    int rc = st_open_mem(buf, len, "bad.safetensors", &e, &f);
    ck_assert_msg(rc == code, "expected code %d, got %d (%s) for needle '%s'", code, rc, e.msg,
                  needle);
    ck_assert_ptr_null(f);
    ck_assert_msg(strncmp(e.msg, "bad.safetensors: ", 17) == 0, "message lacks file name: %s",
                  e.msg);
    ck_assert_msg(strstr(e.msg, needle) != NULL, "message '%s' lacks '%s'", e.msg, needle);
}

static void expect_fail_hdr(const char *hdr, const void *data, size_t dlen, const char *needle)
{
    size_t len;
    uint8_t *b = build(hdr, 0, data, dlen, &len);
    expect_fail(b, len, LR_EFORMAT, needle);
    free(b);
}

/* ---- good files ------------------------------------------------------------------------- */

/* A file with F32 [2,3], F16 [4], BF16 [2,1], I64 [1], a scalar F32 and an empty [0,3] tensor,
 * written in an order other than alphabetical, with __metadata__. */
static const char *GOOD_HDR =
    "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"x\"},"
    "\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
    "\"half\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[24,32]},"
    "\"bf\":{\"dtype\":\"BF16\",\"shape\":[2,1],\"data_offsets\":[32,36]},"
    "\"ids\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[36,44]},"
    "\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[44,48]},"
    "\"empty\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[48,48]}}";

static void good_data(uint8_t data[48])
{
    for (int i = 0; i < 48; i++)
        data[i] = (uint8_t)(i * 7 + 1);
}

static void check_good(const st_file *f, const uint8_t *data)
{
    ck_assert_int_eq(st_count(f), 6);
    /* st_at is in data order. */
    ck_assert_str_eq(st_at(f, 0)->name, "w");
    ck_assert_str_eq(st_at(f, 1)->name, "half");
    ck_assert_str_eq(st_at(f, 4)->name, "s");
    const st_tensor *w = st_find(f, "w");
    ck_assert_ptr_nonnull(w);
    ck_assert_int_eq(w->dtype, ST_F32);
    ck_assert_int_eq(w->ndim, 2);
    ck_assert_int_eq(w->shape[0], 2);
    ck_assert_int_eq(w->shape[1], 3);
    ck_assert_int_eq(w->numel, 6);
    ck_assert_uint_eq(w->nbytes, 24);
    ck_assert_int_eq(memcmp(w->data, data, 24), 0);
    const st_tensor *h = st_find(f, "half");
    ck_assert_int_eq(h->dtype, ST_F16);
    ck_assert_int_eq(memcmp(h->data, data + 24, 8), 0);
    const st_tensor *bf = st_find(f, "bf");
    ck_assert_int_eq(bf->dtype, ST_BF16);
    ck_assert_int_eq(memcmp(bf->data, data + 32, 4), 0);
    const st_tensor *ids = st_find(f, "ids");
    ck_assert_int_eq(ids->dtype, ST_I64);
    ck_assert(!st_tensor_is_float(ids));
    ck_assert(st_tensor_is_float(bf));
    const st_tensor *s = st_find(f, "s");
    ck_assert_int_eq(s->ndim, 0);
    ck_assert_int_eq(s->numel, 1);
    ck_assert_int_eq(memcmp(s->data, data + 44, 4), 0);
    const st_tensor *e = st_find(f, "empty");
    ck_assert_int_eq(e->numel, 0);
    ck_assert_uint_eq(e->nbytes, 0);
    ck_assert_ptr_null(e->data);
    ck_assert_ptr_null(st_find(f, "nope"));
    ck_assert_ptr_null(st_find(f, "__metadata__"));
    ck_assert_str_eq(st_metadata(f, "format"), "pt");
    ck_assert_str_eq(st_metadata(f, "note"), "x");
    ck_assert_ptr_null(st_metadata(f, "other"));
}

START_TEST(test_good_roundtrip)
{
    uint8_t data[48];
    good_data(data);
    size_t len;
    uint8_t *b = build(GOOD_HDR, 0, data, sizeof data, &len);
    lr_error e;
    st_file *f;
    ck_assert_int_eq(st_open_mem(b, len, "good.safetensors", &e, &f), 0);
    check_good(f, b + len - 48);
    ck_assert_str_eq(st_find(f, "w")->file, "good.safetensors");
    st_close(f);
    free(b);
    st_close(NULL);
}
END_TEST

START_TEST(test_good_padded_file)
{
    /* Space padding to a multiple of 8, as the reference writer does; and through a real file. */
    uint8_t data[48];
    good_data(data);
    size_t len, h = strlen(GOOD_HDR);
    uint8_t *b = build(GOOD_HDR, (h + 7) / 8 * 8 + 8, data, sizeof data, &len);
    char dir[] = "/tmp/check_st_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/x.safetensors", dir);
    write_file(path, b, len);
    lr_error e;
    st_file *f;
    ck_assert_msg(st_open(path, &e, &f) == 0, "%s", e.msg);
    ck_assert_str_eq(st_file_label(f), "x.safetensors");
    check_good(f, data);
    st_close(f);
    unlink(path);
    /* A missing file and a directory are clean errors. */
    ck_assert_int_eq(st_open(path, &e, &f), LR_ENOTFOUND);
    ck_assert_ptr_null(f);
    ck_assert_ptr_nonnull(strstr(e.msg, "x.safetensors"));
    ck_assert_int_eq(st_open(dir, &e, &f), LR_EIO);
    ck_assert_ptr_nonnull(strstr(e.msg, "not a regular file"));
    /* A FIFO is refused at once (a blocking open would wait for a writer: the timeout fails). */
    ck_assert_int_eq(mkfifo(path, 0600), 0);
    ck_assert_int_eq(st_open(path, &e, &f), LR_EIO);
    ck_assert_ptr_nonnull(strstr(e.msg, "not a regular file"));
    unlink(path);
    /* An empty real file (mmap of 0 bytes is impossible: must still be a clean error). */
    write_file(path, "", 0);
    ck_assert_int_eq(st_open(path, &e, &f), LR_EFORMAT);
    ck_assert_ptr_nonnull(strstr(e.msg, "empty"));
    unlink(path);
    rmdir(dir);
    free(b);
}
END_TEST

START_TEST(test_unaligned)
{
    /* Header of odd length: every F32 lands on an odd address. Values must read back exactly. */
    const char *hdr = "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]},"
                      "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}";
    float v[5] = {1.5f, -2.25f, 3.0e-38f, 1e30f, -0.0f};
    size_t len;
    uint8_t *b = build(hdr, strlen(hdr) | 1, v, sizeof v, &len);
    /* Shift the whole file by one byte in memory too, so the base is unaligned as well. */
    uint8_t *shifted = malloc(len + 1);
    memcpy(shifted + 1, b, len);
    st_file *f;
    lr_error e;
    ck_assert_msg(st_open_mem(shifted + 1, len, "u", &e, &f) == 0, "%s", e.msg);
    const st_tensor *a = st_find(f, "a"), *bb = st_find(f, "b");
    float got[5];
    memcpy(got, a->data, 12);
    memcpy(got + 3, bb->data, 8);
    ck_assert_int_eq(memcmp(got, v, sizeof v), 0);
    st_close(f);
    free(shifted);
    free(b);
}
END_TEST

START_TEST(test_unknown_dtypes_allowed)
{
    /* Every dtype spelling is accepted in a file (F4 needs an even count, F6 a multiple of 4). */
    const char *names[] = {"BOOL",        "U8",  "I8",      "I16",     "U16",     "I32",
                           "U32",         "I64", "U64",     "F16",     "BF16",    "F32",
                           "F64",         "C64", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F8_E4M3FNUZ",
                           "F8_E5M2FNUZ", "F4",  "F6_E2M3", "F6_E3M2"};
    const int bits[] = {8,  8,  8,  16, 16, 32, 32, 64, 64, 16, 16,
                        32, 64, 64, 8,  8,  8,  8,  8,  4,  6,  6};
    for (int i = 0; i < 22; i++) {
        char hdr[256];
        int bytes = 4 * bits[i] / 8; /* shape [4] */
        snprintf(hdr, sizeof hdr,
                 "{\"t\":{\"dtype\":\"%s\",\"shape\":[4],\"data_offsets\":[0,%d]}}", names[i],
                 bytes);
        uint8_t data[64] = {0};
        size_t len;
        uint8_t *b = build(hdr, 0, data, (size_t)bytes, &len);
        st_file *f;
        lr_error e;
        ck_assert_msg(st_open_mem(b, len, "d", &e, &f) == 0, "%s: %s", names[i], e.msg);
        ck_assert_int_eq(st_find(f, "t")->dtype, i);
        ck_assert_str_eq(st_dtype_name(i), names[i]);
        ck_assert_int_eq(st_dtype_bits(i), bits[i]);
        st_close(f);
        free(b);
    }
    ck_assert_str_eq(st_dtype_name(99), "?");
    ck_assert_int_eq(st_dtype_bits(-1), 0);
}
END_TEST

START_TEST(test_empty_header_object)
{
    /* "{}" padded: a valid file with no tensors. */
    size_t len;
    uint8_t *b = build("{}", 8, NULL, 0, &len);
    st_file *f;
    lr_error e;
    ck_assert_int_eq(st_open_mem(b, len, "e", &e, &f), 0);
    ck_assert_int_eq(st_count(f), 0);
    ck_assert_ptr_null(st_find(f, "x"));
    st_close(f);
    free(b);
}
END_TEST

/* ---- hostile files ---------------------------------------------------------------------- */

START_TEST(test_bad_lengths)
{
    size_t len;
    uint8_t *b;
    expect_fail((const uint8_t *)"", 0, LR_EFORMAT, "file is empty");
    expect_fail((const uint8_t *)"\x01\x02\x03", 3, LR_EFORMAT, "too short");
    b = raw_len(0, "{}", &len);
    expect_fail(b, len, LR_EFORMAT, "header length is 0");
    free(b);
    b = raw_len(1ull << 40, "{}", &len);
    expect_fail(b, len, LR_ETOOLARGE, "exceeds the limit");
    free(b);
    b = raw_len(100000001ull, "{}", &len);
    expect_fail(b, len, LR_ETOOLARGE, "100000001");
    free(b);
    b = raw_len(UINT64_MAX, "{}", &len); /* 8 + N would wrap without the limit check */
    expect_fail(b, len, LR_ETOOLARGE, "exceeds the limit");
    free(b);
    b = raw_len(100, "{\"a\":1}", &len);
    expect_fail(b, len, LR_EFORMAT, "runs past the end of the file");
    free(b);
}
END_TEST

START_TEST(test_bad_json)
{
    expect_fail_hdr("[1, 2]", NULL, 0, "does not start with '{'");
    expect_fail_hdr("  {}", NULL, 0, "does not start with '{'");
    expect_fail_hdr("{\"a\": ", NULL, 0, "not valid JSON");
    expect_fail_hdr("{abc}", NULL, 0, "not valid JSON");
    expect_fail_hdr("{} trailing", NULL, 0, "not valid JSON");
    /* Duplicate names. */
    expect_fail_hdr("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                    "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
                    "xy", 2, "duplicate");
    /* NUL inside the header and invalid UTF-8. */
    size_t len;
    uint8_t *b = build("{\"a\":{}}", 0, NULL, 0, &len);
    b[8 + 3] = '\0';
    expect_fail(b, len, LR_EFORMAT, "not valid JSON");
    b[8 + 3] = (char)0xff;
    expect_fail(b, len, LR_EFORMAT, "not valid JSON");
    free(b);
    /* Deep nesting must be refused without blowing the stack. */
    size_t depth = 200000;
    char *deep = malloc(depth + 8);
    memcpy(deep, "{\"a\":", 5);
    memset(deep + 5, '[', depth);
    deep[5 + depth] = '\0';
    b = build(deep, 0, NULL, 0, &len);
    expect_fail(b, len, LR_EFORMAT, "not valid JSON");
    free(b);
    free(deep);
}
END_TEST

START_TEST(test_bad_entries)
{
    uint8_t d[64] = {0};
    expect_fail_hdr("{\"a\":5}", NULL, 0, "tensor 'a': entry is not a JSON object");
    expect_fail_hdr("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", d, 4, "\"dtype\" is missing");
    expect_fail_hdr("{\"a\":{\"dtype\":\"F12\",\"shape\":[1],\"data_offsets\":[0,4]}}", d, 4,
                    "unknown dtype \"F12\"");
    expect_fail_hdr("{\"a\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", d, 4,
                    "unknown dtype \"f32\"");
    expect_fail_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":\"abc\",\"data_offsets\":[0,4]}}", d, 4,
                    "\"shape\" is missing or not an array");
    expect_fail_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", d, 4,
                    "shape[0] is not a non-negative integer");
    expect_fail_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[1, 2.0],\"data_offsets\":[0,8]}}", d, 8,
                    "shape[1] is not a non-negative integer");
    expect_fail_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", d, 4,
                    "shape[0] is not a non-negative integer");
    expect_fail_hdr("{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                    "\"data_offsets\":[0,1]}}",
                    d, 1, "rank 9 exceeds the limit of 8");
    expect_fail_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776],"
                    "\"data_offsets\":[0,4]}}",
                    d, 4, "overflows 64 bits");
    /* numel fits in 64 bits but numel*bits does not. */
    expect_fail_hdr("{\"a\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904],"
                    "\"data_offsets\":[0,4]}}",
                    d, 4, "overflows 64 bits");
    expect_fail_hdr("{\"a\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]}}", d, 2,
                    "not a whole number of bytes");
    expect_fail_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", d, 4,
                    "\"data_offsets\" must be two non-negative integers");
    expect_fail_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", d, 8,
                    "\"data_offsets\" must be two non-negative integers");
    expect_fail_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", d, 4,
                    "\"data_offsets\" must be two non-negative integers");
    expect_fail_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,0]}}", d, 4,
                    "end before they begin");
    expect_fail_hdr("{\"__metadata__\":{\"format\":1}}", NULL, 0,
                    "__metadata__ value of key 'format' is not a string");
    expect_fail_hdr("{\"__metadata__\":[1]}", NULL, 0, "__metadata__ is not a JSON object");
}
END_TEST

START_TEST(test_bad_sizes)
{
    uint8_t d[64] = {0};
    /* The exact message the task names. */
    size_t len;
    uint8_t *b = build("{\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[4],"
                       "\"data_offsets\":[0,12]}}",
                       0, d, 12, &len);
    lr_error e;
    st_file *f;
    ck_assert_int_eq(st_open_mem(b, len, "model.safetensors", &e, &f), LR_EFORMAT);
    ck_assert_str_eq(e.msg, "model.safetensors: tensor 'model.norm.weight': data_offsets [0, 12] "
                            "give 12 bytes but F32 [4] needs 16");
    free(b);
    /* Offsets past EOF. */
    expect_fail_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", d, 8,
                    "data runs past the end of the file");
    /* Huge offsets (past EOF, would overflow pointer arithmetic). */
    expect_fail_hdr("{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[9223372036854775807,"
                    "9223372036854775807]}}",
                    d, 0, "not 0");
    /* Trailing bytes. */
    expect_fail_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", d, 8,
                    "trailing bytes after the last tensor");
    /* First tensor not at 0. */
    expect_fail_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", d, 8,
                    "starts at byte 4, not 0");
    /* A hole and an overlap. */
    expect_fail_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                    "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
                    d, 12, "a hole");
    expect_fail_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                    "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                    d, 8, "an overlap");
    /* Two tensors sharing the same bytes. */
    expect_fail_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                    "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                    d, 4, "an overlap");
}
END_TEST

START_TEST(test_mutations)
{
    /* Deterministic random byte mutations of a good file: each must open cleanly or fail with
     * a message; when it opens, every tensor must lie inside the buffer (ASan checks reads). */
    uint8_t data[48];
    good_data(data);
    size_t len;
    uint8_t *good = build(GOOD_HDR, 0, data, sizeof data, &len);
    uint8_t *b = malloc(len);
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    int opened = 0, refused = 0;
    for (int it = 0; it < 20000; it++) {
        memcpy(b, good, len);
        int nmut = 1 + it % 4;
        for (int k = 0; k < nmut; k++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            size_t pos = (size_t)(seed >> 33) % len;
            const char repl[] = "0123456789[]{},\":-. eE";
            b[pos] = (seed >> 20 & 1) ? (uint8_t)(seed >> 40) : (uint8_t)repl[(seed >> 41) % 22];
        }
        size_t l = (it % 7 == 0) ? len - (size_t)(seed >> 50) % len : len;
        st_file *f;
        lr_error e;
        lr_error_clear(&e);
        int rc = st_open_mem(b, l, "m", &e, &f);
        if (rc == 0) {
            opened++;
            for (int i = 0; i < st_count(f); i++) {
                const st_tensor *t = st_at(f, i);
                if (t->nbytes) {
                    const uint8_t *p = t->data;
                    ck_assert(p >= b && p + t->nbytes <= b + l);
                }
            }
            st_close(f);
        } else {
            refused++;
            ck_assert(rc < 0);
            ck_assert(e.msg[0] != '\0');
        }
    }
    ck_assert_int_gt(refused, 1000);
    ck_assert_int_gt(opened, 0);
    free(b);
    free(good);
}
END_TEST

/* ---- sharded sets ----------------------------------------------------------------------- */

static char g_dir[64];

static void put(const char *name, const char *text)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    write_file(path, text, strlen(text));
}

static void put_st(const char *name, const char *hdr, const void *data, size_t dlen)
{
    size_t len;
    uint8_t *b = build(hdr, 0, data, dlen, &len);
    char path[256];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    write_file(path, b, len);
    free(b);
}

static void rm(const char *name)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    unlink(path);
}

static void set_setup(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/check_st_set_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(g_dir));
}

static void set_teardown(void)
{
    rm("model.safetensors");
    rm("model.safetensors.index.json");
    rm("model-00001-of-00002.safetensors");
    rm("model-00002-of-00002.safetensors");
    rmdir(g_dir);
}

static void expect_set_fail(int code, const char *needle)
{
    st_set *s = (st_set *)1;
    lr_error e;
    lr_error_clear(&e);
    int rc = st_set_open_dir(g_dir, &e, &s);
    ck_assert_msg(rc == code, "expected %d got %d (%s)", code, rc, e.msg);
    ck_assert_ptr_null(s);
    ck_assert_msg(strstr(e.msg, needle) != NULL, "message '%s' lacks '%s'", e.msg, needle);
}

START_TEST(test_set_single)
{
    expect_set_fail(LR_ENOTFOUND, "no model.safetensors");
    float v[3] = {1, 2, 3};
    put_st("model.safetensors",
           "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
           "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
           v, sizeof v);
    st_set *s;
    lr_error e;
    ck_assert_msg(st_set_open_dir(g_dir, &e, &s) == 0, "%s", e.msg);
    ck_assert_int_eq(st_set_count(s), 2);
    ck_assert_int_eq(st_set_nfiles(s), 1);
    ck_assert_str_eq(st_set_at(s, 0)->name, "a");
    ck_assert_str_eq(st_set_at(s, 1)->name, "b");
    const st_tensor *a = st_set_find(s, "a");
    float got[2];
    memcpy(got, a->data, 8);
    ck_assert(got[0] == 2.0f && got[1] == 3.0f);
    ck_assert_str_eq(a->file, "model.safetensors");
    ck_assert_ptr_null(st_set_find(s, "c"));
    st_set_close(s);
    st_set_close(NULL);
    /* A broken single file: the error names it. */
    put("model.safetensors", "garbage!garbage!");
    expect_set_fail(LR_ETOOLARGE, "model.safetensors: header length");
}
END_TEST

static const char *SHARD1 = "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                            "\"y\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}";
static const char *SHARD2 = "{\"z\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]}}";

START_TEST(test_set_sharded)
{
    float v1[2] = {10, 20};
    uint16_t v2[2] = {0x3f80, 0x4000};
    put_st("model-00001-of-00002.safetensors", SHARD1, v1, sizeof v1);
    put_st("model-00002-of-00002.safetensors", SHARD2, v2, sizeof v2);
    put("model.safetensors.index.json",
        "{\"metadata\":{\"total_size\":12},\"weight_map\":{"
        "\"x\":\"model-00001-of-00002.safetensors\",\"z\":\"model-00002-of-00002.safetensors\","
        "\"y\":\"model-00001-of-00002.safetensors\"}}");
    /* A stray model.safetensors is ignored when the index exists. */
    put("model.safetensors", "junk");
    st_set *s;
    lr_error e;
    ck_assert_msg(st_set_open_dir(g_dir, &e, &s) == 0, "%s", e.msg);
    ck_assert_int_eq(st_set_count(s), 3);
    ck_assert_int_eq(st_set_nfiles(s), 2);
    const st_tensor *y = st_set_find(s, "y"), *z = st_set_find(s, "z");
    float fy;
    memcpy(&fy, y->data, 4);
    ck_assert(fy == 20.0f);
    ck_assert_str_eq(y->file, "model-00001-of-00002.safetensors");
    ck_assert_str_eq(z->file, "model-00002-of-00002.safetensors");
    ck_assert_int_eq(memcmp(z->data, v2, 4), 0);
    st_set_close(s);

    /* A tensor missing from its named shard. */
    put("model.safetensors.index.json",
        "{\"weight_map\":{\"x\":\"model-00001-of-00002.safetensors\","
        "\"z\":\"model-00001-of-00002.safetensors\"}}");
    expect_set_fail(LR_EFORMAT, "tensor 'z' is mapped to shard model-00001-of-00002.safetensors, "
                                "which does not contain it");
    /* Shard names that leave the folder. */
    put("model.safetensors.index.json", "{\"weight_map\":{\"x\":\"../etc/passwd\"}}");
    expect_set_fail(LR_EFORMAT, "not a plain file name");
    put("model.safetensors.index.json", "{\"weight_map\":{\"x\":\"/etc/passwd\"}}");
    expect_set_fail(LR_EFORMAT, "not a plain file name");
    put("model.safetensors.index.json", "{\"weight_map\":{\"x\":\"..\"}}");
    expect_set_fail(LR_EFORMAT, "not a plain file name");
    put("model.safetensors.index.json", "{\"weight_map\":{\"x\":\"\"}}");
    expect_set_fail(LR_EFORMAT, "not a plain file name");
    put("model.safetensors.index.json", "{\"weight_map\":{\"x\":3}}");
    expect_set_fail(LR_EFORMAT, "is not a string");
    /* A missing shard, no weight_map, broken JSON, duplicate keys. */
    put("model.safetensors.index.json", "{\"weight_map\":{\"x\":\"model-9.safetensors\"}}");
    expect_set_fail(LR_ENOTFOUND, "model-9.safetensors");
    put("model.safetensors.index.json", "{\"metadata\":{}}");
    expect_set_fail(LR_EFORMAT, "\"weight_map\" is missing");
    put("model.safetensors.index.json", "[1,2]");
    expect_set_fail(LR_EFORMAT, "\"weight_map\" is missing");
    put("model.safetensors.index.json", "{\"weight_map\":");
    expect_set_fail(LR_EFORMAT, "model.safetensors.index.json: not valid JSON");
    put("model.safetensors.index.json",
        "{\"weight_map\":{\"x\":\"model-00001-of-00002.safetensors\","
        "\"x\":\"model-00001-of-00002.safetensors\"}}");
    expect_set_fail(LR_EFORMAT, "duplicate");
    /* A hostile shard: the message names the shard. */
    put("model-00002-of-00002.safetensors", "");
    put("model.safetensors.index.json",
        "{\"weight_map\":{\"z\":\"model-00002-of-00002.safetensors\"}}");
    expect_set_fail(LR_EFORMAT, "model-00002-of-00002.safetensors: file is empty");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("good");
    tcase_add_test(tc, test_good_roundtrip);
    tcase_add_test(tc, test_good_padded_file);
    tcase_add_test(tc, test_unaligned);
    tcase_add_test(tc, test_unknown_dtypes_allowed);
    tcase_add_test(tc, test_empty_header_object);
    suite_add_tcase(s, tc);
    tc = tcase_create("hostile");
    tcase_add_test(tc, test_bad_lengths);
    tcase_add_test(tc, test_bad_json);
    tcase_add_test(tc, test_bad_entries);
    tcase_add_test(tc, test_bad_sizes);
    tcase_add_test(tc, test_mutations);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);
    tc = tcase_create("sharded");
    tcase_add_checked_fixture(tc, set_setup, set_teardown);
    tcase_add_test(tc, test_set_single);
    tcase_add_test(tc, test_set_sharded);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
