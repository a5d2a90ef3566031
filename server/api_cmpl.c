/* api_cmpl.c — validation of /v1/completions bodies: every parameter is type- and range-checked
 * with a message that names it and quotes the bad value; prompts are tokenized here. It does not
 * run anything: api_gen.c takes the parsed request to the engine.
 *
 * Unknown fields are ignored (clients send many), but fields that would change the result and
 * that lorad does not implement (suffix, logit_bias, best_of > n, beam search, guided decoding…)
 * are refused with 400 rather than silently dropped. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "api.h"

int api_fail(api_err *err, int code, int http, const char *param, const char *fmt, ...)
{
    if (!err) return code;
    err->e.code = code;
    err->e.http = http > 0 ? http : lr_err_http(code);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->e.msg, sizeof err->e.msg, fmt, ap);
    va_end(ap);
    snprintf(err->param, sizeof err->param, "%s", param ? param : "");
    err->code = NULL;
    return code;
}

/* A short JSON rendering of v for messages ("got -1", "got \"abc\""), into buf. */
static const char *show(const json_t *v, char *buf, size_t size)
{
    char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    if (!s) {
        snprintf(buf, size, "?");
        return buf;
    }
    if (strlen(s) > 40)
        snprintf(buf, size, "%.37s...", s);
    else
        snprintf(buf, size, "%s", s);
    free(s);
    return buf;
}

/* A field that is absent or JSON null counts as "not given". */
static json_t *field(const json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_null(v) ? NULL : v;
}

static int get_bool(const json_t *o, const char *key, int *out, api_err *err)
{
    json_t *v = field(o, key);
    char b[64];
    if (!v) return 0;
    if (!json_is_boolean(v))
        return api_fail(err, LR_EINVAL, 400, key, "%s must be a boolean, got %s", key,
                        show(v, b, sizeof b));
    *out = json_is_true(v);
    return 0;
}

/* An integer in [lo, hi]; `want` is the wording of the requirement ("an integer ≥ 1"). */
static int get_int(const json_t *o, const char *key, long long lo, long long hi, const char *want,
                   int *present, long long *out, api_err *err)
{
    json_t *v = field(o, key);
    char b[64];
    if (present) *present = v != NULL;
    if (!v) return 0;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return api_fail(err, json_is_integer(v) ? LR_ERANGE : LR_EINVAL, 400, key,
                        "%s must be %s, got %s", key, want, show(v, b, sizeof b));
    *out = json_integer_value(v);
    return 0;
}

/* A number in [lo, hi] (open ends when lo_open / hi_open). */
static int get_num(const json_t *o, const char *key, double lo, int lo_open, double hi, int hi_open,
                   const char *want, float *out, api_err *err)
{
    json_t *v = field(o, key);
    char b[64];
    if (!v) return 0;
    double d = json_is_number(v) ? json_number_value(v) : NAN;
    if (!json_is_number(v) || !isfinite(d) || (lo_open ? d <= lo : d < lo) ||
        (hi_open ? d >= hi : d > hi))
        return api_fail(err, json_is_number(v) ? LR_ERANGE : LR_EINVAL, 400, key,
                        "%s must be %s, got %s", key, want, show(v, b, sizeof b));
    *out = (float)d;
    return 0;
}

int api_check_model_id(const char *id, size_t len, api_err *err)
{
    const char *why = NULL;
    if (len == 0)
        why = "is empty";
    else if (strlen(id) != len)
        why = "contains a NUL character";
    else if (id[0] == '/')
        why = "starts with '/'";
    else if (strstr(id, ".."))
        why = "contains '..'";
    else if (strchr(id, '\\'))
        why = "contains a backslash";
    else
        for (size_t i = 0; i < len; i++)
            if ((unsigned char)id[i] < 0x20 || id[i] == 0x7f) {
                why = "contains a control character";
                break;
            }
    if (why)
        return api_fail(err, LR_EINVAL, 400, "model",
                        "model id %s; ids are names like "
                        "'org/name' inside an adapter root",
                        why);
    return 0;
}

