/* loractl.c — lorad's command-line client: complete, chat (optionally streamed), tokenize, the
 * adapter admin calls, models and health, over HTTP with libcurl.
 *
 * It is a thin client: it builds the OpenAI-shaped JSON body, sends it, and prints the part of
 * the answer a person wants (the text, the ids, a table), or the raw JSON with --json. It is not
 * a load generator and keeps no state between runs. The server is named by --url or LORAD_URL,
 * the key by --api-key or LORAD_API_KEY. Every request that names a model also carries the header
 * `X-Adapter-Id: <model>`, which the shipped nginx router hashes to pick a replica.
 *
 * Exit status: 0 success, 1 the server answered with an error (its message is printed), 2 bad
 * usage, 3 the server could not be reached or the answer could not be read.
 */
#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "lc_sse.h"

#define LC_VERSION "0.1.0"
#define LC_MAX_BODY ((size_t)64 << 20) /* largest answer we buffer */
#define LC_MAX_STDIN ((size_t)16 << 20)

enum { LC_EXIT_OK = 0, LC_EXIT_API = 1, LC_EXIT_USAGE = 2, LC_EXIT_CONN = 3 };

typedef struct lc_opts {
    const char *url;     /* base URL without a trailing slash */
    const char *api_key; /* NULL: no Authorization header */
    const char *model;   /* -m: adapter id or base id; NULL: the base */
    const char *system;  /* -s: a system message for chat */
    const char *stop;    /* --stop: one stop string */
    long max_tokens;     /* -n; 0 = the server's default */
    double temperature;  /* -t; NAN = the server's default */
    double top_p;        /* --top-p; NAN = default */
    long long seed;      /* --seed; -1 = none */
    long timeout;        /* --timeout seconds for the whole request; 0 = none */
    int stream;          /* --stream */
    int json;            /* --json: print the raw answer */
    int adapter_header;  /* send X-Adapter-Id (default on) */
} lc_opts;

/* The answer of one request. */
typedef struct lc_reply {
    long status; /* HTTP status; 0 when none was received */
    char *body;  /* the whole body (non-streamed, or an error answer), NUL-terminated */
    size_t len, cap;
    int streaming;    /* the answer is text/event-stream and goes to the SSE reader */
    int is_chat;      /* stream chunks are chat.completion.chunk (delta.content) */
    int saw_done;     /* data: [DONE] arrived */
    int printed_nl;   /* the streamed text ended with a newline */
    int server_error; /* the stream carried an error event (exit 1, not 3) */
    int raw_events;   /* --json --stream: print each chunk's JSON on a line of its own */
    lr_error err;     /* why a stream failed (bad chunk, error event) */
    lc_sse sse;
    CURL *curl;
} lc_reply;

static void usage(FILE *out)
{
    fputs("usage: loractl [options] COMMAND [ARGS]\n"
          "Talk to a lorad daemon (LORAD_URL, default http://127.0.0.1:8080).\n"
          "\n"
          "Commands:\n"
          "  health                    GET /health; exit 0 when the daemon is ready\n"
          "  models                    list the base model and the adapters (/v1/models)\n"
          "  complete PROMPT           a completion (/v1/completions); PROMPT '-' reads stdin\n"
          "  chat MESSAGE              one user turn (/v1/chat/completions); '-' reads stdin\n"
          "  tokenize TEXT             token ids of TEXT (/tokenize)\n"
          "  adapters list             the adapter registry (/v1/adapters)\n"
          "  adapters load NAME PATH   register and load a PEFT folder (/v1/load_lora_adapter)\n"
          "  adapters unload NAME      drop an adapter (/v1/unload_lora_adapter)\n"
          "\n"
          "Options:\n"
          "  --url URL                 server base URL (overrides LORAD_URL)\n"
          "  --api-key KEY             bearer key (overrides LORAD_API_KEY)\n"
          "  -m, --model ID            adapter id (or the base id) to use\n"
          "  -n, --max-tokens N        tokens to generate at most\n"
          "  -t, --temperature T       sampling temperature; 0 = greedy\n"
          "      --top-p P             nucleus sampling mass\n"
          "      --seed N              sampling seed\n"
          "      --stop S              stop string\n"
          "  -s, --system TEXT         system message (chat)\n"
          "      --stream              print tokens as they arrive (Server-Sent Events)\n"
          "      --json                print the server's JSON answer as is (with --stream:\n"
          "                            one line per chunk, without [DONE])\n"
          "      --timeout SEC         give up after SEC seconds (default: none)\n"
          "      --no-adapter-header   do not send X-Adapter-Id (it routes requests by adapter)\n"
          "  -h, --help                this text\n"
          "      --version             print the version\n"
          "Exit status: 0 ok, 1 the server answered with an error, 2 usage, 3 unreachable.\n",
          out);
}

