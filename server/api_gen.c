/* api_gen.c — one /v1/completions request in flight: its sequences on the engine, the engine
 * callback that turns tokens into text (streaming detokenisation, stop strings with hold-back),
 * and the JSON the client sees (one response, or SSE chunks).
 *
 * Threads and ownership: a job is shared by the HTTP thread that serves it and the engine
 * thread that reports its tokens. It is reference-counted: one reference for the HTTP side and
 * one per submitted sequence, dropped by the sequence's final engine event. Everything the
 * engine callback touches is sized at submit time (token and logprob arrays hold
 * prompt + max_tokens entries), so a slow client never blocks the engine: the callback appends
 * under the job's mutex and signals; the HTTP side drains at its own pace.
 *
 * Not here: request validation (api_cmpl.c), routing and the other endpoints (api.c). */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api.h"
#include "log.h"

typedef struct api_seq {
    struct api_job *job;
    int index;  /* choice index: prompt * n + i */
    int prompt; /* which prompt */
    uint64_t eng_id;
    int submitted;
    tok_stream *ts;
    /* Decoded text not yet released: it may be the start of a stop string. */
    char *pend;
    size_t pend_len, pend_cap;
    /* Released text (with echo, starts with the prompt). */
    char *text;
    size_t text_len, text_cap;
    size_t chars; /* code points decoded so far (text + pend), for text_offset */
    /* Generated ids [cap_ids]. */
    int32_t *gen;
    int n_gen_ids, cap_ids;
    /* Logprob entries [cap_lp] (echoed prompt tokens first, then generated ones). */
    int cap_lp, n_lp;
    int32_t *lp_tok;
    float *lp_val;     /* NAN for the first prompt token (no logprob) */
    long long *lp_off; /* text_offset in code points */
    int *lp_ntop;      /* -1 = null */
    int32_t *top_ids;  /* [cap_lp * k] */
    float *top_val;
    int n_prompt, n_gen;
    eng_finish finish;
    int done;
    char error[256];
    /* Streaming cursors (HTTP thread, under the mutex). */
    size_t text_sent;
    int lp_sent, ids_sent, first_sent, final_sent;
} api_seq;

struct api_job {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;
    api_ctx *ctx;
    api_cmpl_req req;
    int n_seqs, n_done;
    api_seq *seqs;
    long long **prompt_off; /* per prompt: code-point offset of each prompt token (echo+logprobs) */
    char id[48];
    long long created;
    char *model_name;
    int top_k;           /* logprob alternatives per entry (0 when logprobs is off) */
    const void *adapter; /* from the resolver; released when the job is freed */
};

struct api_stream {
    api_job *j;
    api_conn conn;
    char *out;
    size_t out_len, out_pos, out_cap;
    int state; /* 0 streaming, 1 [DONE] queued, 2 ended */
};

/* ---- small helpers ---- */

static size_t utf8_chars(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += ((unsigned char)s[i] & 0xC0) != 0x80;
    return c;
}

static int buf_append(char **p, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap : 256;
        while (c < *len + n + 1)
            c *= 2;
        char *q = realloc(*p, c);
        if (!q) return LR_ENOMEM;
        *p = q;
        *cap = c;
    }
    if (n) memcpy(*p + *len, s, n);
    *len += n;
    (*p)[*len] = '\0';
    return 0;
}

