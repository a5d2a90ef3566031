/* tokenizer.c — HF tokenizer.json + tokenizer_config.json: loading, the encode pipeline, the
 * post-processor, decoding and streaming detokenisation.
 *
 * Encode follows tokenizers' TokenizerImpl::encode_single_sequence (SPEC-HF.md E): added tokens
 * are cut out of the raw text leftmost-longest (E.4), each remaining segment is normalized,
 * normalized added tokens are cut out of that, the pre-tokenizer splits words, the model (BPE
 * here, Unigram via tok_unigram) encodes each word, and the post-processor template adds
 * BOS/EOS. The parts live in tok_norm, tok_pretok, tok_bpe and tok_decode; this file wires them
 * and owns everything that is about the whole tokenizer. A tok_tokenizer is immutable once
 * loaded; every call keeps its scratch on the stack or in per-call buffers.
 * Not here: pair encodings, offsets, truncation/padding, chat templates.
 */
#include "tokenizer.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok_bpe.h"
#include "tok_decode.h"
#include "tok_norm.h"
#include "tok_pretok.h"
#include "tok_unigram.h"
#include "tok_util.h"
#include "util.h"

/* An added token (tokenizer.json "added_tokens" / tokenizer_config "added_tokens_decoder"). */
typedef struct added_tok {
    int32_t id;
    char *content; /* raw text */
    size_t len;
    char *norm; /* its normalized form (normalized=true tokens match that) */
    size_t norm_len;
    int single_word, lstrip, rstrip, normalized, special;
} added_tok;

/* Byte trie over added-token texts for leftmost-longest matching. Node 0 is the root. */
typedef struct trie_node {
    int32_t child, sibling; /* first child, next sibling; -1 = none */
    int32_t tok;            /* index into added[] ending here, -1 = none */
    unsigned char byte;
} trie_node;

typedef struct trie {
    trie_node *v;
    size_t n, cap;
    int32_t root[256]; /* the root's children by first byte */
} trie;

/* One post-processor template: items in order; an item is $A or a list of special ids. */
typedef struct tpl_item {
    int is_seq;
    int32_t *ids;
    size_t n;
} tpl_item;

typedef struct tpl {
    tpl_item *items;
    size_t n;
} tpl;

struct tok_tokenizer {
    char *file; /* tokenizer.json path, for messages */
    tok_norm *norm;
    tok_pretok *pre;
    tok_decoder *dec;
    tok_bpe *bpe;
    tokug *ug;
    tok_strmap ug_vocab; /* Unigram piece → id (the last id for duplicates) */
    tok_buf ug_pool;     /* Unigram pieces, NUL-separated */
    size_t *ug_off;      /* (ug_n) offset of id's piece in ug_pool */
    int32_t ug_n;

    added_tok *added;
    size_t n_added;
    tok_strmap added_map; /* content → index in added[] */
    trie raw_trie, norm_trie;
    int has_norm_added;

    int32_t n_ids;             /* max id + 1 over model and added tokens */
    int32_t *id_added;         /* (n_ids) index into added[] or -1 */
    unsigned char *id_special; /* (n_ids) 1 if the id's text is a special token */

    tpl *tpls; /* post-processor: templates applied in order */
    size_t n_tpls;

    char bos[256], eos[256];
    int32_t bos_id, eos_id;
    int clean_up;
};

/* ---- small helpers ---------------------------------------------------------------------- */