/* ------------------------------------------------------------------ parsing helpers */

static int parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

static int parse_double(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v)) return -1;
    *out = v;
    return 0;
}

/* Read all of stdin (bounded) into a new NUL-terminated string; NULL on error (printed). */
static char *read_stdin(void)
{
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    if (!buf) return NULL;
    for (;;) {
        if (len + 1 == cap) {
            if (cap >= LC_MAX_STDIN) {
                fprintf(stderr, "loractl: stdin is longer than %zu bytes\n", LC_MAX_STDIN);
                free(buf);
                return NULL;
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                return NULL;
            }
            buf = nb;
            cap *= 2;
        }
        size_t n = fread(buf + len, 1, cap - 1 - len, stdin);
        len += n;
        if (n == 0) break;
    }
    if (ferror(stdin)) {
        fprintf(stderr, "loractl: cannot read stdin\n");
        free(buf);
        return NULL;
    }
    buf[len] = '\0';
    return buf;
}

/* ------------------------------------------------------------------ HTTP */

static int body_append(lc_reply *r, const char *p, size_t n)
{
    if (r->len + n > LC_MAX_BODY) return -1;
    if (r->len + n + 1 > r->cap) {
        size_t ncap = r->cap ? r->cap : 4096;
        while (ncap < r->len + n + 1)
            ncap *= 2;
        char *nb = realloc(r->body, ncap);
        if (!nb) return -1;
        r->body = nb;
        r->cap = ncap;
    }
    memcpy(r->body + r->len, p, n);
    r->len += n;
    r->body[r->len] = '\0';
    return 0;
}

/* One streamed event: a completion or chat chunk, an error object, or [DONE]. */
static int on_event(void *ud, const char *data, size_t len)
{
    lc_reply *r = ud;
    if (r->saw_done) return 0;
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        r->saw_done = 1;
        return 0;
    }
    json_error_t jerr;
    json_t *chunk = json_loadb(data, len, 0, &jerr);
    if (!chunk)
        return lr_error_set(&r->err, LR_EFORMAT, "a streamed chunk is not JSON (%s): %.200s",
                            jerr.text, data);
    int rc = 0;
    json_t *e = json_object_get(chunk, "error");
    if (e) {
        const char *msg = json_string_value(json_object_get(e, "message"));
        r->server_error = 1;
        rc = lr_error_set(&r->err, LR_EINTERNAL, "the server ended the stream with an error: %s",
                          msg ? msg : "(no message)");
        goto out;
    }
    if (r->raw_events) {
        /* Re-encoded compactly: a data field may span lines, the output must not. */
        char *line = json_dumps(chunk, JSON_COMPACT);
        if (!line) {
            rc = lr_error_set(&r->err, LR_ENOMEM, "out of memory printing a streamed chunk");
            goto out;
        }
        fputs(line, stdout);
        free(line);
        fputc('\n', stdout);
        fflush(stdout);
        r->printed_nl = 1;
        goto out;
    }
    json_t *choices = json_object_get(chunk, "choices");
    size_t i;
    json_t *c;
    json_array_foreach(choices, i, c)
    {
        const char *text;
        if (r->is_chat)
            text = json_string_value(json_object_get(json_object_get(c, "delta"), "content"));
        else
            text = json_string_value(json_object_get(c, "text"));
        if (text && *text) {
            fputs(text, stdout);
            r->printed_nl = text[strlen(text) - 1] == '\n';
        }
    }
    fflush(stdout);
