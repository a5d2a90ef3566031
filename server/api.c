/* api.c — routing, API keys, and the small endpoints (/health, /v1/models, /tokenize,
 * /detokenize, /apply-template, /metrics), the OpenAI error shape, and the entry shared by
 * /v1/completions, /v1/chat/completions and /generate[_stream] that ties parsing (api_cmpl.c,
 * api_chat.c) and adapter resolution (adapters/ through lora_api_ops) to generation
 * (api_gen.c). No HTTP library here: http.c adapts. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "log.h"

/* An adapter-layer error (an lr_error carrying its HTTP status) as an api_err for `param`. */
static int from_lr(api_err *err, const lr_error *e, const char *param)
{
    api_fail(err, e->code ? e->code : LR_EINTERNAL, e->http > 0 ? e->http : 0, param, "%s",
             e->msg[0] ? e->msg : lr_strerror(e->code ? e->code : LR_EINTERNAL));
    if (e->code == LR_ENOTFOUND) err->code = "model_not_found";
    return err->e.code;
}

static const char *error_type(int status)
{
    switch (status) {
    case 401:
        return "authentication_error";
    case 403:
        return "permission_error";
    case 429:
        return "rate_limit_error";
    case 503:
        return "service_unavailable";
    default:
        return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

char *api_error_body(int status, const char *msg, const char *param, const char *code)
{
    json_t *e =
        json_pack("{s:{s:s, s:s, s:o, s:o}}", "error", "message", msg ? msg : "", "type",
                  error_type(status), "param", param && *param ? json_string(param) : json_null(),
                  "code", code && *code ? json_string(code) : json_null());
    char *s = e ? json_dumps(e, JSON_COMPACT) : NULL;
    json_decref(e);
    return s;
}

void api_reply_error(api_reply *out, const api_err *err)
{
    out->status = err->e.http > 0 ? err->e.http : lr_err_http(err->e.code);
    if (out->status < 400) out->status = 500;
    out->body = api_error_body(out->status, err->e.msg, err->param, err->code);
    out->len = out->body ? strlen(out->body) : 0;
    out->content_type = "application/json";
    out->stream = NULL;
}

static void reply_json(api_reply *out, int status, json_t *v /* stolen */)
{
    char *s = v ? json_dumps(v, JSON_COMPACT) : NULL;
    json_decref(v);
    if (!s) {
        api_err e;
        api_fail(&e, LR_ENOMEM, 500, NULL, "out of memory while writing the response");
        api_reply_error(out, &e);
        return;
    }
    out->status = status;
    out->body = s;
    out->len = strlen(s);
    out->content_type = "application/json";
}

static void fail(api_reply *out, int code, int http, const char *param, const char *msg)
{
    api_err e;
    api_fail(&e, code, http, param, "%s", msg);
    api_reply_error(out, &e);
}

/* Parse the body as a JSON object, or fill an error reply and return NULL. */
static json_t *parse_body(const char *body, size_t len, api_reply *out)
{
    json_error_t je;
    if (len == 0) {
        fail(out, LR_EFORMAT, 400, NULL, "the request body is empty; a JSON object is required");
        return NULL;
    }
    json_t *v = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!v) {
        api_err e;
        api_fail(&e, LR_EFORMAT, 400, NULL,
                 "the request body is not valid JSON: %s (line %d, column %d)", je.text, je.line,
                 je.column);
        api_reply_error(out, &e);
        return NULL;
    }
    if (!json_is_object(v)) {
        json_decref(v);
        fail(out, LR_EFORMAT, 400, NULL, "the request body must be a JSON object");
        return NULL;
    }
    return v;
}

/* Resolve `model` (NULL = base) to an adapter: the served name is the base; other ids go to
 * the resolver hook (the adapter registry), or are 404 without one. */
static int resolve_model(api_ctx *ctx, const char *model, const void **adapter, api_err *err)
{
    *adapter = NULL;
    if (!model || strcmp(model, ctx->served_name) == 0) return 0;
    if (ctx->aops && ctx->aops->resolve) {
        lr_error e;
        lr_error_clear(&e);
        int rc = ctx->aops->resolve(ctx->aops_user, model, adapter, &e);
        return rc ? from_lr(err, &e, "model") : 0;
    }
    if (ctx->resolve) return ctx->resolve(ctx->resolve_user, model, adapter, err);
    api_fail(err, LR_ENOTFOUND, 404, "model", "model '%.200s' not found; this server serves '%s'",
             model, ctx->served_name);
    err->code = "model_not_found";
    return LR_ENOTFOUND;
}

static int tenant_may_use(const api_ctx *ctx, const auth_tenant *t, const char *id,
                          api_err *err);

/* The optional `model` field of /tokenize and /detokenize: checked like a completion's, the
 * tenant's rights first (so that a tenant can neither probe for nor load another's adapter). */
static int check_model_field(api_ctx *ctx, const json_t *body, const auth_tenant *tenant,
                             api_err *err)
{
    json_t *m = json_object_get(body, "model");
    if (!m || json_is_null(m)) return 0;
    if (!json_is_string(m)) return api_fail(err, LR_EINVAL, 400, "model", "model must be a string");
    int rc = api_check_model_id(json_string_value(m), json_string_length(m), err);
    const void *adapter = NULL;
    if (!rc) rc = tenant_may_use(ctx, tenant, json_string_value(m), err);
    if (!rc) rc = resolve_model(ctx, json_string_value(m), &adapter, err);
    /* Tokenization does not depend on the adapter: only the id's validity matters here. */
    if (adapter && ctx->aops && ctx->aops->release) ctx->aops->release(ctx->aops_user, adapter);
    return rc;
}

/* POST /apply-template {messages, add_generation_prompt, tools?} → {prompt}. */
static void do_apply_template(api_ctx *ctx, const char *body, size_t len, api_reply *out)
{
    json_t *v = parse_body(body, len, out);
    if (!v) return;
    api_err err;
    char *text = NULL;
    size_t tl = 0;
    if (api_chat_render(ctx, v, &text, &tl, &err))
        api_reply_error(out, &err);
    else
        reply_json(out, 200, json_pack("{s:s%}", "prompt", text, tl));
    free(text);
    json_decref(v);
}

/* tgi: 0 = /v1/completions, 1 = /generate, 2 = /generate_stream, 3 = /v1/chat/completions. */
/* May `t` (NULL = no auth) use model id `id` (NULL = the base)? 0 or 403 in err. */
static int tenant_may_use(const api_ctx *ctx, const auth_tenant *t, const char *id, api_err *err)
{
    if (!t) return 0;
    if (!id || strcmp(id, ctx->served_name) == 0) {
        if (t->base) return 0;
        return api_fail(err, LR_EFORBIDDEN, 403, "model",
                        "tenant '%.64s' may not use the base model", t->name);
    }
    if (auth_adapter_allowed(t, id)) return 0;
    return api_fail(err, LR_EFORBIDDEN, 403, "model", "tenant '%.64s' may not use adapter '%.200s'",
                    t->name, id);
}

static void do_completions(api_ctx *ctx, const char *body, size_t len, const api_conn *conn,
                           api_reply *out, int tgi, auth_tenant *tenant)
{
    json_t *v = parse_body(body, len, out);
    if (!v) return;
    api_cmpl_req req;
    api_err err;
    api_limits lim = {.tok = ctx->tok,
                      .vocab = ctx->vocab,
                      .max_pos = ctx->max_pos,
                      .max_tokens_default = ctx->max_tokens_default};
    const void *adapter = NULL;
    int rc = tgi == 3 ? api_chat_parse(ctx, v, &lim, &req, &err)
             : tgi    ? api_tgi_parse(v, &lim, &req, &err)
                      : api_cmpl_parse(v, &lim, &req, &err);
    if (tgi == 2) req.stream = 1;
    json_t *mix = tgi == 1 || tgi == 2 ? NULL : json_object_get(v, "adapters");
    if (!rc && mix && !json_is_null(mix)) {
        /* The weighted-mix extension: "adapters": [{"id": "a", "scale": 0.5}, …]. */
        if (!ctx->aops || !ctx->aops->resolve_mix)
            rc = api_fail(&err, LR_EUNSUPPORTED, 400, "adapters",
                          "adapters is not supported: this server has no adapter support");
        else if (req.model && strcmp(req.model, ctx->served_name) != 0)
            rc = api_fail(&err, LR_EINVAL, 400, "adapters",
                          "give either an adapter id in model or an adapters mix, not both");
        else {
            /* Every member must be allowed for the tenant. */
            size_t i;
            json_t *m;
            if (json_is_array(mix)) json_array_foreach(mix, i, m)
                {
                    json_t *id = json_object_get(m, "id");
                    if (!rc && json_is_string(id))
                        rc = tenant_may_use(ctx, tenant, json_string_value(id), &err);
                }
            lr_error e;
            lr_error_clear(&e);
            if (!rc && ctx->aops->resolve_mix(ctx->aops_user, mix, &adapter, &e) != 0)
                rc = from_lr(&err, &e, "adapters");
        }
    } else if (!rc) {
        rc = tenant_may_use(ctx, tenant, req.model, &err);
        if (!rc) rc = resolve_model(ctx, req.model, &adapter, &err);
    }
    json_decref(v);
    if (!rc && tenant) {
        /* The tenant's concurrency cap: the slot is held until the job is freed. */
        if (auth_acquire(tenant) != 0) {
            rc = api_fail(&err, LR_EBUSY, 429, NULL,
                          "tenant '%.64s' already has %d requests in flight (max_concurrent)",
                          tenant->name, tenant->max_concurrent);
            if (adapter && ctx->aops && ctx->aops->release)
                ctx->aops->release(ctx->aops_user, adapter);
        } else {
            req.tenant = tenant;
        }
    }
    if (rc) {
        api_cmpl_req_clear(&req);
        api_reply_error(out, &err);
        return;
    }
    int stream = req.stream;
    api_job *job = NULL;
    if ((rc = api_job_start(ctx, &req, adapter, &job, &err))) {
        api_reply_error(out, &err);
        return;
    }
    if (stream) {
        out->stream = api_job_stream(job, conn);
        if (!out->stream) {
            fail(out, LR_ENOMEM, 500, NULL, "out of memory");
            return;
        }
        out->status = 200;
        out->content_type = "text/event-stream";
        return;
    }
    if (api_job_wait(job, conn) != 0) {
        /* The client went away (or the daemon is stopping): nobody reads this reply. */
        api_job_release(job);
        if (atomic_load(&ctx->stopping))
            fail(out, LR_ESHUTDOWN, 503, NULL, "the server is shutting down");
        else
            fail(out, LR_ECANCELED, 499, NULL, "the client closed the connection");
        return;
    }
    api_job_reply(job, out);
    api_job_release(job);
}

static void do_tokenize(api_ctx *ctx, const char *body, size_t len, const auth_tenant *tenant,
                        api_reply *out)
{
    json_t *v = parse_body(body, len, out);
    if (!v) return;
    api_err err;
    json_t *content = json_object_get(v, "content");
    json_t *as = json_object_get(v, "add_special");
    int add_special = 1;
    if (check_model_field(ctx, v, tenant, &err)) {
        api_reply_error(out, &err);
    } else if (!json_is_string(content)) {
        fail(out, LR_EINVAL, 400, "content", "content must be a string");
    } else if (as && !json_is_null(as) && !json_is_boolean(as)) {
        fail(out, LR_EINVAL, 400, "add_special", "add_special must be a boolean");
    } else {
        if (as && json_is_boolean(as)) add_special = json_is_true(as);
        tok_ids ids = {0};
        int rc = tok_encode(ctx->tok, json_string_value(content), json_string_length(content),
                            add_special, &ids);
        if (rc) {
            api_fail(&err, rc, rc == LR_ENOMEM ? 500 : 400, "content",
                     "content could not be tokenized: %s", lr_strerror(rc));
            api_reply_error(out, &err);
        } else {
            json_t *a = json_array();
            for (size_t i = 0; i < ids.n; i++)
                json_array_append_new(a, json_integer(ids.v[i]));
            reply_json(out, 200, json_pack("{s:o}", "tokens", a));
        }
        free(ids.v);
    }
    json_decref(v);
}

static void do_detokenize(api_ctx *ctx, const char *body, size_t len, const auth_tenant *tenant,
                          api_reply *out)
{
    json_t *v = parse_body(body, len, out);
    if (!v) return;
    api_err err;
    json_t *toks = json_object_get(v, "tokens");
    int vocab = tok_vocab_size(ctx->tok);
    if (check_model_field(ctx, v, tenant, &err)) {
        api_reply_error(out, &err);
        json_decref(v);
        return;
    }
    if (!json_is_array(toks)) {
        fail(out, LR_EINVAL, 400, "tokens", "tokens must be an array of token ids");
        json_decref(v);
        return;
    }
    size_t n = json_array_size(toks);
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    if (!ids) {
        fail(out, LR_ENOMEM, 500, NULL, "out of memory");
        json_decref(v);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *t = json_array_get(toks, i);
        if (!json_is_integer(t) || json_integer_value(t) < 0 || json_integer_value(t) >= vocab) {
            char *shown = json_dumps(t, JSON_ENCODE_ANY | JSON_COMPACT);
            api_fail(&err, LR_ERANGE, 400, "tokens",
                     "tokens[%zu] must be an integer id in [0, %d), got %.40s", i, vocab,
                     shown ? shown : "?");
            free(shown);
            api_reply_error(out, &err);
            free(ids);
            json_decref(v);
            return;
        }
        ids[i] = (int32_t)json_integer_value(t);
    }
    char *text = NULL;
    size_t tl = 0;
    int rc = tok_decode(ctx->tok, ids, n, 0, &text, &tl);
    if (rc) {
        api_fail(&err, rc, rc == LR_ENOMEM ? 500 : 400, "tokens", "tokens could not be decoded: %s",
                 lr_strerror(rc));
        api_reply_error(out, &err);
    } else {
        reply_json(out, 200, json_pack("{s:s%}", "content", text ? text : "", tl));
    }
    free(text);
    free(ids);
    json_decref(v);
}

static void do_models(api_ctx *ctx, api_reply *out)
{
    json_t *base = json_pack("{s:s, s:s, s:I, s:s, s:s, s:i}", "id", ctx->served_name, "object",
                             "model", "created", (json_int_t)ctx->created, "owned_by", "lorad",
                             "root", ctx->served_name, "max_model_len", ctx->max_pos);
    json_t *data = json_pack("[o]", base);
    if (data && ctx->aops && ctx->aops->models)
        ctx->aops->models(ctx->aops_user, ctx->served_name, ctx->created, data);
    reply_json(out, 200, json_pack("{s:s, s:o}", "object", "list", "data", data));
}

static void do_metrics(api_ctx *ctx, api_reply *out)
{
    eng_stats st;
    memset(&st, 0, sizeof st);
    if (ctx->eng) eng_get_stats(ctx->eng, &st);
    char *text = met_render(ctx->met, ctx->eng ? &st : NULL);
    char *extra =
        text && ctx->aops && ctx->aops->metrics ? ctx->aops->metrics(ctx->aops_user) : NULL;
    if (extra) {
        size_t a = strlen(text), b = strlen(extra);
        char *both = realloc(text, a + b + 1);
        if (both) {
            memcpy(both + a, extra, b + 1);
            text = both;
        }
        free(extra);
    }
    if (!text) {
        fail(out, LR_ENOMEM, 500, NULL, "out of memory");
        return;
    }
    out->status = 200;
    out->body = text;
    out->len = strlen(text);
    out->content_type = "text/plain; version=0.0.4; charset=utf-8";
}

typedef struct route {
    const char *path;
    const char *method;
    met_endpoint ep;
} route;

static const route k_routes[] = {
    {"/v1/completions", "POST", MET_EP_COMPLETIONS},
    {"/v1/chat/completions", "POST", MET_EP_CHAT},
    {"/apply-template", "POST", MET_EP_TEMPLATE},
    {"/generate", "POST", MET_EP_GENERATE},
    {"/generate_stream", "POST", MET_EP_GENERATE},
    {"/tokenize", "POST", MET_EP_TOKENIZE},
    {"/detokenize", "POST", MET_EP_DETOKENIZE},
    {"/v1/models", "GET", MET_EP_MODELS},
    {"/health", "GET", MET_EP_HEALTH},
    {"/metrics", "GET", MET_EP_METRICS},
};

void api_handle(api_ctx *ctx, const char *method, const char *path, const char *body, size_t len,
                int body_too_large, const api_conn *conn, api_reply *out)
{
    memset(out, 0, sizeof *out);
    out->ep = MET_EP_OTHER;
    const route *r = NULL;
    for (size_t i = 0; i < sizeof k_routes / sizeof k_routes[0]; i++)
        if (strcmp(path, k_routes[i].path) == 0) r = &k_routes[i];
    /* --metrics off: /metrics does not exist. */
    if (r && r->ep == MET_EP_METRICS && ctx->metrics_mode == API_METRICS_OFF) r = NULL;
    /* With keys configured every route but /health and (unless --metrics auth) /metrics needs
     * one (unknown routes too, so that they do not reveal what exists). */
    auth_tenant *tenant = NULL;
    int is_public = r && (r->ep == MET_EP_HEALTH ||
                          (r->ep == MET_EP_METRICS && ctx->metrics_mode == API_METRICS_PUBLIC));
    if (ctx->auth && !is_public) {
        tenant = auth_lookup(ctx->auth, conn ? conn->authorization : NULL);
        if (!tenant) {
            if (r) out->ep = r->ep;
            fail(out, LR_EAUTH, 401, NULL,
                 "a valid API key is required: send the header Authorization: Bearer KEY");
            return;
        }
        if (!r && !tenant->admin &&
            (strcmp(path, "/v1/load_lora_adapter") == 0 ||
             strcmp(path, "/v1/unload_lora_adapter") == 0)) {
            out->ep = MET_EP_ADAPTERS;
            char msg[200];
            snprintf(msg, sizeof msg,
                     "tenant '%.64s' may not load or unload adapters (admin: false)", tenant->name);
            fail(out, LR_EFORBIDDEN, 403, NULL, msg);
            return;
        }
    }
    if (!r && ctx->aops && ctx->aops->route) {
        /* The adapter routes are answered by adapters/, after the same body and drain checks
         * (with adapter support on, an unknown route with an oversize body is a 413). */
        api_err err;
        memset(&err, 0, sizeof err);
        int rc;
        if (body_too_large)
            rc = api_fail(&err, LR_ETOOLARGE, 413, NULL,
                          "the request body is larger than the server's limit of %lld bytes "
                          "(--max-body-bytes)",
                          ctx->max_body_bytes);
        else if (atomic_load(&ctx->draining))
            rc = api_fail(&err, LR_ESHUTDOWN, 503, NULL, "the server is shutting down");
        else {
            lora_api_reply lr = {0};
            lr_error e;
            lr_error_clear(&e);
            rc = ctx->aops->route(ctx->aops_user, method, path, body, len, &lr, &e);
            if (rc > 0) {
                out->status = lr.status;
                out->body = lr.body;
                out->len = lr.len;
                out->content_type = "application/json";
            } else if (rc < 0) {
                free(lr.body);
                from_lr(&err, &e, NULL);
                if (lr.allow && err.e.http == 405) out->allow = lr.allow;
            }
        }
        if (rc < 0) {
            const char *allow = out->allow;
            api_reply_error(out, &err);
            out->allow = allow;
        }
        if (rc != 0) {
            out->ep = MET_EP_ADAPTERS;
            return;
        }
    }
    if (!r) {
        char msg[320];
        snprintf(msg, sizeof msg, "no route for %.16s %.200s", method, path);
        fail(out, LR_ENOTFOUND, 404, NULL, msg);
        return;
    }
    out->ep = r->ep;
    int is_get = strcmp(r->method, "GET") == 0;
    if (strcmp(method, r->method) != 0 && !(is_get && strcmp(method, "HEAD") == 0)) {
        char msg[320];
        snprintf(msg, sizeof msg, "method %.16s is not allowed on %s; use %s", method, r->path,
                 r->method);
        fail(out, LR_EINVAL, 405, NULL, msg);
        out->allow = r->method;
        return;
    }
    if (body_too_large) {
        char msg[160];
        snprintf(msg, sizeof msg,
                 "the request body is larger than the server's limit of %lld "
                 "bytes (--max-body-bytes)",
                 ctx->max_body_bytes);
        fail(out, LR_ETOOLARGE, 413, NULL, msg);
        return;
    }
    if (atomic_load(&ctx->draining) && r->ep != MET_EP_METRICS) {
        fail(out, LR_ESHUTDOWN, 503, NULL, "the server is shutting down");
        return;
    }
    switch (r->ep) {
    case MET_EP_COMPLETIONS:
        do_completions(ctx, body, len, conn, out, 0, tenant);
        break;
    case MET_EP_CHAT:
        do_completions(ctx, body, len, conn, out, 3, tenant);
        break;
    case MET_EP_TEMPLATE:
        do_apply_template(ctx, body, len, out);
        break;
    case MET_EP_GENERATE:
        do_completions(ctx, body, len, conn, out, strcmp(path, "/generate_stream") == 0 ? 2 : 1,
                       tenant);
        break;
    case MET_EP_TOKENIZE:
        do_tokenize(ctx, body, len, tenant, out);
        break;
    case MET_EP_DETOKENIZE:
        do_detokenize(ctx, body, len, tenant, out);
        break;
    case MET_EP_MODELS:
        do_models(ctx, out);
        break;
    case MET_EP_HEALTH:
        reply_json(out, 200, json_pack("{s:s}", "status", "ok"));
        break;
    case MET_EP_METRICS:
        do_metrics(ctx, out);
        break;
    default:
        fail(out, LR_ENOTFOUND, 404, NULL, "no such route");
    }
}