/* One prompt from a JSON string or an array of token ids into *p. */
static int parse_prompt(const json_t *v, const api_limits *lim, api_prompt *p, api_err *err,
                        const char *where)
{
    char b[64];
    if (json_is_string(v)) {
        size_t len = json_string_length(v);
        p->text = malloc(len + 1);
        if (!p->text) return api_fail(err, LR_ENOMEM, 500, "prompt", "out of memory");
        memcpy(p->text, json_string_value(v), len + 1);
        p->text_len = len;
        if (!lim->tok) return api_fail(err, LR_EINTERNAL, 500, "prompt", "no tokenizer is loaded");
        tok_ids ids = {0};
        int rc = tok_encode(lim->tok, p->text, len, 1, &ids);
        if (rc) {
            free(ids.v);
            return api_fail(err, rc, rc == LR_ENOMEM ? 500 : 400, "prompt",
                            "%s could not be tokenized: %s", where, lr_strerror(rc));
        }
        p->ids = ids.v;
        p->n = (int)ids.n;
    } else if (json_is_array(v)) {
        size_t n = json_array_size(v);
        if (n == 0)
            return api_fail(err, LR_EINVAL, 400, "prompt", "%s is an empty token array", where);
        if (n > (size_t)lim->max_pos)
            return api_fail(err, LR_ERANGE, 400, "prompt",
                            "%s has %zu tokens; the model's context is %d tokens", where, n,
                            lim->max_pos);
        p->ids = malloc(n * sizeof *p->ids);
        if (!p->ids) return api_fail(err, LR_ENOMEM, 500, "prompt", "out of memory");
        p->n = (int)n;
        for (size_t i = 0; i < n; i++) {
            json_t *t = json_array_get(v, i);
            if (!json_is_integer(t) || json_integer_value(t) < 0 ||
                json_integer_value(t) >= lim->vocab)
                return api_fail(err, json_is_integer(t) ? LR_ERANGE : LR_EINVAL, 400, "prompt",
                                "%s: token %zu must be an integer id in [0, %d), got %s", where, i,
                                lim->vocab, show(t, b, sizeof b));
            p->ids[i] = (int32_t)json_integer_value(t);
        }
    } else {
        return api_fail(err, LR_EINVAL, 400, "prompt",
                        "%s must be a string or an array of token ids, got %s", where,
                        show(v, b, sizeof b));
    }
    if (p->n == 0) return api_fail(err, LR_EINVAL, 400, "prompt", "%s is empty (no tokens)", where);
    if (p->n >= lim->max_pos)
        return api_fail(err, LR_ERANGE, 400, "prompt",
                        "%s has %d tokens; the model's context is %d tokens, so at most %d fit "
                        "with one generated token",
                        where, p->n, lim->max_pos, lim->max_pos - 1);
    return 0;
}

static int parse_prompts(const json_t *body, const api_limits *lim, api_cmpl_req *r, api_err *err)
{
    json_t *v = field(body, "prompt");
    char b[64];
    if (!v) return api_fail(err, LR_EINVAL, 400, "prompt", "prompt is required");
    /* A list of prompts is an array whose first element is a string or an array; a flat array
     * of integers is one tokenized prompt. */
    int many = json_is_array(v) && json_array_size(v) > 0 &&
               (json_is_string(json_array_get(v, 0)) || json_is_array(json_array_get(v, 0)));
    if (json_is_array(v) && json_array_size(v) == 0)
        return api_fail(err, LR_EINVAL, 400, "prompt", "prompt must not be an empty array");
    if (!json_is_string(v) && !json_is_array(v))
        return api_fail(err, LR_EINVAL, 400, "prompt",
                        "prompt must be a string, an array of strings, an array of token ids or "
                        "an array of arrays of token ids, got %s",
                        show(v, b, sizeof b));
    size_t n = many ? json_array_size(v) : 1;
    if (n > API_MAX_PROMPTS)
        return api_fail(err, LR_ERANGE, 400, "prompt", "at most %d prompts per request, got %zu",
                        API_MAX_PROMPTS, n);
    r->prompts = calloc(n, sizeof *r->prompts);
    if (!r->prompts) return api_fail(err, LR_ENOMEM, 500, "prompt", "out of memory");
    r->n_prompts = (int)n;
    for (size_t i = 0; i < n; i++) {
        char where[32];
        if (many)
            snprintf(where, sizeof where, "prompt[%zu]", i);
        else
            snprintf(where, sizeof where, "prompt");
        json_t *p = many ? json_array_get(v, i) : v;
        /* In a list, every element must be of the first element's kind. */
        if (many && json_is_string(json_array_get(v, 0)) != json_is_string(p))
            return api_fail(err, LR_EINVAL, 400, "prompt",
                            "%s: a prompt list must hold only strings or only token arrays", where);
        int rc = parse_prompt(p, lim, &r->prompts[i], err, where);
        if (rc) return rc;
    }
    return 0;
}

