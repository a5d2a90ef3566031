/* registry.c — which adapters exist, which are resident, and who is using them.
 *
 * One mutex guards a linked list of entries (one per id). Callers on any thread resolve an id:
 * the entry is found (or created from a root folder), queued for loading if needed, and the
 * caller sleeps on a condition variable until the load ends. The registry's loop thread owns
 * scheduling: an async wake-up makes it walk the queued entries, make room under the caps by
 * evicting the least recently used idle adapters, and hand each load to the libuv thread pool
 * (uv_queue_work). The pool thread runs peft_load + lora_set_create without the lock; the
 * completion callback, back on the loop thread, publishes the result and wakes the waiters.
 *
 * Entries are never freed while referenced: eviction only touches refs == 0 entries, and an
 * unregistered entry is hidden and freed by its last release (or when its load completes).
 * Not here: HTTP shapes (server/), the math (adapters/lora), file parsing (adapters/peft).
 */
#include "registry.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <uv.h>

const double reg_hist_bounds[REG_HIST_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1,
                                                  0.25,  0.5,  1.0,   1e300};

typedef struct reg_stamp {
    int64_t mtime_ns, size;
    int exists;
} reg_stamp;

struct reg_entry {
    struct reg_entry *next;
    char id[257];
    char path[PATH_MAX];
    int runtime, pinned, hidden;
    reg_state state;
    lr_error error;   /* with REG_FAILED */
    reg_stamp st[2];  /* adapter_config.json, adapter_model.safetensors at the failed load */
    peft_adapter *ad; /* with REG_LOADED */
    lora_set *set;
    int64_t bytes, est_bytes;
    int refs, waiters, queued, in_flight;
    uint64_t lru;
    double last_used;
    uint64_t requests;
    /* the load in flight (touched by the pool thread only between queue and completion) */
    uv_work_t work;
    reg_registry *reg;
    double t0;
    int load_rc;
    lr_error load_err;
    peft_adapter *new_ad;
    lora_set *new_set;
};

struct reg_registry {
    reg_params p;
    char **roots; /* realpath of each root */
    int n_roots;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct reg_entry *head;
    uint64_t tick;
    int stopping;
    reg_stats st;
    uv_loop_t loop;
    uv_async_t wake;
    pthread_t thread;
};

typedef struct reg_entry reg_entry;

const char *reg_state_name(reg_state s)
{
    switch (s) {
    case REG_AVAILABLE:
        return "available";
    case REG_LOADING:
        return "loading";
    case REG_LOADED:
        return "loaded";
    case REG_FAILED:
        return "failed";
    }
    return "?";
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int reg_check_id(const char *id, size_t len, lr_error *err)
{
    if (!id || len == 0) return lr_error_set(err, LR_EINVAL, "adapter id must not be empty");
    if (len > 256) return lr_error_set(err, LR_EINVAL, "adapter id is longer than 256 bytes");
    if (memchr(id, 0, len))
        return lr_error_set(err, LR_EINVAL, "adapter id must not contain NUL characters");
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)id[i];
        if (c < 0x20 || c == 0x7f)
            return lr_error_set(err, LR_EINVAL,
                                "adapter id must not contain control characters (byte 0x%02x at "
                                "%zu)",
                                c, i);
        if (c == '\\')
            return lr_error_set(err, LR_EINVAL, "adapter id must not contain a backslash");
    }
    if (memmem(id, len, "..", 2))
        return lr_error_set(err, LR_EINVAL, "adapter id must not contain '..'");
    if (id[0] == '/')
        return lr_error_set(err, LR_EINVAL,
                            "adapter id must be a relative name like 'org/name', not an absolute "
                            "path");
    /* every '/'-separated component must be a plain name */
    size_t s = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && id[i] != '/') continue;
        size_t n = i - s;
        if (n == 0 || (n == 1 && id[s] == '.') || (n == 2 && id[s] == '.' && id[s + 1] == '.'))
            return lr_error_set(err, LR_EINVAL,
                                "adapter id must not contain '..', '.' or empty path components");
        s = i + 1;
    }
    return 0;
}

