/* engine.h — continuous batching over one model: the public contract.
 *
 * The engine owns one thread that loops: admit waiting requests (while KV blocks and
 * max_batch_tokens allow), build ONE batch of tokens from every running sequence (prefill chunks
 * plus one decode token each), sorted by adapter, run the forward pass, sample, report each new
 * token through the request's callback, and retire finished sequences. When KV blocks run out
 * mid-decode the youngest sequence is preempted (its blocks freed) and recomputed later.
 *
 * The engine knows nothing of HTTP, text or adapter files. Adapters reach it as an opaque
 * pointer plus a vtable (eng_delta_ops) supplied by adapters/; the engine calls it inside every
 * linear layer for each run of tokens sharing an adapter, after the base GEMM.
 */
#ifndef LR_ENGINE_H
#define LR_ENGINE_H

#include <stdint.h>

#include "err.h"
#include "model.h"

typedef struct eng_engine eng_engine;

/* Sampling parameters (core/sampler). temperature 0 = greedy. */
typedef struct smp_params {
    float temperature;        /* >= 0; 0 → greedy (argmax, lowest id on ties) */
    float top_p;              /* (0, 1]; 1 = off */
    int top_k;                /* 0 = off */
    float min_p;              /* [0, 1); 0 = off */
    float repetition_penalty; /* HF style over prompt + generated; 1 = off */
    float presence_penalty;   /* OpenAI style over generated tokens; 0 = off */
    float frequency_penalty;  /* OpenAI style over generated tokens; 0 = off */
    uint64_t seed;            /* the request's output depends only on seed and inputs */
} smp_params;

/* LoRA (or any per-token-run weight delta) hook, supplied by adapters/. `adapter` is opaque to
 * the engine. For linear module `mod` of block `layer` (T5: encoder blocks 0..Le-1, decoder
 * blocks Le..Le+Ld-1), rows t0..t1-1 of x (the linear's input, row stride ldx floats) produced
 * rows of y (row stride ldy) = x·W0ᵀ + b; apply() adds the adapter's delta in place
 * (y += s·(x·Aᵀ)·Bᵀ; DoRA may rescale y, and gets `bias` (NULL if none) to keep it out).
 * scratch has room for (t1-t0) * scratch_per_token() floats. Called from the compute threads:
 * calls for disjoint row ranges of one linear may run concurrently (each with its own scratch),
 * so apply must only read the adapter and write its own rows of y and its scratch. */
typedef struct eng_delta_ops {
    int (*has_module)(const void *adapter, int layer, lr_module mod);
    void (*apply)(const void *adapter, int layer, lr_module mod, const float *x, int ldx, float *y,
                  int ldy, const float *bias, int t0, int t1, float *scratch);
    /* Embedding LoRA: out row (hidden floats) of token `id` gets += delta. May be NULL. */
    void (*embed)(const void *adapter, int32_t id, float *out_row);
    /* Max scratch floats per token over all modules of every adapter (fixed at engine start). */
    int scratch_per_token;
    /* 1 when apply must see the base output in y (DoRA rescales it): apply then runs after the
     * base GEMM, in place, as it always does when needs_base is NULL. When it returns 0 the
     * engine may run apply concurrently with the GEMM on rows of a zeroed buffer (bias NULL)
     * and add that buffer to y afterwards — the delta does not depend on the base output. */
    int (*needs_base)(const void *adapter, int layer, lr_module mod);
} eng_delta_ops;

typedef enum {
    ENG_FINISH_NONE = 0, /* not finished: a token event */
    ENG_FINISH_LENGTH,   /* max_tokens or context length reached (the context is the model's
                          * max_position_embeddings, or what the whole KV pool holds if less) */
    ENG_FINISH_EOS,      /* an eos id was generated (unless ignore_eos) */
    ENG_FINISH_STOP,     /* the callback asked to stop (stop string matched) */
    ENG_FINISH_ABORT,    /* canceled (client gone) or engine shutting down */
    ENG_FINISH_ERROR,    /* could never fit (prompt longer than the KV pool / context) */
} eng_finish;

#define ENG_MAX_TOP_LOGPROBS 20

/* One event for a request, delivered on the engine thread. A token event carries the sampled
 * token (finish == ENG_FINISH_NONE, or a finish reason if this token also ends the request —
 * e.g. LENGTH on the last token, EOS on the eos token). A pure finish event (ABORT/ERROR, or STOP
 * when the callback asked) has token = -1. After an event with finish != NONE the engine never
 * touches the request again. */
