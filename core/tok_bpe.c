/* tok_bpe.c — HF BPE: vocabulary and merges in hash maps, merging with a priority queue.
 *
 * merge_word (tokenizers models/bpe/model.rs) turns a word into one symbol per char (or per
 * byte with byte_fallback, or fused <unk> runs); merge_all (word.rs) then repeatedly applies
 * the adjacent pair with the lowest rank, leftmost first. A priority queue holds (rank, pos,
 * new_id) candidates with lazy invalidation: a popped candidate is applied only if its left
 * symbol is still alive and the current pair there still merges to the same id. The queue keeps
 * one bucket per rank (positions in increasing order) and a heap over the ranks, so a push or
 * pop is O(1) plus O(log #ranks): O(n log n) per word at worst, and
 * Llama-2 legacy mode (a whole segment is one word) stays linear-ish on megabyte inputs.
 * Not here: dropout (refused at load), offsets, the word cache.
 */
#include "tok_bpe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tok_bpe {
    tok_strmap vocab;   /* piece → id */
    int32_t *id_ent;    /* (n_ids) index into vocab.ent, -1 = no piece */
    int32_t n_ids;      /* max id + 1 */
    tok_pairmap merges; /* (a, b) → (rank, merged id) */
    int32_t unk_id;     /* -1: no unk token */
    int byte_fallback, fuse_unk, ignore_merges;
    char *prefix, *suffix; /* continuing_subword_prefix / end_of_word_suffix or NULL */
    int32_t byte_id[256];  /* id of "<0xHH>" or -1 */
};

void tokbpe_scratch_free(tok_bpe_scratch *s)
{
    free(s->sym);
    free(s->cand);
    free(s->bk);
    free(s->rheap);
    free(s->table);
    free(s->heap);
    free(s->tmp.p);
    memset(s, 0, sizeof *s);
}

void tokbpe_destroy(tok_bpe *b)
{
    if (!b) return;
    tokmap_free(&b->vocab);
    tokpair_free(&b->merges);
    free(b->id_ent);
    free(b->prefix);
    free(b->suffix);
    free(b);
}

static int opt_string(const json_t *o, const char *key, const char *file, lr_error *err, char **out)
{
    const json_t *v = json_object_get(o, key);
    *out = NULL;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_string(v))
        return lr_error_set(err, LR_EFORMAT, "%s: BPE field '%s' must be a string or null", file,
                            key);
    if (json_string_length(v) == 0) /* "" behaves exactly like null */
        return 0;
    *out = strdup(json_string_value(v));
    return *out ? 0 : lr_error_set(err, LR_ENOMEM, "%s: out of memory", file);
}

