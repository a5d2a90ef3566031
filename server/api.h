/* api.h — the HTTP API of lorad, independent of the HTTP library.
 *
 * http.c hands every request (method, path, body) to api_handle(), which routes it, validates
 * the JSON, talks to the tokenizer and the engine and fills an api_reply: a status and a body,
 * or a stream (SSE) that http.c drains with api_stream_read(). Nothing here knows about
 * libmicrohttpd, so the request parsing and the generation state machine can be unit-tested.
 *
 * Threads: api_handle runs on an HTTP connection thread and may block while a non-streamed
 * completion runs (it polls conn->alive so that a client that disconnects cancels its
 * sequences). Engine callbacks run on the engine thread and only append to per-request buffers.
 */
#ifndef LR_API_H
#define LR_API_H

#include <jansson.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "auth.h"
#include "engine.h"
#include "err.h"
#include "lora_api.h" /* types only: server/ calls adapters/ through the ops table */
#include "met.h"
#include "model.h"
#include "tokenizer.h"

/* An error for the client: an lr_error (code, HTTP status, message) plus the OpenAI `param`
 * (the offending field, "" if none) and `code` (a short machine string or NULL). */
typedef struct api_err {
    lr_error e;
    char param[64];
    const char *code;
} api_err;

/* Fill *err (if non-NULL) with an lr_err code, its HTTP status (`http` overrides it when > 0),
 * the param name (may be NULL) and a message. Returns code. */
int api_fail(api_err *err, int code, int http, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Maps a model id other than the served base name to an adapter (the LoRA issue plugs the
 * registry in here). On success *adapter is the engine's opaque adapter pointer, valid until
 * the request's final engine event. Return 0, or a negative lr_err with err filled (404 for an
 * unknown id). */
typedef int (*api_resolve_fn)(void *user, const char *id, const void **adapter, api_err *err);

/* --metrics: who may read /metrics. AUTH needs a valid key when keys are configured (open
 * daemons have no keys to ask for); OFF answers 404 as for an unknown route. */
typedef enum { API_METRICS_PUBLIC = 0, API_METRICS_AUTH = 1, API_METRICS_OFF = 2 } api_metrics_mode;

/* What the handlers need; plain data with borrowed pointers, owned by ctl.c. */
typedef struct api_ctx {
    const lr_model *model;
    const tok_tokenizer *tok;
    eng_engine *eng;
    met_metrics *met;
    const char *served_name;
    int max_tokens_default;
    int max_pos;              /* the model's context length */
    int vocab;                /* valid token ids are [0, vocab) */
    long long created;        /* unix time the model was loaded (for /v1/models) */
    long long max_body_bytes; /* --max-body-bytes (for the 413 message) */
    atomic_int draining;      /* SIGTERM seen: /health and new requests → 503 */
    atomic_int stopping;      /* the daemon is stopping: every waiting request gives up */
    api_resolve_fn resolve;   /* NULL → every non-base id is 404 (unless aops) */
    void *resolve_user;
    const struct jj_template *chat_tmpl; /* the model's chat template, NULL if none */
    auth_db *auth;                       /* API keys / tenants; NULL = open (no keys) */
    int metrics_mode;                    /* an api_metrics_mode (--metrics) */
    const lora_api_ops *aops;            /* the adapter layer (adapters/lora_api.h); NULL = none */
    void *aops_user;
} api_ctx;

/* The connection as api_* sees it: alive() returns 0 once the client has gone away. */
typedef struct api_conn {
    int (*alive)(void *user);
    void *user;
    const char *authorization; /* the Authorization header, or NULL */
} api_conn;

typedef struct api_stream api_stream;
struct jj_template; /* core/jinja.h */

/* A reply. body is malloc'd (free it) unless stream is set, in which case the body is produced
 * by api_stream_read() and the stream must be released with api_stream_free(). */
typedef struct api_reply {
    int status;
    char *body;
    size_t len;
    const char *content_type; /* static string */
    const char *allow;        /* Allow header for 405, else NULL */
    api_stream *stream;
    met_endpoint ep; /* which endpoint counter this request goes to */
} api_reply;

/* Route and answer one request. Never fails: errors become OpenAI error replies. `body` need not
 * be NUL-terminated. body_too_large: the body exceeded --max-body-bytes (413). */
void api_handle(api_ctx *ctx, const char *method, const char *path, const char *body, size_t len,
                int body_too_large, const api_conn *conn, api_reply *out);
/* Fill *out with an OpenAI error reply for err. */
void api_reply_error(api_reply *out, const api_err *err);
/* The error body {"error": {message, type, param, code}} for an HTTP status; new malloc'd
 * string. param / code may be NULL or "" (→ null). */
char *api_error_body(int status, const char *msg, const char *param, const char *code);

/* Next bytes of a streamed reply into buf (at most max). Blocks until data is available.
 * Returns > 0 bytes, 0 at the end of the stream, -1 when the stream must be cut (client gone or
 * daemon stopping; its sequences are canceled). */
ssize_t api_stream_read(api_stream *s, char *buf, size_t max);
/* Release a stream: cancels its unfinished sequences. api_stream_free(NULL) does nothing. */
void api_stream_free(api_stream *s);