static void deadline_in(struct timespec *ts, long ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

size_t api_stop_holdback(const char *text, size_t len, char *const *stop, int n_stop)
{
    size_t best = 0;
    for (int i = 0; i < n_stop; i++) {
        size_t sl = strlen(stop[i]);
        /* Longest k < sl with text's last k bytes == stop's first k bytes. */
        size_t k = sl - 1 < len ? sl - 1 : len;
        for (; k > best; k--)
            if (memcmp(text + len - k, stop[i], k) == 0) {
                best = k;
                break;
            }
    }
    return best;
}

/* Move released text out of pend. With final, everything left is released. Returns 1 when a
 * stop string matched (the text from its start on is dropped). Called under the mutex. */
static int settle(api_seq *s, int final)
{
    const api_cmpl_req *r = &s->job->req;
    if (s->pend_len == 0) /* nothing decoded yet (pend may still be NULL) */
        return 0;
    size_t cut = (size_t)-1;
    for (int i = 0; i < r->n_stop; i++) {
        const char *hit = memmem(s->pend, s->pend_len, r->stop[i], strlen(r->stop[i]));
        if (hit && (size_t)(hit - s->pend) < cut) cut = (size_t)(hit - s->pend);
    }
    size_t keep = 0;
    if (cut == (size_t)-1 && !final)
        keep = api_stop_holdback(s->pend, s->pend_len, r->stop, r->n_stop);
    size_t out = cut != (size_t)-1 ? cut : s->pend_len - keep;
    if (out && buf_append(&s->text, &s->text_len, &s->text_cap, s->pend, out) != 0)
        snprintf(s->error, sizeof s->error, "out of memory while collecting the output");
    if (cut != (size_t)-1) {
        s->pend_len = 0;
        return 1;
    }
    if (keep) memmove(s->pend, s->pend + out, keep);
    s->pend_len = keep;
    return 0;
}

static void lp_push(api_seq *s, const eng_event *ev, int null_lp, long long off)
{
    if (s->n_lp >= s->cap_lp) return;
    int i = s->n_lp++;
    int k = s->job->top_k;
    s->lp_tok[i] = ev ? ev->token : -1;
    s->lp_off[i] = off;
    if (null_lp) {
        s->lp_val[i] = NAN;
        s->lp_ntop[i] = -1;
        return;
    }
    s->lp_val[i] = ev->logprob;
    int nt = ev->n_top < k ? ev->n_top : k;
    if (nt < 0) nt = 0;
    s->lp_ntop[i] = nt;
    for (int t = 0; t < nt; t++) {
        s->top_ids[(size_t)i * k + t] = ev->top_ids[t];
        s->top_val[(size_t)i * k + t] = ev->top_logprobs[t];
    }
}

static void job_free(api_job *j)
{
    for (int i = 0; i < j->n_seqs; i++) {
        api_seq *s = &j->seqs[i];
        tok_stream_destroy(s->ts);
        free(s->pend);
        free(s->text);
        free(s->gen);
        free(s->lp_tok);
        free(s->lp_val);
        free(s->lp_off);
        free(s->lp_ntop);
        free(s->top_ids);
        free(s->top_val);
    }
    free(j->seqs);
    if (j->prompt_off)
        for (int p = 0; p < j->req.n_prompts; p++)
            free(j->prompt_off[p]);
    free(j->prompt_off);
    free(j->model_name);
    auth_release(j->req.tenant);
    /* Every engine reference is gone, so the engine no longer reads the adapter. */
    if (j->adapter && j->ctx->aops && j->ctx->aops->release)
        j->ctx->aops->release(j->ctx->aops_user, j->adapter);
    api_cmpl_req_clear(&j->req);
    pthread_mutex_destroy(&j->mu);
    pthread_cond_destroy(&j->cv);
    free(j);
}

static void job_unref(api_job *j)
{
    pthread_mutex_lock(&j->mu);
    int left = --j->refs;
    pthread_mutex_unlock(&j->mu);
    if (left == 0) job_free(j);
}

/* ---- the engine callback (engine thread) ---- */

static int on_event(void *user, const eng_event *ev)
{
    api_seq *s = user;
    api_job *j = s->job;
    int stop = 0, final = 0;
    pthread_mutex_lock(&j->mu);
    if (s->done) { /* cannot happen per the engine contract; be safe */
        pthread_mutex_unlock(&j->mu);
        return 1;
    }
    if (ev->token >= 0) {
        int is_prompt = ev->n_generated == 0 && ev->finish == ENG_FINISH_NONE;
        if (is_prompt) {
            /* Prompt logprobs (echo + logprobs): entry i is prompt token i. */
            const api_prompt *p = &j->req.prompts[s->prompt];
            if (!j->req.tgi && j->req.echo && j->req.logprobs >= 0 && s->n_lp < p->n)
                lp_push(s, ev, 0, j->prompt_off ? j->prompt_off[s->prompt][s->n_lp] : 0);
        } else {
            if (j->req.logprobs >= 0) lp_push(s, ev, 0, (long long)s->chars);
            if (s->n_gen_ids < s->cap_ids) s->gen[s->n_gen_ids++] = ev->token;
            s->n_gen = ev->n_generated;
            size_t before = s->pend_len;
            int rc = tok_stream_step(s->ts, ev->token, &s->pend, &s->pend_len, &s->pend_cap);
            if (rc) {
                snprintf(s->error, sizeof s->error, "token %d could not be decoded: %s",
                         (int)ev->token, lr_strerror(rc));
                stop = 1;
            } else {
                s->chars += utf8_chars(s->pend + before, s->pend_len - before);
                if (ev->finish == ENG_FINISH_NONE) stop = settle(s, 0);
            }
        }
    }
    if (ev->finish != ENG_FINISH_NONE || stop) {
        s->finish = stop ? ENG_FINISH_STOP : ev->finish;
        if (!stop && (ev->finish == ENG_FINISH_LENGTH || ev->finish == ENG_FINISH_EOS ||
                      ev->finish == ENG_FINISH_STOP)) {
            size_t before = s->pend_len;
            if (tok_stream_flush(s->ts, &s->pend, &s->pend_len, &s->pend_cap) == 0)
                s->chars += utf8_chars(s->pend + before, s->pend_len - before);
            if (settle(s, 1)) s->finish = ENG_FINISH_STOP;
        }
        if (ev->finish == ENG_FINISH_ERROR)
            snprintf(s->error, sizeof s->error, "%s",
                     ev->error ? ev->error : "the engine could not run this request");
        if (ev->n_prompt > 0) s->n_prompt = ev->n_prompt;
        if (ev->n_generated > s->n_gen) s->n_gen = ev->n_generated;
        s->done = 1;
        j->n_done++;
        final = 1;
    }
    /* Wake the HTTP side only when it has something to do: a non-streamed reply waits for the
     * final events only (a wake-up per token costs a context switch per token and steals CPU
     * from the engine's compute threads). */
    if (final || j->req.stream) pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    if (final) job_unref(j);
    return stop;
}

/* ---- starting a job (HTTP thread) ---- */

/* Code-point offset of each prompt token in the decoded prompt (for echo + logprobs). */
static long long *prompt_offsets(const tok_tokenizer *tok, const api_prompt *p)
{
    long long *off = calloc((size_t)p->n + 1, sizeof *off);
    tok_stream *ts = NULL;
    char *buf = NULL;
    size_t len = 0, cap = 0, chars = 0;
    if (!off || tok_stream_create(tok, 1, &ts) != 0) {
        free(off);
        return NULL;
    }
    for (int i = 0; i < p->n; i++) {
        off[i] = (long long)chars;
        size_t before = len;
        if (tok_stream_step(ts, p->ids[i], &buf, &len, &cap) == 0)
            chars += utf8_chars(buf + before, len - before);
    }
    tok_stream_destroy(ts);
    free(buf);
    return off;
}

static int seq_init(api_job *j, api_seq *s, int index, int prompt, api_err *err)
{
    const api_cmpl_req *r = &j->req;
    const api_prompt *p = &r->prompts[prompt];
    const tok_tokenizer *tok = j->ctx->tok;
    s->job = j;
    s->index = index;
    s->prompt = prompt;
    s->n_prompt = p->n;
    if (tok_stream_create(tok, 1, &s->ts) != 0)
        return api_fail(err, LR_ENOMEM, 500, NULL, "could not create a detokenizer stream");
    s->cap_ids = r->max_tokens + 1;
    s->gen = malloc((size_t)s->cap_ids * sizeof *s->gen);
    if (!s->gen) return api_fail(err, LR_ENOMEM, 500, NULL, "out of memory");
    if (r->echo) {
        /* The echoed prompt: as given for string prompts, decoded for token prompts. */
        if (p->text) {
            if (buf_append(&s->text, &s->text_len, &s->text_cap, p->text, p->text_len))
                return api_fail(err, LR_ENOMEM, 500, NULL, "out of memory");
        } else {
            char *t = NULL;
            size_t tl = 0;
            int rc = tok_decode(tok, p->ids, (size_t)p->n, 1, &t, &tl);
            if (rc == 0) rc = buf_append(&s->text, &s->text_len, &s->text_cap, t, tl);
            free(t);
            if (rc)
                return api_fail(err, rc, rc == LR_ENOMEM ? 500 : 400, "prompt",
                                "the prompt could not be decoded for echo: %s", lr_strerror(rc));
        }
        s->chars = utf8_chars(s->text, s->text_len);
    }
    if (r->logprobs >= 0) {
        s->cap_lp = (r->echo ? p->n : 0) + r->max_tokens + 1;
        size_t k = (size_t)(j->top_k > 0 ? j->top_k : 1);
        s->lp_tok = malloc((size_t)s->cap_lp * sizeof *s->lp_tok);
        s->lp_val = malloc((size_t)s->cap_lp * sizeof *s->lp_val);
        s->lp_off = malloc((size_t)s->cap_lp * sizeof *s->lp_off);
        s->lp_ntop = malloc((size_t)s->cap_lp * sizeof *s->lp_ntop);
        s->top_ids = malloc((size_t)s->cap_lp * k * sizeof *s->top_ids);
        s->top_val = malloc((size_t)s->cap_lp * k * sizeof *s->top_val);
        if (!s->lp_tok || !s->lp_val || !s->lp_off || !s->lp_ntop || !s->top_ids || !s->top_val)
            return api_fail(err, LR_ENOMEM, 500, NULL, "out of memory");
        if (r->echo && !r->tgi) {
            /* The first prompt token has no logprob (nothing precedes it). */
            eng_event first = {.token = p->ids[0]};
            lp_push(s, &first, 1, 0);
        }
    }
    return 0;
}

/* Collect the engine ids of unfinished sequences (under the mutex) and cancel them (outside
 * it, so that an engine that delivers the ABORT synchronously cannot deadlock us). */
static void cancel_unfinished(api_job *j)
{
    uint64_t ids[API_MAX_SEQS];
    int n = 0;
    pthread_mutex_lock(&j->mu);
    for (int i = 0; i < j->n_seqs; i++)
        if (j->seqs[i].submitted && !j->seqs[i].done) ids[n++] = j->seqs[i].eng_id;
    pthread_mutex_unlock(&j->mu);
    for (int i = 0; i < n; i++)
        eng_cancel(j->ctx->eng, ids[i]);
}

int api_job_start(api_ctx *ctx, api_cmpl_req *req, const void *adapter, api_job **out, api_err *err)
{
    *out = NULL;
    /* T5: the prompt is the encoder input, not the start of the output, so OpenAI's echo has
     * no meaning (TGI's return_full_text, a plain concatenation, stays allowed). */
    int t5_echo = !req->tgi && req->echo && ctx->model && ctx->model->cfg.arch == LR_ARCH_T5;
    api_job *j = t5_echo ? NULL : calloc(1, sizeof *j);
    if (t5_echo) {
        auth_release(req->tenant);
        api_cmpl_req_clear(req);
        if (adapter && ctx->aops && ctx->aops->release) ctx->aops->release(ctx->aops_user, adapter);
        return api_fail(err, LR_EINVAL, 400, "echo",
                        "echo is not supported by an encoder-decoder (T5) model: the prompt is the "
                        "encoder input, not the start of the generated text");
    }
    if (!j) {
        auth_release(req->tenant);
        api_cmpl_req_clear(req);
        if (adapter && ctx->aops && ctx->aops->release) ctx->aops->release(ctx->aops_user, adapter);
        return api_fail(err, LR_ENOMEM, 500, NULL, "out of memory");
    }
    j->adapter = adapter;
    j->req = *req;
    memset(req, 0, sizeof *req);
    pthread_mutex_init(&j->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&j->cv, &ca);
    pthread_condattr_destroy(&ca);
    j->refs = 1;
    j->ctx = ctx;
    j->created = (long long)time(NULL);
    j->top_k = j->req.logprobs > 0 ? j->req.logprobs : 0;
    static atomic_ullong counter;
    unsigned long long c = atomic_fetch_add(&counter, 1);
    snprintf(j->id, sizeof j->id, "%s-%016llx%08llx", j->req.chat ? "chatcmpl" : "cmpl",
             (unsigned long long)j->req.smp.seed ^ ((unsigned long long)j->created << 20), c);
    j->model_name = strdup(j->req.model ? j->req.model : ctx->served_name);
    j->n_seqs = j->req.n_prompts * j->req.n;
    j->seqs = calloc((size_t)j->n_seqs, sizeof *j->seqs);
    int rc = 0;
    if (!j->model_name || !j->seqs) {
        rc = api_fail(err, LR_ENOMEM, 500, NULL, "out of memory");
        goto fail;
    }
    if (j->req.echo && j->req.logprobs >= 0 && !j->req.tgi) {
        j->prompt_off = calloc((size_t)j->req.n_prompts, sizeof *j->prompt_off);
        if (!j->prompt_off) {
            rc = api_fail(err, LR_ENOMEM, 500, NULL, "out of memory");
            goto fail;
        }
        for (int p = 0; p < j->req.n_prompts; p++)
            if (!(j->prompt_off[p] = prompt_offsets(ctx->tok, &j->req.prompts[p]))) {
                rc = api_fail(err, LR_ENOMEM, 500, NULL, "out of memory");
                goto fail;
            }
    }
    for (int p = 0; p < j->req.n_prompts; p++)
        for (int i = 0; i < j->req.n; i++)
            if ((rc = seq_init(j, &j->seqs[p * j->req.n + i], p * j->req.n + i, p, err))) goto fail;
    for (int k = 0; k < j->n_seqs; k++) {
        api_seq *s = &j->seqs[k];
        const api_prompt *p = &j->req.prompts[s->prompt];
        eng_request_params ep = {
            .prompt = p->ids,
            .n_prompt = p->n,
            .sampling = j->req.smp,
            .max_tokens = j->req.max_tokens,
            .ignore_eos = j->req.ignore_eos,
            .top_logprobs = j->top_k,
            .prompt_logprobs = j->req.echo && j->req.logprobs >= 0 && !j->req.tgi,
            .adapter = adapter,
            .cb = on_event,
            .user = s,
        };
        /* Choices of one prompt differ by seed (greedy ignores it). */
        ep.sampling.seed = j->req.smp.seed + (uint64_t)(k % j->req.n);
        /* The engine's reference, dropped by the final event. The mutex is NOT held across
         * eng_submit: the engine may hold its own lock while it calls back into this job. */
        pthread_mutex_lock(&j->mu);
        j->refs++;
        pthread_mutex_unlock(&j->mu);
        lr_error le;
        lr_error_clear(&le);
        uint64_t id = 0;
        rc = eng_submit(ctx->eng, &ep, &le, &id);
        pthread_mutex_lock(&j->mu);
        if (rc == 0) {
            s->eng_id = id;
            s->submitted = 1;
        } else {
            j->refs--;
        }
        pthread_mutex_unlock(&j->mu);
        if (rc) {
            int http = rc == LR_EBUSY ? 429 : rc == LR_ESHUTDOWN ? 503 : 0;
            api_fail(err, rc, http, rc == LR_EINVAL ? "prompt" : NULL, "%s",
                     le.msg[0] ? le.msg : lr_strerror(rc));
            if (rc == LR_EBUSY && !le.msg[0])
                snprintf(err->e.msg, sizeof err->e.msg, "the request queue is full; retry later");
            goto fail;
        }
    }
    *out = j;
    return 0;
fail:
    if (j->seqs) cancel_unfinished(j);
    job_unref(j);
    return rc;
}

/* ---- waiting, releasing (HTTP thread) ---- */

int api_job_wait(api_job *j, const api_conn *conn)
{
    int gone = 0;
    pthread_mutex_lock(&j->mu);
    while (j->n_done < j->n_seqs) {
        if (atomic_load(&j->ctx->stopping) || (conn && conn->alive && !conn->alive(conn->user))) {
            gone = 1;
            break;
        }
        struct timespec ts;
        deadline_in(&ts, 50);
        pthread_cond_timedwait(&j->cv, &j->mu, &ts);
    }
    pthread_mutex_unlock(&j->mu);
    if (gone) cancel_unfinished(j);
    return gone ? -1 : 0;
}

void api_job_release(api_job *j)
{
    if (!j) return;
    cancel_unfinished(j);
    job_unref(j);
}

/* ---- JSON ---- */

static const char *finish_name(eng_finish f)
{
    switch (f) {
    case ENG_FINISH_LENGTH:
        return "length";
    case ENG_FINISH_EOS:
    case ENG_FINISH_STOP:
        return "stop";
    case ENG_FINISH_ABORT:
        return "abort";
    case ENG_FINISH_ERROR:
        return "error";
    default:
        return NULL;
    }
}

/* A JSON number for a logprob; -inf (a masked logit) becomes -9999 as vLLM does. */
static json_t *lp_json(float v)
{
    return json_real(isfinite(v) ? (double)v : -9999.0);
}

/* The token's own text: decode([id]) without skipping special tokens. */
static json_t *piece_json(const tok_tokenizer *tok, int32_t id)
{
    char *t = NULL;
    size_t tl = 0;
    if (tok_decode(tok, &id, 1, 0, &t, &tl) != 0) {
        free(t);
        return json_string("");
    }
    /* The tokenizer decodes lossily, so this is valid UTF-8; stay safe if it is not. */
    json_t *v = json_stringn(t, tl);
    free(t);
    return v ? v : json_string("\xef\xbf\xbd");
}

/* logprobs entries [from, to) of s as {tokens, token_logprobs, top_logprobs, text_offset}. */
static json_t *logprobs_json(const api_job *j, const api_seq *s, int from, int to)
{
    const tok_tokenizer *tok = j->ctx->tok;
    json_t *tokens = json_array(), *lps = json_array(), *tops = json_array(), *offs = json_array();
    for (int i = from; i < to; i++) {
        json_array_append_new(tokens, piece_json(tok, s->lp_tok[i]));
        if (s->lp_ntop[i] < 0) {
            json_array_append_new(lps, json_null());
            json_array_append_new(tops, json_null());
        } else {
            json_array_append_new(lps, lp_json(s->lp_val[i]));
            /* {piece: logprob} for the top alternatives, plus the sampled token (as vLLM). */
            json_t *d = json_object();
            for (int t = 0; t < s->lp_ntop[i]; t++) {
                json_t *k = piece_json(tok, s->top_ids[(size_t)i * j->top_k + t]);
                const char *key = json_string_value(k);
                if (key && !json_object_get(d, key))
                    json_object_set_new(d, key, lp_json(s->top_val[(size_t)i * j->top_k + t]));
                json_decref(k);
            }
            json_t *k = piece_json(tok, s->lp_tok[i]);
            const char *key = json_string_value(k);
            if (key && !json_object_get(d, key)) json_object_set_new(d, key, lp_json(s->lp_val[i]));
            json_decref(k);
            json_array_append_new(tops, d);
        }
        json_array_append_new(offs, json_integer(s->lp_off[i]));
    }
    return json_pack("{s:o, s:o, s:o, s:o}", "tokens", tokens, "token_logprobs", lps,
                     "top_logprobs", tops, "text_offset", offs);
}

static json_t *ids_json(const int32_t *ids, int n)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(a, json_integer(ids[i]));
    return a;
}