static int opt_bool(const json_t *o, const char *key, int dflt)
{
    const json_t *v = json_object_get(o, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

/* Split one merge entry into its two pieces (pointers into the JSON strings). */
static int merge_parts(const json_t *m, const char **a, size_t *al, const char **b, size_t *bl)
{
    if (json_is_string(m)) {
        const char *s = json_string_value(m);
        size_t n = json_string_length(m);
        const char *sp = memchr(s, ' ', n);
        if (!sp) return -1;
        *a = s;
        *al = (size_t)(sp - s);
        *b = sp + 1;
        *bl = n - *al - 1;
        return memchr(*b, ' ', *bl) ? -1 : 0;
    }
    if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
        json_is_string(json_array_get(m, 1))) {
        *a = json_string_value(json_array_get(m, 0));
        *al = json_string_length(json_array_get(m, 0));
        *b = json_string_value(json_array_get(m, 1));
        *bl = json_string_length(json_array_get(m, 1));
        return 0;
    }
    return -1;
}

int tokbpe_load(const json_t *model, const char *file, lr_error *err, tok_bpe **out)
{
    int rc = 0;
    tok_bpe *b = calloc(1, sizeof *b);
    tok_buf tmp = {0};
    if (!b) return lr_error_set(err, LR_ENOMEM, "%s: out of memory", file);
    b->unk_id = -1;
    const json_t *dropout = json_object_get(model, "dropout");
    if (dropout && !json_is_null(dropout) &&
        !(json_is_number(dropout) && json_number_value(dropout) == 0.0)) {
        rc = lr_error_set(err, LR_EUNSUPPORTED,
                          "%s: BPE dropout is not supported (it makes ids random)", file);
        goto out;
    }
    b->byte_fallback = opt_bool(model, "byte_fallback", 0);
    b->fuse_unk = opt_bool(model, "fuse_unk", 0);
    b->ignore_merges = opt_bool(model, "ignore_merges", 0);
    if ((rc = opt_string(model, "continuing_subword_prefix", file, err, &b->prefix)) ||
        (rc = opt_string(model, "end_of_word_suffix", file, err, &b->suffix)))
        goto out;

    const json_t *vocab = json_object_get(model, "vocab");
    if (!json_is_object(vocab)) {
        rc = lr_error_set(err, LR_EFORMAT, "%s: BPE model has no 'vocab' object", file);
        goto out;
    }
    size_t nv = json_object_size(vocab);
    const char *key;
    json_t *val;
    int64_t max_id = -1;
    json_object_foreach((json_t *)vocab, key, val)
    {
        json_int_t id = json_is_integer(val) ? json_integer_value(val) : -1;
        /* Ids must be dense-ish: a hostile id of 2^31 would size the reverse table. */
        if (id < 0 || id > (json_int_t)nv + (1 << 20)) {
            rc = lr_error_set(err, LR_EFORMAT, "%s: vocab entry '%.100s' has an invalid id", file,
                              key);
            goto out;
        }
        if (tokmap_put(&b->vocab, key, strlen(key), (int32_t)id)) goto oom;
        if (id > max_id) max_id = id;
    }
    b->n_ids = (int32_t)(max_id + 1);
    b->id_ent = malloc(((size_t)b->n_ids + 1) * sizeof *b->id_ent);
    if (!b->id_ent) goto oom;
    for (int32_t i = 0; i < b->n_ids; i++)
        b->id_ent[i] = -1;
    for (size_t i = 0; i < b->vocab.n; i++) {
        int32_t id = b->vocab.ent[i].val;
        if (b->id_ent[id] < 0) b->id_ent[id] = (int32_t)i;
    }
    for (int i = 0; i < 256; i++) {
        char hb[8];
        snprintf(hb, sizeof hb, "<0x%02X>", i);
        b->byte_id[i] = tokmap_get(&b->vocab, hb, 6);
    }

    const json_t *unk = json_object_get(model, "unk_token");
    if (unk && !json_is_null(unk)) {
        if (!json_is_string(unk)) {
            rc = lr_error_set(err, LR_EFORMAT, "%s: BPE unk_token must be a string", file);
            goto out;
        }
        /* HF fails at encode time when the unk token is missing; we fail at load. */
        b->unk_id = tokmap_get(&b->vocab, json_string_value(unk), json_string_length(unk));
        if (b->unk_id < 0) {
            rc = lr_error_set(err, LR_EFORMAT, "%s: BPE unk_token '%.100s' is not in the vocab",
                              file, json_string_value(unk));
            goto out;
        }
    }

    const json_t *merges = json_object_get(model, "merges");
    if (merges && !json_is_array(merges)) {
        rc = lr_error_set(err, LR_EFORMAT, "%s: BPE 'merges' must be an array", file);
        goto out;
    }
    size_t plen = b->prefix ? strlen(b->prefix) : 0;
    for (size_t i = 0; i < json_array_size(merges); i++) {
        const json_t *m = json_array_get(merges, i);
        const char *pa, *pb;
        size_t la, lb;
        if (json_is_string(m) && strncmp(json_string_value(m), "#version", 8) == 0) continue;
        /* HF reads either all "a b" strings or all [a, b] pairs, never a mix. */
        if (json_is_array(m) != json_is_array(json_array_get(merges, 0))) {
            rc = lr_error_set(err, LR_EFORMAT,
                              "%s: BPE merge %zu mixes \"a b\" strings and [\"a\", \"b\"] pairs",
                              file, i);
            goto out;
        }
        if (merge_parts(m, &pa, &la, &pb, &lb)) {
            rc = lr_error_set(err, LR_EFORMAT,
                              "%s: BPE merge %zu is neither \"a b\" nor [\"a\", \"b\"]", file, i);
            goto out;
        }
        int32_t ia = tokmap_get(&b->vocab, pa, la), ib = tokmap_get(&b->vocab, pb, lb);
        if (ia < 0 || ib < 0) {
            rc = lr_error_set(err, LR_EFORMAT, "%s: BPE merge %zu: '%.*s' is not in the vocab",
                              file, i, (int)(ia < 0 ? la : lb), ia < 0 ? pa : pb);
            goto out;
        }
        /* The merged token is a + b without b's continuing-subword prefix. */
        size_t cut = plen && lb >= plen && memcmp(pb, b->prefix, plen) == 0 ? plen : 0;
        tmp.n = 0;
        if (tokbuf_put(&tmp, pa, la) || tokbuf_put(&tmp, pb + cut, lb - cut)) goto oom;
        int32_t id = tokmap_get(&b->vocab, tmp.p, tmp.n);
        if (id < 0) {
            rc = lr_error_set(err, LR_EFORMAT, "%s: BPE merge %zu: '%.*s' is not in the vocab",
                              file, i, (int)(tmp.n > 100 ? 100 : tmp.n), tmp.p);
            goto out;
        }
        if (tokpair_put(&b->merges, ia, ib, (int32_t)i, id)) goto oom;
    }
    free(tmp.p);
    *out = b;
    return 0;
oom:
    rc = lr_error_set(err, LR_ENOMEM, "%s: out of memory loading the BPE model", file);
out:
    free(tmp.p);
    tokbpe_destroy(b);
    return rc;
}

int32_t tokbpe_piece_id(const tok_bpe *b, const char *s, size_t len)
{
    return tokmap_get(&b->vocab, s, len);
}

const char *tokbpe_id_piece(const tok_bpe *b, int32_t id)
{
    if (id < 0 || id >= b->n_ids || b->id_ent[id] < 0) return NULL;
    return b->vocab.pool.p + b->vocab.ent[b->id_ent[id]].off;
}

int32_t tokbpe_max_id(const tok_bpe *b)
{
    return b->n_ids - 1;
}
size_t tokbpe_vocab_count(const tok_bpe *b)
{
    return b->vocab.n;
}

/* ---- the merge queue: buckets by rank, a heap over ranks -------------------------------- */

static uint32_t rank_hash(int32_t r)
{
    return (uint32_t)r * 2654435761u;
}

static void rheap_down(tok_bpe_scratch *q, size_t i)
{
    int32_t *h = q->rheap;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < q->rheap_n && q->bk[h[l]].rank < q->bk[h[m]].rank) m = l;
        if (r < q->rheap_n && q->bk[h[r]].rank < q->bk[h[m]].rank) m = r;
        if (m == i) return;
        int32_t t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

static int rheap_push(tok_bpe_scratch *q, int32_t bi)
{
    if (q->rheap_n == q->rheap_cap) {
        size_t c = q->rheap_cap ? q->rheap_cap * 2 : 64;
        void *p = realloc(q->rheap, c * sizeof *q->rheap);
        if (!p) return LR_ENOMEM;
        q->rheap = p;
        q->rheap_cap = c;
    }
    int32_t *h = q->rheap;
    size_t i = q->rheap_n++;
    h[i] = bi;
    while (i > 0 && q->bk[h[(i - 1) / 2]].rank > q->bk[h[i]].rank) {
        int32_t t = h[i];
        h[i] = h[(i - 1) / 2];
        h[(i - 1) / 2] = t;
        i = (i - 1) / 2;
    }
    return 0;
}

/* Empty the queue for the next word: clear only the table slots in use. */
static void q_reset(tok_bpe_scratch *q)
{
    for (size_t i = 0; i < q->bk_used; i++)
        q->table[q->bk[i].slot] = 0;
    q->bk_used = 0;
    q->rheap_n = 0;
    q->cand_n = 0;
}

static int q_grow_table(tok_bpe_scratch *q)
{
    size_t cap = q->table_cap ? q->table_cap * 2 : 256;
    int32_t *t = calloc(cap, sizeof *t);
    if (!t) return LR_ENOMEM;
    for (size_t i = 0; i < q->bk_used; i++) {
        size_t h = rank_hash(q->bk[i].rank) & (cap - 1);
        while (t[h])
            h = (h + 1) & (cap - 1);
        t[h] = (int32_t)i + 1;
        q->bk[i].slot = (uint32_t)h;
    }
    free(q->table);
    q->table = t;
    q->table_cap = cap;
    return 0;
}

static int q_push(tok_bpe_scratch *q, int32_t rank, int32_t pos, int32_t id)
{
    if ((q->bk_used + 1) * 2 > q->table_cap && q_grow_table(q)) return LR_ENOMEM;
    size_t h = rank_hash(rank) & (q->table_cap - 1);
    while (q->table[h] && q->bk[q->table[h] - 1].rank != rank)
        h = (h + 1) & (q->table_cap - 1);
    int32_t bi;
    if (q->table[h]) {
        bi = q->table[h] - 1;
    } else {
        if (q->bk_used == q->bk_cap) {
            size_t c = q->bk_cap ? q->bk_cap * 2 : 64;
            struct tok_bucket *p = realloc(q->bk, c * sizeof *p);
            if (!p) return LR_ENOMEM;
            q->bk = p;
            q->bk_cap = c;
        }
        bi = (int32_t)q->bk_used++;
        q->bk[bi] = (struct tok_bucket){-1, -1, rank, (uint32_t)h, 1};
        q->table[h] = bi + 1;
    }
    if (q->cand_n == q->cand_cap) {
        size_t c = q->cand_cap ? q->cand_cap * 2 : 1024;
        void *p = realloc(q->cand, c * sizeof *q->cand);
        if (!p) return LR_ENOMEM;
        q->cand = p;
        q->cand_cap = c;
    }
    int32_t ci = (int32_t)q->cand_n++;
    q->cand[ci] = (struct tok_cand){pos, id, -1};
    struct tok_bucket *b = &q->bk[bi];
    if (b->head < 0) { /* idle bucket: becomes pending again */
        b->head = b->tail = ci;
        b->sorted = 1;
        return rheap_push(q, bi);
    }
    if (q->cand[b->tail].pos > pos) b->sorted = 0;
    q->cand[b->tail].next = ci;
    b->tail = ci;
    return 0;
}

static int pos_cmp(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Put a bucket's list in increasing pos order (rare: pushes usually arrive in order). The
 * (pos, id) pairs are sorted in a temporary array and written back along the same nodes. */
static int q_sort(tok_bpe_scratch *q, struct tok_bucket *b)
{
    size_t n = 0;
    for (int32_t c = b->head; c >= 0; c = q->cand[c].next)
        n++;
    int64_t *tmp = malloc(n * sizeof *tmp);
    if (!tmp) return LR_ENOMEM;
    n = 0;
    for (int32_t c = b->head; c >= 0; c = q->cand[c].next)
        tmp[n++] = (int64_t)q->cand[c].pos << 32 | (uint32_t)q->cand[c].id;
    qsort(tmp, n, sizeof *tmp, pos_cmp);
    n = 0;
    for (int32_t c = b->head; c >= 0; c = q->cand[c].next) {
        q->cand[c].pos = (int32_t)(tmp[n] >> 32);
        q->cand[c].id = (int32_t)(uint32_t)tmp[n++];
    }
    free(tmp);
    b->sorted = 1;
    return 0;
}

/* Pop the candidate with the lowest (rank, pos); 0 when the queue is empty, -1 out of memory. */
static int q_pop(tok_bpe_scratch *q, int32_t *rank, int32_t *pos, int32_t *id)
{
    if (!q->rheap_n) return 0;
    struct tok_bucket *b = &q->bk[q->rheap[0]];
    if (!b->sorted && q_sort(q, b)) return -1;
    struct tok_cand c = q->cand[b->head];
    *rank = b->rank;
    *pos = c.pos;
    *id = c.id;
    b->head = c.next;
    if (b->head < 0) {
        b->tail = -1;
        q->rheap[0] = q->rheap[--q->rheap_n];
        rheap_down(q, 0);
    }
    return 1;
}

/* ---- short words: binary min-heap on (rank, pos) --------------------------------------- */

static int merge_less(const struct tok_merge *x, const struct tok_merge *y)
{
    return x->rank < y->rank || (x->rank == y->rank && x->pos < y->pos);
}

static int h_push(tok_bpe_scratch *q, int32_t rank, int32_t pos, int32_t id)
{
    if (q->heap_n == q->heap_cap) {
        size_t c = q->heap_cap ? q->heap_cap * 2 : 128;
        void *p = realloc(q->heap, c * sizeof *q->heap);
        if (!p) return LR_ENOMEM;
        q->heap = p;
        q->heap_cap = c;
    }
    struct tok_merge *h = q->heap;
    size_t i = q->heap_n++;
    h[i] = (struct tok_merge){rank, pos, id};
    while (i > 0 && merge_less(&h[i], &h[(i - 1) / 2])) {
        struct tok_merge t = h[i];
        h[i] = h[(i - 1) / 2];
        h[(i - 1) / 2] = t;
        i = (i - 1) / 2;
    }
    return 0;
}

static int h_pop(tok_bpe_scratch *q, int32_t *rank, int32_t *pos, int32_t *id)
{
    if (!q->heap_n) return 0;
    struct tok_merge *h = q->heap;
    *rank = h[0].rank;
    *pos = h[0].pos;
    *id = h[0].id;
    h[0] = h[--q->heap_n];
    for (size_t i = 0, n = q->heap_n;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && merge_less(&h[l], &h[m])) m = l;
        if (r < n && merge_less(&h[r], &h[m])) m = r;
        if (m == i) break;
        struct tok_merge t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
    return 1;
}

/* Words up to this many symbols use the binary heap. */
#ifndef TOK_BPE_SHORT_WORD
#define TOK_BPE_SHORT_WORD 256 /* -DTOK_BPE_SHORT_WORD=1 tests the bucket queue everywhere */
#endif

static int cand_push(tok_bpe_scratch *q, int small, int32_t rank, int32_t pos, int32_t id)
{
    return small ? h_push(q, rank, pos, id) : q_push(q, rank, pos, id);
}

static int add_sym(tok_bpe_scratch *sc, size_t *n, int32_t id, int32_t len)
{
    if (*n == sc->sym_cap) {
        size_t c = sc->sym_cap ? sc->sym_cap * 2 : 256;
        void *p = realloc(sc->sym, c * sizeof *sc->sym);
        if (!p) return LR_ENOMEM;
        sc->sym = p;
        sc->sym_cap = c;
    }
    sc->sym[*n] = (struct tok_sym){id, (int32_t)*n - 1, (int32_t)*n + 1, len};
    (*n)++;
    return 0;
}

int tokbpe_encode(const tok_bpe *b, const char *w, size_t len, tok_bpe_scratch *sc, tok_ids *out)
{
    if (len == 0) return 0;
    if (b->ignore_merges) {
        int32_t id = tokmap_get(&b->vocab, w, len);
        if (id >= 0) return tokids_push(out, id);
    }
    /* merge_word: one symbol per char, byte tokens for unknown chars, fused unknowns. */
    size_t n = 0;
    int32_t unk_len = 0; /* pending <unk> covering this many bytes, 0 = none */
    size_t plen = b->prefix ? strlen(b->prefix) : 0, slen = b->suffix ? strlen(b->suffix) : 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        int cl = tok_utf8_next(w + i, len - i, &cp);
        const char *s = w + i;
        size_t sl = (size_t)cl;
        if ((plen && i > 0) || (slen && i + (size_t)cl == len)) {
            sc->tmp.n = 0;
            if ((plen && i > 0 && tokbuf_put(&sc->tmp, b->prefix, plen)) ||
                tokbuf_put(&sc->tmp, s, sl) ||
                (slen && i + (size_t)cl == len && tokbuf_put(&sc->tmp, b->suffix, slen)))
                return LR_ENOMEM;
            s = sc->tmp.p;
            sl = sc->tmp.n;
        }
        i += (size_t)cl;
        int32_t id = tokmap_get(&b->vocab, s, sl);
        if (id >= 0) {
            if (unk_len && add_sym(sc, &n, b->unk_id, unk_len)) return LR_ENOMEM;
            unk_len = 0;
            if (add_sym(sc, &n, id, cl)) return LR_ENOMEM;
            continue;
        }
        if (b->byte_fallback) {
            size_t k = 0;
            while (k < sl && b->byte_id[(unsigned char)s[k]] >= 0)
                k++;
            if (k == sl) {
                /* HF adds the bytes without flushing a pending <unk> first. */
                for (k = 0; k < sl; k++)
                    if (add_sym(sc, &n, b->byte_id[(unsigned char)s[k]], 1)) return LR_ENOMEM;
                continue;
            }
        }
        if (b->unk_id >= 0) {
            if (unk_len && !b->fuse_unk) {
                if (add_sym(sc, &n, b->unk_id, unk_len)) return LR_ENOMEM;
                unk_len = 0;
            }
            unk_len += cl;
        }
    }
    if (unk_len && add_sym(sc, &n, b->unk_id, unk_len)) return LR_ENOMEM;
    if (n == 0) return 0;
    sc->sym[n - 1].next = -1;

    /* merge_all: pop the lowest (rank, pos); apply it if still valid (HF checks that the
     * pair there still merges to the same id); queue the new neighbour pairs. */
    struct tok_sym *sym = sc->sym;
    int small = n <= TOK_BPE_SHORT_WORD;
    q_reset(sc);
    sc->heap_n = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        int32_t rank, id;
        if (tokpair_get(&b->merges, sym[i].id, sym[i + 1].id, &rank, &id) &&
            cand_push(sc, small, rank, (int32_t)i, id))
            return LR_ENOMEM;
    }
    struct {
        int32_t rank, pos, id;
    } top;
    for (;;) {
        int got = small ? h_pop(sc, &top.rank, &top.pos, &top.id)
                        : q_pop(sc, &top.rank, &top.pos, &top.id);
        if (got < 0) return LR_ENOMEM;
        if (!got) break;
        struct tok_sym *cur = &sym[top.pos];
        if (cur->len == 0 || cur->next < 0) continue;
        int32_t nx = cur->next, rank, id;
        if (!tokpair_get(&b->merges, cur->id, sym[nx].id, &rank, &id) || id != top.id) continue;
        cur->id = top.id;
        cur->len += sym[nx].len;
        cur->next = sym[nx].next;
        sym[nx].len = 0;
        if (cur->next >= 0) sym[cur->next].prev = top.pos;
        if (cur->prev >= 0 && tokpair_get(&b->merges, sym[cur->prev].id, cur->id, &rank, &id) &&
            cand_push(sc, small, rank, cur->prev, id))
            return LR_ENOMEM;
        if (cur->next >= 0 && tokpair_get(&b->merges, cur->id, sym[cur->next].id, &rank, &id) &&
            cand_push(sc, small, rank, top.pos, id))
            return LR_ENOMEM;
    }
    for (int32_t i = 0; i >= 0; i = sym[i].next)
        if (tokids_push(out, sym[i].id)) return LR_ENOMEM;
    return 0;
}
