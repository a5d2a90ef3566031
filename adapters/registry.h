/* registry.h — adapter ids → folders → loaded LoRA weights, with caps and LRU (prefix reg_).
 *
 * Ids map to sub-folders of one or more roots (`org/name` → ROOT/org/name) or to runtime
 * registrations (POST /v1/load_lora_adapter). Each id has a state: available → loading → loaded
 * (→ evicted, i.e. available again) or failed (the error is kept; a later resolve retries once
 * the folder's files changed, by mtime and size). Loads run on the libuv thread pool
 * (uv_queue_work) from the registry's own loop thread, so callers waiting for one adapter never
 * stall anyone else. Caps: max_loaded adapters and cache_bytes of converted weights; the least
 * recently used idle adapter is evicted first, never one with references (held by running
 * requests) and never a pinned one; a load that cannot make room waits until a release does.
 *
 * Thread-safety: every function may be called from any thread (one mutex inside).
 * Ownership: a reg_handle is a reference; the lora_set it exposes stays valid until
 * reg_release(). Unregistering an id in use hides it at once and frees it at the last release.
 */
#ifndef LR_REGISTRY_H
#define LR_REGISTRY_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "lora.h"
#include "model.h"

typedef struct reg_registry reg_registry;
typedef struct reg_entry reg_handle;

typedef struct reg_params {
    const lr_model *model;    /* borrowed; outlives the registry */
    const char *const *roots; /* adapter folders roots (copied); may be empty */
    int n_roots;
    int max_loaded;        /* adapters resident at most (0 = no limit) */
    int64_t cache_bytes;   /* converted weights at most (0 = no limit) */
    int allow_anywhere;    /* runtime registrations may point outside the roots */
    int max_rank;          /* refuse adapters with a larger rank (0 = no limit) */
    double load_timeout_s; /* resolve() gives up waiting after this (0 = 300 s) */
    int64_t max_file_bytes; /* refuse a larger adapter_model.safetensors (0 = 4 GiB) */
} reg_params;

typedef enum { REG_AVAILABLE = 0, REG_LOADING, REG_LOADED, REG_FAILED } reg_state;

#define REG_HIST_BUCKETS 9
extern const double reg_hist_bounds[REG_HIST_BUCKETS]; /* upper bounds (s); last is +Inf */

typedef struct reg_stats {
    uint64_t loads, load_failures, evictions;
    uint64_t load_hist[REG_HIST_BUCKETS]; /* cumulative-free counts per bucket */
    double load_seconds_sum;
    int loaded;
    int64_t bytes;
} reg_stats;

/* One row of reg_list (plain data, caller-owned copy). */
typedef struct reg_info {
    char id[257];
    char path[1024];
    reg_state state;
    int rank;
    double alpha;
    char targets[256];
    int64_t bytes;
    double last_used; /* unix seconds, 0 = never */
    uint64_t requests;
    int pinned, refs;
    char error[512]; /* with REG_FAILED */
} reg_info;

/* Create the registry and its loop thread. Roots must be existing directories (LR_ENOTFOUND
 * naming the root otherwise). */
int reg_create(const reg_params *p, lr_error *err, reg_registry **out);
/* Stop the loop (waiting for loads in progress) and free everything. Outstanding handles must
 * have been released. reg_destroy(NULL) does nothing. */
void reg_destroy(reg_registry *r);

/* Is id acceptable as an adapter id? (not empty, ≤ 256 bytes, no NUL inside the len bytes, no
 * control characters, no backslash, no leading '/', no "." / ".." / empty path component).
 * LR_EINVAL (HTTP 400) with a message otherwise. */
int reg_check_id(const char *id, size_t len, lr_error *err);

/* Resolve id to a loaded adapter, loading it if needed and waiting until it is loaded or
 * failed. On success *out is a new reference (reg_release it when the request has finished).
 * Errors: LR_EINVAL (bad id), LR_ENOTFOUND (no such adapter: 404), the load's error (LR_EINCOMPAT
 * 422, LR_EFORMAT / LR_ENOTFOUND naming the file, …), LR_EBUSY (timed out waiting for room or
 * for the load), LR_ESHUTDOWN. */
int reg_resolve(reg_registry *r, const char *id, size_t len, lr_error *err, reg_handle **out);
/* The adapter object to pass to the engine (eng_request_params.adapter); borrowed. */
const lora_set *reg_handle_set(const reg_handle *h);
const peft_adapter *reg_handle_adapter(const reg_handle *h);
const char *reg_handle_id(const reg_handle *h);
/* Drop a reference. reg_release(r, NULL) does nothing. */
void reg_release(reg_registry *r, reg_handle *h);
/* Drop a reference given the lora_set a handle exposed (what the engine was handed). Returns 0,
 * or LR_ENOTFOUND if no referenced adapter has that set. */
int reg_release_set(reg_registry *r, const void *set);

/* Runtime registration (vLLM's load_lora_adapter): id → path, loaded at once; the error of the
 * load is returned (and the registration dropped) if it fails. path must resolve inside a root
 * unless allow_anywhere (LR_EFORBIDDEN otherwise). An id already known → LR_EINVAL. */
int reg_register(reg_registry *r, const char *id, size_t len, const char *path, int pinned,
                 lr_error *err);
/* Forget id (runtime or root adapter): hidden at once, freed at its last release. A root
 * adapter reappears on the next resolve while its folder exists. LR_ENOTFOUND if unknown. */
int reg_unregister(reg_registry *r, const char *id, size_t len, lr_error *err);

/* Rescan the roots for adapter folders (DIR/x/adapter_config.json, DIR/org/x/…) so they are
 * listed as available; for SIGHUP and /v1/adapters. */
void reg_rescan(reg_registry *r);
/* Snapshot of every known id (rescans first). *out is malloc'd (free it); returns the count or
 * a negative lr_err. */
int reg_list(reg_registry *r, reg_info **out);
void reg_get_stats(reg_registry *r, reg_stats *out);
/* vLLM's lora_requests_info labels: comma-separated ids in use by requests (running) and ids
 * requests are waiting for (waiting). Always NUL-terminated. */
void reg_lora_info(reg_registry *r, char *running, size_t rsize, char *waiting, size_t wsize);
const char *reg_state_name(reg_state s);
/* The adapter metrics in Prometheus text format (new malloc'd string, NULL when out of memory):
 * lorad_adapter_loads_total, lorad_adapter_load_failures_total, lorad_adapter_evictions_total,
 * lorad_adapter_load_seconds (histogram), lorad_adapters_loaded, lorad_adapter_bytes and vLLM's
 * vllm:lora_requests_info{max_lora, running_lora_adapters, waiting_lora_adapters} = now. */
char *reg_metrics_text(reg_registry *r, int max_lora);

#endif