static json_t *usage_json(const api_job *j)
{
    long long prompt = 0, gen = 0;
    for (int p = 0; p < j->req.n_prompts; p++)
        prompt += j->req.prompts[p].n;
    for (int i = 0; i < j->n_seqs; i++)
        gen += j->seqs[i].n_gen;
    return json_pack("{s:I, s:I, s:I}", "prompt_tokens", (json_int_t)prompt, "completion_tokens",
                     (json_int_t)gen, "total_tokens", (json_int_t)(prompt + gen));
}

/* The first failed sequence (error or abort), or NULL. */
static const api_seq *failed_seq(const api_job *j)
{
    for (int i = 0; i < j->n_seqs; i++)
        if (j->seqs[i].finish == ENG_FINISH_ERROR || j->seqs[i].finish == ENG_FINISH_ABORT ||
            j->seqs[i].error[0])
            return &j->seqs[i];
    return NULL;
}

static void seq_error(const api_seq *s, api_err *e)
{
    if (s->finish == ENG_FINISH_ABORT)
        api_fail(e, LR_ESHUTDOWN, 503, NULL,
                 "the request was aborted: the server is shutting down");
    else if (s->finish == ENG_FINISH_ERROR)
        api_fail(e, LR_EINVAL, 400, "prompt", "%s", s->error);
    else
        api_fail(e, LR_EINTERNAL, 500, NULL, "%s", s->error);
}