static void stamp_files(const char *dir, reg_stamp st[2])
{
    static const char *const files[2] = {"adapter_config.json", "adapter_model.safetensors"};
    for (int i = 0; i < 2; i++) {
        char p[PATH_MAX + 64];
        struct stat sb;
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        memset(&st[i], 0, sizeof st[i]);
        if (stat(p, &sb) == 0) {
            st[i].exists = 1;
            st[i].size = sb.st_size;
            st[i].mtime_ns = (int64_t)sb.st_mtim.tv_sec * 1000000000 + sb.st_mtim.tv_nsec;
        }
    }
}

/* Is real path p inside one of the roots? */
static int inside_roots(const reg_registry *r, const char *p)
{
    for (int i = 0; i < r->n_roots; i++) {
        size_t n = strlen(r->roots[i]);
        if (!strncmp(p, r->roots[i], n) && (p[n] == '/' || (n == 1 && r->roots[i][0] == '/')))
            return 1;
    }
    return 0;
}

static reg_entry *find(reg_registry *r, const char *id)
{
    for (reg_entry *e = r->head; e; e = e->next)
        if (!e->hidden && !strcmp(e->id, id)) return e;
    return NULL;
}

static reg_entry *add_entry(reg_registry *r, const char *id, const char *path, int runtime)
{
    reg_entry *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    snprintf(e->id, sizeof e->id, "%s", id);
    snprintf(e->path, sizeof e->path, "%s", path);
    e->runtime = runtime;
    e->reg = r;
    e->next = r->head;
    r->head = e;
    return e;
}

/* Look id up under the roots: the first ROOT/id that is a directory whose real path stays
 * inside a root. Returns 1 and fills path, 0 if none, or a negative error (escape). */
static int root_lookup(reg_registry *r, const char *id, char *path, size_t size, lr_error *err)
{
    for (int i = 0; i < r->n_roots; i++) {
        char cand[PATH_MAX + 300], real[PATH_MAX];
        struct stat sb;
        snprintf(cand, sizeof cand, "%s/%s", r->roots[i], id);
        if (stat(cand, &sb) != 0 || !S_ISDIR(sb.st_mode) || !realpath(cand, real)) continue;
        if (!inside_roots(r, real))
            return lr_error_set(err, LR_EFORBIDDEN,
                                "adapter '%s' resolves outside the adapter roots (symbolic link)",
                                id);
        snprintf(path, size, "%s", real);
        return 1;
    }
    return 0;
}

static void free_entry(reg_entry *e)
{
    lora_set_destroy(e->set);
    peft_free(e->ad);
    free(e);
}

static void unlink_entry(reg_registry *r, reg_entry *e)
{
    for (reg_entry **pp = &r->head; *pp; pp = &(*pp)->next)
        if (*pp == e) {
            *pp = e->next;
            return;
        }
}

/* Drop a loaded adapter's weights (refs == 0). Caller holds the lock. */
static void evict(reg_registry *r, reg_entry *e)
{
    lora_set_destroy(e->set);
    peft_free(e->ad);
    e->set = NULL;
    e->ad = NULL;
    r->st.bytes -= e->bytes;
    r->st.loaded--;
    e->bytes = 0;
    e->state = REG_AVAILABLE;
    r->st.evictions++;
}

/* Free a hidden (unregistered) entry once nothing can reach it any more: no reference from a
 * running request, no load queued or running, and no thread waiting in wait_loaded() (a waiter
 * reads the entry after it wakes). Caller holds the lock. Returns 1 if e was freed. */
static int maybe_free(reg_registry *r, reg_entry *e)
{
    if (!e->hidden || e->refs > 0 || e->in_flight || e->queued || e->waiters > 0) return 0;
    unlink_entry(r, e);
    if (e->state == REG_LOADED) {
        r->st.loaded--;
        r->st.bytes -= e->bytes;
    }
    free_entry(e);
    return 1;
}

static reg_entry *lru_victim(reg_registry *r, const reg_entry *keep)
{
    reg_entry *v = NULL;
    for (reg_entry *e = r->head; e; e = e->next)
        if (e != keep && e->state == REG_LOADED && e->refs == 0 && e->waiters == 0 &&
            !e->pinned && (!v || e->lru < v->lru))
            v = e;
    return v;
}

