/* lora_api.h — the adapter side of the HTTP API (prefix lora_api_): the registry and the LoRA
 * hooks as the daemon uses them, behind the lora_api_ops table.
 *
 * Owns the adapter registry (registry.h) and the engine's eng_delta_ops. Resolves a request's
 * `model` id (or the `"adapters": [{"id", "scale"}, …]` mix extension) to the opaque pointer the
 * engine gets, and releases it when the request's job ends. Serves GET /v1/adapters,
 * POST /v1/load_lora_adapter and POST /v1/unload_lora_adapter (vLLM shapes), adds adapters to
 * /v1/models with `parent`, and renders the adapter metrics.
 *
 * It needs nothing from server/ (errors are lr_errors carrying their HTTP status, replies are
 * plain JSON text), and server/ reaches it only through the lora_api_ops table that main()
 * installs, so server/ builds and tests without adapters/.
 */
#ifndef LR_LORA_API_H
#define LR_LORA_API_H

#include <jansson.h>
#include <stdint.h>

#include "engine.h"
#include "model.h"

#define LORA_API_MAX_MIX 8 /* adapters in one weighted mix */

/* A successful adapter-route reply: JSON body (malloc'd, free it). */
typedef struct lora_api_reply {
    int status;
    char *body;
    size_t len;
    const char *allow; /* with a 405 error: the Allow header value */
} lora_api_reply;

typedef struct lora_api_params {
    const lr_model *model;    /* borrowed; outlives the adapter layer */
    const char *const *roots; /* --adapter-dir (copied) */
    int n_roots;
    int max_loaded;     /* --max-loaded-adapters (0 = no limit) */
    int64_t cache_mb;   /* --adapter-cache-mb (0 = no limit) */
    int allow_anywhere; /* --allow-adapter-paths-anywhere */
    int max_rank;       /* --max-lora-rank */
    int64_t max_file_mb; /* --max-adapter-file-mb (0 = 4 GiB) */
} lora_api_params;

/* The adapter layer as the server sees it: a table of functions, so that server/ compiles and
 * links without adapters/ (only main() names lora_api_table). `l` is the object create made. */
typedef struct lora_api_ops {
    /* Create the registry and hooks. Errors: a root that is not a directory (LR_ENOTFOUND). */
    int (*create)(const lora_api_params *p, lr_error *err, void **out);
    /* After the engine is destroyed (no request holds an adapter). NULL does nothing. */
    void (*destroy)(void *l);
    /* eng_params.delta for the engine (borrowed, lives as long as l). */
    const eng_delta_ops *(*delta)(void *l);
    /* SIGHUP: pick up new adapter folders. */
    void (*rescan)(void *l);
    /* id → a new reference in *adapter (the engine's opaque pointer). Errors fill err with the
     * HTTP status: 404 unknown, 400 bad id, 422 incompatible, 4xx bad files naming them. */
    int (*resolve)(void *l, const char *id, const void **adapter, lr_error *err);
    /* Drop the reference resolve / resolve_mix handed out (when the request's job ends). */
    void (*release)(void *l, const void *adapter);
    /* The mix extension: body field "adapters": [{"id": "a", "scale": 0.7}, …] (1..8 entries,
     * scale a finite number, default 1) → one engine adapter applying each member scaled. */
    int (*resolve_mix)(void *l, const json_t *adapters, const void **adapter, lr_error *err);
    /* GET /v1/adapters, POST /v1/load_lora_adapter, POST /v1/unload_lora_adapter: returns 0 if
     * path is none of them, 1 when *out is filled (200), -1 with the error in *err (err->http
     * is the status; out->allow is set for 405). */
    int (*route)(void *l, const char *method, const char *path, const char *body, size_t len,
                 lora_api_reply *out, lr_error *err);
    /* Append every known adapter to data (a JSON array) as a model with `parent`. */
    void (*models)(void *l, const char *parent, long long created, json_t *data);
    /* The adapter metrics, Prometheus text (new malloc'd string or NULL). */
    char *(*metrics)(void *l);
} lora_api_ops;

extern const lora_api_ops lora_api_table;

#endif