/* ---- chat shapes (/v1/chat/completions) ---- */

static const char *object_name(const api_job *j, int chunk)
{
    if (j->req.chat) return chunk ? "chat.completion.chunk" : "chat.completion";
    return "text_completion";
}

/* {token, logprob, bytes} of one token (bytes: its UTF-8 as integers). */
static json_t *chat_token(const tok_tokenizer *tok, int32_t id, float lp)
{
    json_t *piece = piece_json(tok, id);
    json_t *bytes = json_array();
    const char *p = json_string_value(piece);
    for (size_t i = 0; p && i < json_string_length(piece); i++)
        json_array_append_new(bytes, json_integer((unsigned char)p[i]));
    return json_pack("{s:o, s:o, s:o}", "token", piece, "logprob", lp_json(lp), "bytes", bytes);
}

/* Chat logprobs of entries [from, to): {"content": [{token, logprob, bytes, top_logprobs}]}. */
static json_t *chat_logprobs_json(const api_job *j, const api_seq *s, int from, int to)
{
    const tok_tokenizer *tok = j->ctx->tok;
    json_t *content = json_array();
    for (int i = from; i < to; i++) {
        json_t *t = chat_token(tok, s->lp_tok[i], s->lp_val[i]);
        json_t *tops = json_array();
        for (int k = 0; k < s->lp_ntop[i]; k++)
            json_array_append_new(tops, chat_token(tok, s->top_ids[(size_t)i * j->top_k + k],
                                                   s->top_val[(size_t)i * j->top_k + k]));
        json_object_set_new(t, "top_logprobs", tops);
        json_array_append_new(content, t);
    }
    return json_pack("{s:o}", "content", content);
}