out:
    json_decref(chunk);
    return rc;
}

static size_t on_write(char *p, size_t size, size_t nmemb, void *ud)
{
    lc_reply *r = ud;
    size_t n = size * nmemb;
    if (r->status == 0) curl_easy_getinfo(r->curl, CURLINFO_RESPONSE_CODE, &r->status);
    if (r->streaming) {
        char *ct = NULL;
        curl_easy_getinfo(r->curl, CURLINFO_CONTENT_TYPE, &ct);
        if (r->status == 200 && ct && strncmp(ct, "text/event-stream", 17) == 0)
            return lc_sse_feed(&r->sse, p, n, &r->err) < 0 ? 0 : n;
        r->streaming = 0; /* an error answer, not a stream: keep the body */
    }
    return body_append(r, p, n) < 0 ? 0 : n;
}

/* Send one request. body (may be NULL) is a JSON object, borrowed. On return r->status and
 * r->body hold the answer. Returns 0, or LC_EXIT_CONN after printing why. */
static int http_call(const lc_opts *o, const char *method, const char *path, json_t *body,
                     lc_reply *r)
{
    int rc = LC_EXIT_CONN;
    char *payload = NULL;
    char url[4096], auth[1024], adapter[1024];
    struct curl_slist *hdrs = NULL;
    CURL *c = curl_easy_init();
    if (!c) {
        fprintf(stderr, "loractl: cannot initialise libcurl\n");
        return LC_EXIT_CONN;
    }
    r->curl = c;
    lr_error_clear(&r->err);
    if ((size_t)snprintf(url, sizeof(url), "%s%s", o->url, path) >= sizeof(url)) {
        fprintf(stderr, "loractl: the URL is too long\n");
        goto out;
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "loractl/" LC_VERSION);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
    if (o->timeout > 0) curl_easy_setopt(c, CURLOPT_TIMEOUT, o->timeout);
    if (o->api_key && *o->api_key) {
        if ((size_t)snprintf(auth, sizeof(auth), "Authorization: Bearer %s", o->api_key) >=
            sizeof(auth)) {
            fprintf(stderr, "loractl: the API key is too long\n");
            goto out;
        }
        hdrs = curl_slist_append(hdrs, auth);
    }
    if (o->adapter_header && o->model && *o->model) {
        if (strpbrk(o->model, "\r\n") ||
            (size_t)snprintf(adapter, sizeof(adapter), "X-Adapter-Id: %s", o->model) >=
                sizeof(adapter)) {
            fprintf(stderr, "loractl: the model id must be one line shorter than 1000 bytes\n");
            rc = LC_EXIT_USAGE;
            goto out;
        }
        hdrs = curl_slist_append(hdrs, adapter);
    }
    if (body) {
        payload = json_dumps(body, JSON_COMPACT);
        if (!payload) {
            fprintf(stderr, "loractl: cannot encode the request as JSON\n");
            goto out;
        }
        hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, payload);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(payload));
    }
    if (r->streaming) hdrs = curl_slist_append(hdrs, "Accept: text/event-stream");
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    CURLcode cc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    if (cc != CURLE_OK) {
        if (r->err.code != LR_OK) {
            fprintf(stderr, "loractl: %s\n", r->err.msg);
            if (r->server_error) rc = LC_EXIT_API;
        } else
            fprintf(stderr, "loractl: %s %s failed: %s\n", method, url, curl_easy_strerror(cc));
        goto out;
    }
    rc = 0;
out:
    curl_slist_free_all(hdrs);
    free(payload);
    curl_easy_cleanup(c);
    r->curl = NULL;
    return rc;
}

/* Parse the answer of a non-streamed call, or print the server's error. Returns the parsed JSON
 * (new reference) with *exit_code = 0, or NULL with *exit_code set. */
