/* check_api.c — unit tests of the daemon's request handling that need no model: completion
 * parameter validation, model-id checks, the stop-string hold-back rule (against a naive
 * reference), routing (404/405/413/503), the error body shape, /metrics rendering and the
 * command-line flags. The end-to-end behaviour with a model is tests/e2e/test_server.py. */
#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "cli.h"
#include "met.h"

static api_limits k_lim = {.tok = NULL, .vocab = 100, .max_pos = 64, .max_tokens_default = 16};

/* Parse a JSON text as a completions body; returns the lr_err and fills req/err. */
static int parse(const char *text, api_cmpl_req *req, api_err *err)
{
    json_error_t je;
    json_t *v = json_loads(text, 0, &je);
    ck_assert_msg(v != NULL, "test JSON does not parse: %s", text);
    memset(err, 0, sizeof *err);
    int rc = api_cmpl_parse(v, &k_lim, req, err);
    json_decref(v);
    return rc;
}

/* ---- parameters ---- */

START_TEST(test_defaults)
{
    api_cmpl_req r;
    api_err e;
    ck_assert_int_eq(parse("{\"prompt\": [1, 2, 3]}", &r, &e), 0);
    ck_assert_int_eq(r.n_prompts, 1);
    ck_assert_int_eq(r.prompts[0].n, 3);
    ck_assert_int_eq(r.prompts[0].ids[2], 3);
    ck_assert_ptr_null(r.prompts[0].text);
    ck_assert_int_eq(r.max_tokens, 16);
    ck_assert(r.smp.temperature == 1.0f);
    ck_assert(r.smp.top_p == 1.0f);
    ck_assert_int_eq(r.smp.top_k, 0);
    ck_assert(r.smp.repetition_penalty == 1.0f);
    ck_assert_int_eq(r.logprobs, -1);
    ck_assert_int_eq(r.n, 1);
    ck_assert_int_eq(r.stream, 0);
    ck_assert_int_eq(r.seed_given, 0);
    ck_assert_ptr_null(r.model);
    api_cmpl_req_clear(&r);
}
END_TEST

START_TEST(test_all_params)
{
    api_cmpl_req r;
    api_err e;
    const char *body =
        "{\"prompt\": [[1, 2], [3]], \"model\": \"org/name\", \"max_tokens\": 7, "
        "\"temperature\": 0, \"top_p\": 0.5, \"top_k\": 40, \"min_p\": 0.1, \"seed\": -5, "
        "\"stop\": [\"a\", \"bc\"], \"stream\": true, \"logprobs\": 20, \"echo\": true, "
        "\"n\": 2, \"presence_penalty\": -2, \"frequency_penalty\": 2, "
        "\"repetition_penalty\": 1.3, \"ignore_eos\": true, \"return_token_ids\": true, "
        "\"user\": \"u\", \"stream_options\": {\"include_usage\": true}, \"best_of\": 2, "
        "\"suffix\": \"\", \"logit_bias\": {}, \"unknown_field\": [1, {\"x\": 2}]}";
    ck_assert_msg(parse(body, &r, &e) == 0, "%s", e.e.msg);
    ck_assert_int_eq(r.n_prompts, 2);
    ck_assert_int_eq(r.prompts[1].n, 1);
    ck_assert_str_eq(r.model, "org/name");
    ck_assert_int_eq(r.max_tokens, 7);
    ck_assert(r.smp.temperature == 0.0f);
    ck_assert(r.smp.top_p == 0.5f);
    ck_assert_int_eq(r.smp.top_k, 40);
    ck_assert(r.smp.min_p == 0.1f);
    ck_assert(r.smp.seed == (uint64_t)-5);
    ck_assert_int_eq(r.seed_given, 1);
    ck_assert_int_eq(r.n_stop, 2);
    ck_assert_str_eq(r.stop[1], "bc");
    ck_assert_int_eq(r.stream, 1);
    ck_assert_int_eq(r.include_usage, 1);
    ck_assert_int_eq(r.logprobs, 20);
    ck_assert_int_eq(r.echo, 1);
    ck_assert_int_eq(r.n, 2);
    ck_assert(r.smp.presence_penalty == -2.0f && r.smp.frequency_penalty == 2.0f);
    ck_assert(r.smp.repetition_penalty == 1.3f);
    ck_assert_int_eq(r.ignore_eos, 1);
    ck_assert_int_eq(r.return_token_ids, 1);
    api_cmpl_req_clear(&r);
    /* top_k -1 means off, as in vLLM; null counts as absent. */
    ck_assert_int_eq(parse("{\"prompt\": [1], \"top_k\": -1, \"max_tokens\": null}", &r, &e), 0);
    ck_assert_int_eq(r.smp.top_k, 0);
    ck_assert_int_eq(r.max_tokens, 16);
    api_cmpl_req_clear(&r);
    /* A single stop string. */
    ck_assert_int_eq(parse("{\"prompt\": [1], \"stop\": \"\\n\\n\"}", &r, &e), 0);
    ck_assert_int_eq(r.n_stop, 1);
    ck_assert_str_eq(r.stop[0], "\n\n");
    api_cmpl_req_clear(&r);
}
END_TEST