/* One choice of a reply or a chunk: text [t0, t1) of s, logprob entries [l0, l1). */
static json_t *choice_json(const api_job *j, const api_seq *s, size_t t0, size_t t1, int l0, int l1,
                           int chunk, int first)
{
    const char *text = s->text ? s->text + t0 : "";
    json_t *lp = j->req.logprobs < 0 ? json_null()
                 : j->req.chat       ? chat_logprobs_json(j, s, l0, l1)
                                     : logprobs_json(j, s, l0, l1);
    json_t *fin = s->done ? json_string(finish_name(s->finish)) : json_null();
    if (!j->req.chat)
        return json_pack("{s:i, s:s%, s:o, s:o}", "index", s->index, "text", text, t1 - t0,
                         "logprobs", lp, "finish_reason", fin);
    json_t *msg = json_pack("{s:s%}", "content", text, t1 - t0);
    if (msg && (!chunk || first)) json_object_set_new(msg, "role", json_string("assistant"));
    return json_pack("{s:i, s:o, s:o, s:o}", "index", s->index, chunk ? "delta" : "message", msg,
                     "logprobs", lp, "finish_reason", fin);
}

/* ---- TGI shapes (/generate, /generate_stream) ---- */

static const char *tgi_finish(eng_finish f)
{
    return f == ENG_FINISH_EOS ? "eos_token" : f == ENG_FINISH_STOP ? "stop_sequence" : "length";
}

