/* api_chat.c — the chat side of the API: loading the model's chat template, rendering
 * `messages` with it (core/jinja, as transformers' apply_chat_template does) and turning a
 * /v1/chat/completions body into the same api_cmpl_req a completion uses, so that generation,
 * stop strings and streaming are shared. The chat response shapes live in api_gen.c.
 *
 * Not here: tool-call parsing (the rendered prompt includes `tools` when the template uses them;
 * the reply is plain assistant text). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "jinja.h"
#include "util.h"

/* Read a whole small file; NULL if absent. */
/* The whole file, or NULL if it is absent or unreadable (the caller then looks elsewhere).
 * No chat template file is larger than 64 MiB. */
static char *slurp(const char *path, size_t *len)
{
    char *buf = NULL;
    return lr_read_file(path, NULL, (size_t)64 << 20, &buf, len, NULL) == 0 ? buf : NULL;
}

/* The template text as transformers finds it: chat_template.jinja beside the tokenizer wins
 * ("clobbers any template in the config"), else tokenizer_config.json's chat_template (a string,
 * or a list of {name, template} where "default" is used), else chat_template.json's
 * chat_template (the processor file). New malloc'd string, or NULL with err->code 0 when the
 * model has no template, or NULL + err when the file is malformed. */
static char *template_source(const char *dir, lr_error *err)
{
    char path[4096];
    size_t len = 0;
    snprintf(path, sizeof path, "%s/chat_template.jinja", dir);
    char *out = slurp(path, &len);
    if (out) return out;
    const char *files[] = {"tokenizer_config.json", "chat_template.json"};
    for (int f = 0; f < 2 && !out && !err->code; f++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[f]);
        char *text = slurp(path, &len);
        if (!text) continue;
        json_t *cfg = json_loadb(text, len, 0, NULL);
        free(text);
        json_t *ct = json_object_get(cfg, "chat_template");
        if (json_is_string(ct)) {
            out = strdup(json_string_value(ct));
        } else if (json_is_array(ct)) {
            size_t i;
            json_t *e;
            json_array_foreach(ct, i, e)
            {
                json_t *name = json_object_get(e, "name"), *t = json_object_get(e, "template");
                if (!out && json_is_string(t) && json_is_string(name) &&
                    strcmp(json_string_value(name), "default") == 0)
                    out = strdup(json_string_value(t));
            }
            if (!out)
                lr_error_set(err, LR_EFORMAT,
                             "%s: chat_template is a list of %zu templates with no entry named "
                             "\"default\" (transformers refuses it the same way)",
                             files[f], json_array_size(ct));
        } else if (ct && !json_is_null(ct)) {
            lr_error_set(err, LR_EFORMAT,
                         "%s: chat_template must be a string or a list of "
                         "{name, template}",
                         files[f]);
        }
        json_decref(cfg);
    }
    return out;
}

/* Why the model's chat template could not be loaded (empty if it loaded or there is none):
 * written by api_chat_load at start-up, before any request is served, so that a chat request
 * is told what was wrong with the template instead of "no chat template". */
static char load_failure[sizeof(((lr_error *)0)->msg)];

int api_chat_load(const char *dir, lr_error *err, jj_template **out)
{
    *out = NULL;
    lr_error_clear(err);
    load_failure[0] = '\0';
    char *src = template_source(dir, err);
    if (!src) {
        if (err->code) snprintf(load_failure, sizeof load_failure, "%s", err->msg);
        return err->code; /* 0: the model has no chat template */
    }
    int rc = jj_compile(src, strlen(src), err, out);
    free(src);
    if (rc) {
        lr_error_prefix(err, "%s: chat template: ", dir);
        snprintf(load_failure, sizeof load_failure, "%s", err->msg);
    }
    return rc;
}

/* Check `messages` and copy it with list-of-parts contents joined into strings (as vLLM
 * does), so that templates that expect a string get one. New reference, or NULL + err. */
