/* engine.c — continuous batching: the engine thread, its scheduler and the request lifecycle.
 *
 * Each step, under the engine mutex: retire canceled requests; give every running sequence that
 * is decoding one row (growing its KV table, preempting the youngest sequence when the pool is
 * dry); give partly prefilled sequences a chunk of the remaining token budget; admit waiting
 * requests first-come first-served while the budget, max_seqs and the KV pool allow (a new
 * sequence reserves blocks for all its known tokens at once). Then, without the mutex: sort the
 * rows by adapter, run one forward pass, compute logits only for rows that sample or report
 * prompt logprobs, sample, and deliver events. A preempted sequence loses its KV blocks but keeps
 * its tokens and sampler state; it is recomputed when readmitted and sends no event twice, so its
 * output is the same as if it had never been preempted.
 *
 * This module does not know HTTP, text or adapter files. Encoder-decoder (T5) sequences live in
 * the same batches (see the "T5:" comments): the encoder runs once, in the step that admits the
 * sequence, batched with every other sequence admitted then; its cross-attention K/V go to the
 * sequence's KV_CROSS table; decoder rows of all T5 sequences share one pass (core/t5).
 */
#include "engine.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "forward.h"
#include "kernels.h"
#include "kv.h"
#include "sampler.h"
#include "t5.h"

typedef struct eng_seq {
    uint64_t id;
    uint64_t order;       /* admission stamp: the largest is the youngest running sequence */
    eng_request_params p; /* p.prompt points at tokens */
    int32_t *tokens;      /* [cap] prompt, then generated tokens */
    int n_prompt, n_gen, cap;
    int max_gen;     /* max_tokens clamped to the context */
    int n_done;      /* positions whose K/V are in the cache */
    int lp_next;     /* next prompt position (>= 1) whose logprob event is due */
    int prompt_seen; /* prompt positions computed at least once (recomputation is not counted) */
    int finished;    /* final event sent (or must not be sent) */
    int cancel;      /* set by eng_cancel (atomic) */
    kv_seq kv;
    smp_seq *smp;
    /* T5: n_enc > 0. The prompt is the encoder input (tokens[0..n_enc)); the decoder's
     * positions are p = 0..n_gen: dec_start, then the generated tokens (see seq_tok); n_done
     * counts decoder positions; the cross-attention K/V live in kv's KV_CROSS table. */
    int n_enc;
    int32_t dec_start;
    struct eng_seq *next; /* waiting list link */
} eng_seq;

/* One contiguous run of rows of one sequence in the batch. */
typedef struct eng_slice {
    eng_seq *s;
    int start, count; /* positions start..start+count-1 */
    int enc;          /* T5: this step also runs the sequence's encoder (it was just admitted) */
} eng_slice;

/* A row whose logits are needed: to sample (pos == last) or for a prompt logprob event. */
typedef struct eng_lrow {
    int32_t row;
    eng_seq *s;
    int prompt_pos; /* > 0: prompt logprob event for this prompt position; 0: sample */
} eng_lrow;

struct eng_engine {
    eng_params par;
    const lr_model *m;
    int V, ctx_limit;
    kern_pool *pool;
    kv_pool *kv;
    fwd_ctx *fwd;
    t5_ctx *t5; /* T5 models: the encoder-decoder pass instead of fwd */
    pthread_t thread;
    int thread_started;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop, draining;
    int held; /* eng_hold: the engine thread starts no step */
    uint64_t next_id, next_order;
    eng_seq *wait_head, *wait_tail;
    int n_waiting;
    eng_seq **running; /* [max_seqs], admission order */
    int n_running;
    eng_stats st;

    /* Step buffers, sized at create. */
    eng_slice *slices;     /* [max_seqs] */
    int32_t *ids, *pos;    /* [max_batch_tokens] */
    kv_seq **rkv;          /* [max_batch_tokens] */
    const void **radapter; /* [max_batch_tokens] */
    eng_lrow *lrows;       /* [max_batch_tokens] */
    int32_t *lidx;         /* [max_logit_rows] */
    float *logits;         /* [max_logit_rows, V] */
    float *smp_scratch;
    /* T5 only: encoder rows of the step, and each decoder row's encoder length. */
    int32_t *eids, *epos, *denc; /* [max_batch_tokens] */
    kv_seq **ekv;                /* [max_batch_tokens] */
    const void **eadapter;       /* [max_batch_tokens] */
    eng_seq **done; /* [max_seqs + 1] finished this step */
    int max_logit_rows;
};