/* Each bad body → 400 (or the given status) naming `param`, with `needle` in the message. */
static const struct {
    const char *body, *param, *needle;
    int http;
} k_bad[] = {
    {"{\"prompt\": [1], \"max_tokens\": -1}", "max_tokens", "max_tokens must be an integer", 400},
    {"{\"prompt\": [1], \"max_tokens\": -1}", "max_tokens", "got -1", 400},
    {"{\"prompt\": [1], \"max_tokens\": 65}", "max_tokens", "got 65", 400},
    {"{\"prompt\": [1], \"max_tokens\": \"3\"}", "max_tokens", "got \"3\"", 400},
    {"{\"prompt\": [1], \"max_tokens\": 1.5}", "max_tokens", "1.5", 400},
    {"{\"prompt\": [1], \"temperature\": -1}", "temperature", "temperature", 400},
    {"{\"prompt\": [1], \"temperature\": 2.5}", "temperature", "2.5", 400},
    {"{\"prompt\": [1], \"temperature\": true}", "temperature", "true", 400},
    {"{\"prompt\": [1], \"top_p\": 0}", "top_p", "(0, 1]", 400},
    {"{\"prompt\": [1], \"top_p\": 1.01}", "top_p", "top_p", 400},
    {"{\"prompt\": [1], \"top_k\": -2}", "top_k", "top_k", 400},
    {"{\"prompt\": [1], \"min_p\": 1}", "min_p", "min_p", 400},
    {"{\"prompt\": [1], \"seed\": 1.5}", "seed", "seed", 400},
    {"{\"prompt\": [1], \"logprobs\": 21}", "logprobs", "[0, 20]", 400},
    {"{\"prompt\": [1], \"logprobs\": -1}", "logprobs", "logprobs", 400},
    {"{\"prompt\": [1], \"logprobs\": false}", "logprobs", "false", 400},
    {"{\"prompt\": [1], \"n\": 0}", "n", "n must be", 400},
    {"{\"prompt\": [1], \"n\": 17}", "n", "n must be", 400},
    {"{\"prompt\": [1], \"stream\": 1}", "stream", "boolean", 400},
    {"{\"prompt\": [1], \"echo\": \"yes\"}", "echo", "boolean", 400},
    {"{\"prompt\": [1], \"ignore_eos\": 0}", "ignore_eos", "boolean", 400},
    {"{\"prompt\": [1], \"return_token_ids\": []}", "return_token_ids", "boolean", 400},
    {"{\"prompt\": [1], \"presence_penalty\": 2.1}", "presence_penalty", "[-2, 2]", 400},
    {"{\"prompt\": [1], \"frequency_penalty\": -3}", "frequency_penalty", "[-2, 2]", 400},
    {"{\"prompt\": [1], \"repetition_penalty\": 0}", "repetition_penalty", "(0, 10]", 400},
    {"{\"prompt\": [1], \"stop\": 3}", "stop", "string or an array", 400},
    {"{\"prompt\": [1], \"stop\": [\"a\", 3]}", "stop", "stop[1]", 400},
    {"{\"prompt\": [1], \"stop\": [\"\"]}", "stop", "1..256", 400},
    {"{\"prompt\": [1], \"stop\": [\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\",\"10\","
     "\"11\",\"12\",\"13\",\"14\",\"15\",\"16\",\"17\"]}",
     "stop", "at most 16", 400},
    {"{\"prompt\": [1], \"stream_options\": []}", "stream_options", "object", 400},
    {"{\"prompt\": [1], \"stream_options\": {\"include_usage\": 1}}",
     "stream_options.include_usage", "boolean", 400},
    {"{\"prompt\": [1], \"user\": 5}", "user", "user must be a string", 400},
    {"{\"prompt\": [1], \"suffix\": \"x\"}", "suffix", "suffix is not supported", 400},
    {"{\"prompt\": [1], \"logit_bias\": {\"1\": 2}}", "logit_bias", "not supported", 400},
    {"{\"prompt\": [1], \"best_of\": 2}", "best_of", "best_of > n", 400},
    {"{\"prompt\": [1], \"best_of\": 0}", "best_of", "best_of must be", 400},
    {"{\"prompt\": [1], \"use_beam_search\": true}", "use_beam_search", "not supported", 400},
    {"{\"prompt\": [1], \"min_tokens\": 3}", "min_tokens", "not supported", 400},
    {"{\"prompt\": [1], \"stop_token_ids\": [2]}", "stop_token_ids", "not supported", 400},
    {"{\"prompt\": [1], \"guided_json\": {}}", "guided_json", "not supported", 400},
    {"{\"prompt\": [1], \"response_format\": {}}", "response_format", "not supported", 400},
    {"{\"max_tokens\": 3}", "prompt", "prompt is required", 400},
    {"{\"prompt\": null}", "prompt", "prompt is required", 400},
    {"{\"prompt\": 5}", "prompt", "got 5", 400},
    {"{\"prompt\": {}}", "prompt", "prompt must be", 400},
    {"{\"prompt\": []}", "prompt", "empty array", 400},
    {"{\"prompt\": [[]]}", "prompt", "prompt[0] is an empty token array", 400},
    {"{\"prompt\": [1, \"a\"]}", "prompt", "token 1", 400},
    {"{\"prompt\": [[1], [2, 100]]}", "prompt", "prompt[1]: token 1", 400},
    {"{\"prompt\": [[1], \"a\"]}", "prompt", "only strings or only token arrays", 400},
    {"{\"prompt\": [-1]}", "prompt", "[0, 100)", 400},
    {"{\"prompt\": [1.0]}", "prompt", "integer id", 400},
    {"{\"prompt\": \"text\"}", "prompt", "no tokenizer", 500},
    {"{\"prompt\": [1], \"model\": 3}", "model", "model must be a string", 400},
    {"{\"prompt\": [1], \"model\": \"\"}", "model", "is empty", 400},
    {"{\"prompt\": [1], \"model\": \"../x\"}", "model", "'..'", 400},
    {"{\"prompt\": [1], \"model\": \"a/../b\"}", "model", "'..'", 400},
    {"{\"prompt\": [1], \"model\": \"/etc\"}", "model", "starts with '/'", 400},
    {"{\"prompt\": [1], \"model\": \"a\\\\b\"}", "model", "backslash", 400},
    {"{\"prompt\": [1], \"model\": \"a\\tb\"}", "model", "control character", 400},
    {"{\"prompt\": [1], \"model\": \"a\\u007fb\"}", "model", "control character", 400},
    {"{\"prompt\": [[1], [2], [3], [4], [5]], \"n\": 16}", "n", "at most 64", 400},
};

