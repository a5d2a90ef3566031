/* tok_unigram.c — the Unigram model: a byte trie over the pieces and an f64 Viterbi per word.
 *
 * This module segments ONE pre-tokenized word into piece ids exactly as tokenizers'
 * Unigram::encode_optimized followed by Unigram::tokenize (SPEC-HF.md E.3). It does not
 * normalize, pre-tokenize or handle added tokens; tokenizer.c does that around it.
 *
 * The trie is a hashed one: each edge (node, byte) → child is one 64-bit entry of an
 * open-addressing table sized from the exact node count (at most half full), so a common-prefix
 * search from position s costs one probe per byte and stops at the first missing edge, giving
 * O(len · max_piece_len) per word with no per-character allocation. T5's 32,100 pieces make
 * about 2^17 nodes: a 2 MiB table.
 */
#include "tok_unigram.h"
#include "tok_util.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* HF's K_UNK_PENALTY: an unknown character scores min_score − 10. */
#define UG_UNK_PENALTY 10.0
/* Edge entries are (node << 8 | byte) << 32 | child; 0 marks an empty slot, since the only edge
 * with key 0 would be a NUL byte out of the root, which no (C string) piece has. */
#define UG_MAX_NODES (1u << 24)

struct tokug {
    int n_pieces;
    int unk_id; /* -1: none */
    int byte_fallback;
    double *scores;   /* (n_pieces,) */
    double unk_score; /* min over all scores − UG_UNK_PENALTY */
    int32_t *node_id; /* (n_nodes,) id of the piece ending here or -1; node 0 = root */
    size_t n_nodes;
    uint64_t *edge;        /* (edge_cap,) packed edges, see UG_MAX_NODES */
    size_t edge_mask;      /* edge_cap − 1, edge_cap a power of two */
    int edge_shift;        /* 64 − log2(edge_cap) */
    int32_t byte_ids[256]; /* id of "<0xHH>" or -1 */
};

static inline size_t edge_slot(const tokug *u, uint32_t key)
{
    /* Fibonacci hashing; the high bits of the product are the well-mixed ones. */
    return (size_t)(((uint64_t)key * 0x9E3779B97F4A7C15ull) >> u->edge_shift);
}

/* Child of `node` along byte b, or 0 (the root is never a child). */
static inline uint32_t trie_child(const tokug *u, uint32_t node, uint8_t b)
{
    uint32_t key = node << 8 | b;
    for (size_t i = edge_slot(u, key);; i = (i + 1) & u->edge_mask) {
        uint64_t e = u->edge[i];
        if ((uint32_t)(e >> 32) == key) return (uint32_t)e;
        if (e == 0) return 0;
    }
}