/* Make room for one more adapter of est bytes; 1 if there is room now. Lock held. */
static int make_room(reg_registry *r, reg_entry *want)
{
    for (;;) {
        int resident = 0;
        int64_t bytes = 0;
        for (reg_entry *e = r->head; e; e = e->next) {
            if (e->state == REG_LOADED || e->in_flight) {
                resident++;
                bytes += e->state == REG_LOADED ? e->bytes : e->est_bytes;
            }
        }
        int over_n = r->p.max_loaded > 0 && resident + 1 > r->p.max_loaded;
        int over_b =
            r->p.cache_bytes > 0 && resident > 0 && bytes + want->est_bytes > r->p.cache_bytes;
        if (!over_n && !over_b) return 1;
        reg_entry *v = lru_victim(r, want);
        if (!v) return 0;
        evict(r, v);
    }
}

static void load_work(uv_work_t *w)
{
    reg_entry *e = w->data;
    reg_registry *r = e->reg;
    peft_params pp = {.max_rank = r->p.max_rank, .max_file_bytes = r->p.max_file_bytes};
    lr_error_clear(&e->load_err);
    e->new_ad = NULL;
    e->new_set = NULL;
    /* The folder was confined to a root when it was resolved; its files must be too, or a
     * symlinked adapter_config.json / adapter_model.safetensors could read any file the daemon
     * can (r->roots is immutable after create, so no lock is needed here). */
    if (!r->p.allow_anywhere) {
        static const char *const files[] = {"adapter_config.json", "adapter_model.safetensors"};
        for (int i = 0; i < 2; i++) {
            char p[PATH_MAX + 64], real[PATH_MAX];
            snprintf(p, sizeof p, "%s/%s", e->path, files[i]);
            if (realpath(p, real) && !inside_roots(r, real)) {
                e->load_rc = lr_error_set(&e->load_err, LR_EFORBIDDEN,
                                          "adapter %s: %s is a link that leaves the adapter roots",
                                          e->id, files[i]);
                return;
            }
        }
    }
    e->load_rc = peft_load(e->path, r->p.model, &pp, &e->load_err, &e->new_ad);
    if (e->load_rc == 0) {
        const peft_adapter *one = e->new_ad;
        e->load_rc = lora_set_create(r->p.model, &one, NULL, 1, &e->load_err, &e->new_set);
    }
}

static void schedule(reg_registry *r);

static void load_done(uv_work_t *w, int status)
{
    reg_entry *e = w->data;
    reg_registry *r = e->reg;
    double dt = mono_s() - e->t0;
    pthread_mutex_lock(&r->mu);
    e->in_flight = 0;
    if (status != 0 && e->load_rc == 0) {
        e->load_rc = LR_ECANCELED;
        lr_error_set(&e->load_err, LR_ECANCELED, "adapter load canceled");
    }
    if (e->load_rc == 0) {
        r->st.loads++;
        int b = 0;
        while (b < REG_HIST_BUCKETS - 1 && dt > reg_hist_bounds[b])
            b++;
        r->st.load_hist[b]++;
        r->st.load_seconds_sum += dt;
        e->ad = e->new_ad;
        e->set = e->new_set;
        e->bytes = e->ad->bytes;
        e->state = REG_LOADED;
        r->st.loaded++;
        r->st.bytes += e->bytes;
        e->lru = ++r->tick;
        /* the estimate may have been low: evict idle others while over the byte cap */
        while (r->p.cache_bytes > 0 && r->st.bytes > r->p.cache_bytes) {
            reg_entry *v = lru_victim(r, e);
            if (!v) break;
            evict(r, v);
        }
    } else {
        lora_set_destroy(e->new_set);
        peft_free(e->new_ad);
        r->st.load_failures++;
        e->state = REG_FAILED;
        e->error = e->load_err;
        stamp_files(e->path, e->st); /* retried once these change */
        if (e->error.http <= 0) e->error.http = lr_err_http(e->error.code);
    }
    e->new_ad = NULL;
    e->new_set = NULL;
    maybe_free(r, e);
    pthread_cond_broadcast(&r->cv);
    schedule(r);
    pthread_mutex_unlock(&r->mu);
}

/* Start every queued load that has room. Loop thread, lock held. */
static void schedule(reg_registry *r)
{
    if (r->stopping) return;
    for (reg_entry *e = r->head; e; e = e->next) {
        if (!e->queued || e->hidden) continue;
        if (!make_room(r, e)) continue;
        e->queued = 0;
        e->in_flight = 1;
        e->t0 = mono_s();
        e->work.data = e;
        if (uv_queue_work(&r->loop, &e->work, load_work, load_done) != 0) {
            e->in_flight = 0;
            e->state = REG_FAILED;
            lr_error_set(&e->error, LR_EINTERNAL, "adapter %s: cannot queue the load", e->id);
            pthread_cond_broadcast(&r->cv);
        }
    }
}