START_TEST(test_bad_params)
{
    api_cmpl_req r;
    api_err e;
    int rc = parse(k_bad[_i].body, &r, &e);
    ck_assert_msg(rc < 0, "accepted: %s", k_bad[_i].body);
    ck_assert_msg(e.e.http == k_bad[_i].http, "%s: status %d", k_bad[_i].body, e.e.http);
    ck_assert_msg(strcmp(e.param, k_bad[_i].param) == 0, "%s: param '%s'", k_bad[_i].body, e.param);
    ck_assert_msg(strstr(e.e.msg, k_bad[_i].needle) != NULL, "%s: message '%s' lacks '%s'",
                  k_bad[_i].body, e.e.msg, k_bad[_i].needle);
    api_cmpl_req_clear(&r);
}
END_TEST

START_TEST(test_prompt_limits)
{
    /* The context is 64: 63 prompt tokens fit (one generated token), 64 do not. */
    char body[1024];
    size_t n = (size_t)snprintf(body, sizeof body, "{\"prompt\": [");
    for (int i = 0; i < 64; i++)
        n += (size_t)snprintf(body + n, sizeof body - n, "%s%d", i ? "," : "", i);
    snprintf(body + n, sizeof body - n, "]}");
    api_cmpl_req r;
    api_err e;
    ck_assert_int_lt(parse(body, &r, &e), 0);
    ck_assert_msg(strstr(e.e.msg, "64 tokens") && strstr(e.e.msg, "context"), "%s", e.e.msg);
    api_cmpl_req_clear(&r);
    char *last = strrchr(body, ',');
    strcpy(last, "]}");
    ck_assert_msg(parse(body, &r, &e) == 0, "%s", e.e.msg);
    ck_assert_int_eq(r.prompts[0].n, 63);
    api_cmpl_req_clear(&r);
}
END_TEST