/* {id, text, logprob, special} of generated token i of s. */
static json_t *tgi_token(const api_job *j, const api_seq *s, int i)
{
    int32_t id = s->gen[i];
    float lp = i < s->n_lp ? s->lp_val[i] : 0.0f;
    return json_pack("{s:i, s:o, s:o, s:b}", "id", (int)id, "text", piece_json(j->ctx->tok, id),
                     "logprob", lp_json(lp), "special", tok_is_special(j->ctx->tok, id) ? 1 : 0);
}

static json_t *tgi_details(const api_job *j, const api_seq *s, int with_tokens)
{
    json_t *d = json_pack("{s:s, s:i, s:o}", "finish_reason", tgi_finish(s->finish),
                          "generated_tokens", s->n_gen, "seed",
                          j->req.smp.temperature > 0 ? json_integer((json_int_t)j->req.smp.seed)
                                                     : json_null());
    if (d && with_tokens) {
        json_t *toks = json_array();
        for (int i = 0; i < s->n_gen_ids; i++)
            json_array_append_new(toks, tgi_token(j, s, i));
        json_object_set_new(d, "prefill", json_array());
        json_object_set_new(d, "tokens", toks);
    }
    return d;
}

/* The /generate reply: {generated_text, details?}. Called under the mutex. */
static json_t *tgi_reply(const api_job *j)
{
    const api_seq *s = &j->seqs[0];
    json_t *r = json_pack("{s:s%}", "generated_text", s->text ? s->text : "", s->text_len);
    if (r && j->req.details) json_object_set_new(r, "details", tgi_details(j, s, 1));
    return r;
}

