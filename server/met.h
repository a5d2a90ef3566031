/* met.h — the daemon's own counters and the Prometheus text rendering of /metrics.
 *
 * Request counters (per endpoint and status) and the request-duration histogram live here;
 * engine figures (running/waiting sequences, KV blocks, steps, tokens, preemptions) are read
 * from an eng_stats snapshot at render time. Thread-safe.
 */
#ifndef LR_MET_H
#define LR_MET_H

#include "engine.h"

typedef enum {
    MET_EP_COMPLETIONS = 0,
    MET_EP_CHAT,
    MET_EP_TOKENIZE,
    MET_EP_DETOKENIZE,
    MET_EP_MODELS,
    MET_EP_HEALTH,
    MET_EP_METRICS,
    MET_EP_GENERATE, /* /generate and /generate_stream (TGI) */
    MET_EP_TEMPLATE, /* /apply-template */
    MET_EP_ADAPTERS, /* the adapter routes (/v1/adapters, /v1/load_lora_adapter, …) */
    MET_EP_OTHER,
    MET_EP_COUNT
} met_endpoint;

typedef struct met_metrics met_metrics;

/* A new, zeroed metrics object, or NULL when out of memory. */
met_metrics *met_create(void);
void met_destroy(met_metrics *m);
/* The label value for an endpoint ("completions", "tokenize", … "other"). */
const char *met_endpoint_name(met_endpoint ep);
/* Count one finished request: its endpoint, HTTP status and wall time in seconds. */
void met_request_done(met_metrics *m, met_endpoint ep, int status, double seconds);
/* Requests counted so far for (ep, status) — for tests. */
unsigned long long met_request_count(met_metrics *m, met_endpoint ep, int status);
/* Render the Prometheus text exposition (version 0.0.4). `st` may be NULL (engine figures are
 * then omitted). Returns a new malloc'd NUL-terminated string, or NULL when out of memory. */
char *met_render(met_metrics *m, const eng_stats *st);

#endif