static void trie_insert(tokug *u, const uint8_t *s, size_t len, int32_t id)
{
    if (len == 0) return; /* HF's trie never yields an empty piece */
    uint32_t node = 0;
    for (size_t j = 0; j < len; j++) {
        uint32_t key = node << 8 | s[j];
        size_t i = edge_slot(u, key);
        while (u->edge[i] != 0 && (uint32_t)(u->edge[i] >> 32) != key)
            i = (i + 1) & u->edge_mask;
        if (u->edge[i] == 0) {
            /* The table and node_id were sized from the exact node count: both have room. */
            u->edge[i] = (uint64_t)key << 32 | (uint32_t)u->n_nodes;
            u->node_id[u->n_nodes++] = -1;
        }
        node = (uint32_t)u->edge[i];
    }
    u->node_id[node] = id; /* a later duplicate overwrites: HF's map keeps the last id */
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Number of trie nodes (root included) = 1 + the number of distinct non-empty prefixes, counted
 * over the sorted pieces as Σ (len − common prefix with the previous piece). */
static int count_nodes(const char *const *pieces, int n, size_t *out)
{
    const char **v = malloc((n ? (size_t)n : 1) * sizeof *v);
    if (!v) return LR_ENOMEM;
    memcpy(v, pieces, (size_t)n * sizeof *v);
    qsort(v, (size_t)n, sizeof *v, cmp_str);
    size_t nodes = 1;
    for (int i = 0; i < n; i++) {
        size_t lcp = 0;
        if (i > 0)
            while (v[i][lcp] && v[i][lcp] == v[i - 1][lcp])
                lcp++;
        nodes += strlen(v[i]) - lcp;
    }
    free(v);
    *out = nodes;
    return 0;
}

int tokug_piece_id(const tokug *u, const char *s, size_t len)
{
    uint32_t node = 0;
    for (size_t j = 0; j < len; j++) {
        node = trie_child(u, node, (uint8_t)s[j]);
        if (node == 0) return -1;
    }
    return len ? u->node_id[node] : -1;
}

int tokug_create(const char *const *pieces, const double *scores, int n, int unk_id,
                 int byte_fallback, lr_error *err, tokug **out)
{
    if (n < 0 || (n > 0 && (!pieces || !scores)))
        return lr_error_set(err, LR_EINVAL, "unigram: invalid vocabulary (%d pieces)", n);
    if (unk_id < -1 || unk_id >= n)
        return lr_error_set(err, LR_EINVAL,
                            "unigram: unk_id %d is not an id of the %d-piece vocabulary", unk_id,
                            n);
    double min_score = INFINITY;
    for (int i = 0; i < n; i++) {
        if (!pieces[i]) return lr_error_set(err, LR_EINVAL, "unigram: piece %d is NULL", i);
        size_t len = strlen(pieces[i]);
        if (!tok_utf8_valid(pieces[i], len))
            return lr_error_set(err, LR_EFORMAT, "unigram: piece %d is not valid UTF-8", i);
        if (!isfinite(scores[i]))
            return lr_error_set(err, LR_EFORMAT, "unigram: piece %d has a non-finite score", i);
        if (scores[i] < min_score) min_score = scores[i];
    }
    size_t nodes;
    if (count_nodes(pieces, n, &nodes))
        return lr_error_set(err, LR_ENOMEM, "unigram: out of memory for %d pieces", n);
    if (nodes >= UG_MAX_NODES)
        return lr_error_set(err, LR_ETOOLARGE,
                            "unigram: the vocabulary needs %zu trie nodes, more than %u", nodes,
                            UG_MAX_NODES);

    tokug *u = calloc(1, sizeof *u);
    if (!u) return lr_error_set(err, LR_ENOMEM, "unigram: out of memory");
    u->n_pieces = n;
    u->unk_id = unk_id;
    u->byte_fallback = byte_fallback != 0;
    u->unk_score = min_score - UG_UNK_PENALTY;
    size_t cap = 16;
    int bits = 4;
    while (cap < 2 * nodes)
        cap *= 2, bits++;
    u->edge_mask = cap - 1;
    u->edge_shift = 64 - bits;
    u->scores = malloc((n ? (size_t)n : 1) * sizeof *u->scores);
    u->node_id = malloc(nodes * sizeof *u->node_id);
    u->edge = calloc(cap, sizeof *u->edge);
    if (!u->scores || !u->node_id || !u->edge) {
        tokug_destroy(u);
        return lr_error_set(err, LR_ENOMEM, "unigram: out of memory for %d pieces", n);
    }
    if (n) memcpy(u->scores, scores, (size_t)n * sizeof *scores);
    u->node_id[0] = -1;
    u->n_nodes = 1;
    for (int i = 0; i < n; i++)
        trie_insert(u, (const uint8_t *)pieces[i], strlen(pieces[i]), i);
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        u->byte_ids[b] = tokug_piece_id(u, name, 6);
    }
    *out = u;
    return 0;
}

void tokug_destroy(tokug *u)
{
    if (!u) return;
    free(u->scores);
    free(u->node_id);
    free(u->edge);
    free(u);
}

static int ids_push(tok_ids *o, int32_t id)
{
    if (o->n == o->cap) {
        size_t cap = o->cap ? 2 * o->cap : 16;
        int32_t *v = realloc(o->v, cap * sizeof *v);
        if (!v) return LR_ENOMEM;
        o->v = v;
        o->cap = cap;
    }
    o->v[o->n++] = id;
    return 0;
}

