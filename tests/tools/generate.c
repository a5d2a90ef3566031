/* generate.c — lr-generate: greedy generation from token ids through the real engine, printing
 * the same JSON lines as tests/ref/ref.py so parity tests can diff the two.
 *
 *   lr-generate --model DIR [--adapter DIR[:scale]]... --prompt 1,2,3 [--prompt ...]
 *               --max-tokens N [--top-logprobs K] [--batch] [--threads N]
 *               [--kv-cache-mb M] [--max-batch-tokens B] [--adapter-per-prompt]
 *
 * --adapter DIR[:scale] loads a PEFT folder; several form one weighted mix applied to every
 * prompt. With --adapter-per-prompt the i-th --adapter belongs to the i-th prompt instead ("none"
 * = the base), so one batch holds many adapters; equal folders share one adapter object.
 *
 * One line per prompt, in input order: {"prompt": [...], "tokens": [...], "logprobs": [...],
 * "top": [[[id, lp], ...] per step]}. Greedy (temperature 0), eos ignored. Without --batch the
 * prompts run one after another; with --batch all are submitted at once and share batches.
 * --kv-cache-mb takes fractions (0.05) so tests can force preemption on tiny models.
 * Test tool, not product: it exits on errors with a message on stderr.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine.h"
#include "lora.h"
#include "model.h"
#include "peft.h"

typedef struct gen_req {
    int32_t *prompt;
    int n_prompt;
    int32_t *tokens;
    float *lp;
    int32_t *top_ids; /* [max_tokens * k] */
    float *top_lp;
    int n_gen, n_top;
    int done;
    eng_finish finish;
    char error[512];
} gen_req;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;
static int g_max_tokens, g_top;

static int on_event(void *user, const eng_event *ev)
{
    gen_req *r = user;
    if (ev->token >= 0 && r->n_gen < g_max_tokens) {
        int k = r->n_gen++;
        r->tokens[k] = ev->token;
        r->lp[k] = ev->logprob;
        r->n_top = ev->n_top;
        for (int i = 0; i < ev->n_top && i < g_top; i++) {
            r->top_ids[k * g_top + i] = ev->top_ids[i];
            r->top_lp[k * g_top + i] = ev->top_logprobs[i];
        }
    }
    if (ev->finish != ENG_FINISH_NONE) {
        pthread_mutex_lock(&g_mu);
        r->done = 1;
        r->finish = ev->finish;
        if (ev->error) snprintf(r->error, sizeof r->error, "%s", ev->error);
        pthread_cond_broadcast(&g_cv);
        pthread_mutex_unlock(&g_mu);
    }
    return 0;
}

static void wait_done(gen_req *r)
{
    pthread_mutex_lock(&g_mu);
    while (!r->done)
        pthread_cond_wait(&g_cv, &g_mu);
    pthread_mutex_unlock(&g_mu);
}

#define GEN_MAX_ADAPTERS 256

typedef struct gen_adapter {
    char dir[4096];
    float scale;
    peft_adapter *a;
    lora_set *set; /* with --adapter-per-prompt: this adapter alone */
} gen_adapter;

/* Parse "DIR[:scale]". */
static void parse_adapter(const char *v, gen_adapter *g)
{
    snprintf(g->dir, sizeof g->dir, "%s", v);
    g->scale = 1.0f;
    char *c = strrchr(g->dir, ':');
    if (c) {
        char *end;
        double d = strtod(c + 1, &end);
        if (end != c + 1 && !*end) {
            g->scale = (float)d;
            *c = 0;
        }
    }
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

static void usage(void)
{
    fprintf(stderr, "usage: lr-generate --model DIR [--adapter DIR[:scale]]... --prompt 1,2,3 "
                    "[--prompt ...] --max-tokens N [--top-logprobs K] [--batch] [--threads N] "
                    "[--kv-cache-mb M] [--max-batch-tokens B] [--adapter-per-prompt]\n");
    exit(2);
}

static long parse_long(const char *s, const char *flag, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "lr-generate: %s must be an integer in [%ld, %ld], got '%s'\n", flag, lo,
                hi, s);
        exit(2);
    }
    return v;
}

