/* tok_bpe.h — the BPE model of HF tokenizer.json (SentencePiece-converted and byte-level).
 *
 * Semantics of tokenizers' models/bpe (SPEC-HF.md E.1/E.2): per word, chars → vocab ids (with
 * byte_fallback / fuse_unk / unk_token, continuing_subword_prefix, end_of_word_suffix), then the
 * lowest-rank adjacent merge first (leftmost among equals) until none applies; ignore_merges
 * emits a whole-word vocab hit directly. A tok_bpe is immutable after loading.
 */
#ifndef LR_TOK_BPE_H
#define LR_TOK_BPE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "tok_util.h"
#include "tokenizer.h"

typedef struct tok_bpe tok_bpe;

/* Per-call scratch for tokbpe_encode, caller-owned, reused across words; start from {0} and
 * release with tokbpe_scratch_free. Grows to the longest word seen; nothing else allocates.
 * The merge queue groups candidates by rank: one bucket of (pos, id) per distinct rank, a small
 * min-heap over the ranks that have pending candidates, and a rank → bucket hash; all buckets
 * share one candidate pool, so a long word allocates nothing per rank. Within a
 * rank, positions are consumed in increasing order (a bucket is sorted only if pushes arrived
 * out of order, which is rare: a merge never creates a pair of its own rank). Short words use
 * a plain binary heap instead, which needs no per-rank memory. */
typedef struct tok_bpe_scratch {
    struct tok_sym {
        int32_t id, prev, next, len;
    } * sym;
    size_t sym_cap;
    struct tok_cand {
        int32_t pos, id, next; /* next candidate of the same rank, -1 = none */
    } * cand;                  /* one pool for all buckets */
    size_t cand_n, cand_cap;
    struct tok_bucket {
        int32_t head, tail; /* pending candidates of this rank, a list in cand[]; -1 = none */
        int32_t rank;
        uint32_t slot; /* its slot in the rank table */
        int sorted;    /* the list is in increasing pos order */
    } * bk;
    size_t bk_used, bk_cap;
    int32_t *rheap; /* bucket indices with pending candidates, min-heap on rank */
    size_t rheap_n, rheap_cap;
    int32_t *table; /* (table_cap) bucket index + 1 by rank hash, 0 = empty */
    size_t table_cap;
    struct tok_merge {
        int32_t rank, pos, id;
    } * heap; /* short words: a plain binary min-heap on (rank, pos) */
    size_t heap_n, heap_cap;
    tok_buf tmp;
} tok_bpe_scratch;

void tokbpe_scratch_free(tok_bpe_scratch *s);

/* Build from the "model" object of tokenizer.json (borrowed). file names the source in errors
 * ("tokenizer.json: BPE merge 12: 'a' is not in the vocabulary"). */
int tokbpe_load(const json_t *model, const char *file, lr_error *err, tok_bpe **out);
void tokbpe_destroy(tok_bpe *b);

/* Tokenize one pre-tokenized word (UTF-8, len > 0) and APPEND its ids to out.
 * Returns 0 or LR_ENOMEM. */
int tokbpe_encode(const tok_bpe *b, const char *word, size_t len, tok_bpe_scratch *sc,
                  tok_ids *out);

int32_t tokbpe_piece_id(const tok_bpe *b, const char *s, size_t len); /* -1 if absent */
const char *tokbpe_id_piece(const tok_bpe *b, int32_t id);            /* NULL if absent */
int32_t tokbpe_max_id(const tok_bpe *b);                              /* -1 if empty */
size_t tokbpe_vocab_count(const tok_bpe *b); /* distinct vocab entries (HF get_vocab_size) */

#endif