static void seq_free(eng_engine *e, eng_seq *s)
{
    if (!s) return;
    kv_seq_release(e->kv, &s->kv);
    kv_seq_free(&s->kv);
    smp_seq_destroy(s->smp);
    free(s->tokens);
    free(s);
}

/* Positions the sequence has (T5: decoder positions: the start token and the generated ones). */
static int seq_len(const eng_seq *s)
{
    return s->n_enc ? 1 + s->n_gen : s->n_prompt + s->n_gen;
}

/* The token at position p (T5: the decoder input, starting from dec_start). */
static int32_t seq_tok(const eng_seq *s, int p)
{
    if (!s->n_enc) return s->tokens[p];
    return p == 0 ? s->dec_start : s->tokens[s->n_prompt + p - 1];
}

/* Deliver one event; returns the callback's answer (1 = stop). */
static int seq_emit(eng_seq *s, eng_event *ev)
{
    ev->n_prompt = s->n_prompt;
    ev->n_generated = s->n_gen;
    return s->p.cb(s->p.user, ev);
}

/* A pure finish event (ABORT / ERROR). */
static void seq_finish(eng_seq *s, eng_finish why, const char *msg)
{
    if (s->finished) return;
    s->finished = 1;
    eng_event ev;
    memset(&ev, 0, sizeof ev);
    ev.token = -1;
    ev.finish = why;
    ev.error = msg;
    seq_emit(s, &ev);
}

/* ---- lists (caller holds e->mu) ---- */

static void wait_push_back(eng_engine *e, eng_seq *s)
{
    s->next = NULL;
    if (e->wait_tail)
        e->wait_tail->next = s;
    else
        e->wait_head = s;
    e->wait_tail = s;
    e->n_waiting++;
}

static void wait_push_front(eng_engine *e, eng_seq *s)
{
    s->next = e->wait_head;
    e->wait_head = s;
    if (!e->wait_tail) e->wait_tail = s;
    e->n_waiting++;
}

static eng_seq *wait_pop_front(eng_engine *e)
{
    eng_seq *s = e->wait_head;
    if (!s) return NULL;
    e->wait_head = s->next;
    if (!e->wait_head) e->wait_tail = NULL;
    s->next = NULL;
    e->n_waiting--;
    return s;
}

static void running_remove_at(eng_engine *e, int i)
{
    memmove(&e->running[i], &e->running[i + 1], sizeof(eng_seq *) * (size_t)(e->n_running - i - 1));
    e->n_running--;
}

/* Preempt the youngest running sequence: free its blocks, requeue it at the front. Returns it. */
static eng_seq *preempt_youngest(eng_engine *e)
{
    int yi = 0;
    for (int i = 1; i < e->n_running; i++)
        if (e->running[i]->order > e->running[yi]->order) yi = i;
    eng_seq *v = e->running[yi];
    running_remove_at(e, yi);
    kv_seq_release(e->kv, &v->kv);
    v->n_done = 0;
    wait_push_front(e, v);
    e->st.preemptions++;
    return v;
}

/* ---- scheduling (caller holds e->mu) ---- */

/* Collect canceled requests into e->done (waiting ones and running ones). */
static int take_canceled(eng_engine *e)
{
    int nd = 0;
    eng_seq **pp = &e->wait_head, *prev = NULL;
    while (*pp) {
        eng_seq *s = *pp;
        if (__atomic_load_n(&s->cancel, __ATOMIC_RELAXED)) {
            *pp = s->next;
            if (e->wait_tail == s) e->wait_tail = prev;
            e->n_waiting--;
            e->done[nd++] = s;
            if (nd > e->par.max_seqs) /* e->done is full: the rest go next step */
                return nd;
        } else {
            prev = s;
            pp = &s->next;
        }
    }
    for (int i = 0; i < e->n_running && nd <= e->par.max_seqs;) {
        eng_seq *s = e->running[i];
        if (__atomic_load_n(&s->cancel, __ATOMIC_RELAXED)) {
            running_remove_at(e, i);
            kv_seq_release(e->kv, &s->kv);
            e->done[nd++] = s;
        } else {
            i++;
        }
    }
    return nd;
}