static int json_flag(const json_t *o, const char *k, int dflt)
{
    const json_t *v = json_object_get(o, k);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

int32_t tok_piece_to_id(const tok_tokenizer *t, const char *piece)
{
    size_t n = strlen(piece);
    int32_t a = tokmap_get(&t->added_map, piece, n);
    if (a >= 0) return t->added[a].id;
    if (t->bpe) return tokbpe_piece_id(t->bpe, piece, n);
    return tokmap_get(&t->ug_vocab, piece, n);
}

static const char *model_piece(const tok_tokenizer *t, int32_t id)
{
    if (t->bpe) return tokbpe_id_piece(t->bpe, id);
    if (id < 0 || id >= t->ug_n) return NULL;
    return t->ug_pool.p + t->ug_off[id];
}

const char *tok_id_to_piece(const tok_tokenizer *t, int32_t id)
{
    if (id < 0 || id >= t->n_ids) return NULL;
    if (t->id_added[id] >= 0) return t->added[t->id_added[id]].content;
    return model_piece(t, id);
}

int tok_vocab_size(const tok_tokenizer *t)
{
    return t->n_ids;
}
int tok_is_special(const tok_tokenizer *t, int32_t id)
{
    return id >= 0 && id < t->n_ids && t->id_special[id];
}
int32_t tok_bos_id(const tok_tokenizer *t)
{
    return t->bos_id;
}
int32_t tok_eos_id(const tok_tokenizer *t)
{
    return t->eos_id;
}
const char *tok_bos_text(const tok_tokenizer *t)
{
    return t->bos;
}
const char *tok_eos_text(const tok_tokenizer *t)
{
    return t->eos;
}
int tok_clean_up_spaces(const tok_tokenizer *t)
{
    return t->clean_up;
}

/* ---- added-token trie ------------------------------------------------------------------- */

static int trie_insert(trie *tr, const char *s, size_t n, int32_t tok)
{
    if (tr->cap == 0) {
        for (int i = 0; i < 256; i++)
            tr->root[i] = -1;
    }
    /* Work with indices only: adding a node may move tr->v. */
    int32_t parent = -1, node = -1;
    for (size_t i = 0; i < n; i++) {
        unsigned char b = (unsigned char)s[i];
        int32_t c = parent < 0 ? tr->root[b] : tr->v[parent].child;
        while (c >= 0 && tr->v[c].byte != b)
            c = tr->v[c].sibling;
        if (c < 0) {
            if (tr->n == tr->cap) {
                size_t cap = tr->cap ? tr->cap * 2 : 256;
                trie_node *v = realloc(tr->v, cap * sizeof *v);
                if (!v) return LR_ENOMEM;
                tr->v = v;
                tr->cap = cap;
            }
            c = (int32_t)tr->n++;
            if (parent < 0) {
                tr->v[c] = (trie_node){-1, -1, -1, b};
                tr->root[b] = c;
            } else {
                tr->v[c] = (trie_node){-1, tr->v[parent].child, -1, b};
                tr->v[parent].child = c;
            }
        }
        node = parent = c;
    }
    tr->v[node].tok = tok;
    return 0;
}

/* The longest added token starting at s[0] (index into added[]) and its length, or -1. */
static int32_t trie_longest(const trie *tr, const char *s, size_t n, size_t *len)
{
    if (!tr->n || !n) return -1;
    int32_t best = -1, c = tr->root[(unsigned char)s[0]];
    for (size_t i = 0; c >= 0;) {
        if (tr->v[c].tok >= 0) {
            best = tr->v[c].tok;
            *len = i + 1;
        }
        if (++i >= n) break;
        unsigned char b = (unsigned char)s[i];
        c = tr->v[c].child;
        while (c >= 0 && tr->v[c].byte != b)
            c = tr->v[c].sibling;
    }
    return best;
}

static uint32_t last_cp(const char *s, size_t n)
{
    size_t p = n - 1;
    while (p > 0 && ((unsigned char)s[p] & 0xC0) == 0x80)
        p--;
    uint32_t cp;
    tok_utf8_next(s + p, n - p, &cp);
    return cp;
}

/* A span of text: [s, e) and, if tok >= 0, the added token it is. */
typedef struct seg {
    size_t s, e;
    int32_t tok;
} seg;

typedef struct segs {
    seg *v;
    size_t n, cap;
} segs;

static int segs_push(segs *g, size_t s, size_t e, int32_t tok)
{
    if (g->n == g->cap) {
        size_t c = g->cap ? g->cap * 2 : 16;
        seg *v = realloc(g->v, c * sizeof *v);
        if (!v) return LR_ENOMEM;
        g->v = v;
        g->cap = c;
    }
    g->v[g->n++] = (seg){s, e, tok};
    return 0;
}

/* AddedVocabulary::find_matches: leftmost-longest, non-overlapping; a single_word match that
 * touches a word char is skipped (but still consumed, as the Aho-Corasick iterator does);
 * lstrip/rstrip widen the match over whitespace. `normed` selects which form is matched. */
static int find_added(const tok_tokenizer *t, const trie *tr, int normed, const char *s, size_t n,
                      segs *out)
{
    size_t start_off = 0;
    for (size_t i = 0; i < n;) {
        size_t ml = 0;
        int32_t k = trie_longest(tr, s + i, n - i, &ml);
        if (k < 0) {
            i++;
            continue;
        }
        const added_tok *a = &t->added[k];
        size_t ms = i, me = i + ml;
        (void)normed;
        i = me;
        if (a->single_word) {
            uint32_t cp;
            int before = ms > 0 && tok_is_word(last_cp(s, ms));
            int after = me < n && (tok_utf8_next(s + me, n - me, &cp), tok_is_word(cp));
            if (before || after) continue;
        }
        if (a->lstrip) {
            while (ms > start_off) {
                size_t p = ms - 1;
                while (p > start_off && ((unsigned char)s[p] & 0xC0) == 0x80)
                    p--;
                uint32_t cp;
                tok_utf8_next(s + p, ms - p, &cp);
                if (!tok_is_whitespace(cp)) break;
                ms = p;
            }
        }
        if (a->rstrip) {
            while (me < n) {
                uint32_t cp;
                int cl = tok_utf8_next(s + me, n - me, &cp);
                if (!tok_is_whitespace(cp)) break;
                me += (size_t)cl;
            }
            i = me;
        }
        if (start_off < ms && segs_push(out, start_off, ms, -1)) return LR_ENOMEM;
        if (segs_push(out, ms, me, k)) return LR_ENOMEM;
        start_off = me;
    }
    if (start_off < n && segs_push(out, start_off, n, -1)) return LR_ENOMEM;
    return 0;
}

/* ---- encode ----------------------------------------------------------------------------- */

typedef struct enc_ctx {
    tok_pre_ctx pre;
    tok_pieces words;
    tok_bpe_scratch bpe;
    tok_buf nbuf;
    segs nsegs;
} enc_ctx;

static int encode_words(const tok_tokenizer *t, enc_ctx *c, const char *s, size_t n, int orig0,
                        tok_ids *out)
{
    c->pre.arena.n = 0;
    c->words.n = 0;
    if (n == 0) /* an empty segment has no words (HF's prepend on empty text is a no-op) */
        return 0;
    if (tokbuf_put(&c->pre.arena, s, n) || tokpieces_push(&c->words, 0, n, orig0)) return LR_ENOMEM;
    int rc = tokpre_apply(t->pre, &c->pre, &c->words);
    for (size_t i = 0; !rc && i < c->words.n; i++) {
        const char *w = c->pre.arena.p + c->words.v[i].off;
        size_t wl = c->words.v[i].len;
        if (wl == 0) continue;
        rc = t->bpe ? tokbpe_encode(t->bpe, w, wl, &c->bpe, out) : tokug_encode(t->ug, w, wl, out);
    }
    return rc;
}

static int encode_segment(const tok_tokenizer *t, enc_ctx *c, const char *s, size_t n, int orig0,
                          tok_ids *out)
{
    int shifted = 0;
    int rc = toknorm_apply(t->norm, s, n, &c->nbuf, &shifted);
    orig0 = orig0 && !shifted;
    if (rc) return rc;
    if (!t->has_norm_added) return encode_words(t, c, c->nbuf.p, c->nbuf.n, orig0, out);
    c->nsegs.n = 0;
    if ((rc = find_added(t, &t->norm_trie, 1, c->nbuf.p, c->nbuf.n, &c->nsegs))) return rc;
    for (size_t i = 0; !rc && i < c->nsegs.n; i++) {
        seg g = c->nsegs.v[i];
        if (g.tok >= 0)
            rc = tokids_push(out, t->added[g.tok].id);
        else
            rc = encode_words(t, c, c->nbuf.p + g.s, g.e - g.s, orig0 && g.s == 0, out);
    }
    return rc;
}

static int apply_templates(const tok_tokenizer *t, tok_ids *out, size_t base)
{
    for (size_t k = 0; k < t->n_tpls; k++) {
        const tpl *tp = &t->tpls[k];
        size_t seq = out->n - base, extra = 0;
        for (size_t i = 0; i < tp->n; i++)
            extra += tp->items[i].is_seq ? 0 : tp->items[i].n;
        int32_t *a = malloc((seq + 1) * sizeof *a);
        if (!a) return LR_ENOMEM;
        if (seq) memcpy(a, out->v + base, seq * sizeof *a);
        out->n = base;
        for (size_t i = 0; i < tp->n; i++) {
            const tpl_item *it = &tp->items[i];
            const int32_t *src = it->is_seq ? a : it->ids;
            size_t m = it->is_seq ? seq : it->n;
            for (size_t j = 0; j < m; j++)
                if (tokids_push(out, src[j])) {
                    free(a);
                    return LR_ENOMEM;
                }
        }
        free(a);
        (void)extra;
    }
    return 0;
}

int tok_encode(const tok_tokenizer *t, const char *text, size_t len, int add_special, tok_ids *out)
{
    if (!t || !out || (!text && len)) return LR_EINVAL;
    if (!tok_utf8_valid(text, len)) return LR_EINVAL;
    size_t base = out->n;
    enc_ctx c = {0};
    segs raw = {0};
    int rc = find_added(t, &t->raw_trie, 0, text ? text : "", len, &raw);
    for (size_t i = 0; !rc && i < raw.n; i++) {
        seg g = raw.v[i];
        if (g.tok >= 0)
            rc = tokids_push(out, t->added[g.tok].id);
        else
            rc = encode_segment(t, &c, text + g.s, g.e - g.s, g.s == 0, out);
    }
    if (!rc && add_special) rc = apply_templates(t, out, base);
    if (rc) out->n = base;
    free(raw.v);
    tokpre_ctx_free(&c.pre);
    free(c.words.v);
    tokbpe_scratch_free(&c.bpe);
    free(c.nbuf.p);
    free(c.nsegs.v);
    return rc;
}

/* ---- decode ----------------------------------------------------------------------------- */

static int decode_into(const tok_tokenizer *t, const int32_t *ids, size_t n, int skip, tok_buf *out)
{
    const char **tok = malloc((n + 1) * sizeof *tok);
    size_t *len = malloc((n + 1) * sizeof *len);
    size_t k = 0;
    int rc = 0;
    if (!tok || !len) {
        rc = LR_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const char *p = tok_id_to_piece(t, ids[i]);
        if (!p) {
            rc = LR_ERANGE;
            goto out;
        }
        if (skip && t->id_special[ids[i]]) continue;
        tok[k] = p;
        len[k++] = strlen(p);
    }
    rc = tokdec_run(t->dec, tok, len, k, out);
out:
    free(tok);
    free(len);
    return rc;
}

int tok_decode(const tok_tokenizer *t, const int32_t *ids, size_t n, int skip_special, char **out,
               size_t *len)
{
    tok_buf b = {0};
    *out = NULL;
    if (len) *len = 0;
    int rc = decode_into(t, ids, n, skip_special, &b);
    if (!rc) rc = tokbuf_put(&b, "", 0);
    if (rc) {
        free(b.p);
        return rc;
    }
    *out = b.p;
    if (len) *len = b.n;
    return 0;
}

size_t tok_clean_up_apply(char *s, size_t n)
{
    /* transformers' clean_up_tokenization: sequential plain replaces, each shortening. */
    static const char *from[] = {" .",   " ?",  " !",  " ,",   " ' ",
                                 " n't", " 'm", " 's", " 've", " 're"};
    static const char *to[] = {".", "?", "!", ",", "'", "n't", "'m", "'s", "'ve", "'re"};
    for (int r = 0; r < 10; r++) {
        size_t fl = strlen(from[r]), tl = strlen(to[r]), w = 0;
        for (size_t i = 0; i < n;) {
            if (i + fl <= n && memcmp(s + i, from[r], fl) == 0) {
                memmove(s + w, to[r], tl);
                w += tl;
                i += fl;
            } else {
                s[w++] = s[i++];
            }
        }
        n = w;
    }
    s[n] = '\0';
    return n;
}

/* ---- streaming (HF DecodeStream::step) ---------------------------------------------------- */

struct tok_stream {
    const tok_tokenizer *t;
    int skip;
    tok_ids ids;
    tok_buf prefix;
    size_t prefix_index;
};

int tok_stream_create(const tok_tokenizer *t, int skip_special, tok_stream **out)
{
    tok_stream *s = calloc(1, sizeof *s);
    if (!s) return LR_ENOMEM;
    s->t = t;
    s->skip = skip_special;
    if (tokbuf_put(&s->prefix, "", 0)) {
        free(s);
        return LR_ENOMEM;
    }
    *out = s;
    return 0;
}

void tok_stream_destroy(tok_stream *s)
{
    if (!s) return;
    free(s->ids.v);
    free(s->prefix.p);
    free(s);
}

static int ends_with_fffd(const tok_buf *b)
{
    return b->n >= 3 && memcmp(b->p + b->n - 3, "\xEF\xBF\xBD", 3) == 0;
}

static int emit(char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
    tok_buf b = {*buf, *len, *cap};
    int rc = tokbuf_put(&b, s, n);
    *buf = b.p;
    *len = b.n;
    *cap = b.cap;
    return rc;
}

int tok_stream_step(tok_stream *s, int32_t id, char **buf, size_t *len, size_t *cap)
{
    tok_buf d = {0};
    int rc = 0;
    if (!tok_id_to_piece(s->t, id)) return LR_ERANGE;
    if (s->prefix.n == 0 && s->ids.n > 0) {
        if ((rc = decode_into(s->t, s->ids.v, s->ids.n, s->skip, &d))) goto out;
        if (!ends_with_fffd(&d)) {
            s->prefix.n = 0;
            if ((rc = tokbuf_put(&s->prefix, d.p ? d.p : "", d.n))) goto out;
            s->prefix_index = s->ids.n;
        }
        d.n = 0;
    }
    if ((rc = tokids_push(&s->ids, id)) ||
        (rc = decode_into(s->t, s->ids.v, s->ids.n, s->skip, &d)))
        goto out;
    if (d.n > s->prefix.n && !ends_with_fffd(&d)) {
        if (memcmp(d.p, s->prefix.p, s->prefix.n) != 0) {
            rc = LR_EINTERNAL; /* HF: DecodeStreamError::InvalidPrefix */
            goto out;
        }
        if ((rc = emit(buf, len, cap, d.p + s->prefix.n, d.n - s->prefix.n))) goto out;
        size_t new_index = s->ids.n - s->prefix_index;
        memmove(s->ids.v, s->ids.v + s->prefix_index, new_index * sizeof *s->ids.v);
        s->ids.n = new_index;
        s->prefix.n = 0;
        if ((rc = decode_into(s->t, s->ids.v, s->ids.n, s->skip, &s->prefix))) goto out;
        s->prefix_index = new_index;
    }
out:
    free(d.p);
    return rc;
}

int tok_stream_flush(tok_stream *s, char **buf, size_t *len, size_t *cap)
{
    tok_buf d = {0};
    int rc = decode_into(s->t, s->ids.v, s->ids.n, s->skip, &d);
    if (!rc && d.n > s->prefix.n) {
        if (memcmp(d.p, s->prefix.p, s->prefix.n) != 0)
            rc = LR_EINTERNAL;
        else
            rc = emit(buf, len, cap, d.p + s->prefix.n, d.n - s->prefix.n);
    }
    if (!rc && !*buf) rc = emit(buf, len, cap, "", 0);
    s->ids.n = 0;
    s->prefix.n = 0;
    s->prefix.p[0] = '\0';
    s->prefix_index = 0;
    free(d.p);
    return rc;
}

/* ---- loading ---------------------------------------------------------------------------- */

void tok_destroy(tok_tokenizer *t)
{
    if (!t) return;
    free(t->file);
    toknorm_destroy(t->norm);
    tokpre_destroy(t->pre);
    tokdec_destroy(t->dec);
    tokbpe_destroy(t->bpe);
    tokug_destroy(t->ug);
    tokmap_free(&t->ug_vocab);
    free(t->ug_pool.p);
    free(t->ug_off);
    for (size_t i = 0; i < t->n_added; i++) {
        free(t->added[i].content);
        free(t->added[i].norm);
    }
    free(t->added);
    tokmap_free(&t->added_map);
    free(t->raw_trie.v);
    free(t->norm_trie.v);
    free(t->id_added);
    free(t->id_special);
    for (size_t k = 0; k < t->n_tpls; k++) {
        for (size_t i = 0; i < t->tpls[k].n; i++)
            free(t->tpls[k].items[i].ids);
        free(t->tpls[k].items);
    }
    free(t->tpls);
    free(t);
}

static int load_unigram(tok_tokenizer *t, const json_t *m, lr_error *err)
{
    const json_t *vocab = json_object_get(m, "vocab"), *unk = json_object_get(m, "unk_id");
    size_t n = json_array_size(vocab);
    if (!json_is_array(vocab) || n == 0 || n > (1u << 24))
        return lr_error_set(err, LR_EFORMAT, "%s: Unigram model needs a non-empty 'vocab' array",
                            t->file);
    if (unk && !json_is_null(unk) &&
        (!json_is_integer(unk) || json_integer_value(unk) < 0 ||
         json_integer_value(unk) >= (json_int_t)n))
        return lr_error_set(err, LR_EFORMAT, "%s: Unigram unk_id is not a valid id", t->file);
    const char **pieces = malloc(n * sizeof *pieces);
    double *scores = malloc(n * sizeof *scores);
    int rc = 0;
    t->ug_off = malloc(n * sizeof *t->ug_off);
    if (!pieces || !scores || !t->ug_off) {
        rc = lr_error_set(err, LR_ENOMEM, "%s: out of memory", t->file);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const json_t *e = json_array_get(vocab, i);
        const json_t *p = json_array_get(e, 0), *s = json_array_get(e, 1);
        if (!json_is_array(e) || json_array_size(e) != 2 || !json_is_string(p) ||
            !json_is_number(s)) {
            rc = lr_error_set(err, LR_EFORMAT, "%s: Unigram vocab entry %zu is not [piece, score]",
                              t->file, i);
            goto out;
        }
        pieces[i] = json_string_value(p);
        scores[i] = json_number_value(s);
        /* Our own id → piece table (decode) and piece → id map (last id wins, as HF). */
        t->ug_off[i] = t->ug_pool.n;
        if (tokmap_put(&t->ug_vocab, pieces[i], json_string_length(p), (int32_t)i) ||
            tokbuf_put(&t->ug_pool, pieces[i], json_string_length(p) + 1)) {
            rc = lr_error_set(err, LR_ENOMEM, "%s: out of memory", t->file);
            goto out;
        }
    }
    t->ug_n = (int32_t)n;
    rc = tokug_create(pieces, scores, (int)n,
                      unk && !json_is_null(unk) ? (int)json_integer_value(unk) : -1,
                      json_flag(m, "byte_fallback", 0), err, &t->ug);
    if (rc) lr_error_prefix(err, "%s: Unigram model: ", t->file);
out:
    free(pieces);
    free(scores);
    return rc;
}

/* AddedVocabulary::add_tokens for one token (tokenizer.json "added_tokens" in file order, then
 * tokenizer_config "added_tokens_decoder" entries that are new, as transformers does). The id
 * is HF's, not the file's: the model's id if the text is in the vocab, else the next free id
 * after max(added ids, vocab size - 1). HF only warns when that differs from the file. A token
 * whose text is already added keeps its id; tokenizer.json's later duplicate updates the flags. */
static int add_added(tok_tokenizer *t, const json_t *a, int from_config, lr_error *err)
{
    const json_t *c = json_object_get(a, "content");
    if (!json_is_string(c))
        return lr_error_set(err, LR_EFORMAT, "%s: an added token has no string 'content'", t->file);
    size_t n = json_string_length(c);
    if (n == 0) return 0; /* HF ignores empty added tokens */
    int32_t known = tokmap_get(&t->added_map, json_string_value(c), n);
    if (known >= 0 && from_config) return 0;
    added_tok *k;
    if (known >= 0) {
        k = &t->added[known];
    } else {
        added_tok *v = realloc(t->added, (t->n_added + 1) * sizeof *v);
        if (!v) return LR_ENOMEM;
        t->added = v;
        k = &t->added[t->n_added];
        memset(k, 0, sizeof *k);
        int32_t mid = t->bpe ? tokbpe_piece_id(t->bpe, json_string_value(c), n)
                             : tokmap_get(&t->ug_vocab, json_string_value(c), n);
        int64_t vs = t->bpe ? (int64_t)tokbpe_vocab_count(t->bpe) : t->ug_n, max = -1;
        for (size_t i = 0; i < t->n_added; i++)
            if (t->added[i].id > max) max = t->added[i].id;
        int64_t id = mid >= 0 ? mid : max < 0 ? vs : (max >= vs || vs == 0) ? max + 1 : vs;
        if (id > INT32_MAX - 1)
            return lr_error_set(err, LR_EFORMAT, "%s: too many added tokens", t->file);
        k->id = (int32_t)id;
        k->len = n;
        k->content = malloc(n + 1);
        if (!k->content) return LR_ENOMEM;
        memcpy(k->content, json_string_value(c), n + 1);
        t->n_added++;
        if (tokmap_put(&t->added_map, k->content, n, (int32_t)(t->n_added - 1))) return LR_ENOMEM;
    }
    k->single_word = json_flag(a, "single_word", 0);
    k->lstrip = json_flag(a, "lstrip", 0);
    k->rstrip = json_flag(a, "rstrip", 0);
    /* HF keeps a token special once it was added as special. */
    k->special = k->special || json_flag(a, "special", 0);
    k->normalized = json_flag(a, "normalized", !json_flag(a, "special", 0));
    return 0;
}

static int load_template(tok_tokenizer *t, const json_t *pp, lr_error *err)
{
    const json_t *single = json_object_get(pp, "single"),
                 *sp = json_object_get(pp, "special_tokens");
    if (!json_is_array(single))
        return lr_error_set(err, LR_EUNSUPPORTED,
                            "%s: post_processor TemplateProcessing 'single' must be an array",
                            t->file);
    tpl *v = realloc(t->tpls, (t->n_tpls + 1) * sizeof *v);
    if (!v) return LR_ENOMEM;
    t->tpls = v;
    tpl *tp = &t->tpls[t->n_tpls++];
    tp->n = 0;
    tp->items = calloc(json_array_size(single) + 1, sizeof *tp->items);
    if (!tp->items) return LR_ENOMEM;
    for (size_t i = 0; i < json_array_size(single); i++) {
        const json_t *it = json_array_get(single, i);
        const json_t *seq = json_object_get(it, "Sequence"),
                     *st = json_object_get(it, "SpecialToken");
        tpl_item *ti = &tp->items[tp->n++]; /* counted now so an error path frees its ids */
        if (seq) {
            const char *sid = json_string_value(json_object_get(seq, "id"));
            if (!sid || strcmp(sid, "A"))
                return lr_error_set(err, LR_EUNSUPPORTED,
                                    "%s: post_processor single template uses sequence '%.20s'",
                                    t->file, sid ? sid : "?");
            ti->is_seq = 1;
        } else if (st) {
            const char *name = json_string_value(json_object_get(st, "id"));
            const json_t *ids = json_object_get(json_object_get(sp, name ? name : ""), "ids");
            if (!name || !json_is_array(ids))
                return lr_error_set(err, LR_EFORMAT,
                                    "%s: post_processor special token '%.80s' is not defined",
                                    t->file, name ? name : "?");
            ti->n = json_array_size(ids);
            ti->ids = calloc(ti->n + 1, sizeof *ti->ids);
            if (!ti->ids) return LR_ENOMEM;
            for (size_t k = 0; k < ti->n; k++) {
                const json_t *x = json_array_get(ids, k);
                if (!json_is_integer(x) || json_integer_value(x) < 0 ||
                    json_integer_value(x) > INT32_MAX)
                    return lr_error_set(err, LR_EFORMAT,
                                        "%s: post_processor special token '%.80s' has a bad id",
                                        t->file, name);
                ti->ids[k] = (int32_t)json_integer_value(x);
            }
        } else {
            return lr_error_set(err, LR_EUNSUPPORTED,
                                "%s: post_processor template item %zu is not supported", t->file,
                                i);
        }
    }
    return 0;
}

static int load_post(tok_tokenizer *t, const json_t *pp, lr_error *err)
{
    if (!pp || json_is_null(pp)) return 0;
    const char *type = json_string_value(json_object_get(pp, "type"));
    if (!type) return lr_error_set(err, LR_EFORMAT, "%s: post_processor without a 'type'", t->file);
    if (!strcmp(type, "ByteLevel")) return 0; /* only touches offsets */
    if (!strcmp(type, "TemplateProcessing")) return load_template(t, pp, err);
    if (!strcmp(type, "Sequence")) {
        const json_t *a = json_object_get(pp, "processors");
        if (!json_is_array(a))
            return lr_error_set(err, LR_EFORMAT, "%s: post_processor Sequence needs 'processors'",
                                t->file);
        for (size_t i = 0; i < json_array_size(a); i++) {
            int rc = load_post(t, json_array_get(a, i), err);
            if (rc) return rc;
        }
        return 0;
    }
    return lr_error_set(err, LR_EUNSUPPORTED, "%s: post_processor type '%.100s' is not supported",
                        t->file, type);
}

static void token_text(const json_t *v, char *dst, size_t cap)
{
    const char *s =
        json_is_string(v) ? json_string_value(v) : json_string_value(json_object_get(v, "content"));
    snprintf(dst, cap, "%s", s ? s : "");
}

/* tokenizer_config.json: special tokens, add_bos/add_eos override, clean-up flag. */
static int load_config(tok_tokenizer *t, const json_t *cfg, const char *cfile, lr_error *err)
{
    token_text(json_object_get(cfg, "bos_token"), t->bos, sizeof t->bos);
    token_text(json_object_get(cfg, "eos_token"), t->eos, sizeof t->eos);
    t->clean_up = json_flag(cfg, "clean_up_tokenization_spaces", 0);
    const json_t *atd = json_object_get(cfg, "added_tokens_decoder");
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)atd, key, val)
    {
        char *end;
        long id = strtol(key, &end, 10);
        if (*end || id < 0 || id > INT32_MAX)
            return lr_error_set(err, LR_EFORMAT,
                                "%s: added_tokens_decoder key '%.40s' is not an id", cfile, key);
        int rc = add_added(t, val, 1, err);
        if (rc) return rc == LR_ENOMEM ? lr_error_set(err, rc, "%s: out of memory", cfile) : rc;
    }
    const char *cls = json_string_value(json_object_get(cfg, "tokenizer_class"));
    if (cls && (!strcmp(cls, "LlamaTokenizer") || !strcmp(cls, "LlamaTokenizerFast") ||
                !strcmp(cls, "CodeLlamaTokenizerFast"))) {
        /* LlamaTokenizerFast.update_post_processor: [bos] $A [eos] from the config flags. */
        int add_bos = json_flag(cfg, "add_bos_token", 1),
            add_eos = json_flag(cfg, "add_eos_token", 0);
        for (size_t k = 0; k < t->n_tpls; k++) {
            for (size_t i = 0; i < t->tpls[k].n; i++)
                free(t->tpls[k].items[i].ids);
            free(t->tpls[k].items);
        }
        t->n_tpls = 0;
        tpl *v = realloc(t->tpls, sizeof *v);
        tpl_item *items = calloc(3, sizeof *items);
        if (!v || !items) {
            free(items);
            if (v) t->tpls = v;
            return lr_error_set(err, LR_ENOMEM, "%s: out of memory", cfile);
        }
        t->tpls = v;
        t->n_tpls = 1;
        t->tpls[0] = (tpl){items, 0};
        const char *names[2] = {t->bos, t->eos};
        int want[2] = {add_bos, add_eos};
        for (int w = 0; w < 3; w++) {
            if (w == 1) {
                items[t->tpls[0].n++].is_seq = 1;
                continue;
            }
            int k = w / 2;
            if (!want[k]) continue;
            int32_t id = names[k][0] ? tok_piece_to_id(t, names[k]) : -1;
            if (id < 0)
                return lr_error_set(err, LR_EFORMAT,
                                    "%s: add_%s_token is true but %s_token '%s' "
                                    "is not in the vocabulary",
                                    cfile, k ? "eos" : "bos", k ? "eos" : "bos", names[k]);
            tpl_item *it = &items[t->tpls[0].n++];
            if (!(it->ids = malloc(sizeof *it->ids)))
                return lr_error_set(err, LR_ENOMEM, "%s: out of memory", cfile);
            it->ids[0] = id;
            it->n = 1;
        }
    }
    return 0;
}