static json_t *reply_json(const lc_reply *r, int *exit_code)
{
    json_error_t jerr;
    json_t *j = r->body ? json_loads(r->body, 0, &jerr) : NULL;
    if (r->status < 200 || r->status >= 300) {
        const char *msg =
            j ? json_string_value(json_object_get(json_object_get(j, "error"), "message")) : NULL;
        fprintf(stderr, "loractl: HTTP %ld: %s\n", r->status,
                msg ? msg : (r->body && *r->body ? r->body : "(empty answer)"));
        json_decref(j);
        *exit_code = LC_EXIT_API;
        return NULL;
    }
    if (!j) {
        fprintf(stderr, "loractl: the answer is not JSON: %.200s\n", r->body ? r->body : "");
        *exit_code = LC_EXIT_CONN;
        return NULL;
    }
    *exit_code = 0;
    return j;
}

static void reply_free(lc_reply *r)
{
    free(r->body);
    lc_sse_free(&r->sse);
}

/* A call whose answer is printed raw (--json) or handed to `show`. */
static int call_and_show(const lc_opts *o, const char *method, const char *path, json_t *body,
                         int (*show)(json_t *answer))
{
    lc_reply r = {0};
    int rc = http_call(o, method, path, body, &r);
    if (rc == 0) {
        json_t *j = reply_json(&r, &rc);
        if (j) {
            if (o->json) {
                fputs(r.body, stdout);
                if (r.len && r.body[r.len - 1] != '\n') fputc('\n', stdout);
            } else {
                rc = show(j);
            }
            json_decref(j);
        }
    }
    reply_free(&r);
    return rc;
}

/* ------------------------------------------------------------------ commands */

static int show_health(json_t *j)
{
    const char *s = json_string_value(json_object_get(j, "status"));
    printf("%s\n", s ? s : "ok");
    return 0;
}

static int cmd_health(const lc_opts *o)
{
    return call_and_show(o, "GET", "/health", NULL, show_health);
}

static int show_models(json_t *j)
{
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(j, "data"), i, m)
    {
        const char *id = json_string_value(json_object_get(m, "id"));
        const char *parent = json_string_value(json_object_get(m, "parent"));
        if (parent)
            printf("%s\t(adapter of %s)\n", id ? id : "?", parent);
        else
            printf("%s\n", id ? id : "?");
    }
    return 0;
}

static int cmd_models(const lc_opts *o)
{
    return call_and_show(o, "GET", "/v1/models", NULL, show_models);
}

static int show_completion(json_t *j)
{
    json_t *c0 = json_array_get(json_object_get(j, "choices"), 0);
    const char *text = json_string_value(json_object_get(c0, "text"));
    if (!text) /* chat */
        text = json_string_value(json_object_get(json_object_get(c0, "message"), "content"));
    if (!text) {
        fprintf(stderr, "loractl: the answer has no choices[0] text\n");
        return LC_EXIT_CONN;
    }
    size_t n = strlen(text);
    fputs(text, stdout);
    if (n == 0 || text[n - 1] != '\n') fputc('\n', stdout);
    return 0;
}

/* The sampling parameters shared by complete and chat; steals nothing. */
static int add_sampling(const lc_opts *o, json_t *req)
{
    int bad = 0;
    if (o->model) bad |= json_object_set_new(req, "model", json_string(o->model));
    if (o->max_tokens > 0)
        bad |= json_object_set_new(req, "max_tokens", json_integer(o->max_tokens));
    if (!isnan(o->temperature))
        bad |= json_object_set_new(req, "temperature", json_real(o->temperature));
    if (!isnan(o->top_p)) bad |= json_object_set_new(req, "top_p", json_real(o->top_p));
    if (o->seed >= 0) bad |= json_object_set_new(req, "seed", json_integer(o->seed));
    if (o->stop) bad |= json_object_set_new(req, "stop", json_string(o->stop));
    if (o->stream) bad |= json_object_set_new(req, "stream", json_true());
    return bad ? -1 : 0;
}