static void on_wake(uv_async_t *a)
{
    reg_registry *r = a->data;
    pthread_mutex_lock(&r->mu);
    if (r->stopping) {
        /* cancel loads that have not started; running ones complete through load_done */
        for (reg_entry *e = r->head; e; e = e->next)
            if (e->queued) {
                e->queued = 0;
                e->state = REG_FAILED;
                lr_error_set(&e->error, LR_ESHUTDOWN, "the adapter registry is shutting down");
            }
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
        uv_close((uv_handle_t *)a, NULL);
        return;
    }
    schedule(r);
    pthread_mutex_unlock(&r->mu);
}

static void *loop_main(void *arg)
{
    reg_registry *r = arg;
    uv_run(&r->loop, UV_RUN_DEFAULT);
    return NULL;
}

int reg_create(const reg_params *p, lr_error *err, reg_registry **out)
{
    *out = NULL;
    if (!p || !p->model) return lr_error_set(err, LR_EINVAL, "registry: no base model");
    reg_registry *r = calloc(1, sizeof *r);
    if (!r) return lr_error_set(err, LR_ENOMEM, "registry: out of memory");
    r->p = *p;
    r->p.roots = NULL;
    r->roots = calloc((size_t)(p->n_roots > 0 ? p->n_roots : 1), sizeof *r->roots);
    if (!r->roots) {
        free(r);
        return lr_error_set(err, LR_ENOMEM, "registry: out of memory");
    }
    for (int i = 0; i < p->n_roots; i++) {
        char real[PATH_MAX];
        struct stat sb;
        if (!realpath(p->roots[i], real) || stat(real, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
            lr_error_set(err, LR_ENOTFOUND, "adapter root %s is not a directory", p->roots[i]);
            for (int j = 0; j < r->n_roots; j++)
                free(r->roots[j]);
            free(r->roots);
            free(r);
            return LR_ENOTFOUND;
        }
        r->roots[r->n_roots++] = strdup(real);
    }
    pthread_mutex_init(&r->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cv, &ca);
    pthread_condattr_destroy(&ca);
    int uv_ok = uv_loop_init(&r->loop) == 0;
    if (uv_ok && uv_async_init(&r->loop, &r->wake, on_wake) == 0) {
        r->wake.data = r;
        if (pthread_create(&r->thread, NULL, loop_main, r) == 0) {
            *out = r;
            return 0;
        }
        uv_close((uv_handle_t *)&r->wake, NULL);
        uv_run(&r->loop, UV_RUN_DEFAULT);
    }
    {
        if (uv_ok) uv_loop_close(&r->loop);
        pthread_mutex_destroy(&r->mu);
        pthread_cond_destroy(&r->cv);
        for (int j = 0; j < r->n_roots; j++)
            free(r->roots[j]);
        free(r->roots);
        free(r);
        return lr_error_set(err, LR_EINTERNAL, "registry: cannot start the libuv loop thread");
    }
}

void reg_destroy(reg_registry *r)
{
    if (!r) return;
    pthread_mutex_lock(&r->mu);
    r->stopping = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    uv_async_send(&r->wake);
    pthread_join(r->thread, NULL);
    uv_loop_close(&r->loop);
    while (r->head) {
        reg_entry *e = r->head;
        r->head = e->next;
        free_entry(e);
    }
    for (int j = 0; j < r->n_roots; j++)
        free(r->roots[j]);
    free(r->roots);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r);
}

static int64_t estimate_bytes(const char *dir)
{
    char p[PATH_MAX + 64];
    struct stat sb;
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", dir);
    return stat(p, &sb) == 0 ? (int64_t)sb.st_size : 0;
}

/* Queue e for loading (lock held). */
static void queue_load(reg_registry *r, reg_entry *e)
{
    e->state = REG_LOADING;
    e->queued = 1;
    e->est_bytes = estimate_bytes(e->path);
    uv_async_send(&r->wake);
}