typedef struct eng_event {
    int32_t token; /* sampled id, or -1 */
    float logprob; /* log-softmax of the raw logits (before sampling transforms) */
    int n_top;     /* number of top entries filled (the request's top_logprobs) */
    int32_t top_ids[ENG_MAX_TOP_LOGPROBS];
    float top_logprobs[ENG_MAX_TOP_LOGPROBS];
    eng_finish finish;
    int n_prompt;      /* prompt tokens (for usage) */
    int n_generated;   /* tokens generated so far, including this one */
    const char *error; /* with ENG_FINISH_ERROR: a sentence saying why */
} eng_event;

/* Return 0 to continue, 1 to stop now (the engine then sends no further event: the request
 * finishes with this token as ENG_FINISH_STOP from the caller's point of view). Must be quick
 * and must not call back into the engine except eng_cancel. */
typedef int (*eng_event_cb)(void *user, const eng_event *ev);

typedef struct eng_request_params {
    const int32_t *prompt; /* copied by eng_submit */
    int n_prompt;
    /* Encoder-decoder (T5): the prompt is the encoder input; decoding starts from
     * cfg.decoder_start_id. Ignored for decoder-only models. */
    smp_params sampling;
    int max_tokens;   /* >= 1 generated tokens at most */
    int ignore_eos;   /* do not stop at eos ids */
    int top_logprobs; /* 0..ENG_MAX_TOP_LOGPROBS alternatives per token */
    /* Prompt logprobs (for echo + logprobs): if set, before any generated token the engine sends
     * one event per prompt position i >= 1 with token = prompt[i], its logprob given prompt[0..i)
     * and top alternatives, finish NONE and n_generated == 0. */
    int prompt_logprobs;
    const void *adapter; /* opaque, NULL = base; must stay valid until the final event */
    eng_event_cb cb;
    void *user;
} eng_request_params;

typedef struct eng_params {
    const lr_model *model;      /* borrowed; outlives the engine */
    int threads;                /* compute threads (0 = all cores) */
    int max_batch_tokens;       /* tokens per forward pass (default 512) */
    int max_seqs;               /* running sequences at most (default 64) */
    int max_queue;              /* waiting requests at most; eng_submit → LR_EBUSY past it */
    int64_t kv_cache_mb;        /* KV pool size in MiB (default 256) */
    int kv_block_tokens;        /* tokens per KV block (default 16) */
    const eng_delta_ops *delta; /* may be NULL (no adapters) */
    int64_t kv_cache_bytes;     /* > 0: exact KV pool budget in bytes, overriding kv_cache_mb
                                 * (budgets below 1 MiB, for tests and tiny models) */
    int kv_resident;            /* fault the KV pool in at creation (kv_params.resident) */
} eng_params;

/* Statistics for /metrics (a snapshot; counters since start). */
typedef struct eng_stats {
    int running, waiting;
    int kv_blocks_total, kv_blocks_used;
    uint64_t steps; /* forward passes */
    uint64_t prompt_tokens, generated_tokens;
    uint64_t preemptions;
    uint64_t mixed_adapter_steps; /* passes whose batch held ≥ 2 different adapters */
    uint64_t max_adapters_in_step;
} eng_stats;

/* Create the engine and start its thread. Buffers are sized here from params; the hot path
 * allocates nothing. */
int eng_create(const eng_params *params, lr_error *err, eng_engine **out);
/* Stop the thread; every unfinished request gets an ENG_FINISH_ABORT event; then free.
 * eng_destroy(NULL) does nothing. */
void eng_destroy(eng_engine *e);

/* Queue a request (thread-safe). On success *id_out identifies it for eng_cancel. Errors:
 * LR_EINVAL (bad params, e.g. prompt longer than the context: message says so), LR_EBUSY (queue
 * full), LR_ESHUTDOWN. On error the callback is never called. */
int eng_submit(eng_engine *e, const eng_request_params *p, lr_error *err, uint64_t *id_out);
/* Hold (on = 1) or release (0) the engine (thread-safe): while held the engine thread starts no
 * forward pass — a pass already under way finishes — so requests submitted meanwhile all wait
 * for the first pass after the release. A set of requests then starts together whatever the
 * scheduling of the submitting thread (lr-generate --batch). eng_destroy works while held. */
void eng_hold(eng_engine *e, int on);
/* Cancel a request (thread-safe, idempotent, unknown ids ignored): it gets an ABORT event soon,
 * from the engine thread, unless it already finished. */
void eng_cancel(eng_engine *e, uint64_t id);
/* Stop admitting new requests (eng_submit → LR_ESHUTDOWN); running ones continue. */
void eng_drain(eng_engine *e);
/* A snapshot of the statistics (thread-safe). The counters of a pass (steps, tokens, adapter
 * mixes) are updated before its events are delivered; but a request's final event comes before
 * the engine retires it, so a snapshot taken right after that event may still count it as
 * running and its KV blocks as used. */
void eng_get_stats(eng_engine *e, eng_stats *out);

#endif