/* Run a completion-like call, streamed or not. */
static int generate(const lc_opts *o, const char *path, json_t *req, int is_chat)
{
    if (add_sampling(o, req) < 0) {
        fprintf(stderr, "loractl: a parameter is not valid UTF-8 text\n");
        return LC_EXIT_USAGE;
    }
    if (!o->stream) return call_and_show(o, "POST", path, req, show_completion);

    lc_reply r = {0};
    r.streaming = 1;
    r.is_chat = is_chat;
    r.raw_events = o->json;
    lc_sse_init(&r.sse, LC_MAX_BODY, on_event, &r);
    int rc = http_call(o, "POST", path, req, &r);
    if (rc == 0) {
        if (r.streaming) {
            if (!r.printed_nl) fputc('\n', stdout);
            if (r.err.code != LR_OK) {
                fprintf(stderr, "loractl: %s\n", r.err.msg);
                rc = LC_EXIT_API;
            } else if (!r.saw_done) {
                fprintf(stderr, "loractl: the stream ended without [DONE]\n");
                rc = LC_EXIT_CONN;
            }
        } else {
            json_t *j = reply_json(&r, &rc); /* an error answer instead of a stream */
            if (j) rc = show_completion(j);
            json_decref(j);
        }
    }
    reply_free(&r);
    return rc;
}

static int text_arg(const char *arg, char **owned, const char **out)
{
    *owned = NULL;
    if (strcmp(arg, "-") != 0) {
        *out = arg;
        return 0;
    }
    *owned = read_stdin();
    *out = *owned;
    return *owned ? 0 : -1;
}

static int cmd_complete(const lc_opts *o, const char *arg)
{
    char *owned;
    const char *prompt;
    if (text_arg(arg, &owned, &prompt) < 0) return LC_EXIT_USAGE;
    json_t *req = json_pack("{s:s}", "prompt", prompt);
    int rc;
    if (!req) {
        fprintf(stderr, "loractl: the prompt is not valid UTF-8 text\n");
        rc = LC_EXIT_USAGE;
    } else {
        rc = generate(o, "/v1/completions", req, 0);
    }
    json_decref(req);
    free(owned);
    return rc;
}

static int cmd_chat(const lc_opts *o, const char *arg)
{
    char *owned;
    const char *msg;
    if (text_arg(arg, &owned, &msg) < 0) return LC_EXIT_USAGE;
    int rc = LC_EXIT_USAGE;
    json_t *req = NULL, *msgs = json_array();
    if (!msgs) goto out;
    if (o->system &&
        json_array_append_new(msgs, json_pack("{s:s,s:s}", "role", "system", "content", o->system)))
        goto bad;
    if (json_array_append_new(msgs, json_pack("{s:s,s:s}", "role", "user", "content", msg)))
        goto bad;
    req = json_pack("{s:O}", "messages", msgs);
    if (!req) goto bad;
    rc = generate(o, "/v1/chat/completions", req, 1);
    goto out;
bad:
    fprintf(stderr, "loractl: the message is not valid UTF-8 text\n");
out:
    json_decref(msgs);
    json_decref(req);
    free(owned);
    return rc;
}

static int show_tokens(json_t *j)
{
    json_t *toks = json_object_get(j, "tokens");
    if (!json_is_array(toks)) {
        fprintf(stderr, "loractl: the answer has no tokens array\n");
        return LC_EXIT_CONN;
    }
    size_t i;
    json_t *t;
    json_array_foreach(toks, i, t)
        printf("%s%" JSON_INTEGER_FORMAT, i ? " " : "", json_integer_value(t));
    fputc('\n', stdout);
    return 0;
}

static int cmd_tokenize(const lc_opts *o, const char *arg)
{
    char *owned;
    const char *text;
    if (text_arg(arg, &owned, &text) < 0) return LC_EXIT_USAGE;
    int rc;
    json_t *req = json_pack("{s:s}", "content", text);
    if (req && o->model) json_object_set_new(req, "model", json_string(o->model));
    if (!req) {
        fprintf(stderr, "loractl: the text is not valid UTF-8\n");
        rc = LC_EXIT_USAGE;
    } else {
        rc = call_and_show(o, "POST", "/tokenize", req, show_tokens);
    }
    json_decref(req);
    free(owned);
    return rc;
}