static json_t *normalise_messages(const json_t *msgs, api_err *err)
{
    if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
        api_fail(err, LR_EINVAL, 400, "messages",
                 "messages must be a non-empty array of {role, content} objects");
        return NULL;
    }
    json_t *out = json_array();
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m)
    {
        json_t *role = json_object_get(m, "role"), *content = json_object_get(m, "content");
        if (!json_is_object(m) || !json_is_string(role)) {
            api_fail(err, LR_EINVAL, 400, "messages",
                     "messages[%zu] must be an object with a string role", i);
            json_decref(out);
            return NULL;
        }
        json_t *copy = json_copy(m);
        if (json_is_array(content)) {
            /* [{"type": "text", "text": "…"}, …] → one string joined with newlines. */
            char *joined = NULL;
            size_t jl = 0, k;
            json_t *part;
            int bad = 0;
            json_array_foreach(content, k, part)
            {
                json_t *type = json_object_get(part, "type"), *t = json_object_get(part, "text");
                if (!json_is_string(type) || strcmp(json_string_value(type), "text") != 0 ||
                    !json_is_string(t)) {
                    bad = 1;
                    break;
                }
                size_t tl = json_string_length(t);
                char *nj = realloc(joined, jl + tl + 2);
                if (!nj) {
                    bad = 1;
                    break;
                }
                joined = nj;
                if (k) joined[jl++] = '\n';
                memcpy(joined + jl, json_string_value(t), tl);
                jl += tl;
                joined[jl] = '\0';
            }
            if (bad) {
                free(joined);
                json_decref(copy);
                json_decref(out);
                api_fail(err, LR_EUNSUPPORTED, 400, "messages",
                         "messages[%zu].content: only text parts {\"type\": \"text\", \"text\": "
                         "\"…\"} are supported",
                         i);
                return NULL;
            }
            json_object_set_new(copy, "content", json_stringn(joined ? joined : "", jl));
            free(joined);
        } else if (content && !json_is_string(content) && !json_is_null(content)) {
            json_decref(copy);
            json_decref(out);
            api_fail(err, LR_EINVAL, 400, "messages",
                     "messages[%zu].content must be a string, null or a list of text parts", i);
            return NULL;
        }
        json_array_append_new(out, copy);
    }
    return out;
}

int api_chat_render(const api_ctx *ctx, const json_t *body, char **out, size_t *len, api_err *err)
{
    *out = NULL;
    /* 400 like a template that fails while rendering: the daemon is fine, chat with this
     * template is not possible (completions still are). */
    if (!ctx->chat_tmpl && load_failure[0])
        return api_fail(err, LR_EUNSUPPORTED, 400, "messages",
                        "the model's chat template cannot be used: %s", load_failure);
    if (!ctx->chat_tmpl)
        return api_fail(err, LR_EUNSUPPORTED, 400, "messages",
                        "this model has no chat template (tokenizer_config.json chat_template); "
                        "use /v1/completions");
    json_t *agp = json_object_get(body, "add_generation_prompt");
    if (agp && !json_is_null(agp) && !json_is_boolean(agp))
        return api_fail(err, LR_EINVAL, 400, "add_generation_prompt",
                        "add_generation_prompt must be a boolean");
    json_t *tools = json_object_get(body, "tools");
    if (tools && !json_is_null(tools) && !json_is_array(tools))
        return api_fail(err, LR_EINVAL, 400, "tools", "tools must be an array");
    /* chat_template_kwargs (vLLM's extension): more template variables, e.g. enable_thinking,
     * as transformers' apply_chat_template(**kwargs) passes them. */
    json_t *kw = json_object_get(body, "chat_template_kwargs");
    if (kw && !json_is_null(kw) && !json_is_object(kw))
        return api_fail(err, LR_EINVAL, 400, "chat_template_kwargs",
                        "chat_template_kwargs must be an object of template variables");
    json_t *msgs = normalise_messages(json_object_get(body, "messages"), err);
    if (!msgs) return err->e.code;
    lr_error le;
    lr_error_clear(&le);
    int rc = jj_render_chat(ctx->chat_tmpl, msgs, agp ? json_is_true(agp) : 1,
                            json_is_array(tools) ? tools : NULL, tok_bos_text(ctx->tok),
                            tok_eos_text(ctx->tok), json_is_object(kw) ? kw : NULL, NULL, out, len,
                            &le);
    json_decref(msgs);
    /* A template that hits a render bound (recursion, loop, output size) on these messages is
     * refused as a bad request: the daemon is fine, this conversation cannot be rendered. Only
     * running out of memory is our fault (500). */
    if (rc)
        return api_fail(err, rc, rc == LR_ENOMEM ? 500 : le.http > 0 && le.http < 500 ? le.http : 400,
                        "messages", "%s", le.msg[0] ? le.msg : lr_strerror(rc));
    return 0;
}

