/* fuzz_precompiled.c — libFuzzer target: the SentencePiece Precompiled charsmap (tok_precompiled).
 *
 * Input layout: byte 0 = mode, bytes 1-2 = n (little endian), then n bytes of charsmap, then the
 * text to normalize. Mode bit 0 clear: the n bytes are the RAW charsmap and this target base64-
 * encodes them (so the fuzzer works on the trie itself); set: the n bytes are passed as the
 * base64 string (to fuzz the decoder). An accepted charsmap must normalize any text without
 * reading outside its data, and its output must be valid UTF-8 when the input is.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tok_precompiled.h"

int fuzz_precompiled_one(const uint8_t *data, size_t size);

static char *b64(const uint8_t *s, size_t n)
{
    static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *o = malloc((n + 2) / 3 * 4 + 1), *p = o;
    if (!o)
        return NULL;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)s[i + 1] << 8;
        if (i + 2 < n)
            v |= s[i + 2];
        *p++ = al[v >> 18 & 63];
        *p++ = al[v >> 12 & 63];
        *p++ = i + 1 < n ? al[v >> 6 & 63] : '=';
        *p++ = i + 2 < n ? al[v & 63] : '=';
    }
    *p = '\0';
    return o;
}

/* Independent UTF-8 check (RFC 3629: no overlongs, no surrogates, <= U+10FFFF). */
static int utf8_ok(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t k;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            k = 1, cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            k = 2, cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            k = 3, cp = c & 0x07;
        } else {
            return 0;
        }
        for (size_t j = 1; j <= k; j++) {
            if (i + j >= n || (s[i + j] & 0xC0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i + j] & 0x3F);
        }
        if ((k == 2 && cp < 0x800) || (k == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += k + 1;
    }
    return 1;
}

int fuzz_precompiled_one(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    int mode = data[0];
    size_t n = (size_t)data[1] | (size_t)data[2] << 8;
    if (n > size - 3)
        n = size - 3;
    const uint8_t *cm = data + 3, *text = data + 3 + n;
    size_t tlen = size - 3 - n;
    char *s;
    if (mode & 1) {
        s = malloc(n + 1);
        if (!s)
            return 0;
        memcpy(s, cm, n);
        s[n] = '\0';
    } else {
        s = b64(cm, n);
        if (!s)
            return 0;
    }
    lr_error err;
    memset(&err, 0, sizeof err);
    tokpc *p = NULL;
    if (tokpc_create(mode & 2 ? NULL : s, &err, &p) == 0) {
        char *in = malloc(tlen ? tlen : 1), *out = NULL;
        size_t out_len = 0;
        if (in) {
            memcpy(in, text, tlen);
            int rc = tokpc_normalize(p, in, tlen, &out, &out_len);
            if (rc == 0) {
                if (!out || out[out_len] != '\0' || !utf8_ok((const uint8_t *)out, out_len))
                    abort();
                if (!utf8_ok(text, tlen))
                    abort(); /* invalid input must be refused, not normalized */
            } else if (out || utf8_ok(text, tlen)) {
                abort(); /* valid UTF-8 must normalize; a failure leaves *out NULL */
            }
            free(out);
            free(in);
        }
        tokpc_destroy(p);
    } else if (err.msg[0] == 0) {
        abort();
    }
    free(s);
    return 0;
}

/* The libFuzzer entry points (tests/fuzz/run.sh builds with -DLR_LIBFUZZER); check_regress calls
 * fuzz_precompiled_one directly. */
#ifdef LR_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_precompiled_one(data, size);
}
#endif