static int parse_prompt(const char *s, gen_req *r)
{
    int cap = 16;
    r->prompt = malloc(sizeof(int32_t) * cap);
    r->n_prompt = 0;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < INT32_MIN || v > INT32_MAX) return -1;
        if (r->n_prompt == cap) {
            cap *= 2;
            r->prompt = realloc(r->prompt, sizeof(int32_t) * cap);
        }
        r->prompt[r->n_prompt++] = (int32_t)v;
        p = end;
        if (*p == ',')
            p++;
        else if (*p)
            return -1;
    }
    return r->n_prompt > 0 ? 0 : -1;
}

static void print_float(float f)
{
    if (isfinite(f))
        printf("%.9g", f);
    else
        printf("%s", f < 0 ? "-1e38" : "1e38");
}

static void print_result(const gen_req *r)
{
    printf("{\"prompt\": [");
    for (int i = 0; i < r->n_prompt; i++)
        printf(i ? ", %d" : "%d", r->prompt[i]);
    printf("], \"tokens\": [");
    for (int i = 0; i < r->n_gen; i++)
        printf(i ? ", %d" : "%d", r->tokens[i]);
    printf("], \"logprobs\": [");
    for (int i = 0; i < r->n_gen; i++) {
        if (i) printf(", ");
        print_float(r->lp[i]);
    }
    printf("], \"top\": [");
    for (int i = 0; i < r->n_gen; i++) {
        printf(i ? ", [" : "[");
        for (int k = 0; k < g_top; k++) {
            printf(k ? ", [%d, " : "[%d, ", r->top_ids[i * g_top + k]);
            print_float(r->top_lp[i * g_top + k]);
            printf("]");
        }
        printf("]");
    }
    printf("]}\n");
}