/* Build this step's slices. Returns the number of slices; *n_err gets sequences that can never
 * fit (moved to e->done from index *n_done on). */
static int schedule(eng_engine *e, int *n_done)
{
    int budget = e->par.max_batch_tokens, ns = 0;
    /* 1. One decode row per running sequence that has all but its last token computed. */
    for (int i = 0; i < e->n_running && budget > 0; i++) {
        eng_seq *s = e->running[i];
        int len = seq_len(s);
        if (len - s->n_done != 1) continue;
        int preempted_self = 0, rc;
        while ((rc = kv_seq_reserve(e->kv, &s->kv, KV_SELF, len)) == LR_ENOMEM) {
            /* The pool is dry: the youngest sequence gives its blocks back. */
            eng_seq *v = preempt_youngest(e);
            if (v == s) {
                preempted_self = 1;
                break;
            }
        }
        /* len <= ctx_limit <= the table's capacity, so only ENOMEM can happen. */
        LR_ASSERT(rc == 0 || preempted_self);
        if (preempted_self) {
            /* s was the youngest: nothing after it is left to schedule */
            break;
        }
        e->slices[ns++] = (eng_slice){s, len - 1, 1, 0};
        budget--;
    }
    /* 2. Prefill chunks of admitted sequences (their blocks were reserved at admission). */
    for (int i = 0; i < e->n_running && budget > 0; i++) {
        eng_seq *s = e->running[i];
        int rem = seq_len(s) - s->n_done;
        if (rem <= 1) continue;
        int c = rem < budget ? rem : budget;
        e->slices[ns++] = (eng_slice){s, s->n_done, c, 0};
        budget -= c;
    }
    /* 3. Admission, first come first served. */
    while (e->wait_head && budget > 0 && e->n_running < e->par.max_seqs) {
        eng_seq *s = e->wait_head;
        int len = seq_len(s);
        if (len > e->ctx_limit) {
            wait_pop_front(e);
            e->done[(*n_done)++] = s; /* can never fit: finished with ERROR by the caller */
            if (*n_done > e->par.max_seqs) break;
            continue;
        }
        /* T5: the whole encoder runs in this step, with at least one decoder row, and the
         * cross-attention table is reserved too (both or neither). */
        int enc = s->n_enc;
        if (enc && (enc + 1 > budget ||
                    kv_blocks_for(e->kv, enc) + kv_blocks_for(e->kv, len) > kv_blocks_total(e->kv))) {
            if (enc + 1 <= e->par.max_batch_tokens &&
                kv_blocks_for(e->kv, enc) + kv_blocks_for(e->kv, len) <= kv_blocks_total(e->kv))
                break; /* wait for a step with room for its encoder */
            wait_pop_front(e);
            e->done[(*n_done)++] = s; /* can never fit */
            if (*n_done > e->par.max_seqs) break;
            continue;
        }
        if (enc && kv_seq_reserve(e->kv, &s->kv, KV_CROSS, enc) != 0) break;
        if (kv_seq_reserve(e->kv, &s->kv, KV_SELF, len) != 0) {
            kv_seq_release(e->kv, &s->kv);
            break; /* wait for blocks; later requests wait behind it */
        }
        wait_pop_front(e);
        s->order = ++e->next_order;
        s->n_done = 0;
        e->running[e->n_running++] = s;
        budget -= enc;
        int c = len < budget ? len : budget;
        e->slices[ns++] = (eng_slice){s, 0, c, enc > 0};
        budget -= c;
    }
    return ns;
}

/* ---- the step ---- */

static int is_eos(const eng_engine *e, int32_t tok)
{
    for (int i = 0; i < e->m->cfg.n_eos; i++)
        if (e->m->cfg.eos_ids[i] == tok) return 1;
    return 0;
}