void api_job_reply(api_job *j, api_reply *out)
{
    pthread_mutex_lock(&j->mu);
    const api_seq *bad = failed_seq(j);
    if (bad) {
        api_err e;
        seq_error(bad, &e);
        pthread_mutex_unlock(&j->mu);
        api_reply_error(out, &e);
        return;
    }
    if (j->req.tgi) {
        json_t *r = tgi_reply(j);
        pthread_mutex_unlock(&j->mu);
        char *body = r ? json_dumps(r, JSON_COMPACT) : NULL;
        json_decref(r);
        if (!body) {
            api_err e;
            api_fail(&e, LR_ENOMEM, 500, NULL, "out of memory while writing the response");
            api_reply_error(out, &e);
            return;
        }
        out->status = 200;
        out->body = body;
        out->len = strlen(body);
        out->content_type = "application/json";
        return;
    }
    json_t *choices = json_array();
    for (int i = 0; i < j->n_seqs; i++) {
        const api_seq *s = &j->seqs[i];
        json_t *c = choice_json(j, s, 0, s->text_len, 0, s->n_lp, 0, 1);
        if (!c) {
            json_decref(choices);
            pthread_mutex_unlock(&j->mu);
            api_err e;
            api_fail(&e, LR_EINTERNAL, 500, NULL, "choice %d could not be encoded as JSON", i);
            api_reply_error(out, &e);
            return;
        }
        if (j->req.return_token_ids) {
            const api_prompt *p = &j->req.prompts[s->prompt];
            json_object_set_new(c, "token_ids", ids_json(s->gen, s->n_gen_ids));
            json_object_set_new(c, "prompt_token_ids", ids_json(p->ids, p->n));
        }
        json_array_append_new(choices, c);
    }
    json_t *resp = json_pack("{s:s, s:s, s:I, s:s, s:o, s:o}", "id", j->id, "object",
                             object_name(j, 0), "created", (json_int_t)j->created, "model",
                             j->model_name, "choices", choices, "usage", usage_json(j));
    pthread_mutex_unlock(&j->mu);
    char *body = resp ? json_dumps(resp, JSON_COMPACT) : NULL;
    json_decref(resp);
    if (!body) {
        api_err e;
        api_fail(&e, LR_ENOMEM, 500, NULL, "out of memory while writing the response");
        api_reply_error(out, &e);
        return;
    }
    out->status = 200;
    out->body = body;
    out->len = strlen(body);
    out->content_type = "application/json";
}

/* ---- SSE ---- */

api_stream *api_job_stream(api_job *j, const api_conn *conn)
{
    api_stream *s = calloc(1, sizeof *s);
    if (!s) {
        api_job_release(j);
        return NULL;
    }
    s->j = j;
    if (conn) s->conn = *conn;
    return s;
}

void api_stream_free(api_stream *s)
{
    if (!s) return;
    api_job_release(s->j);
    free(s->out);
    free(s);
}

/* Append "data: <json>\n\n" (steals v). */
static void sse_json(api_stream *st, json_t *v)
{
    char *t = v ? json_dumps(v, JSON_COMPACT) : NULL;
    json_decref(v);
    if (!t) return;
    buf_append(&st->out, &st->out_len, &st->out_cap, "data: ", 6);
    buf_append(&st->out, &st->out_len, &st->out_cap, t, strlen(t));
    buf_append(&st->out, &st->out_len, &st->out_cap, "\n\n", 2);
    free(t);
}

static json_t *chunk_head(const api_job *j, json_t *choices)
{
    json_t *c =
        json_pack("{s:s, s:s, s:I, s:s, s:o}", "id", j->id, "object", object_name(j, 1), "created",
                  (json_int_t)j->created, "model", j->model_name, "choices", choices);
    if (c && j->req.include_usage) json_object_set_new(c, "usage", json_null());
    return c;
}

/* /generate_stream: one event per generated token; the last one carries generated_text and
 * details. No [DONE] (TGI has none). Called under the mutex; returns 1 if something was queued
 * or the stream ended. */