static int parse_stop(const json_t *body, api_cmpl_req *r, api_err *err)
{
    json_t *v = field(body, "stop");
    char b[64];
    if (!v) return 0;
    size_t n = json_is_array(v) ? json_array_size(v) : 1;
    if (!json_is_string(v) && !json_is_array(v))
        return api_fail(err, LR_EINVAL, 400, "stop",
                        "stop must be a string or an array of strings, got %s",
                        show(v, b, sizeof b));
    if (n > API_MAX_STOP)
        return api_fail(err, LR_ERANGE, 400, "stop", "stop may hold at most %d strings, got %zu",
                        API_MAX_STOP, n);
    for (size_t i = 0; i < n; i++) {
        json_t *s = json_is_array(v) ? json_array_get(v, i) : v;
        if (!json_is_string(s))
            return api_fail(err, LR_EINVAL, 400, "stop", "stop[%zu] must be a string, got %s", i,
                            show(s, b, sizeof b));
        size_t len = json_string_length(s);
        if (len == 0 || len > API_MAX_STOP_LEN)
            return api_fail(err, LR_ERANGE, 400, "stop",
                            "stop strings must be 1..%d bytes long, got %zu bytes",
                            API_MAX_STOP_LEN, len);
        r->stop[r->n_stop] = strdup(json_string_value(s));
        if (!r->stop[r->n_stop]) return api_fail(err, LR_ENOMEM, 500, "stop", "out of memory");
        r->n_stop++;
    }
    return 0;
}

/* Fields whose effect lorad does not implement: refused rather than silently ignored. */
static int refuse_unsupported(const json_t *body, int n, api_err *err)
{
    json_t *v;
    char b[64];
    if ((v = field(body, "suffix")) && !(json_is_string(v) && json_string_length(v) == 0))
        return api_fail(err, LR_EUNSUPPORTED, 400, "suffix", "suffix is not supported by lorad");
    if ((v = field(body, "logit_bias")) && !(json_is_object(v) && json_object_size(v) == 0))
        return api_fail(err, LR_EUNSUPPORTED, 400, "logit_bias",
                        "logit_bias is not supported by lorad");
    if ((v = field(body, "best_of"))) {
        if (!json_is_integer(v) || json_integer_value(v) < 1)
            return api_fail(err, LR_EINVAL, 400, "best_of",
                            "best_of must be an integer ≥ 1, got %s", show(v, b, sizeof b));
        if (json_integer_value(v) > n)
            return api_fail(err, LR_EUNSUPPORTED, 400, "best_of",
                            "best_of > n is not supported by lorad (best_of %lld, n %d)",
                            (long long)json_integer_value(v), n);
    }
    if ((v = field(body, "use_beam_search")) && json_is_true(v))
        return api_fail(err, LR_EUNSUPPORTED, 400, "use_beam_search",
                        "use_beam_search is not supported by lorad");
    if ((v = field(body, "min_tokens")) && !(json_is_integer(v) && json_integer_value(v) == 0))
        return api_fail(err, LR_EUNSUPPORTED, 400, "min_tokens",
                        "min_tokens is not supported by lorad");
    if ((v = field(body, "stop_token_ids")) && !(json_is_array(v) && json_array_size(v) == 0))
        return api_fail(err, LR_EUNSUPPORTED, 400, "stop_token_ids",
                        "stop_token_ids is not supported by lorad; use stop strings");
    /* response_format {"type": "text"} is what every answer is; any other type (json_object,
     * json_schema, …) would constrain decoding, which lorad does not do. */
    if ((v = field(body, "response_format"))) {
        json_t *type = json_object_get(v, "type");
        if (!json_is_object(v))
            return api_fail(err, LR_EINVAL, 400, "response_format",
                            "response_format must be an object {\"type\": \"text\"}, got %s",
                            show(v, b, sizeof b));
        if (!json_is_string(type))
            return api_fail(err, LR_EUNSUPPORTED, 400, "response_format",
                            "response_format %s is not supported by lorad (only {\"type\": "
                            "\"text\"})",
                            show(v, b, sizeof b));
        if (strcmp(json_string_value(type), "text") != 0)
            return api_fail(err, LR_EUNSUPPORTED, 400, "response_format",
                            "response_format type %s is not supported by lorad (only \"text\")",
                            show(type, b, sizeof b));
    }
    static const char *refused[] = {"guided_json",     "guided_regex",    "guided_choice",
                                    "guided_grammar",  "prompt_logprobs", "logits_processors",
                                    "tools"};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
        if (field(body, refused[i]))
            return api_fail(err, LR_EUNSUPPORTED, 400, refused[i], "%s is not supported by lorad",
                            refused[i]);
    return 0;
}