/* Logits of one row are in `lg`: send the prompt logprob event or sample the next token. */
static void handle_logits(eng_engine *e, const eng_lrow *r, const float *lg)
{
    eng_seq *s = r->s;
    if (s->finished) return;
    eng_event ev;
    memset(&ev, 0, sizeof ev);
    ev.n_top = s->p.top_logprobs < e->V ? s->p.top_logprobs : e->V;
    if (r->prompt_pos > 0) {
        int32_t tok = s->tokens[r->prompt_pos];
        ev.token = tok;
        ev.logprob = smp_logprobs(lg, e->V, tok, ev.n_top, ev.top_ids, ev.top_logprobs);
        ev.finish = ENG_FINISH_NONE;
        s->lp_next = r->prompt_pos + 1;
        if (seq_emit(s, &ev)) s->finished = 1;
        return;
    }
    int32_t tok = smp_sample(s->smp, lg, e->smp_scratch);
    smp_seq_accept(s->smp, tok);
    ev.token = tok;
    ev.logprob = smp_logprobs(lg, e->V, tok, ev.n_top, ev.top_ids, ev.top_logprobs);
    s->tokens[s->n_prompt + s->n_gen] = tok;
    s->n_gen++;
    if (!s->p.ignore_eos && is_eos(e, tok))
        ev.finish = ENG_FINISH_EOS;
    else if (s->n_gen >= s->max_gen || seq_len(s) >= e->ctx_limit)
        ev.finish = ENG_FINISH_LENGTH;
    else if (s->n_enc && kv_blocks_for(e->kv, s->n_enc) + kv_blocks_for(e->kv, seq_len(s) + 1) >
                             kv_blocks_total(e->kv))
        ev.finish = ENG_FINISH_LENGTH; /* T5: the encoder's table shares the pool */
    pthread_mutex_lock(&e->mu);
    e->st.generated_tokens++;
    pthread_mutex_unlock(&e->mu);
    int stop = seq_emit(s, &ev);
    if (ev.finish != ENG_FINISH_NONE || stop) s->finished = 1;
}

static int cmp_ptr(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
    return x < y ? -1 : x > y;
}