START_TEST(test_model_ids)
{
    api_err e;
    ck_assert_int_eq(api_check_model_id("org/name", 8, &e), 0);
    ck_assert_int_eq(api_check_model_id("a.b-c_d/e.f", 11, &e), 0);
    ck_assert_int_eq(api_check_model_id("a\0b", 3, &e), LR_EINVAL);
    ck_assert(strstr(e.e.msg, "NUL") != NULL);
    ck_assert_int_eq(api_check_model_id("..", 2, &e), LR_EINVAL);
    ck_assert_int_eq(api_check_model_id("x/..", 4, &e), LR_EINVAL);
    ck_assert_int_eq(api_check_model_id("/x", 2, &e), LR_EINVAL);
    ck_assert_int_eq(api_check_model_id("x\\y", 3, &e), LR_EINVAL);
    ck_assert_int_eq(api_check_model_id("x\ny", 3, &e), LR_EINVAL);
    ck_assert_int_eq(e.e.http, 400);
}
END_TEST

/* ---- TGI bodies ---- */

static int parse_tgi(const char *text, api_cmpl_req *req, api_err *err)
{
    json_t *v = json_loads(text, 0, NULL);
    ck_assert_msg(v != NULL, "test JSON does not parse: %s", text);
    memset(err, 0, sizeof *err);
    int rc = api_tgi_parse(v, &k_lim, req, err);
    json_decref(v);
    return rc;
}