static uint64_t random_seed(void)
{
    uint64_t s = 0;
    if (getrandom(&s, sizeof s, GRND_NONBLOCK) != (ssize_t)sizeof s) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        s = ((uint64_t)ts.tv_sec << 30) ^ (uint64_t)ts.tv_nsec ^ (uint64_t)(uintptr_t)&s;
    }
    return s;
}

int api_cmpl_parse(const json_t *body, const api_limits *lim, api_cmpl_req *r, api_err *err)
{
    memset(r, 0, sizeof *r);
    r->max_tokens = lim->max_tokens_default;
    r->smp.temperature = 1.0f;
    r->smp.top_p = 1.0f;
    r->smp.repetition_penalty = 1.0f;
    r->logprobs = -1;
    r->n = 1;
    char b[64];
    long long v = 0;
    int present = 0, rc;

    if (!json_is_object(body))
        return api_fail(err, LR_EINVAL, 400, NULL, "the request body must be a JSON object");
    json_t *m = field(body, "model");
    if (m) {
        if (!json_is_string(m))
            return api_fail(err, LR_EINVAL, 400, "model", "model must be a string, got %s",
                            show(m, b, sizeof b));
        if ((rc = api_check_model_id(json_string_value(m), json_string_length(m), err))) return rc;
        if (!(r->model = strdup(json_string_value(m))))
            return api_fail(err, LR_ENOMEM, 500, "model", "out of memory");
    }
    if ((rc = get_int(body, "n", 1, API_MAX_N, "an integer in [1, 16]", NULL, &v, err))) return rc;
    r->n = v ? (int)v : 1;
    if ((rc = refuse_unsupported(body, r->n, err))) return rc;
    char want[64];
    snprintf(want, sizeof want, "an integer in [1, %d] (the context length)", lim->max_pos);
    if ((rc = get_int(body, "max_tokens", 1, lim->max_pos, want, &present, &v, err))) return rc;
    if (present) r->max_tokens = (int)v;
    if ((rc = get_num(body, "temperature", 0, 0, 2, 0, "a number in [0, 2]", &r->smp.temperature,
                      err)) ||
        (rc = get_num(body, "top_p", 0, 1, 1, 0, "a number in (0, 1]", &r->smp.top_p, err)) ||
        (rc = get_num(body, "min_p", 0, 0, 1, 1, "a number in [0, 1)", &r->smp.min_p, err)) ||
        (rc = get_num(body, "presence_penalty", -2, 0, 2, 0, "a number in [-2, 2]",
                      &r->smp.presence_penalty, err)) ||
        (rc = get_num(body, "frequency_penalty", -2, 0, 2, 0, "a number in [-2, 2]",
                      &r->smp.frequency_penalty, err)) ||
        (rc = get_num(body, "repetition_penalty", 0, 1, 10, 0, "a number in (0, 10]",
                      &r->smp.repetition_penalty, err)))
        return rc;
    v = 0;
    if ((rc =
             get_int(body, "top_k", -1, 1 << 30, "an integer ≥ -1 (-1 or 0 = off)", NULL, &v, err)))
        return rc;
    r->smp.top_k = v > 0 ? (int)v : 0;
    v = 0;
    if ((rc = get_int(body, "seed", INT64_MIN, INT64_MAX, "an integer", &present, &v, err)))
        return rc;
    r->seed_given = present;
    r->smp.seed = present ? (uint64_t)v : random_seed();
    if ((rc = get_int(body, "logprobs", 0, ENG_MAX_TOP_LOGPROBS, "an integer in [0, 20]", &present,
                      &v, err)))
        return rc;
    r->logprobs = present ? (int)v : -1;
    if ((rc = get_bool(body, "stream", &r->stream, err)) ||
        (rc = get_bool(body, "echo", &r->echo, err)) ||
        (rc = get_bool(body, "ignore_eos", &r->ignore_eos, err)) ||
        (rc = get_bool(body, "return_token_ids", &r->return_token_ids, err)))
        return rc;
    json_t *so = field(body, "stream_options");
    if (so) {
        if (!json_is_object(so))
            return api_fail(err, LR_EINVAL, 400, "stream_options",
                            "stream_options must be an object, got %s", show(so, b, sizeof b));
        if ((rc = get_bool(so, "include_usage", &r->include_usage, err))) {
            snprintf(err->param, sizeof err->param, "stream_options.include_usage");
            return rc;
        }
    }
    json_t *user = field(body, "user");
    if (user && !json_is_string(user))
        return api_fail(err, LR_EINVAL, 400, "user", "user must be a string, got %s",
                        show(user, b, sizeof b));
    if ((rc = parse_stop(body, r, err))) return rc;
    if ((rc = parse_prompts(body, lim, r, err))) return rc;
    if (r->n_prompts * r->n > API_MAX_SEQS)
        return api_fail(err, LR_ERANGE, 400, "n", "prompts × n must be at most %d, got %d × %d",
                        API_MAX_SEQS, r->n_prompts, r->n);
    return 0;
}