/* One scheduling round and forward pass. Returns the number of slices run (0: nothing to do). */
static int engine_step(eng_engine *e)
{
    pthread_mutex_lock(&e->mu);
    int nd = take_canceled(e);
    int n_abort = nd;
    int ns = schedule(e, &nd);
    pthread_mutex_unlock(&e->mu);

    for (int i = 0; i < nd; i++) {
        eng_seq *s = e->done[i];
        if (i < n_abort)
            seq_finish(s, ENG_FINISH_ABORT, NULL);
        else
            seq_finish(s, ENG_FINISH_ERROR,
                       "the prompt does not fit in the KV cache; raise --kv-cache-mb or send a "
                       "shorter prompt");
        seq_free(e, s);
    }
    if (ns == 0) return 0;

    /* Group the slices by adapter (stable insertion sort: few slices), so each adapter's rows
     * form one run for the LoRA hook. */
    for (int i = 1; i < ns; i++) {
        eng_slice x = e->slices[i];
        int j = i - 1;
        while (j >= 0 && cmp_ptr(e->slices[j].s->p.adapter, x.s->p.adapter) > 0) {
            e->slices[j + 1] = e->slices[j];
            j--;
        }
        e->slices[j + 1] = x;
    }
    int n = 0, nl = 0, n_adapters = 0, ne = 0;
    const void *last_ad = NULL;
    uint64_t n_prompt_rows = 0;
    for (int i = 0; i < ns; i++) {
        eng_slice *sl = &e->slices[i];
        eng_seq *s = sl->s;
        if (s->p.adapter && (n_adapters == 0 || s->p.adapter != last_ad)) {
            n_adapters++;
            last_ad = s->p.adapter;
        }
        int len = seq_len(s);
        /* T5: the encoder rows of a newly admitted sequence (its whole prompt); they count as
         * its prompt tokens, once. */
        for (int p = 0; sl->enc && p < s->n_enc; p++) {
            e->eids[ne] = s->tokens[p];
            e->epos[ne] = p;
            e->ekv[ne] = &s->kv;
            e->eadapter[ne] = s->p.adapter;
            ne++;
            if (p >= s->prompt_seen) {
                n_prompt_rows++;
                s->prompt_seen = p + 1;
            }
        }
        for (int k = 0; k < sl->count; k++) {
            int p = sl->start + k;
            e->ids[n] = seq_tok(s, p);
            e->pos[n] = p;
            if (e->denc) e->denc[n] = s->n_enc;
            e->rkv[n] = &s->kv;
            e->radapter[n] = s->p.adapter;
            if (!s->n_enc && p < s->n_prompt && p >= s->prompt_seen) {
                n_prompt_rows++;
                s->prompt_seen = p + 1;
            }
            if (s->p.prompt_logprobs && p + 1 < s->n_prompt && p + 1 >= s->lp_next)
                e->lrows[nl++] = (eng_lrow){n, s, p + 1};
            if (p == len - 1) e->lrows[nl++] = (eng_lrow){n, s, 0};
            n++;
        }
    }
    fwd_batch b = {n, e->ids, e->pos, (kv_seq *const *)e->rkv, e->radapter};
    lr_error err;
    lr_error_clear(&err);
    int rc;
    if (e->t5) {
        t5_batch tb = {ne, e->eids, e->epos, (kv_seq *const *)e->ekv, e->eadapter,
                       n,  e->ids,  e->pos,  (kv_seq *const *)e->rkv, e->radapter, e->denc};
        rc = t5_forward(e->t5, &tb, &err);
    } else {
        rc = fwd_forward(e->fwd, &b, &err);
    }
    /* Pass counters before any event, so a snapshot taken after a request's last event
     * includes the pass that produced it. */
    pthread_mutex_lock(&e->mu);
    e->st.steps++;
    e->st.prompt_tokens += n_prompt_rows;
    if (n_adapters >= 2) e->st.mixed_adapter_steps++;
    if ((uint64_t)n_adapters > e->st.max_adapters_in_step)
        e->st.max_adapters_in_step = (uint64_t)n_adapters;
    pthread_mutex_unlock(&e->mu);
    if (rc == 0) {
        for (int i = 0; i < ns; i++)
            e->slices[i].s->n_done = e->slices[i].start + e->slices[i].count;
        for (int i0 = 0; i0 < nl; i0 += e->max_logit_rows) {
            int c = nl - i0 < e->max_logit_rows ? nl - i0 : e->max_logit_rows;
            for (int i = 0; i < c; i++)
                e->lidx[i] = e->lrows[i0 + i].row;
            if (e->t5)
                t5_logits(e->t5, e->lidx, c, e->logits);
            else
                fwd_logits(e->fwd, e->lidx, c, e->logits);
            for (int i = 0; i < c; i++)
                handle_logits(e, &e->lrows[i0 + i], e->logits + (size_t)i * (size_t)e->V);
        }
    } else {
        for (int i = 0; i < ns; i++)
            seq_finish(e->slices[i].s, ENG_FINISH_ERROR, err.msg);
    }

    /* Retire finished sequences. */
    pthread_mutex_lock(&e->mu);
    nd = 0;
    for (int i = 0; i < e->n_running;) {
        eng_seq *s = e->running[i];
        if (s->finished) {
            running_remove_at(e, i);
            kv_seq_release(e->kv, &s->kv);
            e->done[nd++] = s;
        } else {
            i++;
        }
    }
    pthread_mutex_unlock(&e->mu);
    for (int i = 0; i < nd; i++)
        seq_free(e, e->done[i]);
    return ns;
}

