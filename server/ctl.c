/* ctl.c — startup, the libuv control loop and shutdown. The loop runs on the main thread and
 * does no request work: HTTP requests are served by libmicrohttpd's connection threads and
 * generation by the engine thread. The loop owns the signals (SIGTERM/SIGINT drain, SIGHUP
 * reserved for adapter rescans), a uv_async that connection threads poke when a request ends
 * (so a drain finishes as soon as the last one does), and a housekeeping timer.
 *
 * Drain: /health and new requests answer 503, the engine stops admitting, in-flight requests
 * (streams included) run to completion, bounded by --drain-timeout; then the HTTP server is
 * stopped (waiters give up), the engine is destroyed (aborting what is left) and we exit 0. */
#include "ctl.h"

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "api.h"
#include "auth.h"
#include "engine.h"
#include "http.h"
#include "jinja.h"
#include "log.h"
#include "met.h"
#include "model.h"
#include "peft_store.h"
#include "tokenizer.h"

/* Weak: programs that link the server without the adapter objects (check_api) have no arena. */
#pragma weak ps_reserve

typedef struct ctl_state {
    const cli_config *cfg;
    api_ctx api;
    http_server *http;
    uv_loop_t loop;
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_async_t wake;
    uv_timer_t house;
    int draining;
    uint64_t drain_deadline; /* uv_now() ms */
    const lora_api_ops *aops;
    void *aops_user;
    pthread_t reserve_th; /* the adapter memory reserve, joined at exit */
    int reserve_started;
} ctl_state;

static double ms_since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) * 1e3 + (double)(t.tv_nsec - t0->tv_nsec) * 1e-6;
}

static const char *dtype_name(lr_dtype d)
{
    return d == LR_DT_F16 ? "f16" : d == LR_DT_BF16 ? "bf16" : "f32";
}

/* Weight tensors of the model (matrices and vectors present), for the startup log. */
static int count_tensors(const lr_model *m)
{
    int n = (m->embed.data != NULL) + (m->lm_head.data && m->lm_head.data != m->embed.data) +
            (m->final_norm != NULL);
    for (int i = 0; i < m->cfg.n_layers && m->layers; i++) {
        const lr_layer *l = &m->layers[i];
        const lr_mat *mats[] = {&l->q, &l->k, &l->v, &l->o, &l->gate, &l->up, &l->down};
        const float *vecs[] = {l->attn_norm, l->mlp_norm, l->bq,  l->bk,   l->bv,
                               l->bo,        l->bgate,    l->bup, l->bdown};
        for (size_t k = 0; k < sizeof mats / sizeof mats[0]; k++)
            n += mats[k]->data != NULL;
        for (size_t k = 0; k < sizeof vecs / sizeof vecs[0]; k++)
            n += vecs[k] != NULL;
    }
    return n;
}

/* Stop the loop once nothing is in flight or the drain deadline passed. */
static void check_drain(ctl_state *st)
{
    if (!st->draining) return;
    int left = http_in_flight(st->http);
    if (left == 0) {
        log_msg(LOG_INFO, "lorad: drained; stopping");
        uv_stop(&st->loop);
    } else if (uv_now(&st->loop) >= st->drain_deadline) {
        log_msg(LOG_WARN, "lorad: drain timeout (%ds) with %d request(s) in flight; stopping",
                st->cfg->drain_timeout, left);
        uv_stop(&st->loop);
    }
}

static void on_house(uv_timer_t *h);

static void on_term(uv_signal_t *h, int signum)
{
    ctl_state *st = h->data;
    if (st->draining) {
        log_msg(LOG_WARN, "lorad: %s again; stopping now", strsignal(signum));
        uv_stop(&st->loop);
        return;
    }
    st->draining = 1;
    st->drain_deadline = uv_now(&st->loop) + (uint64_t)st->cfg->drain_timeout * 1000;
    atomic_store(&st->api.draining, 1);
    eng_drain(st->api.eng);
    log_msg(LOG_INFO, "lorad: %s: draining %d in-flight request(s), at most %ds", strsignal(signum),
            http_in_flight(st->http), st->cfg->drain_timeout);
    /* Poll faster while draining, so that the deadline is honoured closely. */
    uv_timer_start(&st->house, on_house, 50, 50);
    check_drain(st);
}