/* Wait until e is no longer loading (lock held). */
static int wait_loaded(reg_registry *r, reg_entry *e, lr_error *err)
{
    double limit = r->p.load_timeout_s > 0 ? r->p.load_timeout_s : 300;
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += (time_t)limit;
    e->waiters++;
    int rc = 0;
    while (e->state == REG_LOADING && !r->stopping && rc == 0)
        if (pthread_cond_timedwait(&r->cv, &r->mu, &dl) == ETIMEDOUT)
            rc = lr_error_set(err, LR_EBUSY,
                              "adapter %s: still waiting to load after %.0f s (all resident "
                              "adapters are in use)",
                              e->id, limit);
    e->waiters--;
    if (rc) return rc;
    if (r->stopping) return lr_error_set(err, LR_ESHUTDOWN, "the server is shutting down");
    if (e->state == REG_FAILED) {
        if (err) *err = e->error;
        return e->error.code ? e->error.code : LR_EINTERNAL;
    }
    return 0;
}

int reg_resolve(reg_registry *r, const char *id, size_t len, lr_error *err, reg_handle **out)
{
    *out = NULL;
    int rc = reg_check_id(id, len, err);
    if (rc) return rc;
    pthread_mutex_lock(&r->mu);
    reg_entry *e = find(r, id);
    if (!e) {
        char path[PATH_MAX];
        rc = root_lookup(r, id, path, sizeof path, err);
        if (rc == 0) {
            rc = lr_error_set(err, LR_ENOTFOUND,
                              "adapter '%s' not found: not registered and no such folder under "
                              "the adapter roots",
                              id);
            goto out;
        }
        if (rc < 0) goto out;
        rc = 0;
        if (!(e = add_entry(r, id, path, 0))) {
            rc = lr_error_set(err, LR_ENOMEM, "registry: out of memory");
            goto out;
        }
    }
    if (e->state == REG_FAILED) {
        reg_stamp now[2];
        stamp_files(e->path, now);
        if (memcmp(now, e->st, sizeof now) != 0)
            e->state = REG_AVAILABLE; /* the files changed: try again */
    }
    e->lru = ++r->tick;
    /* A waiter is never chosen as an eviction victim (lru_victim), so the adapter is still
     * loaded when wait_loaded returns; loop anyway so that no path can hand out a handle to an
     * adapter that is not loaded (that would silently run the request on the base model). */
    for (;;) {
        if (e->state == REG_AVAILABLE) queue_load(r, e);
        if ((rc = wait_loaded(r, e, err)) != 0) goto out;
        if (e->state == REG_LOADED) break;
    }
    e->refs++;
    e->requests++;
    e->last_used = now_s();
    e->lru = ++r->tick;
    *out = e;
out:
    if (rc && e) maybe_free(r, e); /* an unregistered entry we were the last to wait on */
    pthread_mutex_unlock(&r->mu);
    return rc;
}

const lora_set *reg_handle_set(const reg_handle *h)
{
    return h->set;
}
const peft_adapter *reg_handle_adapter(const reg_handle *h)
{
    return h->ad;
}
const char *reg_handle_id(const reg_handle *h)
{
    return h->id;
}

void reg_release(reg_registry *r, reg_handle *h)
{
    if (!h) return;
    pthread_mutex_lock(&r->mu);
    LR_ASSERT(h->refs > 0);
    h->refs--;
    h->lru = ++r->tick;
    maybe_free(r, h);
    pthread_mutex_unlock(&r->mu);
    uv_async_send(&r->wake); /* a queued load may have room now */
}

int reg_release_set(reg_registry *r, const void *set)
{
    reg_entry *h = NULL;
    pthread_mutex_lock(&r->mu);
    for (reg_entry *e = r->head; e && !h; e = e->next)
        if (e->set == set && e->refs > 0) h = e;
    pthread_mutex_unlock(&r->mu);
    if (!h) return LR_ENOTFOUND;
    reg_release(r, h);
    return 0;
}