static void *engine_main(void *arg)
{
    eng_engine *e = arg;
    for (;;) {
        pthread_mutex_lock(&e->mu);
        while (!e->stop && (e->held || (!e->wait_head && e->n_running == 0)))
            pthread_cond_wait(&e->cv, &e->mu);
        int stop = e->stop;
        pthread_mutex_unlock(&e->mu);
        if (stop) break;
        if (engine_step(e) == 0) {
            /* Work exists but none could be scheduled (should not happen: an idle pool admits
             * or rejects the head of the queue). Wait a little rather than spin. */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 1000000;
            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }
            pthread_mutex_lock(&e->mu);
            if (!e->stop) pthread_cond_timedwait(&e->cv, &e->mu, &ts);
            pthread_mutex_unlock(&e->mu);
        }
    }
    /* Shutdown: every unfinished request gets ABORT. */
    pthread_mutex_lock(&e->mu);
    eng_seq *list = NULL;
    eng_seq *s;
    while ((s = wait_pop_front(e)) != NULL) {
        s->next = list;
        list = s;
    }
    while (e->n_running > 0) {
        s = e->running[--e->n_running];
        kv_seq_release(e->kv, &s->kv);
        s->next = list;
        list = s;
    }
    pthread_mutex_unlock(&e->mu);
    while (list) {
        s = list;
        list = s->next;
        seq_finish(s, ENG_FINISH_ABORT, NULL);
        seq_free(e, s);
    }
    return NULL;
}

/* ---- public API ---- */

void eng_destroy(eng_engine *e)
{
    if (!e) return;
    if (e->thread_started) {
        pthread_mutex_lock(&e->mu);
        e->stop = 1;
        pthread_cond_broadcast(&e->cv);
        pthread_mutex_unlock(&e->mu);
        pthread_join(e->thread, NULL);
    }
    fwd_destroy(e->fwd);
    t5_destroy(e->t5);
    kv_pool_destroy(e->kv);
    kern_pool_destroy(e->pool);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    free(e->running);
    free(e->slices);
    free(e->ids);
    free(e->pos);
    free(e->rkv);
    free(e->radapter);
    free(e->lrows);
    free(e->lidx);
    free(e->logits);
    free(e->smp_scratch);
    free(e->eids);
    free(e->epos);
    free(e->denc);
    free(e->ekv);
    free(e->eadapter);
    free(e->done);
    free(e);
}

