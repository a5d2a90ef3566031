/* met.c — counters for /metrics. Not a general Prometheus client: a fixed set of series whose
 * label values are known in advance, so nothing is allocated when a request is counted. */
#include "met.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The statuses the daemon answers with; anything else is counted under the last slot. */
static const int k_statuses[] = {200, 400, 401, 403, 404, 405, 413, 422, 429, 499, 500, 503, 0};
#define N_STATUS ((int)(sizeof k_statuses / sizeof k_statuses[0]))
/* Histogram upper bounds in seconds (+Inf is implicit). */
static const double k_buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                   1,     2.5,  5,     10,   30,  60,   120};
#define N_BUCKET ((int)(sizeof k_buckets / sizeof k_buckets[0]))

struct met_metrics {
    pthread_mutex_t mu;
    unsigned long long requests[MET_EP_COUNT][N_STATUS];
    unsigned long long bucket[N_BUCKET + 1]; /* per-bucket (not cumulative); last = +Inf */
    unsigned long long count;
    double sum;
};

met_metrics *met_create(void)
{
    met_metrics *m = calloc(1, sizeof *m);
    if (m) pthread_mutex_init(&m->mu, NULL);
    return m;
}

void met_destroy(met_metrics *m)
{
    if (!m) return;
    pthread_mutex_destroy(&m->mu);
    free(m);
}

const char *met_endpoint_name(met_endpoint ep)
{
    static const char *names[MET_EP_COUNT] = {
        "completions", "chat_completions", "tokenize",       "detokenize", "models", "health",
        "metrics",     "generate",         "apply_template", "adapters",   "other"};
    return ep >= 0 && ep < MET_EP_COUNT ? names[ep] : "other";
}

static int status_slot(int status)
{
    for (int i = 0; i < N_STATUS - 1; i++)
        if (k_statuses[i] == status) return i;
    return N_STATUS - 1;
}

void met_request_done(met_metrics *m, met_endpoint ep, int status, double seconds)
{
    if (!m) return;
    if (ep < 0 || ep >= MET_EP_COUNT) ep = MET_EP_OTHER;
    int b = 0;
    while (b < N_BUCKET && seconds > k_buckets[b])
        b++;
    pthread_mutex_lock(&m->mu);
    m->requests[ep][status_slot(status)]++;
    m->bucket[b]++;
    m->count++;
    m->sum += seconds;
    pthread_mutex_unlock(&m->mu);
}

unsigned long long met_request_count(met_metrics *m, met_endpoint ep, int status)
{
    pthread_mutex_lock(&m->mu);
    unsigned long long n = m->requests[ep][status_slot(status)];
    pthread_mutex_unlock(&m->mu);
    return n;
}

/* A growable text buffer; `failed` latches on the first allocation failure. */
typedef struct {
    char *p;
    size_t len, cap;
    int failed;
} met_buf;

static void bprintf(met_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void bprintf(met_buf *b, const char *fmt, ...)
{
    if (b->failed) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = 1;
            return;
        }
        if (b->p && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->len + (size_t)n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
}

char *met_render(met_metrics *m, const eng_stats *st)
{
    met_buf b = {0};
    unsigned long long req[MET_EP_COUNT][N_STATUS], bucket[N_BUCKET + 1], count;
    double sum;
    pthread_mutex_lock(&m->mu);
    memcpy(req, m->requests, sizeof req);
    memcpy(bucket, m->bucket, sizeof bucket);
    count = m->count;
    sum = m->sum;
    pthread_mutex_unlock(&m->mu);

    bprintf(&b, "# HELP lorad_requests_total HTTP requests answered, by endpoint and status.\n"
                "# TYPE lorad_requests_total counter\n");
    for (int e = 0; e < MET_EP_COUNT; e++)
        for (int s = 0; s < N_STATUS; s++)
            if (req[e][s]) {
                if (k_statuses[s])
                    bprintf(&b, "lorad_requests_total{endpoint=\"%s\",status=\"%d\"} %llu\n",
                            met_endpoint_name((met_endpoint)e), k_statuses[s], req[e][s]);
                else
                    bprintf(&b, "lorad_requests_total{endpoint=\"%s\",status=\"other\"} %llu\n",
                            met_endpoint_name((met_endpoint)e), req[e][s]);
            }
    if (st) {
        bprintf(&b,
                "# HELP lorad_prompt_tokens_total Prompt tokens processed.\n"
                "# TYPE lorad_prompt_tokens_total counter\n"
                "lorad_prompt_tokens_total %llu\n"
                "# HELP lorad_generation_tokens_total Tokens generated.\n"
                "# TYPE lorad_generation_tokens_total counter\n"
                "lorad_generation_tokens_total %llu\n"
                "# HELP lorad_running_sequences Sequences in the running batch.\n"
                "# TYPE lorad_running_sequences gauge\n"
                "lorad_running_sequences %d\n"
                "# HELP lorad_waiting_sequences Sequences waiting for admission.\n"
                "# TYPE lorad_waiting_sequences gauge\n"
                "lorad_waiting_sequences %d\n"
                "# HELP lorad_kv_blocks_total KV cache blocks in the pool.\n"
                "# TYPE lorad_kv_blocks_total gauge\n"
                "lorad_kv_blocks_total %d\n"
                "# HELP lorad_kv_blocks_used KV cache blocks held by sequences.\n"
                "# TYPE lorad_kv_blocks_used gauge\n"
                "lorad_kv_blocks_used %d\n"
                "# HELP lorad_engine_steps_total Forward passes run by the engine.\n"
                "# TYPE lorad_engine_steps_total counter\n"
                "lorad_engine_steps_total %llu\n"
                "# HELP lorad_preemptions_total Sequences preempted for lack of KV blocks.\n"
                "# TYPE lorad_preemptions_total counter\n"
                "lorad_preemptions_total %llu\n",
                (unsigned long long)st->prompt_tokens, (unsigned long long)st->generated_tokens,
                st->running, st->waiting, st->kv_blocks_total, st->kv_blocks_used,
                (unsigned long long)st->steps, (unsigned long long)st->preemptions);
    }
    bprintf(&b, "# HELP lorad_request_duration_seconds Wall time of HTTP requests.\n"
                "# TYPE lorad_request_duration_seconds histogram\n");
    unsigned long long cum = 0;
    for (int i = 0; i < N_BUCKET; i++) {
        cum += bucket[i];
        bprintf(&b, "lorad_request_duration_seconds_bucket{le=\"%g\"} %llu\n", k_buckets[i], cum);
    }
    cum += bucket[N_BUCKET];
    bprintf(&b,
            "lorad_request_duration_seconds_bucket{le=\"+Inf\"} %llu\n"
            "lorad_request_duration_seconds_sum %.6f\n"
            "lorad_request_duration_seconds_count %llu\n",
            cum, sum, count);
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    return b.p;
}