int api_chat_parse(const api_ctx *ctx, const json_t *body, const api_limits *lim, api_cmpl_req *r,
                   api_err *err)
{
    memset(r, 0, sizeof *r);
    if (!json_is_object(body))
        return api_fail(err, LR_EINVAL, 400, NULL, "the request body must be a JSON object");
    /* logprobs is a boolean here; top_logprobs says how many alternatives. */
    json_t *lp = json_object_get(body, "logprobs"), *top = json_object_get(body, "top_logprobs");
    if (lp && !json_is_null(lp) && !json_is_boolean(lp))
        return api_fail(err, LR_EINVAL, 400, "logprobs", "logprobs must be a boolean");
    int want_lp = json_is_true(lp);
    long long k = 0;
    if (top && !json_is_null(top)) {
        if (!json_is_integer(top) || json_integer_value(top) < 0 ||
            json_integer_value(top) > ENG_MAX_TOP_LOGPROBS)
            return api_fail(err, LR_EINVAL, 400, "top_logprobs",
                            "top_logprobs must be an integer in [0, 20]");
        if (!want_lp)
            return api_fail(err, LR_EINVAL, 400, "top_logprobs",
                            "top_logprobs needs logprobs: true");
        k = json_integer_value(top);
    }
    /* Tools reach the template, but lorad does not parse tool calls out of the reply: a request
     * that forces a call (tool_choice "required" or a named function) or uses the deprecated
     * functions API would silently get plain text, so it is refused. */
    json_t *tc = json_object_get(body, "tool_choice"), *fc = json_object_get(body, "function_call");
    json_t *choice[] = {tc, fc};
    const char *cname[] = {"tool_choice", "function_call"};
    for (int i = 0; i < 2; i++) {
        json_t *c = choice[i];
        if (!c || json_is_null(c)) continue;
        if (json_is_string(c) && (strcmp(json_string_value(c), "none") == 0 ||
                                  strcmp(json_string_value(c), "auto") == 0))
            continue;
        char *s = json_dumps(c, JSON_ENCODE_ANY | JSON_COMPACT);
        api_fail(err, LR_EUNSUPPORTED, 400, cname[i],
                 "%s %.60s is not supported by lorad: it does not parse tool calls, the reply is "
                 "plain text (\"auto\" and \"none\" are accepted)",
                 cname[i], s ? s : "?");
        free(s);
        return err->e.code;
    }
    json_t *fns = json_object_get(body, "functions");
    if (fns && !json_is_null(fns) && !(json_is_array(fns) && json_array_size(fns) == 0))
        return api_fail(err, LR_EUNSUPPORTED, 400, "functions",
                        "functions (the deprecated function-calling API) is not supported by "
                        "lorad; pass tools, which the chat template renders");
    static const char *refused[] = {"audio", "prediction"};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        json_t *x = json_object_get(body, refused[i]);
        if (x && !json_is_null(x))
            return api_fail(err, LR_EUNSUPPORTED, 400, refused[i], "%s is not supported by lorad",
                            refused[i]);
    }
    json_t *mod = json_object_get(body, "modalities");
    if (mod && !json_is_null(mod)) {
        size_t i;
        json_t *e;
        int ok = json_is_array(mod);
        json_array_foreach(mod, i, e) ok = ok && json_is_string(e) &&
                                           strcmp(json_string_value(e), "text") == 0;
        if (!ok)
            return api_fail(err, LR_EUNSUPPORTED, 400, "modalities",
                            "modalities other than [\"text\"] are not supported by lorad");
    }
    char *text = NULL;
    size_t len = 0;
    int rc = api_chat_render(ctx, body, &text, &len, err);
    if (rc) return rc;
    /* The rendered prompt already holds the special tokens the template wants. */
    tok_ids ids = {0};
    rc = tok_encode(ctx->tok, text, len, 0, &ids);
    free(text);
    if (rc) {
        free(ids.v);
        return api_fail(err, rc, rc == LR_ENOMEM ? 500 : 400, "messages",
                        "the rendered chat prompt could not be tokenized: %s", lr_strerror(rc));
    }
    /* Reuse the completions validation on a copy that carries the prompt as token ids. */
    json_t *c = json_copy((json_t *)body);
    json_t *prompt = json_array();
    for (size_t i = 0; i < ids.n; i++)
        json_array_append_new(prompt, json_integer(ids.v[i]));
    free(ids.v);
    static const char *drop[] = {"messages",
                                 "tools",
                                 "tool_choice",
                                 "logprobs",
                                 "top_logprobs",
                                 "add_generation_prompt",
                                 "echo",
                                 "parallel_tool_calls",
                                 "function_call",
                                 "functions",
                                 "modalities",
                                 "chat_template_kwargs",
                                 "max_completion_tokens"};
    json_t *mct = json_object_get(body, "max_completion_tokens");
    if (mct && !json_is_null(mct) && !json_object_get(body, "max_tokens"))
        json_object_set(c, "max_tokens", mct);
    for (size_t i = 0; i < sizeof drop / sizeof drop[0]; i++)
        json_object_del(c, drop[i]);
    json_object_set_new(c, "prompt", prompt);
    if (want_lp) json_object_set_new(c, "logprobs", json_integer(k));
    rc = api_cmpl_parse(c, lim, r, err);
    json_decref(c);
    if (rc) {
        if (strcmp(err->param, "prompt") == 0) {
            snprintf(err->param, sizeof err->param, "messages");
            /* "prompt has N tokens…" reads as the rendered messages here. */
            char msg[sizeof err->e.msg];
            snprintf(msg, sizeof msg, "the rendered chat prompt: %s", err->e.msg);
            snprintf(err->e.msg, sizeof err->e.msg, "%s", msg);
        }
        if (mct && strcmp(err->param, "max_tokens") == 0 && !json_object_get(body, "max_tokens"))
            snprintf(err->param, sizeof err->param, "max_completion_tokens");
        return rc;
    }
    r->chat = 1;
    return 0;
}
