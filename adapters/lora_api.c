/* lora_api.c — glue between the HTTP API and the adapter registry. It holds no adapter logic of
 * its own: ids, caps, loading and the math live in adapters/. What is here is the JSON in and
 * out, the error mapping, and the bookkeeping of weighted mixes (a lora_set built per request
 * from several registry references, destroyed when that request's job ends).
 */
#include "lora_api.h"

#include <stdarg.h>
#include <stdio.h>

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "lora.h"
#include "registry.h"

typedef struct lora_mix {
    struct lora_mix *next;
    lora_set *set;
    reg_handle *h[LORA_API_MAX_MIX];
    int n;
} lora_mix;

typedef struct lora_api {
    reg_registry *reg;
    const lr_model *model;
    eng_delta_ops ops;
    int max_loaded;
    pthread_mutex_t mu;
    lora_mix *mixes;
} lora_api;

/* Fill an lr_error with code, an explicit HTTP status (0 = the code's) and a message. */
static int lerr(lr_error *err, int code, int http, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int lerr(lr_error *err, int code, int http, const char *fmt, ...)
{
    if (!err) return code;
    err->code = code;
    err->http = http > 0 ? http : lr_err_http(code);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    return code;
}

static void copy_err(lr_error *dst, const lr_error *src)
{
    if (dst) *dst = *src;
}

static int la_create(const lora_api_params *p, lr_error *err, void **out)
{
    *out = NULL;
    lora_api *l = calloc(1, sizeof *l);
    if (!l) return lr_error_set(err, LR_ENOMEM, "out of memory");
    reg_params rp = {
        .model = p->model,
        .roots = p->roots,
        .n_roots = p->n_roots,
        .max_loaded = p->max_loaded,
        .cache_bytes = p->cache_mb * 1024 * 1024,
        .allow_anywhere = p->allow_anywhere,
        .max_rank = p->max_rank,
        .max_file_bytes = p->max_file_mb * 1024 * 1024,
        .load_timeout_s = 300,
    };
    int rc = reg_create(&rp, err, &l->reg);
    if (rc) {
        free(l);
        return rc;
    }
    l->model = p->model;
    l->max_loaded = p->max_loaded;
    lora_ops(p->model, p->max_rank, &l->ops);
    pthread_mutex_init(&l->mu, NULL);
    *out = l;
    return 0;
}

static void la_destroy(void *vl)
{
    lora_api *l = vl;
    if (!l) return;
    while (l->mixes) {
        lora_mix *m = l->mixes;
        l->mixes = m->next;
        for (int i = 0; i < m->n; i++)
            reg_release(l->reg, m->h[i]);
        lora_set_destroy(m->set);
        free(m);
    }
    reg_destroy(l->reg);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

static const eng_delta_ops *la_delta(void *vl)
{
    return &((lora_api *)vl)->ops;
}

static int la_resolve(void *user, const char *id, const void **adapter, lr_error *err)
{
    lora_api *l = user;
    reg_handle *h = NULL;
    lr_error e;
    lr_error_clear(&e);
    *adapter = NULL;
    int rc = reg_resolve(l->reg, id, strlen(id), &e, &h);
    if (rc) {
        copy_err(err, &e);
        return rc;
    }
    *adapter = reg_handle_set(h);
    return 0;
}

static void la_release(void *user, const void *adapter)
{
    lora_api *l = user;
    if (!adapter) return;
    pthread_mutex_lock(&l->mu);
    lora_mix *m = NULL;
    for (lora_mix **pp = &l->mixes; *pp; pp = &(*pp)->next)
        if ((const void *)(*pp)->set == adapter) {
            m = *pp;
            *pp = m->next;
            break;
        }
    pthread_mutex_unlock(&l->mu);
    if (m) {
        lora_set_destroy(m->set);
        for (int i = 0; i < m->n; i++)
            reg_release(l->reg, m->h[i]);
        free(m);
        return;
    }
    reg_release_set(l->reg, adapter);
}

static int la_resolve_mix(void *vl, const json_t *arr, const void **adapter, lr_error *err)
{
    lora_api *l = vl;
    *adapter = NULL;
    if (!json_is_array(arr) || json_array_size(arr) < 1 || json_array_size(arr) > LORA_API_MAX_MIX)
        return lerr(err, LR_EINVAL, 400,
                    "adapters must be an array of 1 to %d objects {\"id\": \"name\", "
                    "\"scale\": number}",
                    LORA_API_MAX_MIX);
    if (l->max_loaded > 0 && (int)json_array_size(arr) > l->max_loaded)
        return lerr(err, LR_EINVAL, 400,
                    "adapters: a mix of %zu adapters cannot be resident at once with "
                    "--max-loaded-adapters %d",
                    json_array_size(arr), l->max_loaded);
    lora_mix *m = calloc(1, sizeof *m);
    if (!m) return lerr(err, LR_ENOMEM, 500, "out of memory");
    const peft_adapter *ads[LORA_API_MAX_MIX];
    float scales[LORA_API_MAX_MIX];
    int rc = 0;
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *o = json_array_get(arr, i);
        json_t *id = json_object_get(o, "id"), *sc = json_object_get(o, "scale");
        if (!json_is_object(o) || !json_is_string(id)) {
            rc = lerr(err, LR_EINVAL, 400, "adapters[%zu] must be an object with a string \"id\"",
                      i);
            break;
        }
        double s = 1.0;
        if (sc && !json_is_null(sc)) {
            if (!json_is_number(sc) || !isfinite(json_number_value(sc)) ||
                fabs(json_number_value(sc)) > 1e6) {
                rc = lerr(err, LR_EINVAL, 400, "adapters[%zu].scale must be a finite number", i);
                break;
            }
            s = json_number_value(sc);
        }
        lr_error e;
        lr_error_clear(&e);
        if ((rc = reg_resolve(l->reg, json_string_value(id), json_string_length(id), &e,
                              &m->h[m->n]))) {
            copy_err(err, &e);
            break;
        }
        ads[m->n] = reg_handle_adapter(m->h[m->n]);
        scales[m->n] = (float)s;
        m->n++;
    }
    if (!rc) {
        lr_error e;
        lr_error_clear(&e);
        if ((rc = lora_set_create(l->model, ads, scales, m->n, &e, &m->set))) copy_err(err, &e);
    }
    if (rc) {
        for (int i = 0; i < m->n; i++)
            reg_release(l->reg, m->h[i]);
        free(m);
        return rc;
    }
    pthread_mutex_lock(&l->mu);
    m->next = l->mixes;
    l->mixes = m;
    pthread_mutex_unlock(&l->mu);
    *adapter = m->set;
    return 0;
}

/* ---- routes: each returns 0 with *out filled, or an error in *err ---- */

static int reply(lora_api_reply *out, int status, json_t *v, lr_error *err)
{
    out->body = v ? json_dumps(v, JSON_COMPACT) : NULL;
    json_decref(v);
    if (!out->body) return lerr(err, LR_ENOMEM, 500, "out of memory");
    out->status = status;
    out->len = strlen(out->body);
    return 0;
}

static json_t *parse(const char *body, size_t len, lr_error *err)
{
    json_error_t je;
    json_t *v = json_loadb(body ? body : "", len, JSON_REJECT_DUPLICATES, &je);
    if (!v)
        lerr(err, LR_EFORMAT, 400, "the request body is not valid JSON: %s", je.text);
    else if (!json_is_object(v)) {
        lerr(err, LR_EFORMAT, 400, "the request body must be a JSON object");
        json_decref(v);
        v = NULL;
    }
    return v;
}

static int do_adapters(lora_api *l, lora_api_reply *out, lr_error *err)
{
    reg_info *v = NULL;
    int n = reg_list(l->reg, &v);
    if (n < 0) return lerr(err, LR_ENOMEM, 500, "out of memory");
    json_t *data = json_array();
    for (int i = 0; i < n; i++) {
        json_t *o = json_pack(
            "{s:s, s:s, s:s, s:I, s:f, s:I, s:f, s:I, s:b, s:i}", "id", v[i].id, "path", v[i].path,
            "state", reg_state_name(v[i].state), "rank", (json_int_t)v[i].rank, "alpha", v[i].alpha,
            "bytes", (json_int_t)v[i].bytes, "last_used", v[i].last_used, "requests",
            (json_int_t)v[i].requests, "pinned", v[i].pinned, "in_use", v[i].refs);
        if (!o) continue;
        json_t *tm = json_array();
        char *save = NULL;
        for (char *s = strtok_r(v[i].targets, ",", &save); s; s = strtok_r(NULL, ",", &save))
            json_array_append_new(tm, json_string(s));
        json_object_set_new(o, "target_modules", tm);
        if (v[i].state == REG_FAILED) json_object_set_new(o, "error", json_string(v[i].error));
        json_array_append_new(data, o);
    }
    free(v);
    return reply(out, 200, json_pack("{s:s, s:o}", "object", "list", "data", data), err);
}

static int do_load(lora_api *l, const char *body, size_t len, lora_api_reply *out, lr_error *err)
{
    json_t *v = parse(body, len, err);
    if (!v) return err->code;
    json_t *name = json_object_get(v, "lora_name"), *path = json_object_get(v, "lora_path");
    json_t *pin = json_object_get(v, "pinned");
    int rc;
    if (!json_is_string(name)) {
        rc = lerr(err, LR_EINVAL, 400, "lora_name must be a string");
    } else if (!json_is_string(path) ||
               json_string_length(path) != strlen(json_string_value(path))) {
        rc = lerr(err, LR_EINVAL, 400, "lora_path must be a string (a folder path)");
    } else if (pin && !json_is_null(pin) && !json_is_boolean(pin)) {
        rc = lerr(err, LR_EINVAL, 400, "pinned must be true or false");
    } else {
        lr_error e;
        lr_error_clear(&e);
        rc = reg_register(l->reg, json_string_value(name), json_string_length(name),
                          json_string_value(path), pin && json_is_true(pin), &e);
        if (rc)
            copy_err(err, &e);
        else
            rc = reply(out, 200,
                       json_pack("{s:s, s:s, s:s}", "object", "lora_adapter", "id",
                                 json_string_value(name), "state", "loaded"),
                       err);
    }
    json_decref(v);
    return rc;
}

static int do_unload(lora_api *l, const char *body, size_t len, lora_api_reply *out, lr_error *err)
{
    json_t *v = parse(body, len, err);
    if (!v) return err->code;
    json_t *name = json_object_get(v, "lora_name");
    int rc;
    if (!json_is_string(name)) {
        rc = lerr(err, LR_EINVAL, 400, "lora_name must be a string");
    } else {
        lr_error e;
        lr_error_clear(&e);
        rc = reg_unregister(l->reg, json_string_value(name), json_string_length(name), &e);
        if (rc)
            copy_err(err, &e);
        else
            rc = reply(out, 200,
                       json_pack("{s:s, s:s, s:s}", "object", "lora_adapter", "id",
                                 json_string_value(name), "state", "unloaded"),
                       err);
    }
    json_decref(v);
    return rc;
}

static int la_route(void *vl, const char *method, const char *path, const char *body, size_t len,
                    lora_api_reply *out, lr_error *err)
{
    lora_api *l = vl;
    static const struct {
        const char *path, *method;
        int op;
    } routes[] = {{"/v1/adapters", "GET", 0},
                  {"/v1/load_lora_adapter", "POST", 1},
                  {"/v1/unload_lora_adapter", "POST", 2}};
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        if (strcmp(path, routes[i].path) != 0) continue;
        if (strcmp(method, routes[i].method) != 0 &&
            !(routes[i].op == 0 && strcmp(method, "HEAD") == 0)) {
            lerr(err, LR_EINVAL, 405, "method %.16s is not allowed on %s; use %s", method,
                 routes[i].path, routes[i].method);
            out->allow = routes[i].method;
            return -1;
        }
        int rc = routes[i].op == 0   ? do_adapters(l, out, err)
                 : routes[i].op == 1 ? do_load(l, body, len, out, err)
                                     : do_unload(l, body, len, out, err);
        return rc ? -1 : 1;
    }
    return 0;
}

static void la_models(void *vl, const char *parent, long long created, json_t *data)
{
    lora_api *l = vl;
    reg_info *v = NULL;
    int n = reg_list(l->reg, &v);
    for (int i = 0; i < n; i++)
        json_array_append_new(data,
                              json_pack("{s:s, s:s, s:I, s:s, s:s, s:s}", "id", v[i].id, "object",
                                        "model", "created", (json_int_t)created, "owned_by",
                                        "lorad", "root", v[i].path, "parent", parent));
    free(v);
}

static char *la_metrics(void *vl)
{
    lora_api *l = vl;
    return reg_metrics_text(l->reg, l->max_loaded);
}

static void la_rescan(void *vl)
{
    reg_rescan(((lora_api *)vl)->reg);
}

const lora_api_ops lora_api_table = {
    .create = la_create,
    .destroy = la_destroy,
    .delta = la_delta,
    .rescan = la_rescan,
    .resolve = la_resolve,
    .release = la_release,
    .resolve_mix = la_resolve_mix,
    .route = la_route,
    .models = la_models,
    .metrics = la_metrics,
};