int main(int argc, char **argv)
{
    const char *model_dir = NULL;
    int n_req = 0, batch = 0, threads = 0, max_batch = 0, per_prompt = 0, n_ad = 0;
    gen_adapter *ads = calloc(GEN_MAX_ADAPTERS, sizeof *ads);
    double kv_mb = 0;
    gen_req *reqs = calloc((size_t)argc, sizeof *reqs);
    g_max_tokens = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--batch")) {
            batch = 1;
            continue;
        }
        if (!strcmp(a, "--adapter-per-prompt")) {
            per_prompt = 1;
            continue;
        }
        if (!v) usage();
        i++;
        if (!strcmp(a, "--model")) {
            model_dir = v;
        } else if (!strcmp(a, "--adapter")) {
            if (n_ad == GEN_MAX_ADAPTERS) {
                fprintf(stderr, "lr-generate: at most %d --adapter\n", GEN_MAX_ADAPTERS);
                return 2;
            }
            parse_adapter(v, &ads[n_ad++]);
        } else if (!strcmp(a, "--prompt")) {
            if (parse_prompt(v, &reqs[n_req]) != 0) {
                fprintf(stderr, "lr-generate: --prompt wants comma-separated token ids, got '%s'\n",
                        v);
                return 2;
            }
            n_req++;
        } else if (!strcmp(a, "--max-tokens")) {
            g_max_tokens = (int)parse_long(v, a, 1, 1 << 20);
        } else if (!strcmp(a, "--top-logprobs")) {
            g_top = (int)parse_long(v, a, 0, ENG_MAX_TOP_LOGPROBS);
        } else if (!strcmp(a, "--threads")) {
            threads = (int)parse_long(v, a, 0, 1024);
        } else if (!strcmp(a, "--max-batch-tokens")) {
            max_batch = (int)parse_long(v, a, 1, 1 << 20);
        } else if (!strcmp(a, "--kv-cache-mb")) {
            char *end;
            kv_mb = strtod(v, &end);
            if (*end || !(kv_mb > 0)) {
                fprintf(stderr, "lr-generate: --kv-cache-mb must be a positive number, got '%s'\n",
                        v);
                return 2;
            }
        } else {
            usage();
        }
    }
    if (!model_dir || n_req == 0 || g_max_tokens < 1) usage();

    lr_error err;
    lr_error_clear(&err);
    lr_model *m = NULL;
    if (lr_model_load(model_dir, &err, &m) != 0) {
        fprintf(stderr, "lr-generate: %s\n", err.msg);
        return 1;
    }
    if (per_prompt && n_ad != n_req) {
        fprintf(stderr,
                "lr-generate: --adapter-per-prompt wants one --adapter per --prompt "
                "(%d adapters, %d prompts)\n",
                n_ad, n_req);
        return 2;
    }
    /* Load each distinct folder once (orig[i] = first index with the same folder); per prompt
     * the set of its adapter (one per folder and scale), or one mix for all prompts. */
    int max_rank = 0;
    double load_s = 0;
    int *orig = calloc((size_t)n_ad + 1, sizeof *orig);
    for (int i = 0; i < n_ad; i++) {
        orig[i] = i;
        for (int j = 0; j < i; j++)
            if (!strcmp(ads[j].dir, ads[i].dir)) {
                orig[i] = j;
                break;
            }
        if (orig[i] != i || !strcmp(ads[i].dir, "none")) continue;
        double t_load = now_s();
        int lrc = peft_load(ads[i].dir, m, NULL, &err, &ads[i].a);
        load_s += now_s() - t_load;
        if (lrc != 0) {
            /* free what was loaded, so leak checkers running this tool see only real leaks */
            fprintf(stderr, "lr-generate: %s\n", err.msg);
            for (int j = 0; j < i; j++)
                peft_free(ads[j].a);
            free(ads);
            free(orig);
            for (int j = 0; j < n_req; j++)
                free(reqs[j].prompt);
            free(reqs);
            lr_model_free(m);
            return 1;
        }
        if (ads[i].a->max_rank > max_rank) max_rank = ads[i].a->max_rank;
    }
    const void **req_ad = calloc((size_t)n_req + 1, sizeof *req_ad);
    lora_set *mix = NULL;
    if (per_prompt) {
        for (int i = 0; i < n_req; i++) {
            const peft_adapter *one = ads[orig[i]].a;
            if (!one) continue;
            int same = -1;
            for (int j = 0; j < i && same < 0; j++)
                if (orig[j] == orig[i] && ads[j].scale == ads[i].scale && ads[j].set) same = j;
            if (same >= 0) {
                req_ad[i] = ads[same].set;
                continue;
            }
            if (lora_set_create(m, &one, &ads[i].scale, 1, &err, &ads[i].set) != 0) {
                fprintf(stderr, "lr-generate: %s\n", err.msg);
                return 1;
            }
            req_ad[i] = ads[i].set;
        }
    } else if (n_ad > 0) {
        const peft_adapter *list[GEN_MAX_ADAPTERS];
        float sc[GEN_MAX_ADAPTERS];
        int k = 0;
        for (int i = 0; i < n_ad; i++)
            if (ads[orig[i]].a) {
                list[k] = ads[orig[i]].a;
                sc[k++] = ads[i].scale;
            }
        if (k > 0 && lora_set_create(m, list, sc, k, &err, &mix) != 0) {
            fprintf(stderr, "lr-generate: %s\n", err.msg);
            return 1;
        }
        for (int i = 0; i < n_req; i++)
            req_ad[i] = mix;
    }
    free(orig);
    eng_delta_ops ops;
    lora_ops(m, max_rank, &ops);
    eng_params ep;
    memset(&ep, 0, sizeof ep);
    ep.model = m;
    if (n_ad > 0) ep.delta = &ops;
    ep.threads = threads;
    ep.max_batch_tokens = max_batch;
    ep.max_seqs = n_req > 64 ? n_req : 64;
    ep.max_queue = n_req + 1;
    if (kv_mb > 0) ep.kv_cache_bytes = (int64_t)(kv_mb * 1024 * 1024);
    eng_engine *e = NULL;
    if (eng_create(&ep, &err, &e) != 0) {
        fprintf(stderr, "lr-generate: %s\n", err.msg);
        lr_model_free(m);
        return 1;
    }
    for (int i = 0; i < n_req; i++) {
        gen_req *r = &reqs[i];
        r->tokens = calloc((size_t)g_max_tokens, sizeof(int32_t));
        r->lp = calloc((size_t)g_max_tokens, sizeof(float));
        r->top_ids = calloc((size_t)g_max_tokens * (g_top + 1), sizeof(int32_t));
        r->top_lp = calloc((size_t)g_max_tokens * (g_top + 1), sizeof(float));
    }
    int rc = 0;
    double t_gen = now_s();
    /* --batch: every prompt is queued before the first pass, whenever this thread runs */
    if (batch) eng_hold(e, 1);
    for (int i = 0; i < n_req && rc == 0; i++) {
        eng_request_params q;
        memset(&q, 0, sizeof q);
        q.prompt = reqs[i].prompt;
        q.n_prompt = reqs[i].n_prompt;
        q.sampling.temperature = 0;
        q.sampling.top_p = 1;
        q.sampling.repetition_penalty = 1;
        q.max_tokens = g_max_tokens;
        q.ignore_eos = 1;
        q.top_logprobs = g_top;
        q.cb = on_event;
        q.user = &reqs[i];
        q.adapter = req_ad[i];
        if (eng_submit(e, &q, &err, NULL) != 0) {
            fprintf(stderr, "lr-generate: prompt %d: %s\n", i + 1, err.msg);
            rc = 1;
            break;
        }
        if (!batch) wait_done(&reqs[i]);
    }
    if (batch) eng_hold(e, 0);
    if (rc == 0) {
        for (int i = 0; i < n_req; i++) {
            wait_done(&reqs[i]);
            if (reqs[i].finish == ENG_FINISH_ERROR || reqs[i].finish == ENG_FINISH_ABORT) {
                fprintf(stderr, "lr-generate: prompt %d failed: %s\n", i + 1,
                        reqs[i].error[0] ? reqs[i].error : "aborted");
                rc = 1;
            }
        }
    }
    t_gen = now_s() - t_gen;
    if (rc == 0)
        for (int i = 0; i < n_req; i++)
            print_result(&reqs[i]);
    fflush(stdout);
    /* Scheduler figures on stderr, for tests that must prove preemption or chunking happened. */
    eng_stats st;
    eng_get_stats(e, &st);
    fprintf(stderr,
            "lr-generate: stats steps=%llu prompt_tokens=%llu generated_tokens=%llu "
            "preemptions=%llu kv_blocks_total=%d mixed_adapter_steps=%llu "
            "max_adapters_in_step=%llu gen_seconds=%.4f adapter_load_seconds=%.4f\n",
            (unsigned long long)st.steps, (unsigned long long)st.prompt_tokens,
            (unsigned long long)st.generated_tokens, (unsigned long long)st.preemptions,
            st.kv_blocks_total, (unsigned long long)st.mixed_adapter_steps,
            (unsigned long long)st.max_adapters_in_step, t_gen, load_s);
    eng_destroy(e);
    lora_set_destroy(mix);
    for (int i = 0; i < n_ad; i++) {
        lora_set_destroy(ads[i].set);
        peft_free(ads[i].a);
    }
    free(ads);
    free(req_ad);
    lr_model_free(m);
    for (int i = 0; i < n_req; i++) {
        free(reqs[i].prompt);
        free(reqs[i].tokens);
        free(reqs[i].lp);
        free(reqs[i].top_ids);
        free(reqs[i].top_lp);
    }
    free(reqs);
    return rc;
}