static void on_hup(uv_signal_t *h, int signum)
{
    ctl_state *st = h->data;
    if (st->aops && st->aops->rescan) {
        log_msg(LOG_INFO, "lorad: SIGHUP: rescanning the adapter roots");
        st->aops->rescan(st->aops_user);
    } else {
        log_msg(LOG_INFO, "lorad: SIGHUP received (no adapter support: nothing to rescan)");
    }
}

static void on_wake(uv_async_t *h)
{
    check_drain(h->data);
}

static void on_house(uv_timer_t *h)
{
    ctl_state *st = h->data;
    check_drain(st);
    if (!st->draining && log_get_level() == LOG_DEBUG) {
        eng_stats es;
        eng_get_stats(st->api.eng, &es);
        log_msg(LOG_DEBUG, "engine: running %d waiting %d kv %d/%d steps %llu", es.running,
                es.waiting, es.kv_blocks_used, es.kv_blocks_total, (unsigned long long)es.steps);
    }
}

static void request_done(void *user)
{
    ctl_state *st = user;
    uv_async_send(&st->wake);
}

static void close_cb(uv_handle_t *h) {}

/* The adapter arena (--adapter-reserve-mb): mapped and faulted in by a thread of its own, so
 * that neither startup nor the first requests wait for it. A load that races it maps fresh
 * memory, as it would without a reserve. The thread is joined at exit (a detached one left its
 * TLS block as "possibly lost" under valgrind); that waits at most for the rest of the reserve. */
static void *reserve_main(void *arg)
{
    size_t mb = (size_t)(uintptr_t)arg;
    /* Run only when a core is idle: faulting in 256 MiB took 20-700 ms of a core here (the slow
     * end when the VM's host first backs the memory), and at normal priority it slowed the
     * requests served meanwhile from ~33 to ~55 ms each on 2 cores. */
    struct sched_param sp = {0};
    pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp);
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = ps_reserve(mb << 20);
    if (rc)
        log_msg(LOG_WARN,
                "adapters: could not reserve %zu MiB of adapter memory (%s); loads map fresh "
                "memory",
                mb, lr_strerror(rc));
    else
        log_msg(LOG_INFO, "adapters: %zu MiB of adapter memory reserved and pre-faulted in %.0f ms",
                mb, ms_since(&t0));
    return NULL;
}

static void start_reserve(ctl_state *st)
{
    int64_t mb = st->cfg->adapter_reserve_mb;
    if (st->cfg->adapter_cache_mb > 0 && mb > st->cfg->adapter_cache_mb)
        mb = st->cfg->adapter_cache_mb;
    if (mb <= 0 || !ps_reserve) return;
    if (pthread_create(&st->reserve_th, NULL, reserve_main, (void *)(uintptr_t)mb) == 0)
        st->reserve_started = 1;
    else
        log_msg(LOG_WARN, "adapters: no adapter memory reserve (cannot start a thread)");
}

