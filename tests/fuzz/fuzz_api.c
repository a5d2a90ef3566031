/* fuzz_api.c — libFuzzer target: HTTP request bodies, from bytes to a validated request.
 *
 * Input: byte 0 picks the endpoint (even: POST /v1/completions, odd: POST /v1/chat/completions),
 * the rest is the body. It goes through json_loadb with the flags api.c uses
 * (JSON_REJECT_DUPLICATES) and then api_cmpl_parse() or api_chat_parse(), the functions that turn
 * a body into an api_cmpl_req (chat: messages normalised, rendered with the model's chat
 * template — here Qwen3's, from tests/fuzz/corpus/jinja/qwen3.j2 — and tokenized). api_handle()
 * itself would go on to start the sequences on the engine and is not linked here: it pulls in the
 * whole server (engine, registry), which needs a loaded model.
 * The tokenizer is tests/fuzz/corpus/tokenizer/llama3_cfg.json (a cut-down Llama 3 byte-level
 * BPE), loaded once; FUZZ_TOKENIZER overrides the path (run from the repository root).
 *
 * Checks (API.md / api.h contracts): an accepted completion request respects every limit of
 * api.h (prompt count, n, prompts × n, stop count and length, ids in [0, vocab), prompt shorter
 * than the context, max_tokens in [1, max_pos], logprobs in [-1, 20], the model id passes
 * api_check_model_id); a refusal carries a 4xx/5xx status and a message.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api.h"
#include "jinja.h"
#include "tokenizer.h"

void fuzz_api_init(void);
int fuzz_api_one(const uint8_t *data, size_t size);

enum { MAX_POS = 512 };

static tok_tokenizer *tok;
static jj_template *chat_tmpl;
static int vocab;

void fuzz_api_init(void)
{
    const char *path = getenv("FUZZ_TOKENIZER");
    if (!path)
        path = "tests/fuzz/corpus/tokenizer/llama3_cfg.json";
    /* The corpus file is tokenizer.json NUL tokenizer_config.json; split it into two files. */
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "fuzz_api: cannot open %s (run from the repository root)\n", path);
        abort();
    }
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    char tj[] = "/tmp/fuzz_api_tok_XXXXXX", tc[] = "/tmp/fuzz_api_cfg_XXXXXX";
    char *nul = memchr(buf, 0, n);
    size_t jl = nul ? (size_t)(nul - buf) : n;
    FILE *a = fdopen(mkstemp(tj), "wb"), *b = fdopen(mkstemp(tc), "wb");
    if (!a || !b)
        abort();
    fwrite(buf, 1, jl, a);
    if (nul)
        fwrite(nul + 1, 1, n - jl - 1, b);
    fclose(a);
    fclose(b);
    lr_error err;
    if (tok_load_files(tj, nul ? tc : NULL, &err, &tok) != 0) {
        fprintf(stderr, "fuzz_api: %s\n", err.msg);
        abort();
    }
    unlink(tj);
    unlink(tc);
    vocab = tok_vocab_size(tok);
    const char *tpath = getenv("FUZZ_CHAT_TEMPLATE");
    if (!tpath)
        tpath = "tests/fuzz/corpus/jinja/qwen3.j2";
    if (!(f = fopen(tpath, "rb"))) {
        fprintf(stderr, "fuzz_api: cannot open %s (run from the repository root)\n", tpath);
        abort();
    }
    n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    if (jj_compile(buf, n, &err, &chat_tmpl) != 0) {
        fprintf(stderr, "fuzz_api: %s: %s\n", tpath, err.msg);
        abort();
    }
}

static void check_cmpl(const char *body, size_t len, int chat)
{
    json_error_t je;
    json_t *v = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!v)
        return;
    api_limits lim = {.tok = tok, .vocab = vocab, .max_pos = MAX_POS, .max_tokens_default = 16};
    api_cmpl_req r;
    api_err err;
    memset(&err, 0, sizeof err);
    api_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.tok = tok;
    ctx.chat_tmpl = chat_tmpl;
    ctx.served_name = "base";
    ctx.max_tokens_default = 16;
    ctx.max_pos = MAX_POS;
    ctx.vocab = vocab;
    int rc = chat ? api_chat_parse(&ctx, v, &lim, &r, &err) : api_cmpl_parse(v, &lim, &r, &err);
    if (rc == 0) {
        if (r.n_prompts < 1 || r.n_prompts > API_MAX_PROMPTS || r.n < 1 || r.n > API_MAX_N ||
            r.n_prompts * r.n > API_MAX_SEQS || r.n_stop < 0 || r.n_stop > API_MAX_STOP ||
            r.max_tokens < 1 || r.max_tokens > MAX_POS || r.logprobs < -1 || r.logprobs > 20)
            abort();
        for (int i = 0; i < r.n_stop; i++)
            if (!r.stop[i] || strlen(r.stop[i]) > API_MAX_STOP_LEN)
                abort();
        for (int i = 0; i < r.n_prompts; i++) {
            const api_prompt *p = &r.prompts[i];
            if (p->n < 0 || p->n >= MAX_POS || (p->n && !p->ids))
                abort();
            for (int k = 0; k < p->n; k++)
                if (p->ids[k] < 0 || p->ids[k] >= vocab)
                    abort();
            if (p->text && strlen(p->text) != p->text_len)
                abort(); /* the prompt text is NUL-free: invalid prompts are refused */
        }
        if (r.model && api_check_model_id(r.model, strlen(r.model), NULL) != 0)
            abort();
    } else if (err.e.msg[0] == 0 || err.e.http < 400 || err.e.http > 599) {
        abort();
    } else if (getenv("FUZZ_VERBOSE")) {
        fprintf(stderr, "refused %d: %s\n", err.e.http, err.e.msg);
    }
    api_cmpl_req_clear(&r);
    json_decref(v);
}

int fuzz_api_one(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    /* A private copy of exactly the body: a read past its end is an ASan report. */
    size_t len = size - 1;
    char *body = malloc(len ? len : 1);
    if (!body)
        return 0;
    memcpy(body, data + 1, len);
    check_cmpl(body, len, data[0] & 1);
    free(body);
    return 0;
}

/* The libFuzzer entry points (tests/fuzz/run.sh builds with -DLR_LIBFUZZER); check_regress calls
 * fuzz_api_one directly. */
#ifdef LR_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_api_one(data, size);
}
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_api_init();
    return 0;
}
#endif