int reg_register(reg_registry *r, const char *id, size_t len, const char *path, int pinned,
                 lr_error *err)
{
    int rc = reg_check_id(id, len, err);
    if (rc) return rc;
    char real[PATH_MAX];
    struct stat sb;
    if (!path || !realpath(path, real) || stat(real, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return lr_error_set(err, LR_ENOTFOUND, "adapter path %s is not a directory",
                            path ? path : "(none)");
    if (!r->p.allow_anywhere && !inside_roots(r, real))
        return lr_error_set(err, LR_EFORBIDDEN,
                            "adapter path %s is outside the --adapter-dir roots (start the server "
                            "with --allow-adapter-paths-anywhere to allow it)",
                            path);
    pthread_mutex_lock(&r->mu);
    reg_entry *e = find(r, id);
    if (e) {
        pthread_mutex_unlock(&r->mu);
        return lr_error_set(err, LR_EINVAL, "adapter '%s' is already registered", id);
    }
    if (!(e = add_entry(r, id, real, 1))) {
        pthread_mutex_unlock(&r->mu);
        return lr_error_set(err, LR_ENOMEM, "registry: out of memory");
    }
    e->pinned = pinned;
    queue_load(r, e);
    rc = wait_loaded(r, e, err);
    if (rc) {
        /* a registration that cannot load is dropped, as vLLM does */
        e->hidden = 1;
        maybe_free(r, e);
    }
    pthread_mutex_unlock(&r->mu);
    return rc;
}

int reg_unregister(reg_registry *r, const char *id, size_t len, lr_error *err)
{
    int rc = reg_check_id(id, len, err);
    if (rc) return rc;
    pthread_mutex_lock(&r->mu);
    reg_entry *e = find(r, id);
    if (!e) {
        pthread_mutex_unlock(&r->mu);
        return lr_error_set(err, LR_ENOTFOUND, "adapter '%s' is not registered", id);
    }
    e->hidden = 1;
    if (maybe_free(r, e)) {
        /* nothing held it */
    } else if (e->queued) {
        e->queued = 0;
        e->state = REG_FAILED;
        lr_error_set(&e->error, LR_ENOTFOUND, "adapter '%s' was unloaded", id);
        pthread_cond_broadcast(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
    return 0;
}

static void scan_dir(reg_registry *r, const char *root, const char *prefix, int depth)
{
    char dpath[PATH_MAX + 300];
    snprintf(dpath, sizeof dpath, "%s%s%s", root, *prefix ? "/" : "", prefix);
    DIR *d = opendir(dpath);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        char id[300], sub[PATH_MAX + 600], cfg[PATH_MAX + 700];
        snprintf(id, sizeof id, "%s%s%s", prefix, *prefix ? "/" : "", de->d_name);
        snprintf(sub, sizeof sub, "%s/%s", dpath, de->d_name);
        struct stat sb;
        if (stat(sub, &sb) != 0 || !S_ISDIR(sb.st_mode)) continue;
        snprintf(cfg, sizeof cfg, "%s/adapter_config.json", sub);
        if (stat(cfg, &sb) == 0) {
            if (reg_check_id(id, strlen(id), NULL) == 0 && !find(r, id)) {
                char real[PATH_MAX];
                if (realpath(sub, real) && inside_roots(r, real)) add_entry(r, id, real, 0);
            }
        } else if (depth == 0) {
            scan_dir(r, root, id, 1);
        }
    }
    closedir(d);
}

void reg_rescan(reg_registry *r)
{
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < r->n_roots; i++)
        scan_dir(r, r->roots[i], "", 0);
    pthread_mutex_unlock(&r->mu);
}

int reg_list(reg_registry *r, reg_info **out)
{
    reg_rescan(r);
    pthread_mutex_lock(&r->mu);
    int n = 0;
    for (reg_entry *e = r->head; e; e = e->next)
        n += !e->hidden;
    reg_info *v = calloc((size_t)n + 1, sizeof *v);
    if (!v) {
        pthread_mutex_unlock(&r->mu);
        return LR_ENOMEM;
    }
    int k = 0;
    for (reg_entry *e = r->head; e; e = e->next) {
        if (e->hidden) continue;
        reg_info *x = &v[k++];
        snprintf(x->id, sizeof x->id, "%s", e->id);
        snprintf(x->path, sizeof x->path, "%s", e->path);
        x->state = e->state;
        if (e->ad) {
            x->rank = e->ad->r;
            x->alpha = e->ad->alpha;
            snprintf(x->targets, sizeof x->targets, "%s", e->ad->targets);
        }
        x->bytes = e->bytes;
        x->last_used = e->last_used;
        x->requests = e->requests;
        x->pinned = e->pinned;
        x->refs = e->refs;
        if (e->state == REG_FAILED) snprintf(x->error, sizeof x->error, "%s", e->error.msg);
    }
    pthread_mutex_unlock(&r->mu);
    *out = v;
    return k;
}

void reg_get_stats(reg_registry *r, reg_stats *out)
{
    pthread_mutex_lock(&r->mu);
    *out = r->st;
    pthread_mutex_unlock(&r->mu);
}

/* Append id to a comma-separated Prometheus label value ('"' escaped; ids hold no backslash or
 * newline). Ids that no longer fit are left out. */
static void append_id(char *buf, size_t size, const char *id)
{
    size_t n = strlen(buf), need = strlen(id) * 2 + 2;
    if (n + need > size) return;
    if (n) buf[n++] = ',';
    for (const char *p = id; *p; p++) {
        if (*p == '"') buf[n++] = '\\';
        buf[n++] = *p;
    }
    buf[n] = 0;
}

void reg_lora_info(reg_registry *r, char *running, size_t rsize, char *waiting, size_t wsize)
{
    running[0] = waiting[0] = 0;
    pthread_mutex_lock(&r->mu);
    for (reg_entry *e = r->head; e; e = e->next) {
        if (e->refs > 0) append_id(running, rsize, e->id);
        if (e->waiters > 0) append_id(waiting, wsize, e->id);
    }
    pthread_mutex_unlock(&r->mu);
}

char *reg_metrics_text(reg_registry *r, int max_lora)
{
    reg_stats st;
    reg_get_stats(r, &st);
    char run[2048], wait[2048];
    reg_lora_info(r, run, sizeof run, wait, sizeof wait);
    size_t cap = 8192 + sizeof run + sizeof wait, n = 0;
    char *b = malloc(cap);
    if (!b) return NULL;
#define OUT(...) n += (size_t)snprintf(b + n, n < cap ? cap - n : 0, __VA_ARGS__)
    OUT("# HELP lorad_adapter_loads_total Adapter loads that succeeded.\n"
        "# TYPE lorad_adapter_loads_total counter\nlorad_adapter_loads_total %llu\n",
        (unsigned long long)st.loads);
    OUT("# HELP lorad_adapter_load_failures_total Adapter loads that failed.\n"
        "# TYPE lorad_adapter_load_failures_total counter\n"
        "lorad_adapter_load_failures_total %llu\n",
        (unsigned long long)st.load_failures);
    OUT("# HELP lorad_adapter_evictions_total Adapters evicted to respect the caps.\n"
        "# TYPE lorad_adapter_evictions_total counter\nlorad_adapter_evictions_total %llu\n",
        (unsigned long long)st.evictions);
    OUT("# HELP lorad_adapter_load_seconds Time to read, validate and convert an adapter.\n"
        "# TYPE lorad_adapter_load_seconds histogram\n");
    uint64_t cum = 0;
    for (int i = 0; i < REG_HIST_BUCKETS; i++) {
        cum += st.load_hist[i];
        if (i == REG_HIST_BUCKETS - 1)
            OUT("lorad_adapter_load_seconds_bucket{le=\"+Inf\"} %llu\n", (unsigned long long)cum);
        else
            OUT("lorad_adapter_load_seconds_bucket{le=\"%g\"} %llu\n", reg_hist_bounds[i],
                (unsigned long long)cum);
    }
    OUT("lorad_adapter_load_seconds_sum %.6f\nlorad_adapter_load_seconds_count %llu\n",
        st.load_seconds_sum, (unsigned long long)cum);
    OUT("# HELP lorad_adapters_loaded Adapters resident in memory.\n"
        "# TYPE lorad_adapters_loaded gauge\nlorad_adapters_loaded %d\n",
        st.loaded);
    OUT("# HELP lorad_adapter_bytes Bytes of resident adapter weights.\n"
        "# TYPE lorad_adapter_bytes gauge\nlorad_adapter_bytes %lld\n",
        (long long)st.bytes);
    OUT("# HELP vllm:lora_requests_info Running stats on lora requests.\n"
        "# TYPE vllm:lora_requests_info gauge\n"
        "vllm:lora_requests_info{max_lora=\"%d\",running_lora_adapters=\"%s\","
        "waiting_lora_adapters=\"%s\"} %.7e\n",
        max_lora, run, wait, now_s());
#undef OUT
    if (n >= cap) {
        free(b);
        return NULL;
    }
    return b;
}
