/* fuzz_jinja.c — libFuzzer target: the chat-template Jinja compiler and renderer (core/jinja).
 *
 * Input: template source, optionally followed by a NUL byte and a JSON object used as the render
 * context. Without one, a fixed chat context is used (system/user/assistant messages with tool
 * calls, tools, add_generation_prompt, bos/eos tokens). Limits are set low so that hostile loops
 * and recursion hit them quickly; the target checks the contracts of jinja.h: a render either
 * succeeds with a NUL-terminated string no longer than max_output, or fails with one of the
 * documented codes and a message. The template has no access to files or the environment, so a
 * render must never read outside its inputs.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jinja.h"

void fuzz_jinja_init(void);
int fuzz_jinja_one(const uint8_t *data, size_t size);

static json_t *fixed_ctx;

static const char fixed_json[] =
    "{\"messages\":["
    "{\"role\":\"system\",\"content\":\"You are terse.\"},"
    "{\"role\":\"user\",\"content\":\"Hi \\u00e9\\u4f60 <b>&\\\"'\"},"
    "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"type\":\"function\","
    "\"function\":{\"name\":\"get\",\"arguments\":{\"city\":\"Paris\",\"n\":[1,2.5,true,null]}}}]},"
    "{\"role\":\"tool\",\"content\":\"{\\\"t\\\": 21}\",\"tool_call_id\":\"c1\"},"
    "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"part\"}]}],"
    "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get\",\"description\":\"d\","
    "\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}}}}}],"
    "\"add_generation_prompt\":true,\"bos_token\":\"<s>\",\"eos_token\":\"</s>\","
    "\"enable_thinking\":false}";

void fuzz_jinja_init(void)
{
    json_error_t je;
    fixed_ctx = json_loads(fixed_json, 0, &je);
    if (!fixed_ctx)
        abort();
}

int fuzz_jinja_one(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    size_t slen = nul ? (size_t)(nul - data) : size;
    json_t *ctx = fixed_ctx, *own = NULL;
    if (nul) {
        json_error_t je;
        own = json_loadb((const char *)nul + 1, size - slen - 1, JSON_DECODE_ANY, &je);
        if (!own || !json_is_object(own)) {
            json_decref(own);
            return 0; /* the context is ours to build; only objects are meaningful */
        }
        ctx = own;
    }
    /* A private copy of exactly slen bytes: a read past the source end is an ASan report. */
    char *src = malloc(slen ? slen : 1);
    if (!src) {
        json_decref(own);
        return 0;
    }
    memcpy(src, data, slen);
    lr_error err;
    memset(&err, 0, sizeof err);
    jj_template *t = NULL;
    if (jj_compile(src, slen, &err, &t) == 0) {
        jj_options o = {.max_output = 1 << 20,
                        .max_memory = 64 << 20,
                        .max_steps = 200000,
                        .max_depth = 32,
                        .now = 1732838400};
        char *out = NULL;
        size_t n = 0;
        memset(&err, 0, sizeof err);
        int rc = jj_render(t, ctx, &o, &out, &n, &err);
        if (rc == 0) {
            if (!out || out[n] != '\0' || n > o.max_output)
                abort();
        } else if ((rc != LR_EINVAL && rc != LR_EINTERNAL && rc != LR_ENOMEM) || out ||
                   err.msg[0] == 0) {
            if (getenv("FUZZ_VERBOSE"))
                fprintf(stderr, "render rc %d out %p msg '%s'\n", rc, (void *)out, err.msg);
            abort();
        }
        free(out);
        jj_destroy(t);
    } else if (err.msg[0] == 0) {
        abort();
    } else if (getenv("FUZZ_VERBOSE")) {
        fprintf(stderr, "refused: %s\n", err.msg);
    }
    free(src);
    json_decref(own);
    return 0;
}

/* The libFuzzer entry points (tests/fuzz/run.sh builds with -DLR_LIBFUZZER); check_regress calls
 * fuzz_jinja_one directly. */
#ifdef LR_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_jinja_one(data, size);
}
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_jinja_init();
    return 0;
}
#endif