int api_tgi_parse(const json_t *body, const api_limits *lim, api_cmpl_req *r, api_err *err)
{
    memset(r, 0, sizeof *r);
    r->tgi = 1;
    r->max_tokens = lim->max_tokens_default;
    r->smp.top_p = 1.0f;
    r->smp.repetition_penalty = 1.0f;
    r->logprobs = 0;
    r->n = 1;
    char b[64];
    long long v = 0;
    int present = 0, rc = 0;
    if (!json_is_object(body))
        return api_fail(err, LR_EINVAL, 400, NULL, "the request body must be a JSON object");
    json_t *in = field(body, "inputs");
    if (!json_is_string(in))
        return api_fail(err, LR_EINVAL, 400, "inputs", "inputs must be a string, got %s",
                        in ? show(in, b, sizeof b) : "nothing");
    json_t *p = field(body, "parameters");
    if (p && !json_is_object(p))
        return api_fail(err, LR_EINVAL, 400, "parameters", "parameters must be an object, got %s",
                        show(p, b, sizeof b));
    json_t *empty = json_object();
    if (!p) p = empty;
    json_t *x;
    /* Parameters whose effect lorad does not implement: refused, not silently dropped. */
    static const char *refused[] = {"grammar",          "watermark", "top_n_tokens",
                                    "typical_p",        "truncate",  "decoder_input_details",
                                    "frequency_penalty"};
    for (size_t i = 0; !rc && i < sizeof refused / sizeof refused[0]; i++)
        if ((x = field(p, refused[i])) && !json_is_false(x) &&
            !(json_is_integer(x) && json_integer_value(x) == 0))
            rc = api_fail(err, LR_EUNSUPPORTED, 400, refused[i], "%s is not supported by lorad",
                          refused[i]);
    if (!rc && (x = field(p, "best_of")) && !(json_is_integer(x) && json_integer_value(x) == 1))
        rc = api_fail(err, LR_EUNSUPPORTED, 400, "best_of", "best_of is not supported by lorad");
    json_t *ad = field(p, "adapter_id");
    if (!rc && ad) {
        if (!json_is_string(ad))
            rc = api_fail(err, LR_EINVAL, 400, "adapter_id", "adapter_id must be a string, got %s",
                          show(ad, b, sizeof b));
        else if (!(rc = api_check_model_id(json_string_value(ad), json_string_length(ad), err)) &&
                 !(r->model = strdup(json_string_value(ad))))
            rc = api_fail(err, LR_ENOMEM, 500, "adapter_id", "out of memory");
        if (rc) snprintf(err->param, sizeof err->param, "adapter_id");
    }
    char want[64];
    snprintf(want, sizeof want, "an integer in [1, %d] (the context length)", lim->max_pos);
    int do_sample = 0,
        sampling_given = field(p, "temperature") || field(p, "top_k") || field(p, "top_p");
    float temp = 1.0f;
    if (!rc && !(rc = get_int(p, "max_new_tokens", 1, lim->max_pos, want, &present, &v, err)) &&
        present)
        r->max_tokens = (int)v;
    if (!rc) rc = get_bool(p, "do_sample", &do_sample, err);
    if (!rc) rc = get_num(p, "temperature", 0, 1, 100, 0, "a number in (0, 100]", &temp, err);
    if (!rc) rc = get_num(p, "top_p", 0, 1, 1, 1, "a number in (0, 1)", &r->smp.top_p, err);
    if (!rc)
        rc = get_num(p, "repetition_penalty", 0, 1, 10, 0, "a number in (0, 10]",
                     &r->smp.repetition_penalty, err);
    v = 0;
    if (!rc && !(rc = get_int(p, "top_k", 1, 1 << 30, "an integer ≥ 1", NULL, &v, err)))
        r->smp.top_k = (int)v;
    v = 0;
    if (!rc && !(rc = get_int(p, "seed", 0, INT64_MAX, "an integer ≥ 0", &present, &v, err))) {
        r->seed_given = present;
        r->smp.seed = present ? (uint64_t)v : random_seed();
    }
    if (!rc) rc = get_bool(p, "details", &r->details, err);
    if (!rc) rc = get_bool(p, "return_full_text", &r->echo, err);
    if (!rc) rc = parse_stop(p, r, err);
    json_decref(empty);
    if (rc) {
        /* Name the field as the client wrote it. */
        if (err && err->param[0] && strcmp(err->param, "inputs") != 0) {
            char full[64];
            snprintf(full, sizeof full, "parameters.%s", err->param);
            snprintf(err->param, sizeof err->param, "%s", full);
        }
        return rc;
    }
    /* TGI samples when asked to, or when a sampling parameter is given; otherwise greedy. */
    r->smp.temperature = (do_sample || sampling_given) ? temp : 0.0f;
    r->prompts = calloc(1, sizeof *r->prompts);
    if (!r->prompts) return api_fail(err, LR_ENOMEM, 500, "inputs", "out of memory");
    r->n_prompts = 1;
    if ((rc = parse_prompt(in, lim, &r->prompts[0], err, "inputs")))
        snprintf(err->param, sizeof err->param, "inputs");
    return rc;
}

void api_cmpl_req_clear(api_cmpl_req *r)
{
    if (!r) return;
    free(r->model);
    for (int i = 0; i < r->n_prompts; i++) {
        free(r->prompts[i].ids);
        free(r->prompts[i].text);
    }
    free(r->prompts);
    for (int i = 0; i < r->n_stop; i++)
        free(r->stop[i]);
    memset(r, 0, sizeof *r);
}