static int tgi_fill(api_stream *st)
{
    api_job *j = st->j;
    api_seq *s = &j->seqs[0];
    if (st->state == 1) {
        st->state = 2;
        return 1;
    }
    if (s->final_sent) {
        st->state = 2;
        return 1;
    }
    if (s->done &&
        (s->finish == ENG_FINISH_ERROR || s->finish == ENG_FINISH_ABORT || s->error[0])) {
        api_err e;
        seq_error(s, &e);
        sse_json(st, json_pack("{s:s, s:s}", "error", e.e.msg, "error_type",
                               e.e.http >= 500 ? "server_error" : "validation"));
        s->final_sent = 1;
        st->state = 1;
        return 1;
    }
    /* Hold the last token back until we know whether it is the final one. */
    int upto = s->done ? s->n_gen_ids : s->n_gen_ids - 1;
    int any = 0;
    for (int i = s->ids_sent; i < upto; i++) {
        int last = s->done && i == s->n_gen_ids - 1;
        json_t *ev =
            json_pack("{s:i, s:o, s:n, s:o, s:o}", "index", i + 1, "token", tgi_token(j, s, i),
                      "top_tokens", "generated_text",
                      last ? json_stringn(s->text ? s->text : "", s->text_len) : json_null(),
                      "details", last ? tgi_details(j, s, 0) : json_null());
        sse_json(st, ev);
        s->ids_sent = i + 1;
        any = 1;
        if (last) {
            s->final_sent = 1;
            st->state = 1;
        }
    }
    if (s->done && !s->final_sent) { /* finished without a token of its own */
        sse_json(st, json_pack("{s:i, s:n, s:n, s:s%, s:o}", "index", s->n_gen_ids + 1, "token",
                               "top_tokens", "generated_text", s->text ? s->text : "", s->text_len,
                               "details", tgi_details(j, s, 0)));
        s->final_sent = 1;
        st->state = 1;
        any = 1;
    }
    return any;
}

/* Queue whatever is new; returns 1 if something was queued or the stream reached its end.
 * Called under the job mutex. */
static int stream_fill(api_stream *st)
{
    api_job *j = st->j;
    int any = 0;
    if (j->req.tgi) return tgi_fill(st);
    if (st->state == 1) {
        st->state = 2;
        return 1;
    }
    for (int i = 0; i < j->n_seqs; i++) {
        api_seq *s = &j->seqs[i];
        if (s->final_sent) continue;
        if (s->done &&
            (s->finish == ENG_FINISH_ERROR || s->finish == ENG_FINISH_ABORT || s->error[0])) {
            api_err e;
            seq_error(s, &e);
            char *b = api_error_body(e.e.http, e.e.msg, e.param, e.code);
            sse_json(st, b ? json_loads(b, 0, NULL) : NULL);
            free(b);
            s->final_sent = 1;
            any = 1;
            continue;
        }
        int new_text = s->text_len > s->text_sent;
        int new_lp = j->req.logprobs >= 0 && s->n_lp > s->lp_sent;
        int new_ids = j->req.return_token_ids && s->n_gen_ids > s->ids_sent;
        if (!new_text && !new_lp && !new_ids && !s->done) continue;
        json_t *c =
            choice_json(j, s, s->text_sent, s->text_len, s->lp_sent, s->n_lp, 1, !s->first_sent);
        if (c && j->req.return_token_ids) {
            json_object_set_new(c, "token_ids",
                                ids_json(s->gen + s->ids_sent, s->n_gen_ids - s->ids_sent));
            if (!s->first_sent) {
                const api_prompt *p = &j->req.prompts[s->prompt];
                json_object_set_new(c, "prompt_token_ids", ids_json(p->ids, p->n));
            }
        }
        s->text_sent = s->text_len;
        s->lp_sent = s->n_lp;
        s->ids_sent = s->n_gen_ids;
        s->first_sent = 1;
        if (s->done) s->final_sent = 1;
        sse_json(st, chunk_head(j, json_pack("[o]", c)));
        any = 1;
    }
    if (any) return 1;
    if (j->n_done < j->n_seqs) return 0;
    if (j->req.include_usage) {
        json_t *u = json_pack("{s:s, s:s, s:I, s:s, s:[], s:o}", "id", j->id, "object",
                              object_name(j, 1), "created", (json_int_t)j->created, "model",
                              j->model_name, "choices", "usage", usage_json(j));
        sse_json(st, u);
    }
    buf_append(&st->out, &st->out_len, &st->out_cap, "data: [DONE]\n\n", 14);
    st->state = 1;
    return 1;
}

ssize_t api_stream_read(api_stream *st, char *buf, size_t max)
{
    for (;;) {
        if (st->out_pos < st->out_len) {
            size_t n = st->out_len - st->out_pos;
            if (n > max) n = max;
            memcpy(buf, st->out + st->out_pos, n);
            st->out_pos += n;
            if (st->out_pos == st->out_len) st->out_pos = st->out_len = 0;
            return (ssize_t)n;
        }
        if (st->state == 2) return 0;
        api_job *j = st->j;
        int gone = 0;
        pthread_mutex_lock(&j->mu);
        while (!stream_fill(st)) {
            if (atomic_load(&j->ctx->stopping) ||
                (st->conn.alive && !st->conn.alive(st->conn.user))) {
                gone = 1;
                break;
            }
            struct timespec ts;
            deadline_in(&ts, 50);
            pthread_cond_timedwait(&j->cv, &j->mu, &ts);
        }
        pthread_mutex_unlock(&j->mu);
        if (gone) {
            cancel_unfinished(j);
            return -1;
        }
    }
}