int eng_create(const eng_params *params, lr_error *err, eng_engine **out)
{
    *out = NULL;
    const lr_model *m = params->model;
    if (!m) return lr_error_set(err, LR_EINVAL, "engine: no model given");
    int is_t5 = m->cfg.arch == LR_ARCH_T5;
    eng_params p = *params;
    if (p.max_batch_tokens <= 0) p.max_batch_tokens = 512;
    if (p.max_seqs <= 0) p.max_seqs = 64;
    if (p.max_seqs > p.max_batch_tokens)
        p.max_seqs = p.max_batch_tokens; /* every running sequence gets its decode row */
    if (p.max_queue <= 0) p.max_queue = 1024;
    if (p.kv_cache_mb <= 0) p.kv_cache_mb = 256;
    if (p.kv_block_tokens <= 0) p.kv_block_tokens = 16;
    if (p.delta && (!p.delta->has_module || !p.delta->apply))
        return lr_error_set(err, LR_EINVAL, "engine: the delta ops lack has_module or apply");
    eng_engine *e = calloc(1, sizeof *e);
    if (!e) return lr_error_set(err, LR_ENOMEM, "engine: out of memory");
    e->par = p;
    e->m = m;
    e->V = m->cfg.vocab;
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    int rc = kern_pool_create(p.threads, err, &e->pool);
    if (rc) goto fail;
    /* T5: the pool holds the decoder's self-attention and cross-attention K/V, per decoder
     * block; the encoder's K/V live only during its pass. */
    kv_params kp = {is_t5 ? m->cfg.n_dec_layers : m->cfg.n_layers,
                    m->cfg.n_kv_heads * m->cfg.head_dim, p.kv_block_tokens,
                    p.kv_cache_bytes > 0 ? p.kv_cache_bytes : p.kv_cache_mb * 1024 * 1024,
                    m->cfg.max_pos, p.kv_resident};
    rc = kv_pool_create(&kp, err, &e->kv);
    if (rc) goto fail;
    int64_t pool_tokens = (int64_t)kv_blocks_total(e->kv) * p.kv_block_tokens;
    e->ctx_limit = pool_tokens < m->cfg.max_pos ? (int)pool_tokens : m->cfg.max_pos;
    e->max_logit_rows = p.max_seqs;
    fwd_params fp = {m, e->pool, e->kv, p.max_batch_tokens, e->max_logit_rows, p.delta};
    rc = is_t5 ? t5_create(&fp, err, &e->t5) : fwd_create(&fp, err, &e->fwd);
    if (rc) goto fail;
    size_t T = (size_t)p.max_batch_tokens;
    e->running = calloc((size_t)p.max_seqs, sizeof *e->running);
    e->slices = calloc((size_t)p.max_seqs, sizeof *e->slices);
    e->ids = calloc(T, sizeof *e->ids);
    e->pos = calloc(T, sizeof *e->pos);
    e->rkv = calloc(T, sizeof *e->rkv);
    e->radapter = calloc(T, sizeof *e->radapter);
    e->lrows = calloc(2 * T, sizeof *e->lrows); /* a row may carry a logprob and a sample */
    e->lidx = calloc((size_t)e->max_logit_rows, sizeof *e->lidx);
    e->logits = calloc((size_t)e->max_logit_rows * (size_t)e->V, sizeof(float));
    e->smp_scratch = calloc(smp_scratch_floats(e->V) + 1, sizeof(float));
    e->done = calloc((size_t)p.max_seqs * 2 + 2, sizeof *e->done);
    if (is_t5) {
        e->eids = calloc(T, sizeof *e->eids);
        e->epos = calloc(T, sizeof *e->epos);
        e->denc = calloc(T, sizeof *e->denc);
        e->ekv = calloc(T, sizeof *e->ekv);
        e->eadapter = calloc(T, sizeof *e->eadapter);
    }
    if (!e->running || !e->slices || !e->ids || !e->pos || !e->rkv || !e->radapter || !e->lrows ||
        !e->lidx || !e->logits || !e->smp_scratch || !e->done ||
        (is_t5 && (!e->eids || !e->epos || !e->denc || !e->ekv || !e->eadapter))) {
        rc = lr_error_set(err, LR_ENOMEM, "engine: cannot allocate step buffers for %d tokens",
                          p.max_batch_tokens);
        goto fail;
    }
    if (pthread_create(&e->thread, NULL, engine_main, e) != 0) {
        rc = lr_error_set(err, LR_EINTERNAL, "engine: cannot start the engine thread");
        goto fail;
    }
    e->thread_started = 1;
    *out = e;
    return 0;
fail:
    eng_destroy(e);
    return rc;
}