static int show_adapters(json_t *j)
{
    size_t i;
    json_t *a;
    printf("%-32s %-10s %5s %9s  %s\n", "ID", "STATE", "RANK", "REQUESTS", "PATH");
    json_array_foreach(json_object_get(j, "data"), i, a)
    {
        const char *id = json_string_value(json_object_get(a, "id"));
        const char *state = json_string_value(json_object_get(a, "state"));
        const char *path = json_string_value(json_object_get(a, "path"));
        const char *err = json_string_value(json_object_get(a, "error"));
        printf("%-32s %-10s %5" JSON_INTEGER_FORMAT " %9" JSON_INTEGER_FORMAT "  %s%s%s\n",
               id ? id : "?", state ? state : "?", json_integer_value(json_object_get(a, "rank")),
               json_integer_value(json_object_get(a, "requests")), path ? path : "",
               err ? "  error: " : "", err ? err : "");
    }
    return 0;
}

static int show_ok(json_t *j)
{
    (void)j;
    printf("ok\n");
    return 0;
}

static int cmd_adapters(const lc_opts *o, int argc, char **argv)
{
    if (argc >= 1 && strcmp(argv[0], "list") == 0 && argc == 1)
        return call_and_show(o, "GET", "/v1/adapters", NULL, show_adapters);
    json_t *req = NULL;
    const char *path = NULL;
    if (argc == 3 && strcmp(argv[0], "load") == 0) {
        req = json_pack("{s:s,s:s}", "lora_name", argv[1], "lora_path", argv[2]);
        path = "/v1/load_lora_adapter";
    } else if (argc == 2 && strcmp(argv[0], "unload") == 0) {
        req = json_pack("{s:s}", "lora_name", argv[1]);
        path = "/v1/unload_lora_adapter";
    } else {
        fprintf(stderr, "loractl: use `adapters list`, `adapters load NAME PATH` or "
                        "`adapters unload NAME`\n");
        return LC_EXIT_USAGE;
    }
    if (!req) {
        fprintf(stderr, "loractl: the adapter name or path is not valid UTF-8\n");
        return LC_EXIT_USAGE;
    }
    /* Route the admin call to the replica that owns the adapter, like its requests. */
    lc_opts routed = *o;
    routed.model = argv[1];
    int rc = call_and_show(&routed, "POST", path, req, show_ok);
    json_decref(req);
    return rc;
}

/* ------------------------------------------------------------------ main */