/* Byte length of the UTF-8 character starting with lead byte c (input already validated). */
static inline size_t utf8_len(uint8_t c)
{
    return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}

/* Emit a run of fused unknown nodes w[a:b] as tokenize() does: the run's text is looked up as a
 * piece (a fused run can spell one), else byte pieces when byte_fallback and all exist, else unk.
 */
static int emit_unknown(const tokug *u, const uint8_t *w, size_t a, size_t b, tok_ids *out)
{
    int id = tokug_piece_id(u, (const char *)w + a, b - a);
    if (id >= 0) return ids_push(out, id);
    if (u->byte_fallback) {
        size_t j = a;
        while (j < b && u->byte_ids[w[j]] >= 0)
            j++;
        if (j == b) {
            for (j = a; j < b; j++)
                if (ids_push(out, u->byte_ids[w[j]])) return LR_ENOMEM;
            return 0;
        }
    }
    return ids_push(out, u->unk_id);
}

int tokug_encode(const tokug *u, const char *word, size_t len, tok_ids *out)
{
    LR_ASSERT(u && out && (word || len == 0));
    const uint8_t *w = (const uint8_t *)word;
    size_t n0 = out->n;
    if (len == 0) return 0;
    if (!tok_utf8_valid((const char *)w, len)) return LR_EINVAL;

    /* Lattice, indexed by byte position e = end of the best path's last node:
     * score (len+1,) best path score; from (len+1,) its last node's start or SIZE_MAX if none yet;
     * id (len+1,) its last node's id; path (len+1,) the chosen boundaries when backtracking. */
    double *score = malloc((len + 1) * sizeof *score);
    size_t *from = malloc((len + 1) * sizeof *from);
    int32_t *id = malloc((len + 1) * sizeof *id);
    size_t *path = malloc((len + 1) * sizeof *path);
    int rc = 0;
    if (!score || !from || !id || !path) {
        rc = LR_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i <= len; i++)
        from[i] = SIZE_MAX;
    score[0] = 0.0;

    for (size_t s = 0; s < len;) {
        size_t mblen = utf8_len(w[s]);
        double base = score[s];
        int has_single = 0;
        uint32_t node = 0;
        /* Common-prefix search, shortest piece first; a strictly greater score replaces. */
        for (size_t j = s; j < len; j++) {
            node = trie_child(u, node, w[j]);
            if (node == 0) break;
            int32_t pid = u->node_id[node];
            if (pid < 0) continue;
            double cand = base + u->scores[pid];
            size_t e = j + 1;
            if (from[e] == SIZE_MAX || cand > score[e]) {
                score[e] = cand;
                from[e] = s;
                id[e] = pid;
            }
            if (e - s == mblen) has_single = 1;
        }
        if (!has_single) {
            size_t e = s + mblen;
            double cand = base + u->unk_score;
            if (from[e] == SIZE_MAX || cand > score[e]) {
                if (u->unk_id < 0) {
                    rc = LR_EINVAL; /* HF: "Encountered an unknown token but unk_id is missing" */
                    goto out;
                }
                score[e] = cand;
                from[e] = s;
                id[e] = u->unk_id;
            }
        }
        s += mblen;
    }

    /* Backtrack from the end: path[k..np) are the node boundaries in increasing order. */
    size_t np = len + 1, e = len;
    path[--np] = len;
    while (e > 0) {
        LR_ASSERT(from[e] != SIZE_MAX); /* every character boundary is reached, see above */
        e = from[e];
        path[--np] = e;
    }
    for (size_t k = np; path[k] != len; k++) {
        size_t a = path[k], b = path[k + 1];
        if (id[b] != u->unk_id) {
            if ((rc = ids_push(out, id[b]))) goto out;
            continue;
        }
        /* Fuse this unknown node with the unknown nodes that follow it. */
        while (path[k + 1] != len && id[path[k + 2]] == u->unk_id)
            k++;
        b = path[k + 1];
        if ((rc = emit_unknown(u, w, a, b, out))) goto out;
    }
out:
    free(score);
    free(from);
    free(id);
    free(path);
    if (rc) out->n = n0;
    return rc;
}
