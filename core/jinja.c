/* jinja.c — the public face of the chat-template interpreter: compile, render, destroy, and the
 * conversion of the JSON context into template values.
 *
 * A template is parsed once (jinja_parse.c) into a tree that nothing changes afterwards; each
 * render builds its own context — arena, scopes, output buffer — so renders of one template may
 * run in parallel threads. JSON strings are borrowed, not copied: the caller's json_t outlives
 * the render. Not here: the language itself (jinja_eval.c, jinja_builtins.c).
 */
#include "jinja.h"

#include <stdlib.h>
#include <string.h>

#include "jinja_eval.h"

int jj_compile(const char *src, size_t len, lr_error *err, jj_template **out)
{
    *out = NULL;
    if (!src) return lr_error_set(err, LR_EINVAL, "chat template: no source");
    if (len > JJ_MAX_SOURCE)
        return lr_error_set(err, LR_ETOOLARGE,
                            "chat template: %zu bytes is more than the %zu allowed", len,
                            JJ_MAX_SOURCE);
    jj_template *t = calloc(1, sizeof *t);
    if (!t || !(t->src = malloc(len + 1))) {
        free(t);
        return lr_error_set(err, LR_ENOMEM, "chat template: out of memory");
    }
    memcpy(t->src, src, len);
    t->src[len] = '\0';
    t->len = len;
    int rc = jj_parse(t, err);
    if (rc) {
        jj_destroy(t);
        return rc;
    }
    *out = t;
    return 0;
}

void jj_destroy(jj_template *t)
{
    if (!t) return;
    jj_arena_free(&t->arena);
    free(t->src);
    free(t);
}

/* JSON → value. Containers are copied into the arena (once per render); strings are borrowed. */
static int from_json(jj_ctx *c, const json_t *j, int depth, jv *out)
{
    memset(out, 0, sizeof *out);
    if (depth > 100)
        return jj_fail(c, NULL, LR_EINVAL, "request data nested deeper than 100 levels");
    switch (json_typeof(j)) {
    case JSON_NULL:
        out->t = JV_NONE;
        return 0;
    case JSON_TRUE:
    case JSON_FALSE:
        out->t = JV_BOOL;
        out->u.i = json_is_true(j);
        return 0;
    case JSON_INTEGER:
        out->t = JV_INT;
        out->u.i = (int64_t)json_integer_value(j);
        return 0;
    case JSON_REAL:
        out->t = JV_FLOAT;
        out->u.f = json_real_value(j);
        return 0;
    case JSON_STRING:
        out->t = JV_STR;
        out->u.s.p = json_string_value(j);
        out->u.s.n = json_string_length(j);
        return 0;
    case JSON_ARRAY: {
        size_t n = json_array_size(j);
        jj_list *l = jj_list_new(c, NULL, n);
        if (!l) return c->err->code;
        for (size_t i = 0; i < n; i++) {
            int rc = from_json(c, json_array_get(j, i), depth + 1, &l->v[i]);
            if (rc) return rc;
        }
        l->n = n;
        out->t = JV_LIST;
        out->u.l = l;
        return 0;
    }
    case JSON_OBJECT: {
        jj_dict *d = jj_alloc(c, NULL, sizeof *d);
        size_t n = json_object_size(j);
        if (!d || (n && !(d->kv = jj_alloc(c, NULL, n * sizeof *d->kv)))) return c->err->code;
        d->cap = n;
        const char *k;
        json_t *v;
        /* jansson keeps insertion order, which is the request's key order */
        json_object_foreach((json_t *)j, k, v)
        {
            if (d->n == d->cap) break;
            d->kv[d->n].k = k;
            d->kv[d->n].kn = strlen(k);
            int rc = from_json(c, v, depth + 1, &d->kv[d->n].v);
            if (rc) return rc;
            d->n++;
        }
        out->t = JV_DICT;
        out->u.d = d;
        return 0;
    }
    default:
        return jj_fail(c, NULL, LR_EINVAL, "unsupported JSON value in the template context");
    }
}

int jj_render(const jj_template *t, const json_t *ctx, const jj_options *opts, char **out,
              size_t *out_len, lr_error *err)
{
    lr_error local;
    if (!err) err = &local;
    lr_error_clear(err);
    *out = NULL;
    if (out_len) *out_len = 0;
    if (ctx && !json_is_object(ctx))
        return lr_error_set(err, LR_EINVAL, "chat template: the context must be a JSON object");
    jj_ctx c = {.t = t, .err = err};
    if (opts) c.opt = *opts;
    if (!c.opt.max_output) c.opt.max_output = JJ_DEFAULT_MAX_OUTPUT;
    if (!c.opt.max_memory) c.opt.max_memory = JJ_DEFAULT_MAX_MEMORY;
    if (!c.opt.max_steps) c.opt.max_steps = JJ_DEFAULT_MAX_STEPS;
    if (c.opt.max_depth <= 0) c.opt.max_depth = JJ_DEFAULT_MAX_DEPTH;
    c.arena.limit = c.opt.max_memory;
    jj_buf b = {.limit = c.opt.max_output};
    c.out = &b;
    int rc = 0;
    c.root = jj_alloc(&c, NULL, sizeof *c.root);
    if (!c.root) {
        rc = err->code ? err->code : LR_ENOMEM;
        goto out;
    }
    c.frame = c.root;
    if (ctx) {
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)ctx, k, v)
        {
            jv x;
            if ((rc = from_json(&c, v, 0, &x)) ||
                (rc = jj_frame_set(&c, NULL, c.root, k, strlen(k), x)))
                goto out;
        }
    }
    rc = jj_exec_body(&c, t->root->kids, t->root->nkids);
    if (!rc && b.n > c.opt.max_output)
        rc = jj_fail(&c, NULL, LR_EINTERNAL, "rendered text larger than %zu bytes",
                     c.opt.max_output);
    if (!rc && !b.p) rc = jj_buf_put(&b, "", 0) ? jj_fail(&c, NULL, LR_ENOMEM, "out of memory") : 0;
out:
    jj_arena_free(&c.arena);
    if (rc) {
        if (!err->code) lr_error_set(err, rc, "chat template: render failed (%s)", lr_strerror(rc));
        free(b.p);
        return rc;
    }
    *out = b.p;
    if (out_len) *out_len = b.n;
    return 0;
}

int jj_render_chat(const jj_template *t, const json_t *messages, int add_generation_prompt,
                   const json_t *tools, const char *bos_token, const char *eos_token,
                   const json_t *extra, const jj_options *opts, char **out, size_t *out_len,
                   lr_error *err)
{
    json_t *ctx = json_object();
    if (!ctx) return lr_error_set(err, LR_ENOMEM, "chat template: out of memory");
    int bad = 0;
    if (extra && json_is_object(extra)) bad |= json_object_update(ctx, (json_t *)extra);
    if (messages) bad |= json_object_set(ctx, "messages", (json_t *)messages);
    bad |= json_object_set_new(ctx, "add_generation_prompt", json_boolean(add_generation_prompt));
    if (tools) bad |= json_object_set(ctx, "tools", (json_t *)tools);
    if (bos_token) bad |= json_object_set_new(ctx, "bos_token", json_string(bos_token));
    if (eos_token) bad |= json_object_set_new(ctx, "eos_token", json_string(eos_token));
    int rc = bad ? lr_error_set(err, LR_EINVAL,
                                "chat template: could not build the context "
                                "(are the special tokens valid UTF-8?)")
                 : jj_render(t, ctx, opts, out, out_len, err);
    json_decref(ctx);
    return rc;
}