static int run(int argc, char **argv)
{
    lc_opts o = {.url = getenv("LORAD_URL"),
                 .api_key = getenv("LORAD_API_KEY"),
                 .temperature = NAN,
                 .top_p = NAN,
                 .seed = -1,
                 .adapter_header = 1};
    enum {
        O_URL = 256,
        O_KEY,
        O_TOPP,
        O_SEED,
        O_STOP,
        O_STREAM,
        O_JSON,
        O_TIMEOUT,
        O_NOHDR,
        O_VERSION
    };
    static const struct option longopts[] = {
        {"url", required_argument, NULL, O_URL},
        {"api-key", required_argument, NULL, O_KEY},
        {"model", required_argument, NULL, 'm'},
        {"max-tokens", required_argument, NULL, 'n'},
        {"temperature", required_argument, NULL, 't'},
        {"top-p", required_argument, NULL, O_TOPP},
        {"seed", required_argument, NULL, O_SEED},
        {"stop", required_argument, NULL, O_STOP},
        {"system", required_argument, NULL, 's'},
        {"stream", no_argument, NULL, O_STREAM},
        {"json", no_argument, NULL, O_JSON},
        {"timeout", required_argument, NULL, O_TIMEOUT},
        {"no-adapter-header", no_argument, NULL, O_NOHDR},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, O_VERSION},
        {NULL, 0, NULL, 0},
    };
    int ch;
    long lv;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "m:n:t:s:h", longopts, NULL)) != -1) {
        switch (ch) {
        case O_URL:
            o.url = optarg;
            break;
        case O_KEY:
            o.api_key = optarg;
            break;
        case 'm':
            o.model = optarg;
            break;
        case 's':
            o.system = optarg;
            break;
        case O_STOP:
            o.stop = optarg;
            break;
        case O_STREAM:
            o.stream = 1;
            break;
        case O_JSON:
            o.json = 1;
            break;
        case O_NOHDR:
            o.adapter_header = 0;
            break;
        case 'h':
            usage(stdout);
            return LC_EXIT_OK;
        case O_VERSION:
            printf("loractl %s\n", LC_VERSION);
            return LC_EXIT_OK;
        case 'n':
            if (parse_long(optarg, 1, 1L << 30, &o.max_tokens) < 0) {
                fprintf(stderr, "loractl: --max-tokens must be an integer >= 1, got '%s'\n",
                        optarg);
                return LC_EXIT_USAGE;
            }
            break;
        case 't':
            if (parse_double(optarg, &o.temperature) < 0 || o.temperature < 0) {
                fprintf(stderr, "loractl: --temperature must be a number >= 0, got '%s'\n", optarg);
                return LC_EXIT_USAGE;
            }
            break;
        case O_TOPP:
            if (parse_double(optarg, &o.top_p) < 0 || o.top_p <= 0 || o.top_p > 1) {
                fprintf(stderr, "loractl: --top-p must be in (0, 1], got '%s'\n", optarg);
                return LC_EXIT_USAGE;
            }
            break;
        case O_SEED:
            if (parse_long(optarg, 0, 0x7fffffffL, &lv) < 0) {
                fprintf(stderr, "loractl: --seed must be an integer in [0, 2^31), got '%s'\n",
                        optarg);
                return LC_EXIT_USAGE;
            }
            o.seed = lv;
            break;
        case O_TIMEOUT:
            if (parse_long(optarg, 1, 86400, &o.timeout) < 0) {
                fprintf(stderr, "loractl: --timeout must be seconds in [1, 86400], got '%s'\n",
                        optarg);
                return LC_EXIT_USAGE;
            }
            break;
        default:
            fprintf(stderr, "loractl: unknown option or missing value: '%s' (see --help)\n",
                    argv[optind - 1]);
            return LC_EXIT_USAGE;
        }
    }
    if (!o.url || !*o.url) o.url = "http://127.0.0.1:8080";
    /* Drop trailing slashes so paths join cleanly ("http://h:1/" + "/health"). */
    char url[2048];
    size_t ul = strlen(o.url);
    if (ul >= sizeof(url)) {
        fprintf(stderr, "loractl: the server URL is longer than %zu bytes\n", sizeof(url) - 1);
        return LC_EXIT_USAGE;
    }
    memcpy(url, o.url, ul + 1);
    while (ul > 0 && url[ul - 1] == '/')
        url[--ul] = '\0';
    o.url = url;

    int nargs = argc - optind;
    char **args = argv + optind;
    if (nargs < 1) {
        usage(stderr);
        return LC_EXIT_USAGE;
    }
    const char *cmd = args[0];
    if (strcmp(cmd, "health") == 0 && nargs == 1) return cmd_health(&o);
    if (strcmp(cmd, "models") == 0 && nargs == 1) return cmd_models(&o);
    if (strcmp(cmd, "complete") == 0 && nargs == 2) return cmd_complete(&o, args[1]);
    if (strcmp(cmd, "chat") == 0 && nargs == 2) return cmd_chat(&o, args[1]);
    if (strcmp(cmd, "tokenize") == 0 && nargs == 2) return cmd_tokenize(&o, args[1]);
    if (strcmp(cmd, "adapters") == 0) return cmd_adapters(&o, nargs - 1, args + 1);
    fprintf(stderr, "loractl: unknown command or wrong number of arguments: '%s' (see --help)\n",
            cmd);
    return LC_EXIT_USAGE;
}

int main(int argc, char **argv)
{
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0) {
        fprintf(stderr, "loractl: cannot initialise libcurl\n");
        return LC_EXIT_CONN;
    }
    int rc = run(argc, argv);
    curl_global_cleanup();
    return rc;
}