int eng_submit(eng_engine *e, const eng_request_params *p, lr_error *err, uint64_t *id_out)
{
    const lr_config *cf = &e->m->cfg;
    if (!p->cb) return lr_error_set(err, LR_EINVAL, "request: no event callback given");
    if (!p->prompt || p->n_prompt < 1)
        return lr_error_set(err, LR_EINVAL, "request: the prompt must hold at least one token");
    if (p->max_tokens < 1)
        return lr_error_set(err, LR_EINVAL, "max_tokens must be an integer >= 1, got %d",
                            p->max_tokens);
    if (p->top_logprobs < 0 || p->top_logprobs > ENG_MAX_TOP_LOGPROBS)
        return lr_error_set(err, LR_EINVAL, "top_logprobs must be between 0 and %d, got %d",
                            ENG_MAX_TOP_LOGPROBS, p->top_logprobs);
    for (int i = 0; i < p->n_prompt; i++)
        if (p->prompt[i] < 0 || p->prompt[i] >= cf->vocab)
            return lr_error_set(err, LR_EINVAL,
                                "prompt token %d (at index %d) is outside the vocabulary [0, %d)",
                                p->prompt[i], i, cf->vocab);
    if (p->n_prompt >= cf->max_pos)
        return lr_error_set(err, LR_EINVAL,
                            "the prompt has %d tokens but the model's context is %d tokens; at "
                            "most %d prompt tokens leave room for one generated token",
                            p->n_prompt, cf->max_pos, cf->max_pos - 1);
    /* T5: the encoder runs in one pass with at least one decoder row; the encoder has no
     * per-position logprobs. */
    int is_t5 = cf->arch == LR_ARCH_T5;
    if (is_t5 && p->n_prompt + 1 > e->par.max_batch_tokens)
        return lr_error_set(err, LR_EINVAL,
                            "the prompt has %d tokens; the encoder runs in one pass of at most %d "
                            "tokens (--max-batch-tokens) with one decoder token, so at most %d "
                            "prompt tokens fit",
                            p->n_prompt, e->par.max_batch_tokens, e->par.max_batch_tokens - 1);
    if (is_t5 && p->prompt_logprobs)
        return lr_error_set(err, LR_EINVAL,
                            "prompt logprobs (echo) are not defined for an encoder-decoder model: "
                            "the prompt is the encoder input");
    int rc = smp_params_check(&p->sampling, err);
    if (rc) return rc;

    eng_seq *s = calloc(1, sizeof *s);
    if (!s) return lr_error_set(err, LR_ENOMEM, "request: out of memory");
    s->p = *p;
    s->n_prompt = p->n_prompt;
    int room = is_t5 ? cf->max_pos - 1 : cf->max_pos - p->n_prompt; /* T5: decoder positions */
    s->max_gen = p->max_tokens < room ? p->max_tokens : room;
    s->cap = p->n_prompt + s->max_gen;
    s->lp_next = 1;
    s->n_enc = is_t5 ? p->n_prompt : 0;
    s->dec_start = cf->decoder_start_id;
    s->tokens = malloc(sizeof(int32_t) * (size_t)s->cap);
    if (!s->tokens || kv_seq_init(e->kv, &s->kv) != 0 ||
        smp_seq_create(&p->sampling, cf->vocab, &s->smp) != 0) {
        seq_free(e, s);
        return lr_error_set(err, LR_ENOMEM, "request: out of memory");
    }
    memcpy(s->tokens, p->prompt, sizeof(int32_t) * (size_t)p->n_prompt);
    s->p.prompt = s->tokens;
    /* HF penalises repeats over the decoder's input ids for encoder-decoder models. */
    if (is_t5)
        smp_seq_add_prompt(s->smp, &s->dec_start, 1);
    else
        smp_seq_add_prompt(s->smp, s->tokens, s->n_prompt);

    pthread_mutex_lock(&e->mu);
    if (e->draining || e->stop) {
        pthread_mutex_unlock(&e->mu);
        seq_free(e, s);
        return lr_error_set(err, LR_ESHUTDOWN, "the engine is shutting down");
    }
    if (e->n_waiting >= e->par.max_queue) {
        int q = e->n_waiting;
        pthread_mutex_unlock(&e->mu);
        seq_free(e, s);
        return lr_error_set(err, LR_EBUSY, "the queue is full (%d waiting requests); retry later",
                            q);
    }
    s->id = ++e->next_id;
    wait_push_back(e, s);
    if (id_out) *id_out = s->id;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return 0;
}

void eng_hold(eng_engine *e, int on)
{
    pthread_mutex_lock(&e->mu);
    e->held = on != 0;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

void eng_cancel(eng_engine *e, uint64_t id)
{
    pthread_mutex_lock(&e->mu);
    for (eng_seq *s = e->wait_head; s; s = s->next)
        if (s->id == id) __atomic_store_n(&s->cancel, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < e->n_running; i++)
        if (e->running[i]->id == id) __atomic_store_n(&e->running[i]->cancel, 1, __ATOMIC_RELAXED);
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

void eng_drain(eng_engine *e)
{
    pthread_mutex_lock(&e->mu);
    e->draining = 1;
    pthread_mutex_unlock(&e->mu);
}

void eng_get_stats(eng_engine *e, eng_stats *out)
{
    pthread_mutex_lock(&e->mu);
    *out = e->st;
    out->running = e->n_running;
    out->waiting = e->n_waiting;
    out->kv_blocks_total = kv_blocks_total(e->kv);
    out->kv_blocks_used = kv_blocks_used(e->kv);
    pthread_mutex_unlock(&e->mu);
}
