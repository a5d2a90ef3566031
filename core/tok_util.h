/* tok_util.h — small building blocks shared by the tokenizer modules.
 *
 * A growable byte buffer, an open-addressing string→id map and a pair→(rank,id) map, UTF-8
 * decoding/validation, Rust's from_utf8_lossy, and the Unicode character classes that the HF
 * tokenizers library takes from Rust's char methods (is_whitespace, is_numeric, …).
 * Nothing here knows tokenizer.json.
 */
#ifndef LR_TOK_UTIL_H
#define LR_TOK_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

/* A growable byte buffer; always NUL-terminated once non-empty. Start from {0}; free(b.p). */
typedef struct tok_buf {
    char *p;
    size_t n, cap;
} tok_buf;

int tokbuf_reserve(tok_buf *b, size_t extra); /* 0 or LR_ENOMEM */
int tokbuf_put(tok_buf *b, const char *s, size_t n);
int tokbuf_putc(tok_buf *b, char c);
int tokbuf_put_cp(tok_buf *b, uint32_t cp); /* UTF-8 encode one code point */

/* Append id to v. 0 or LR_ENOMEM. */
int tokids_push(tok_ids *v, int32_t id);

/* String → int32 map. Keys are copied into one pool owned by the map; no per-key malloc.
 * Inserting an existing key overwrites its value (HF's HashMap collect semantics). */
typedef struct tok_strmap {
    uint32_t *slots; /* (cap) index+1 into ent, 0 = empty */
    struct tok_strent {
        size_t off;   /* key offset in pool */
        uint32_t len; /* key length */
        int32_t val;
    } * ent;
    size_t n, ent_cap, cap;
    tok_buf pool;
} tok_strmap;

int tokmap_put(tok_strmap *m, const char *key, size_t len, int32_t val); /* 0 or LR_ENOMEM */
/* The value of key, or -1. */
int32_t tokmap_get(const tok_strmap *m, const char *key, size_t len);
void tokmap_free(tok_strmap *m);

/* (a,b) → (rank, id) map for BPE merges; overwrite on duplicate keys. */
typedef struct tok_pairmap {
    struct tok_pairent {
        uint64_t key; /* (a << 32 | b) + 1; 0 = empty */
        int32_t rank, id;
    } * slots;
    size_t n, cap;
} tok_pairmap;

int tokpair_put(tok_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t id);
/* 1 and *rank and *id if present, else 0. */
int tokpair_get(const tok_pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *id);
void tokpair_free(tok_pairmap *m);

/* Decode one code point of VALID UTF-8 at s (n > 0 bytes left); returns its byte length. */
int tok_utf8_next(const char *s, size_t n, uint32_t *cp);
/* Length of the UTF-8 sequence at s if it is valid (1..4), else 0. */
int tok_utf8_valid_at(const unsigned char *s, size_t n);
int tok_utf8_valid(const char *s, size_t n); /* 1 if the whole string is valid UTF-8 */
/* Append s as Rust's String::from_utf8_lossy would render it: every maximal invalid
 * subsequence becomes one U+FFFD. */
int tok_utf8_lossy(tok_buf *out, const char *s, size_t n);

int tok_is_whitespace(uint32_t cp); /* Unicode White_Space (Rust char::is_whitespace) */
int tok_is_numeric(uint32_t cp);    /* general category N* (Rust char::is_numeric) */
int tok_is_alnum(uint32_t cp);      /* alphabetic (L*, Nl) or N* (approximates Rust) */
int tok_is_word(uint32_t cp);       /* \w: L*, M*, Nd, Pc (regex crate's \w, approximately) */
int tok_is_punct(uint32_t cp);      /* ASCII punctuation or P* (HF is_punc) */
int tok_is_mark_nonspacing(uint32_t cp);

#endif