int ctl_run(const cli_config *cfg, const lora_api_ops *aops)
{
    ctl_state st;
    memset(&st, 0, sizeof st);
    st.cfg = cfg;
    lr_model *model = NULL;
    tok_tokenizer *tok = NULL;
    eng_engine *eng = NULL;
    met_metrics *met = NULL;
    jj_template *chat = NULL;
    auth_db *auth = NULL;
    lr_error err;
    lr_error_clear(&err);
    int rc = 1, loop_ok = 0;
    struct timespec t0;

    signal(SIGPIPE, SIG_IGN);
    log_msg(LOG_INFO, "lorad %s: loading model %s", LORAD_VERSION, cfg->model_dir);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (lr_model_load(cfg->model_dir, &err, &model) != 0) {
        log_msg(LOG_ERROR, "lorad: cannot load the model: %s", err.msg);
        goto out;
    }
    log_msg(LOG_INFO,
            "model: %d tensors, dtype %s, %lld weight bytes, %d layers, hidden %d, vocab %d, "
            "context %d, loaded in %.0f ms",
            count_tensors(model), dtype_name(model->embed.dtype), (long long)model->weight_bytes,
            model->cfg.n_layers, model->cfg.hidden, model->cfg.vocab, model->cfg.max_pos,
            ms_since(&t0));

    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (tok_load_dir(cfg->model_dir, &err, &tok) != 0) {
        log_msg(LOG_ERROR, "lorad: cannot load the tokenizer: %s", err.msg);
        goto out;
    }
    log_msg(LOG_INFO, "tokenizer: %d tokens (bos %d, eos %d), loaded in %.0f ms",
            tok_vocab_size(tok), (int)tok_bos_id(tok), (int)tok_eos_id(tok), ms_since(&t0));

    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (cfg->api_key || cfg->api_keys) {
        int arc = cfg->api_key ? auth_single_key(cfg->api_key, &err, &auth)
                               : auth_load_file(cfg->api_keys, &err, &auth);
        if (arc) {
            log_msg(LOG_ERROR, "lorad: %s", err.msg);
            goto out;
        }
        log_msg(LOG_INFO, "auth: %d tenant(s); requests need Authorization: Bearer KEY",
                auth_n_tenants(auth));
    }
    /* A chat template that does not compile only disables chat: completions still work. */
    if (api_chat_load(cfg->model_dir, &err, &chat) != 0)
        log_msg(LOG_WARN, "lorad: no chat endpoint: %s", err.msg);
    else
        log_msg(LOG_INFO, "chat template: %s", chat ? "compiled" : "none (chat disabled)");
    const eng_delta_ops *delta = NULL;
    if (aops && aops->create) {
        clock_gettime(CLOCK_MONOTONIC, &t0);
        lora_api_params ap = {
            .model = model,
            .roots = cfg->adapter_dirs,
            .n_roots = cfg->n_adapter_dirs,
            .max_loaded = cfg->max_loaded_adapters,
            .cache_mb = cfg->adapter_cache_mb,
            .allow_anywhere = cfg->allow_paths_anywhere,
            .max_rank = cfg->max_lora_rank,
            .max_file_mb = cfg->max_adapter_file_mb,
        };
        if (aops->create(&ap, &err, &st.aops_user) != 0) {
            log_msg(LOG_ERROR, "lorad: cannot start the adapter registry: %s", err.msg);
            goto out;
        }
        st.aops = aops;
        delta = aops->delta ? aops->delta(st.aops_user) : NULL;
        log_msg(LOG_INFO,
                "adapters: %d root(s), at most %d loaded, %lld MiB cache, max rank %d, "
                "started in %.0f ms",
                cfg->n_adapter_dirs, cfg->max_loaded_adapters, (long long)cfg->adapter_cache_mb,
                cfg->max_lora_rank, ms_since(&t0));
        start_reserve(&st);
    }
    clock_gettime(CLOCK_MONOTONIC, &t0);
    eng_params ep = {
        .model = model,
        .threads = cfg->threads,
        .max_batch_tokens = cfg->max_batch_tokens,
        .max_seqs = cfg->max_seqs,
        .max_queue = cfg->max_queue,
        .kv_cache_mb = cfg->kv_cache_mb,
        .kv_resident = !cfg->kv_cache_lazy,
        .kv_block_tokens = 16,
        .delta = delta,
    };
    if (eng_create(&ep, &err, &eng) != 0) {
        log_msg(LOG_ERROR, "lorad: cannot start the engine: %s", err.msg);
        goto out;
    }
    eng_stats es;
    eng_get_stats(eng, &es);
    log_msg(LOG_INFO,
            "engine: %d KV blocks of %d tokens (%lld MiB, %s), %d batch tokens, %d sequences, "
            "queue %d, %d threads, started in %.0f ms",
            es.kv_blocks_total, ep.kv_block_tokens, (long long)cfg->kv_cache_mb,
            cfg->kv_cache_lazy ? "lazy" : "resident",
            cfg->max_batch_tokens, cfg->max_seqs, cfg->max_queue, cfg->threads, ms_since(&t0));

    if (!(met = met_create())) {
        log_msg(LOG_ERROR, "lorad: out of memory");
        goto out;
    }
    st.api.model = model;
    st.api.tok = tok;
    st.api.eng = eng;
    st.api.met = met;
    st.api.served_name = cfg->served_name;
    st.api.max_tokens_default = cfg->max_tokens_default;
    st.api.max_pos = model->cfg.max_pos;
    st.api.vocab = model->cfg.vocab < tok_vocab_size(tok) ? model->cfg.vocab : tok_vocab_size(tok);
    st.api.created = (long long)time(NULL);
    st.api.max_body_bytes = cfg->max_body_bytes;
    st.api.aops = st.aops;
    st.api.chat_tmpl = chat;
    st.api.auth = auth;
    st.api.metrics_mode = cfg->metrics_mode;
    st.api.aops_user = st.aops_user;

    if (uv_loop_init(&st.loop) != 0) {
        log_msg(LOG_ERROR, "lorad: cannot create the event loop");
        goto out;
    }
    loop_ok = 1;
    uv_signal_init(&st.loop, &st.sig_term);
    uv_signal_init(&st.loop, &st.sig_int);
    uv_signal_init(&st.loop, &st.sig_hup);
    uv_async_init(&st.loop, &st.wake, on_wake);
    uv_timer_init(&st.loop, &st.house);
    st.sig_term.data = st.sig_int.data = st.sig_hup.data = &st;
    st.wake.data = st.house.data = &st;
    uv_signal_start(&st.sig_term, on_term, SIGTERM);
    uv_signal_start(&st.sig_int, on_term, SIGINT);
    uv_signal_start(&st.sig_hup, on_hup, SIGHUP);
    uv_timer_start(&st.house, on_house, 1000, 1000);

    http_params hp = {
        .host = cfg->host,
        .port = cfg->port,
        .max_body_bytes = cfg->max_body_bytes,
        .idle_timeout = cfg->idle_timeout,
        .max_connections = cfg->max_connections,
        .header_timeout = cfg->header_timeout,
        .api = &st.api,
        .on_request_done = request_done,
        .user = &st,
    };
    int port = 0;
    if (http_start(&hp, &err, &st.http, &port) != 0) {
        log_msg(LOG_ERROR, "lorad: %s", err.msg);
        goto out;
    }
    /* The one line scripts and tests wait for; printed bare so that it is easy to parse. */
    if (strchr(cfg->host, ':')) /* an IPv6 literal goes in brackets in a URL */
        fprintf(stderr, "lorad: listening on http://[%s]:%d\n", cfg->host, port);
    else
        fprintf(stderr, "lorad: listening on http://%s:%d\n", cfg->host, port);
    /* Say who can reach us: an open daemon (no keys) is meant for this machine only. */
    if (!auth) {
        int loopback = strcmp(cfg->host, "127.0.0.1") == 0 || strcmp(cfg->host, "::1") == 0 ||
                       strcmp(cfg->host, "localhost") == 0 || strncmp(cfg->host, "127.", 4) == 0;
        if (loopback)
            log_msg(LOG_INFO,
                    "auth: no API keys: open to local clients only (bound to %s; use --api-key "
                    "or --api-keys before binding another address)",
                    cfg->host);
        else
            log_msg(LOG_WARN,
                    "auth: no API keys and bound to %s: ANYONE who can reach this address may "
                    "use and administer the daemon (give --api-key or --api-keys)",
                    cfg->host);
    }
    log_msg(LOG_INFO,
            "limits: body %lld bytes, header timeout %ds, idle timeout %ds, %d connections, "
            "queue %d, /metrics %s",
            (long long)cfg->max_body_bytes, cfg->header_timeout, cfg->idle_timeout,
            cfg->max_connections, cfg->max_queue,
            cfg->metrics_mode == API_METRICS_PUBLIC ? "public"
            : cfg->metrics_mode == API_METRICS_AUTH ? "needs a key"
                                                    : "off");
    fflush(stderr);

    uv_run(&st.loop, UV_RUN_DEFAULT);
    rc = 0;

out:
    /* Waiters give up, the HTTP server joins its threads, then the engine aborts the rest. */
    atomic_store(&st.api.stopping, 1);
    http_stop(st.http);
    st.http = NULL;
    eng_destroy(eng);
    st.api.eng = NULL;
    /* After the engine: every job has had its final event and released its adapter. */
    if (st.aops && st.aops->destroy) st.aops->destroy(st.aops_user);
    if (st.reserve_started) pthread_join(st.reserve_th, NULL);
    if (loop_ok) {
        uv_close((uv_handle_t *)&st.sig_term, close_cb);
        uv_close((uv_handle_t *)&st.sig_int, close_cb);
        uv_close((uv_handle_t *)&st.sig_hup, close_cb);
        uv_close((uv_handle_t *)&st.wake, close_cb);
        uv_close((uv_handle_t *)&st.house, close_cb);
        uv_run(&st.loop, UV_RUN_DEFAULT);
        uv_loop_close(&st.loop);
    }
    met_destroy(met);
    jj_destroy(chat);
    auth_destroy(auth);
    tok_destroy(tok);
    lr_model_free(model);
    if (rc == 0) log_msg(LOG_INFO, "lorad: stopped");
    return rc;
}