/* ---- /v1/completions request parsing (api_cmpl.c) ---- */

#define API_MAX_STOP 16      /* stop strings per request */
#define API_MAX_STOP_LEN 256 /* bytes per stop string */
#define API_MAX_N 16         /* choices per prompt */
#define API_MAX_PROMPTS 64   /* prompts per request */
#define API_MAX_SEQS 64      /* prompts × n */

typedef struct api_prompt {
    int32_t *ids; /* malloc'd */
    int n;
    char *text; /* the prompt as given (string prompts) or NULL (token prompts) */
    size_t text_len;
} api_prompt;

typedef struct api_cmpl_req {
    char *model; /* NULL when absent or null */
    api_prompt *prompts;
    int n_prompts;
    int max_tokens;
    smp_params smp;
    int seed_given;
    char *stop[API_MAX_STOP];
    int n_stop;
    int stream, include_usage;
    int logprobs; /* -1 = none, else 0..20 */
    int echo, n, ignore_eos, return_token_ids;
    /* TGI (/generate, /generate_stream): the response shape, and details: true. With tgi, echo
     * means return_full_text and logprobs is 0 (each token's logprob is reported). */
    int tgi, details;
    int chat;            /* /v1/chat/completions: chat response shapes */
    auth_tenant *tenant; /* holds a concurrency slot, released when the job is freed */
} api_cmpl_req;

typedef struct api_limits {
    const tok_tokenizer *tok;
    int vocab;
    int max_pos;
    int max_tokens_default;
} api_limits;

/* Validate a /v1/completions body and tokenize its prompts into *out (zeroed first; release
 * with api_cmpl_req_clear even on error). Returns 0 or a negative lr_err with err naming the
 * field and the bad value. */
int api_cmpl_parse(const json_t *body, const api_limits *lim, api_cmpl_req *out, api_err *err);
void api_cmpl_req_clear(api_cmpl_req *r);
/* Validate a TGI /generate body {inputs, parameters{adapter_id, max_new_tokens, temperature,
 * top_k, top_p, do_sample, seed, stop, repetition_penalty, details, return_full_text, …}} into
 * *out (as api_cmpl_parse; adapter_id lands in out->model). Sampling is on when do_sample is
 * true or temperature / top_k / top_p is given, greedy otherwise. */
int api_tgi_parse(const json_t *body, const api_limits *lim, api_cmpl_req *out, api_err *err);
/* Check a model / adapter id: refuses "..", a leading '/', backslashes, control characters and
 * NUL (len is the JSON string length). Returns 0 or LR_EINVAL (400). */
int api_check_model_id(const char *id, size_t len, api_err *err);

/* ---- chat (api_chat.c) ---- */

/* Compile the chat template of model folder dir (tokenizer_config.json chat_template, a
 * "default" entry of a template list, chat_template.json or chat_template.jinja). Returns 0 with
 * *out NULL when the model has none, 0 with a new template (jj_destroy it), or a negative lr_err
 * (a template that does not compile, named in err). */
int api_chat_load(const char *dir, lr_error *err, struct jj_template **out);
/* Render body's messages (+ add_generation_prompt, default true, and tools) with the model's
 * template, as transformers' apply_chat_template(tokenize=False). *out: new malloc'd text. */
int api_chat_render(const api_ctx *ctx, const json_t *body, char **out, size_t *len, api_err *err);
/* Validate a /v1/chat/completions body into *out: the rendered messages tokenized without
 * special tokens as the prompt, and every completion parameter checked as api_cmpl_parse does
 * (max_completion_tokens = max_tokens; logprobs: bool + top_logprobs 0..20). */
int api_chat_parse(const api_ctx *ctx, const json_t *body, const api_limits *lim, api_cmpl_req *out,
                   api_err *err);

/* ---- generation (api_gen.c) ---- */

typedef struct api_job api_job;

/* Start the sequences of a parsed request (prompts × n) on the engine. Steals *req (it is
 * zeroed) even on failure. adapter: from the resolver, NULL = base; the job hands it back to
 * ctx->aops->release() when its last sequence is done (or at once if the start fails). On error
 * (queue full → 429, draining → 503, bad prompt → 400) nothing is left running. */
int api_job_start(api_ctx *ctx, api_cmpl_req *req, const void *adapter, api_job **out,
                  api_err *err);
/* Wait until every sequence finished. Returns 0, or -1 if the client went away or the daemon
 * is stopping (the sequences are then canceled). */
int api_job_wait(api_job *j, const api_conn *conn);
/* The non-streamed response (or the error a failed sequence produced) into *out. */
void api_job_reply(api_job *j, api_reply *out);
/* Wrap a job as an SSE stream (steals the job). */
api_stream *api_job_stream(api_job *j, const api_conn *conn);
/* Drop the HTTP side's reference: cancels unfinished sequences. api_job_release(NULL) is a no-op.
 */
void api_job_release(api_job *j);

/* The stop-string hold-back rule, exposed for tests: the length of the longest suffix of
 * text[0..len) that is a proper prefix of one of the stop strings (text that must be held back
 * until decided). */
size_t api_stop_holdback(const char *text, size_t len, char *const *stop, int n_stop);

#endif