static int finish(tok_tokenizer *t, lr_error *err)
{
    int32_t max = t->bpe ? tokbpe_max_id(t->bpe) : t->ug_n - 1;
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].id > max) max = t->added[i].id;
    if (max >= (1 << 25))
        return lr_error_set(err, LR_EFORMAT, "%s: token id %d is too large", t->file, (int)max);
    t->n_ids = max + 1;
    t->id_added = malloc(((size_t)t->n_ids + 1) * sizeof *t->id_added);
    t->id_special = calloc((size_t)t->n_ids + 1, 1);
    if (!t->id_added || !t->id_special)
        return lr_error_set(err, LR_ENOMEM, "%s: out of memory", t->file);
    for (int32_t i = 0; i < t->n_ids; i++)
        t->id_added[i] = -1;
    for (size_t i = 0; i < t->n_added; i++) {
        added_tok *a = &t->added[i];
        t->id_added[a->id] = (int32_t)i;
        int rc;
        if (a->normalized) {
            tok_buf nb = {0};
            if ((rc = toknorm_apply(t->norm, a->content, a->len, &nb, NULL))) {
                free(nb.p);
                return lr_error_set(err, rc, "%s: cannot normalize added token '%.80s'", t->file,
                                    a->content);
            }
            a->norm = nb.p;
            a->norm_len = nb.n;
            if (a->norm_len) {
                t->has_norm_added = 1;
                rc = trie_insert(&t->norm_trie, a->norm, a->norm_len, (int32_t)i);
            } else {
                rc = 0;
            }
        } else {
            rc = trie_insert(&t->raw_trie, a->content, a->len, (int32_t)i);
        }
        if (rc) return lr_error_set(err, LR_ENOMEM, "%s: out of memory", t->file);
    }
    /* An id is special when its decoded text is a special added token's content. */
    for (size_t i = 0; i < t->n_added; i++) {
        if (!t->added[i].special) continue;
        t->id_special[t->added[i].id] = 1;
        int32_t mid = t->bpe ? tokbpe_piece_id(t->bpe, t->added[i].content, t->added[i].len)
                             : tokmap_get(&t->ug_vocab, t->added[i].content, t->added[i].len);
        if (mid >= 0 && t->id_added[mid] < 0) t->id_special[mid] = 1;
    }
    for (size_t k = 0; k < t->n_tpls; k++)
        for (size_t i = 0; i < t->tpls[k].n; i++)
            for (size_t j = 0; j < t->tpls[k].items[i].n; j++)
                if (t->tpls[k].items[i].ids[j] >= t->n_ids)
                    return lr_error_set(err, LR_EFORMAT,
                                        "%s: post_processor id %d is outside the vocabulary",
                                        t->file, (int)t->tpls[k].items[i].ids[j]);
    t->bos_id = t->bos[0] ? tok_piece_to_id(t, t->bos) : -1;
    t->eos_id = t->eos[0] ? tok_piece_to_id(t, t->eos) : -1;
    return 0;
}