START_TEST(test_tgi)
{
    api_cmpl_req r;
    api_err e;
    /* Token prompts are not TGI: inputs must be a string (no tokenizer here → 500 after the
     * type checks pass, which is what we look for). */
    ck_assert_int_lt(parse_tgi("{\"inputs\": \"hi\"}", &r, &e), 0);
    ck_assert_str_eq(e.param, "inputs");
    ck_assert_int_eq(r.tgi, 1);
    ck_assert(r.smp.temperature == 0.0f); /* greedy by default */
    ck_assert_int_eq(r.max_tokens, 16);
    ck_assert_int_eq(r.logprobs, 0);
    api_cmpl_req_clear(&r);
    ck_assert_int_lt(
        parse_tgi("{\"inputs\": \"hi\", \"parameters\": {\"do_sample\": true, "
                  "\"max_new_tokens\": 5, \"seed\": 9, \"top_k\": 3, \"stop\": [\"x\"], "
                  "\"details\": true, \"return_full_text\": true, \"adapter_id\": \"a/b\", "
                  "\"repetition_penalty\": 1.2, \"best_of\": 1}}",
                  &r, &e),
        0);
    ck_assert_str_eq(e.param, "inputs"); /* everything else was accepted */
    ck_assert(r.smp.temperature == 1.0f);
    ck_assert_int_eq(r.max_tokens, 5);
    ck_assert(r.smp.seed == 9 && r.seed_given);
    ck_assert_int_eq(r.smp.top_k, 3);
    ck_assert_int_eq(r.n_stop, 1);
    ck_assert_int_eq(r.details, 1);
    ck_assert_int_eq(r.echo, 1);
    ck_assert_str_eq(r.model, "a/b");
    api_cmpl_req_clear(&r);
    /* temperature alone turns sampling on */
    parse_tgi("{\"inputs\": \"hi\", \"parameters\": {\"temperature\": 0.5}}", &r, &e);
    ck_assert(r.smp.temperature == 0.5f);
    api_cmpl_req_clear(&r);
    static const struct {
        const char *body, *param;
    } bad[] = {
        {"{\"parameters\": {}}", "inputs"},
        {"{\"inputs\": [1, 2]}", "inputs"},
        {"{\"inputs\": \"a\", \"parameters\": 3}", "parameters"},
        {"{\"inputs\": \"a\", \"parameters\": {\"max_new_tokens\": 0}}",
         "parameters.max_new_tokens"},
        {"{\"inputs\": \"a\", \"parameters\": {\"max_new_tokens\": 65}}",
         "parameters.max_new_tokens"},
        {"{\"inputs\": \"a\", \"parameters\": {\"temperature\": 0}}", "parameters.temperature"},
        {"{\"inputs\": \"a\", \"parameters\": {\"top_p\": 1}}", "parameters.top_p"},
        {"{\"inputs\": \"a\", \"parameters\": {\"top_k\": 0}}", "parameters.top_k"},
        {"{\"inputs\": \"a\", \"parameters\": {\"seed\": -1}}", "parameters.seed"},
        {"{\"inputs\": \"a\", \"parameters\": {\"do_sample\": 1}}", "parameters.do_sample"},
        {"{\"inputs\": \"a\", \"parameters\": {\"details\": \"y\"}}", "parameters.details"},
        {"{\"inputs\": \"a\", \"parameters\": {\"stop\": [1]}}", "parameters.stop"},
        {"{\"inputs\": \"a\", \"parameters\": {\"grammar\": {}}}", "parameters.grammar"},
        {"{\"inputs\": \"a\", \"parameters\": {\"best_of\": 2}}", "parameters.best_of"},
        {"{\"inputs\": \"a\", \"parameters\": {\"watermark\": true}}", "parameters.watermark"},
        {"{\"inputs\": \"a\", \"parameters\": {\"adapter_id\": \"/x\"}}", "parameters.adapter_id"},
        {"{\"inputs\": \"a\", \"parameters\": {\"adapter_id\": 4}}", "parameters.adapter_id"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_msg(parse_tgi(bad[i].body, &r, &e) < 0, "accepted %s", bad[i].body);
        ck_assert_msg(e.e.http == 400 && strcmp(e.param, bad[i].param) == 0,
                      "%s: status %d param '%s' (%s)", bad[i].body, e.e.http, e.param, e.e.msg);
        api_cmpl_req_clear(&r);
    }
}
END_TEST

/* ---- stop strings ---- */

/* Naive reference: the largest k < len(stop) with text ending in stop[0..k). */
static size_t naive_holdback(const char *text, size_t len, char *const *stop, int n)
{
    size_t best = 0;
    for (int i = 0; i < n; i++)
        for (size_t k = 1; k < strlen(stop[i]) && k <= len; k++)
            if (strncmp(text + len - k, stop[i], k) == 0 && k > best) best = k;
    return best;
}

START_TEST(test_holdback)
{
    char *stops[] = {"abc", "bcd", "\n\n", "xyzxyz"};
    ck_assert_uint_eq(api_stop_holdback("hello a", 7, stops, 4), 1);
    ck_assert_uint_eq(api_stop_holdback("hello ab", 8, stops, 4), 2);
    ck_assert_uint_eq(api_stop_holdback("hello bc", 8, stops, 4), 2);
    ck_assert_uint_eq(api_stop_holdback("hello\n", 6, stops, 4), 1);
    ck_assert_uint_eq(api_stop_holdback("hello", 5, stops, 4), 0);
    ck_assert_uint_eq(api_stop_holdback("xyzxy", 5, stops, 4), 5);
    ck_assert_uint_eq(api_stop_holdback("", 0, stops, 4), 0);
    ck_assert_uint_eq(api_stop_holdback("abc", 3, stops, 0), 0);
    /* Exhaustive over short strings of a small alphabet, against the naive reference. */
    const char alpha[] = "abcxyz\n";
    char text[7];
    unsigned long long total = 1;
    for (int i = 0; i < 6; i++)
        total *= 7;
    for (unsigned long long code = 0; code < total; code++) {
        unsigned long long c = code;
        size_t len = (size_t)(code % 7);
        for (size_t i = 0; i < len; i++, c /= 7)
            text[i] = alpha[c % 7];
        text[len] = '\0';
        ck_assert_uint_eq(api_stop_holdback(text, len, stops, 4),
                          naive_holdback(text, len, stops, 4));
    }
}
END_TEST

/* ---- routing and errors ---- */

static api_ctx *test_ctx(met_metrics *m)
{
    static api_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.met = m;
    ctx.served_name = "base";
    ctx.max_pos = 64;
    ctx.vocab = 100;
    ctx.max_body_bytes = 1024;
    return &ctx;
}

/* Parse a reply body and check the OpenAI error shape; returns the message (static copy). */
static const char *error_message(const api_reply *r)
{
    static char msg[512];
    json_t *v = json_loadb(r->body, r->len, 0, NULL);
    ck_assert_msg(v != NULL, "error body is not JSON: %.*s", (int)r->len, r->body);
    json_t *e = json_object_get(v, "error");
    ck_assert(json_is_object(e));
    ck_assert(json_is_string(json_object_get(e, "message")));
    ck_assert(json_is_string(json_object_get(e, "type")));
    ck_assert(json_object_get(e, "param") != NULL);
    ck_assert(json_object_get(e, "code") != NULL);
    snprintf(msg, sizeof msg, "%s", json_string_value(json_object_get(e, "message")));
    json_decref(v);
    return msg;
}

START_TEST(test_routes)
{
    met_metrics *m = met_create();
    api_ctx *ctx = test_ctx(m);
    api_reply r;
    api_handle(ctx, "GET", "/health", "", 0, 0, NULL, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_int_eq(r.ep, MET_EP_HEALTH);
    ck_assert_str_eq(r.body, "{\"status\":\"ok\"}");
    free(r.body);
    api_handle(ctx, "GET", "/nope", "", 0, 0, NULL, &r);
    ck_assert_int_eq(r.status, 404);
    ck_assert(strstr(error_message(&r), "/nope") != NULL);
    free(r.body);
    api_handle(ctx, "PUT", "/v1/completions", "", 0, 0, NULL, &r);
    ck_assert_int_eq(r.status, 405);
    ck_assert_str_eq(r.allow, "POST");
    ck_assert(strstr(error_message(&r), "PUT") != NULL);
    free(r.body);
    api_handle(ctx, "POST", "/v1/completions", "", 0, 1, NULL, &r);
    ck_assert_int_eq(r.status, 413);
    ck_assert(strstr(error_message(&r), "1024") != NULL);
    free(r.body);
    api_handle(ctx, "POST", "/v1/completions", "{\"prompt\"", 9, 0, NULL, &r);
    ck_assert_int_eq(r.status, 400);
    ck_assert(strstr(error_message(&r), "not valid JSON") != NULL);
    free(r.body);
    api_handle(ctx, "POST", "/v1/completions", "{\"prompt\": [1], \"model\": \"x\"}", 29, 0, NULL,
               &r);
    ck_assert_int_eq(r.status, 404);
    ck_assert(strstr(error_message(&r), "model 'x' not found") != NULL);
    free(r.body);
    api_handle(ctx, "GET", "/v1/models", "", 0, 0, NULL, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert(strstr(r.body, "\"id\":\"base\"") != NULL);
    free(r.body);
    atomic_store(&ctx->draining, 1);
    api_handle(ctx, "GET", "/health", "", 0, 0, NULL, &r);
    ck_assert_int_eq(r.status, 503);
    error_message(&r);
    free(r.body);
    api_handle(ctx, "POST", "/v1/completions", "{}", 2, 0, NULL, &r);
    ck_assert_int_eq(r.status, 503);
    free(r.body);
    met_destroy(m);
}
END_TEST

START_TEST(test_error_body)
{
    char *b = api_error_body(429, "queue full", NULL, NULL);
    ck_assert_str_eq(b, "{\"error\":{\"message\":\"queue full\",\"type\":\"rate_limit_error\","
                        "\"param\":null,\"code\":null}}");
    free(b);
    b = api_error_body(400, "x \"quoted\"", "max_tokens", "bad");
    ck_assert_str_eq(b, "{\"error\":{\"message\":\"x \\\"quoted\\\"\",\"type\":"
                        "\"invalid_request_error\",\"param\":\"max_tokens\",\"code\":\"bad\"}}");
    free(b);
}
END_TEST

/* ---- metrics ---- */

START_TEST(test_metrics)
{
    met_metrics *m = met_create();
    met_request_done(m, MET_EP_COMPLETIONS, 200, 0.002);
    met_request_done(m, MET_EP_COMPLETIONS, 200, 0.3);
    met_request_done(m, MET_EP_COMPLETIONS, 400, 0.001);
    met_request_done(m, MET_EP_HEALTH, 503, 500.0);
    met_request_done(m, MET_EP_OTHER, 418, 0.01);
    ck_assert_uint_eq(met_request_count(m, MET_EP_COMPLETIONS, 200), 2);
    eng_stats st = {.running = 3,
                    .waiting = 4,
                    .kv_blocks_total = 100,
                    .kv_blocks_used = 7,
                    .steps = 11,
                    .prompt_tokens = 12,
                    .generated_tokens = 13,
                    .preemptions = 2};
    char *t = met_render(m, &st);
    const char *want[] = {
        "lorad_requests_total{endpoint=\"completions\",status=\"200\"} 2\n",
        "lorad_requests_total{endpoint=\"completions\",status=\"400\"} 1\n",
        "lorad_requests_total{endpoint=\"health\",status=\"503\"} 1\n",
        "lorad_requests_total{endpoint=\"other\",status=\"other\"} 1\n",
        "lorad_prompt_tokens_total 12\n",
        "lorad_generation_tokens_total 13\n",
        "lorad_running_sequences 3\n",
        "lorad_waiting_sequences 4\n",
        "lorad_kv_blocks_total 100\n",
        "lorad_kv_blocks_used 7\n",
        "lorad_engine_steps_total 11\n",
        "lorad_preemptions_total 2\n",
        "lorad_request_duration_seconds_bucket{le=\"0.005\"} 2\n",
        "lorad_request_duration_seconds_bucket{le=\"0.01\"} 3\n",
        "lorad_request_duration_seconds_bucket{le=\"0.5\"} 4\n",
        "lorad_request_duration_seconds_bucket{le=\"120\"} 4\n",
        "lorad_request_duration_seconds_bucket{le=\"+Inf\"} 5\n",
        "lorad_request_duration_seconds_count 5\n",
        "# TYPE lorad_request_duration_seconds histogram\n",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        ck_assert_msg(strstr(t, want[i]) != NULL, "missing: %s\n--- got:\n%s", want[i], t);
    ck_assert(strstr(t, "lorad_request_duration_seconds_sum 500.313") != NULL);
    free(t);
    met_destroy(m);
}
END_TEST

/* ---- flags ---- */

static int run_cli(cli_config *cfg, lr_error *err, int argc, char **argv)
{
    cli_defaults(cfg);
    lr_error_clear(err);
    FILE *devnull = fopen("/dev/null", "w");
    int rc = cli_parse(argc, argv, cfg, devnull, err);
    fclose(devnull);
    return rc;
}

START_TEST(test_cli)
{
    cli_config c;
    lr_error e;
    char *ok[] = {"lorad",
                  "--model",
                  "/x/models/tiny/",
                  "--port",
                  "0",
                  "--host=::1",
                  "--threads",
                  "3",
                  "--kv-cache-mb",
                  "64",
                  "--max-body-bytes",
                  "4096",
                  "--log-level",
                  "debug"};
    ck_assert_int_eq(run_cli(&c, &e, 14, ok), CLI_OK);
    ck_assert_str_eq(c.served_name, "tiny");
    ck_assert_int_eq(c.port, 0);
    ck_assert_str_eq(c.host, "::1");
    ck_assert_int_eq(c.threads, 3);
    ck_assert_int_eq(c.kv_cache_mb, 64);
    ck_assert_int_eq(c.max_body_bytes, 4096);
    ck_assert_int_eq(c.max_tokens_default, 16);
    ck_assert_int_eq(c.max_queue, 256);
    ck_assert_int_eq(c.kv_cache_lazy, 0);
    char *lazy[] = {"lorad", "--model", "/m", "--kv-cache-lazy"};
    ck_assert_int_eq(run_cli(&c, &e, 4, lazy), CLI_OK);
    ck_assert_int_eq(c.kv_cache_lazy, 1);
    char *help[] = {"lorad", "--help"};
    ck_assert_int_eq(run_cli(&c, &e, 2, help), CLI_EXIT_OK);
    char *bad[][3] = {{"lorad", "--port", "x"},      {"lorad", "--port", "65536"},
                      {"lorad", "--threads", "-1"},  {"lorad", "--max-queue", "0"},
                      {"lorad", "--log-level", "x"}, {"lorad", "--frob", "1"},
                      {"lorad", "--port", "12abc"},  {"lorad", "--drain-timeout", ""}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *argv[5] = {bad[i][0], "--model", "m", bad[i][1], bad[i][2]};
        ck_assert_int_eq(run_cli(&c, &e, 5, argv), CLI_EXIT_USAGE);
        ck_assert_msg(strstr(e.msg, bad[i][1]) != NULL, "message '%s' names %s", e.msg, bad[i][1]);
    }
    char *nomodel[] = {"lorad", "--port", "1"};
    ck_assert_int_eq(run_cli(&c, &e, 3, nomodel), CLI_EXIT_USAGE);
    ck_assert(strstr(e.msg, "--model") != NULL);
    char *noval[] = {"lorad", "--model"};
    ck_assert_int_eq(run_cli(&c, &e, 2, noval), CLI_EXIT_USAGE);
}
END_TEST

static Suite *api_suite(void)
{
    Suite *s = suite_create("api");
    TCase *tc = tcase_create("params");
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_all_params);
    tcase_add_loop_test(tc, test_bad_params, 0, (int)(sizeof k_bad / sizeof k_bad[0]));
    tcase_add_test(tc, test_prompt_limits);
    tcase_add_test(tc, test_model_ids);
    suite_add_tcase(s, tc);
    tc = tcase_create("tgi");
    tcase_add_test(tc, test_tgi);
    suite_add_tcase(s, tc);
    tc = tcase_create("stop");
    tcase_set_timeout(tc, 120); /* the exhaustive comparison is slow under ASan on a busy box */
    tcase_add_test(tc, test_holdback);
    suite_add_tcase(s, tc);
    tc = tcase_create("routes");
    tcase_add_test(tc, test_routes);
    tcase_add_test(tc, test_error_body);
    suite_add_tcase(s, tc);
    tc = tcase_create("metrics");
    tcase_add_test(tc, test_metrics);
    suite_add_tcase(s, tc);
    tc = tcase_create("cli");
    tcase_add_test(tc, test_cli);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(api_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