/* Biggest tokenizer.json / tokenizer_config.json we read (real ones are up to a few tens of MB). */
#define TOK_MAX_JSON_BYTES ((size_t)256 << 20)

/* Read and parse the JSON file at path into *out (new reference). Reading goes through
 * lr_read_file, so a FIFO, a directory or an oversized file is refused instead of blocking. */
static int load_json(const char *path, size_t flags, json_t **out, lr_error *err)
{
    char *text = NULL;
    size_t len;
    *out = NULL;
    int rc = lr_read_file(path, NULL, TOK_MAX_JSON_BYTES, &text, &len, err);
    if (rc) return rc;
    json_error_t je;
    *out = json_loadb(text, len, flags, &je);
    free(text);
    if (!*out)
        return lr_error_set(err, LR_EFORMAT, "%s: not valid JSON (line %d: %s)", path, je.line,
                            je.text);
    return 0;
}

static int load(const char *path, const char *config, lr_error *err, tok_tokenizer **out)
{
    json_t *root = NULL, *cfg = NULL;
    tok_tokenizer *t = calloc(1, sizeof *t);
    int rc = 0;
    if (!t || !(t->file = strdup(path))) {
        free(t);
        return lr_error_set(err, LR_ENOMEM, "%s: out of memory", path);
    }
    t->bos_id = t->eos_id = -1;
    if ((rc = load_json(path, JSON_ALLOW_NUL, &root, err))) goto out;
    if (!json_is_object(root)) {
        rc = lr_error_set(err, LR_EFORMAT, "%s: top level is not an object", path);
        goto out;
    }
    const json_t *ver = json_object_get(root, "version");
    if (ver && !(json_is_string(ver) && !strcmp(json_string_value(ver), "1.0"))) {
        rc = lr_error_set(err, LR_EUNSUPPORTED, "%s: tokenizer version '%.20s' is not supported",
                          path, json_is_string(ver) ? json_string_value(ver) : "?");
        goto out;
    }
    const json_t *model = json_object_get(root, "model");
    const char *mtype = json_string_value(json_object_get(model, "type"));
    if (!json_is_object(model)) {
        rc = lr_error_set(err, LR_EFORMAT, "%s: no 'model' object", path);
        goto out;
    }
    if (!mtype && json_object_get(model, "merges"))
        mtype = "BPE"; /* very old files omit the BPE type tag */
    if (mtype && !strcmp(mtype, "BPE")) {
        rc = tokbpe_load(model, path, err, &t->bpe);
    } else if (mtype && !strcmp(mtype, "Unigram")) {
        rc = load_unigram(t, model, err);
    } else {
        rc = lr_error_set(err, LR_EUNSUPPORTED, "%s: model type '%.100s' is not supported", path,
                          mtype ? mtype : "(missing)");
    }
    if (rc) goto out;
    if ((rc = toknorm_load(json_object_get(root, "normalizer"), path, err, &t->norm)) ||
        (rc = tokpre_load(json_object_get(root, "pre_tokenizer"), path, err, &t->pre)) ||
        (rc = tokdec_load(json_object_get(root, "decoder"), path, err, &t->dec)) ||
        (rc = load_post(t, json_object_get(root, "post_processor"), err)))
        goto out;
    const json_t *added = json_object_get(root, "added_tokens");
    if (added && !json_is_array(added)) {
        rc = lr_error_set(err, LR_EFORMAT, "%s: 'added_tokens' must be an array", path);
        goto out;
    }
    for (size_t i = 0; i < json_array_size(added); i++) {
        if ((rc = add_added(t, json_array_get(added, i), 0, err))) {
            if (rc == LR_ENOMEM) lr_error_set(err, rc, "%s: out of memory", path);
            goto out;
        }
    }
    if (config) {
        /* The config is optional: a missing file is no error. model_max_length is often 1e30
         * written as an integer, so numbers are read as reals. */
        rc = load_json(config, JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, &cfg, err);
        if (rc == LR_ENOTFOUND) {
            lr_error_clear(err);
            rc = 0;
        } else if (rc) {
            goto out;
        } else if (!json_is_object(cfg)) {
            rc = lr_error_set(err, LR_EFORMAT, "%s: not a valid JSON object", config);
            goto out;
        } else if ((rc = load_config(t, cfg, config, err))) {
            goto out;
        }
    }
    rc = finish(t, err);
out:
    json_decref(root);
    json_decref(cfg);
    if (rc) {
        tok_destroy(t);
        return rc;
    }
    *out = t;
    return 0;
}

int tok_load_files(const char *tokenizer_json, const char *config_json, lr_error *err,
                   tok_tokenizer **out)
{
    if (!tokenizer_json || !out)
        return lr_error_set(err, LR_EINVAL, "tok_load_files: no tokenizer.json path given");
    return load(tokenizer_json, config_json, err, out);
}

int tok_load_dir(const char *dir, lr_error *err, tok_tokenizer **out)
{
    char a[4096], b[4096];
    if (snprintf(a, sizeof a, "%s/tokenizer.json", dir) >= (int)sizeof a ||
        snprintf(b, sizeof b, "%s/tokenizer_config.json", dir) >= (int)sizeof b)
        return lr_error_set(err, LR_EINVAL, "tokenizer directory path is too long");
    return tok_load_files(a, b, err, out);
}
