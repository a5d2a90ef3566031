/* bench.c — lr-bench: decode, batching, prefill, adapter and server figures for a SmolLM-135M
 * shaped model, printed next to the machine's own limits measured in the same run.
 *
 *   lr-bench --root DIR [--lorad PATH] [--threads N] [--tokens N] [--reps N] [--dtypes f32,bf16]
 *            [--only single,long,streams,prefill,load,server]
 *
 * DIR holds smol135/ (F32), smol135_bf16/ and adapters/b0..b7 (tests/bench/gen_bench.py). The
 * engine runs in this process exactly as lorad runs it (eng_create + lora_ops); every figure is
 * a median of --reps runs, and the ratios the issue asks for are computed from runs made side by
 * side (base and adapter alternate). Not a pass/fail test: it prints, and exits 0 unless
 * something could not run at all. Test tool, not product: errors exit with a message.
 */
#include <cblas.h>
#include <errno.h>
#include <fcntl.h>
#include <immintrin.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "kernels.h"
#include "lora.h"
#include "model.h"
#include "peft.h"
#include "peft_store.h"

#define B_ADAPTERS 8
#define B_RESERVE_MB 256 /* lorad's --adapter-reserve-mb default */
#define B_MAX_STREAMS 16

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

static void die(const char *what, const lr_error *err)
{
    fprintf(stderr, "lr-bench: %s: %s\n", what, err ? err->msg : strerror(errno));
    exit(1);
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The q-quantile (0..1) of v[n] by nearest rank; sorts v. */
static double quantile(double *v, int n, double q)
{
    if (n <= 0) return NAN;
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    int i = (int)ceil(q * n) - 1;
    if (i < 0) i = 0;
    if (i >= n) i = n - 1;
    return v[i];
}

static double median(double *v, int n)
{
    return quantile(v, n, 0.5);
}

/* Resident set size in MiB (VmRSS of /proc/self/status). */
static double rss_mib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) kb = atof(line + 6);
    if (f) fclose(f);
    return kb / 1024.0;
}

/* ------------------------------------------------------------------------------------------ */
/* Machine limits                                                                              */
/* ------------------------------------------------------------------------------------------ */

typedef struct bw_job {
    const float *buf;
    int64_t n;
    float sink[64];
    double cpu[64]; /* thread CPU seconds of each slice */
} bw_job;

static double thread_cpu_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

static double proc_cpu_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

/* Sum of n floats read block by block (64 KiB), each block as 16 interleaved 4 KiB streams, 64
 * bytes of each per step: a single sequential stream leaves the memory system idle between
 * prefetches on this kind of machine (one stream measured ~31 GB/s where a weight matrix read
 * 16 rows at a time streamed at ~43), and the ceiling must be the most the memory delivers, not
 * what one loop shape gets. AVX-512 when the CPU has it; prefetches one block ahead (a prefetch
 * past the buffer's end does not fault). */
__attribute__((target("avx512f"))) static float read16_avx512(const float *p, int64_t n)
{
    enum { S = 1024 }; /* floats per stream in a block */
    __m512 acc[16];
    for (int s = 0; s < 16; s++)
        acc[s] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 * S <= n; i += 16 * S)
        for (int k = 0; k < S; k += 16)
            for (int s = 0; s < 16; s++) {
                /* the same line of the next block: as the matmul prefetches its next tile */
                _mm_prefetch((const char *)(p + i + 16 * S + s * S + k), _MM_HINT_T0);
                acc[s] = _mm512_add_ps(acc[s], _mm512_loadu_ps(p + i + s * S + k));
            }
    float r = 0;
    for (int s = 0; s < 16; s++)
        r += _mm512_reduce_add_ps(acc[s]);
    for (; i < n; i++)
        r += p[i];
    return r;
}

/* Each thread reads its slice once, as one stream (kern_dot_f32(a, a): the second operand is the
 * same cache line) or as 16 streams (read16); the bytes moved are the slice's bytes. The
 * slice's thread CPU time is kept too: on a shared machine a thread that is descheduled
 * mid-slice makes the wall time say nothing about the memory system. */
static int g_bw_streams = 1;

static void bw_task(void *ctx, int ith, int nth)
{
    bw_job *j = ctx;
    int64_t a = j->n * ith / nth, b = j->n * (ith + 1) / nth;
    double t = thread_cpu_s();
    if (g_bw_streams == 16)
        j->sink[ith % 64] += read16_avx512(j->buf + a, b - a);
    else
        j->sink[ith % 64] += kern_dot_f32(j->buf + a, j->buf + a, b - a);
    j->cpu[ith % 64] = thread_cpu_s() - t;
}

/* Read bandwidth in GB/s over a 512 MiB buffer with the pool's threads: best of reps, from
 * the wall time and from the slowest thread's CPU time (*cpu_gbs). */
static double bench_bandwidth(kern_pool *pool, int reps, double *cpu_gbs)
{
    int64_t n = (int64_t)512 << 18; /* 512 MiB of floats */
    float *buf = malloc((size_t)n * sizeof(float));
    if (!buf) die("bandwidth buffer", NULL);
    for (int64_t i = 0; i < n; i++)
        buf[i] = (float)(i & 7) * 0.125f;
    bw_job j = {buf, n, {0}, {0}};
    double best = 0;
    *cpu_gbs = 0;
    int nth = kern_pool_threads(pool);
    for (int r = 0; r < 2 * (reps + 1); r++) {
        /* one stream and 16 streams alternate; the best of all runs counts */
        g_bw_streams = (r & 1) && kern_get_isa() == KERN_ISA_AVX512 ? 16 : 1;
        double t = now_s();
        kern_pool_run(pool, bw_task, &j);
        t = now_s() - t;
        double gbs = (double)n * 4 / t / 1e9, mx = 0;
        for (int i = 0; i < nth && i < 64; i++)
            if (j.cpu[i] > mx) mx = j.cpu[i];
        if (r < 2) continue; /* the first passes also fault pages in */
        if (gbs > best) best = gbs;
        if (mx > 0 && (double)n * 4 / mx / 1e9 > *cpu_gbs) *cpu_gbs = (double)n * 4 / mx / 1e9;
    }
    free(buf);
    return best;
}

/* OpenBLAS sgemm GFLOP/s on a 1024³ problem with `threads` OpenBLAS threads: best of reps, by
 * wall time and (*cpu_gf) by process CPU time / threads. */
static double bench_sgemm(int reps, int threads, double *cpu_gf)
{
    openblas_set_num_threads(threads);
    *cpu_gf = 0;
    int n = 1024;
    float *a = malloc(sizeof(float) * n * n), *b = malloc(sizeof(float) * n * n);
    float *c = malloc(sizeof(float) * n * n);
    if (!a || !b || !c) die("sgemm buffers", NULL);
    for (int i = 0; i < n * n; i++)
        a[i] = (float)(i % 13) * 0.01f, b[i] = (float)(i % 7) * 0.02f;
    double best = 0;
    for (int r = 0; r < reps + 1; r++) {
        double t = now_s(), c0 = proc_cpu_s();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        t = now_s() - t;
        double gf = 2.0 * n * n * n / t / 1e9;
        double gc = 2.0 * n * n * n / ((proc_cpu_s() - c0) / threads) / 1e9;
        if (r > 0 && gf > best) best = gf;
        if (r > 0 && gc > *cpu_gf) *cpu_gf = gc;
    }
    free(a);
    free(b);
    free(c);
    return best;
}

/* ------------------------------------------------------------------------------------------ */
/* Requests                                                                                    */
/* ------------------------------------------------------------------------------------------ */

typedef struct b_req {
    double t_submit;
    double *t_tok; /* [max_tokens] time of each token event */
    int n_tok;
    int done;
} b_req;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;
static int g_cap;

static int on_event(void *user, const eng_event *ev)
{
    b_req *r = user;
    if (ev->token >= 0 && r->n_tok < g_cap) r->t_tok[r->n_tok++] = now_s();
    if (ev->finish != ENG_FINISH_NONE) {
        pthread_mutex_lock(&g_mu);
        r->done = 1;
        pthread_cond_broadcast(&g_cv);
        pthread_mutex_unlock(&g_mu);
    }
    return 0;
}

static void wait_all(b_req *r, int n)
{
    pthread_mutex_lock(&g_mu);
    for (int i = 0; i < n; i++)
        while (!r[i].done)
            pthread_cond_wait(&g_cv, &g_mu);
    pthread_mutex_unlock(&g_mu);
}

static double g_run_cpu; /* process CPU seconds of the last run_reqs */

/* Submit n requests (prompt i: n_prompt ids from a seed, adapter ad[i]) and wait for all. */
static void run_reqs(eng_engine *e, b_req *r, int n, int n_prompt, int max_tokens,
                     const void *const *ad)
{
    int32_t *prompt = malloc(sizeof(int32_t) * (size_t)n_prompt);
    double c0 = proc_cpu_s();
    lr_error err;
    lr_error_clear(&err);
    for (int i = 0; i < n; i++) {
        for (int k = 0; k < n_prompt; k++)
            prompt[k] = (int32_t)(300 + (k * 37 + i * 101) % 800);
        r[i].n_tok = 0;
        r[i].done = 0;
        eng_request_params q;
        memset(&q, 0, sizeof q);
        q.prompt = prompt;
        q.n_prompt = n_prompt;
        q.sampling.top_p = 1;
        q.sampling.repetition_penalty = 1;
        q.max_tokens = max_tokens;
        q.ignore_eos = 1;
        q.adapter = ad ? ad[i] : NULL;
        q.cb = on_event;
        q.user = &r[i];
        r[i].t_submit = now_s();
        if (eng_submit(e, &q, &err, NULL) != 0) die("submit", &err);
    }
    free(prompt);
    wait_all(r, n);
    g_run_cpu = proc_cpu_s() - c0;
}

/* Decode figures of one run of n streams: aggregate tok/s over the decode phase (after every
 * stream's first token) and the inter-token latencies appended to lat. */
static double decode_rate(const b_req *r, int n, double *lat, int *n_lat)
{
    double t0 = 0, t1 = 0;
    int toks = 0;
    for (int i = 0; i < n; i++) {
        if (r[i].n_tok < 2) continue;
        if (r[i].t_tok[0] > t0) t0 = r[i].t_tok[0];
        if (r[i].t_tok[r[i].n_tok - 1] > t1) t1 = r[i].t_tok[r[i].n_tok - 1];
        for (int k = 1; k < r[i].n_tok; k++)
            if (lat) lat[(*n_lat)++] = r[i].t_tok[k] - r[i].t_tok[k - 1];
    }
    /* Tokens produced after the last stream's first token, over that span. */
    for (int i = 0; i < n; i++)
        for (int k = 0; k < r[i].n_tok; k++)
            if (r[i].t_tok[k] > t0) toks++;
    return t1 > t0 ? toks / (t1 - t0) : 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Server                                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* POST body to 127.0.0.1:port/v1/completions; returns the seconds until the whole response is
 * read (Content-Length), or -1. */
static double http_post(int port, const char *body)
{
    char req[2048];
    int n = snprintf(req, sizeof req,
                     "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                     "application/json\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     strlen(body), body);
    double t = now_s();
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(0x7f000001);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        if (fd >= 0) close(fd);
        return -1;
    }
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return -1;
    }
    char buf[8192];
    size_t got = 0;
    ssize_t k;
    int ok = 0;
    while ((k = read(fd, buf + got, sizeof buf - 1 - got)) > 0) {
        got += (size_t)k;
        if (got >= sizeof buf - 1) got = 0;
    }
    buf[got] = 0;
    ok = strstr(buf, "200 OK") != NULL || strstr(buf, "\"choices\"") != NULL;
    t = now_s() - t;
    close(fd);
    return ok ? t : -1;
}

/* Start lorad on a free port (stderr to a temp file we poll for "listening on"); returns its
 * pid and the port, or -1. */
static pid_t start_lorad(const char *lorad, const char *model, int threads, int *port)
{
    char logf[] = "/tmp/lr-bench-lorad-XXXXXX";
    int lfd = mkstemp(logf);
    if (lfd < 0) return -1;
    char th[16];
    snprintf(th, sizeof th, "%d", threads);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(lfd, 2);
        int dn = open("/dev/null", O_WRONLY);
        if (dn >= 0) dup2(dn, 1);
        /* No adapter reserve: its background pre-faulting would run during the measurements. */
        execl(lorad, lorad, "--model", model, "--port", "0", "--threads", th, "--log-level", "warn",
              "--adapter-reserve-mb", "0", (char *)NULL);
        _exit(127);
    }
    close(lfd);
    *port = -1;
    for (int i = 0; i < 600 && *port < 0; i++) {
        usleep(50000);
        FILE *f = fopen(logf, "r");
        char line[512];
        while (f && fgets(line, sizeof line, f)) {
            char *p = strstr(line, "listening on http://");
            char *c = p ? strrchr(line, ':') : NULL;
            if (c) *port = atoi(c + 1);
        }
        if (f) fclose(f);
        if (waitpid(pid, NULL, WNOHANG) == pid) break;
    }
    unlink(logf);
    if (*port < 0) {
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
        return -1;
    }
    return pid;
}

/* ------------------------------------------------------------------------------------------ */
/* One model                                                                                   */
/* ------------------------------------------------------------------------------------------ */

typedef struct bench_cfg {
    const char *root, *lorad;
    const char *only; /* comma-separated sections to run (NULL: all) — for A/B runs of one figure */
    int threads, tokens, reps;
    double bw_gbs, sgemm_gflops, sgemm_cpu;
} bench_cfg;

/* Bytes of weights read per decoded token: every layer matrix, the norms and the lm_head (one
 * embedding row is negligible). */
static double weight_bytes(const lr_model *m)
{
    double b = 0;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const lr_layer *L = &m->layers[l];
        const lr_mat *ms[] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
        for (int i = 0; i < 7; i++)
            b += (double)ms[i]->rows * ms[i]->cols * (ms[i]->dtype == LR_DT_F32 ? 4 : 2);
        b += 2.0 * m->cfg.hidden * 4;
    }
    const lr_mat *h = &m->lm_head;
    return b + (double)h->rows * h->cols * (h->dtype == LR_DT_F32 ? 4 : 2);
}

/* FLOPs of a prefill of n tokens: the linear layers (2·n·params), the causal attention
 * (2 products of n²/2 · nH·hd each per layer) and one lm_head row. */
static double prefill_flops(const lr_model *m, int n)
{
    const lr_config *c = &m->cfg;
    double lin = 0;
    const lr_layer *L = &m->layers[0];
    const lr_mat *ms[] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
    for (int i = 0; i < 7; i++)
        lin += (double)ms[i]->rows * ms[i]->cols;
    double att = 2.0 * 2.0 * ((double)n * (n + 1) / 2) * c->n_heads * c->head_dim;
    return c->n_layers * (2.0 * n * lin + att) + 2.0 * c->vocab * c->hidden;
}

/* Whether section `name` runs (--only). */
static int want(const bench_cfg *bc, const char *name)
{
    if (!bc->only) return 1;
    size_t n = strlen(name);
    for (const char *p = bc->only; (p = strstr(p, name)) != NULL; p += n)
        if ((p == bc->only || p[-1] == ',') && (p[n] == 0 || p[n] == ',')) return 1;
    return 0;
}

static void bench_model(const bench_cfg *bc, const char *name, int is_f32)
{
    char dir[4096], adir[4096];
    snprintf(dir, sizeof dir, "%s/%s", bc->root, name);
    lr_error err;
    lr_error_clear(&err);
    double rss0 = rss_mib();
    lr_model *m = NULL;
    if (lr_model_load(dir, &err, &m) != 0) die("model", &err);
    double rss_model = rss_mib() - rss0;

    /* The adapter arena, as lorad makes it at startup (--adapter-reserve-mb; there in a
     * background thread, here synchronously and timed). Once per process: a later section finds
     * it in the pool again, as a long-running daemon would. */
    ps_stats pst;
    ps_get_stats(&pst);
    if (pst.reserved == 0) {
        double t = now_s();
        int rc = ps_reserve((size_t)B_RESERVE_MB << 20);
        if (rc)
            printf("[%s] adapter reserve %d MiB FAILED (%s): loads below map fresh memory\n", name,
                   B_RESERVE_MB, lr_strerror(rc));
        else
            printf("[%s] adapter reserve %d MiB pre-faulted in %.1f ms (daemon startup, "
                   "background)\n",
                   name, B_RESERVE_MB, (now_s() - t) * 1e3);
    } else {
        printf("[%s] adapter reserve: the %zu MiB arena made earlier in this process (%zu MiB "
               "free)\n",
               name, pst.reserved >> 20, pst.pool_bytes >> 20);
    }

    /* Adapters: first a warm-up load (page cache; into the arena and back), then the 8 timed
     * first loads, into reserved memory. */
    peft_adapter *ad[B_ADAPTERS] = {0};
    double load_t[B_ADAPTERS];
    for (int i = 0; i < B_ADAPTERS; i++) {
        snprintf(adir, sizeof adir, "%s/adapters/b%d", bc->root, i);
        peft_adapter *tmp = NULL;
        if (peft_load(adir, m, NULL, &err, &tmp) != 0) die("adapter", &err);
        peft_free(tmp);
    }
    double rss_before_ad = rss_mib();
    ps_get_stats(&pst);
    size_t ps_before = pst.in_use;
    for (int i = 0; i < B_ADAPTERS; i++) {
        snprintf(adir, sizeof adir, "%s/adapters/b%d", bc->root, i);
        double t = now_s();
        if (peft_load(adir, m, NULL, &err, &ad[i]) != 0) die("adapter", &err);
        load_t[i] = now_s() - t;
    }
    /* Memory per adapter: its own peft_store regions (file bytes and converted tensors). The
     * RSS difference says little now: the loads land in memory the reserve already made
     * resident. */
    ps_get_stats(&pst);
    double ps_per_ad = (double)(pst.in_use - ps_before) / B_ADAPTERS / 1048576.0;
    double rss_per_ad = (rss_mib() - rss_before_ad) / B_ADAPTERS;
    double ad_mib = ad[0]->bytes / 1048576.0;
    lora_set *set[B_ADAPTERS];
    int max_rank = 0;
    for (int i = 0; i < B_ADAPTERS; i++) {
        const peft_adapter *one = ad[i];
        if (lora_set_create(m, &one, NULL, 1, &err, &set[i]) != 0) die("lora set", &err);
        if (ad[i]->max_rank > max_rank) max_rank = ad[i]->max_rank;
    }
    eng_delta_ops ops;
    lora_ops(m, 64, &ops);
    eng_params ep;
    memset(&ep, 0, sizeof ep);
    ep.model = m;
    ep.delta = &ops;
    ep.threads = bc->threads;
    ep.max_batch_tokens = 512;
    ep.max_seqs = 64;
    ep.max_queue = 64;
    ep.kv_resident = 1; /* as lorad makes it */
    eng_engine *e = NULL;
    if (eng_create(&ep, &err, &e) != 0) die("engine", &err);
    double rss_total = rss_mib();

    int N = bc->tokens, R = bc->reps;
    g_cap = N > 2 ? N : 2;
    b_req r[B_MAX_STREAMS];
    for (int i = 0; i < B_MAX_STREAMS; i++)
        r[i].t_tok = calloc((size_t)g_cap, sizeof(double));
    const void *same[B_MAX_STREAMS], *diff[B_MAX_STREAMS];
    for (int i = 0; i < B_MAX_STREAMS; i++)
        same[i] = set[0], diff[i] = set[i % B_ADAPTERS];
    /* 16 different adapters: the 8 files twice, as 16 distinct sets (the engine batches by set
     * pointer, so these are 16 adapters to it). */
    lora_set *set2[B_ADAPTERS];
    for (int i = 0; i < B_ADAPTERS; i++) {
        const peft_adapter *one = ad[i];
        if (lora_set_create(m, &one, NULL, 1, &err, &set2[i]) != 0) die("lora set", &err);
    }
    for (int i = B_ADAPTERS; i < B_MAX_STREAMS; i++)
        diff[i] = set2[i - B_ADAPTERS];

    /* Warm-up: the largest run once, so the KV blocks every figure below uses have been touched
     * (the pool is calloc'd; its pages fault in on first use, as in a daemon's first minutes)
     * and no figure pays for them — before this, the first measured run (8 base streams) did. */
    run_reqs(e, r, B_MAX_STREAMS, 8, N, diff);

    /* Single stream, base and one adapter alternating, RS pairs back to back. The machine's
     * memory speed drifts by tens of percent within a minute, so the ratio is the median of the
     * pairs' ratios (each pair measured within a second), not a ratio of two medians. */
    int RS = 2 * R + 1;
    double *base1 = calloc((size_t)RS, sizeof(double)), *lora1 = calloc((size_t)RS, sizeof(double));
    /* CPU-normalised rates: tokens over (process CPU time / threads) — what the wall time would
     * be if our threads had the cores to themselves (idle pool threads spin briefly between
     * runs, so this does not hide serial parts). The machine is shared with other builds, so
     * the targets are judged on these; wall figures are printed next to them. */
    double *cpu_b = calloc((size_t)RS, sizeof(double)), *cpu_l = calloc((size_t)RS, sizeof(double));
    double *pr = calloc((size_t)RS, sizeof(double)), *prw = calloc((size_t)RS, sizeof(double));
    int TH = bc->threads;
    for (int k = 0; k < RS && want(bc, "single"); k++) {
        run_reqs(e, r, 1, 8, N, NULL);
        cpu_b[k] = N * TH / g_run_cpu;
        base1[k] = decode_rate(r, 1, NULL, NULL);
        run_reqs(e, r, 1, 8, N, same);
        cpu_l[k] = N * TH / g_run_cpu;
        lora1[k] = decode_rate(r, 1, NULL, NULL);
        pr[k] = cpu_l[k] / cpu_b[k];
        prw[k] = lora1[k] / base1[k];
    }
    double tb = median(base1, RS), tl = median(lora1, RS);
    double cb = median(cpu_b, RS), cl = median(cpu_l, RS);
    double rl = median(pr, RS), rlw = median(prw, RS);
    double wb = weight_bytes(m);
    double ceil_tps = bc->bw_gbs * 1e9 / wb;
    printf("[%s] weights/token %.1f MB; model RSS %.0f MiB\n", name, wb / 1e6, rss_model);
    if (want(bc, "single"))
        printf("[%s] decode 1 stream: base %.2f tok/s, 1 adapter %.2f tok/s (%.1f%% of base: "
               "median of %d pairs) CPU-normalised; wall %.2f / %.2f tok/s (%.1f%%)\n",
               name, cb, cl, 100 * rl, RS, tb, tl, 100 * rlw);
    if (want(bc, "single"))
        printf("[%s] bandwidth ceiling %.2f tok/s; base = %.1f%% of it (wall: %.1f%%)\n", name,
               ceil_tps, 100 * cb / ceil_tps, 100 * tb / ceil_tps);
    free(cpu_b);
    free(cpu_l);
    free(pr);
    free(prw);

    /* Long contexts: one stream decoding after a long prompt (split decoding from 1024 keys on),
     * wall rate after the first token, against the 8-token prompt's. */
    static const int long_prompts[2] = {1024, 1800};
    for (int li = 0; li < 2 && want(bc, "long"); li++) {
        int L = long_prompts[li];
        if (L + N + 1 > m->cfg.max_pos) continue;
        double *v = calloc((size_t)R, sizeof(double));
        for (int k = 0; k < R; k++) {
            run_reqs(e, r, 1, L, N, NULL);
            v[k] = decode_rate(r, 1, NULL, NULL);
        }
        double lw = median(v, R);
        printf("[%s] decode 1 stream after a %d-token prompt: %.2f tok/s wall", name, L, lw);
        if (tb > 0) printf(" (%.1f%% of the rate after 8 tokens)", 100 * lw / tb);
        printf("\n");
        free(v);
    }

    /* Concurrent streams. */
    static const char *kind[3] = {"all base", "same adapter", "different adapters"};
    /* One base stream, then base, same adapter and different adapters in turn within each
     * round, so all meet the same machine; the ratios are medians of the rounds' ratios. */
    size_t lat_cap = (size_t)B_MAX_STREAMS * g_cap * R;
    double *lat = malloc(sizeof(double) * lat_cap * 3);
    double *vs = calloc((size_t)R * 3, sizeof(double));
    double *vcs = calloc((size_t)R * 3, sizeof(double));
    double *rd = calloc((size_t)R, sizeof(double)), *rs = calloc((size_t)R, sizeof(double));
    double *one = calloc((size_t)R, sizeof(double)), *x1 = calloc((size_t)R * 3, sizeof(double));
    for (int ns = 8; ns <= 16 && want(bc, "streams"); ns += 8) {
        int n_lat[3] = {0, 0, 0};
        for (int k = 0; k < R; k++) {
            run_reqs(e, r, 1, 8, N, NULL); /* the one-stream rate these are multiples of */
            one[k] = N * TH / g_run_cpu;
            for (int kd = 0; kd < 3; kd++) {
                const void *const *ads = kd == 0 ? NULL : kd == 1 ? same : diff;
                run_reqs(e, r, ns, 8, N, ads);
                vs[kd * R + k] = decode_rate(r, ns, lat + kd * lat_cap, &n_lat[kd]);
                vcs[kd * R + k] = (double)ns * N * TH / g_run_cpu;
                x1[kd * R + k] = vcs[kd * R + k] / one[k];
            }
            rd[k] = vcs[2 * R + k] / vcs[k];
            rs[k] = vcs[R + k] / vcs[k];
        }
        for (int kd = 0; kd < 3; kd++) {
            double agg = median(vcs + kd * R, R), aw = median(vs + kd * R, R);
            double p50 = quantile(lat + kd * lat_cap, n_lat[kd], 0.5);
            double p99 = quantile(lat + kd * lat_cap, n_lat[kd], 0.99);
            printf("[%s] %2d streams, %-18s: %7.2f tok/s aggregate CPU-normalised (%.2fx one "
                   "stream), wall %.2f tok/s, per-token wall p50 %.1f ms p99 %.1f ms\n",
                   name, ns, kind[kd], agg, median(x1 + kd * R, R), aw, p50 * 1e3, p99 * 1e3);
        }
        printf("[%s] %2d streams: different adapters = %.1f%% of base, same adapter = %.1f%% of "
               "base (medians of %d rounds' ratios; each round also ran the one stream the "
               "multiples above are of, %.2f tok/s median)\n",
               name, ns, 100 * median(rd, R), 100 * median(rs, R), R, median(one, R));
    }
    free(lat);
    free(vs);
    free(vcs);
    free(rd);
    free(rs);
    free(one);
    free(x1);

    /* Prefill of 512 tokens (one forward pass of 512 rows). */
    if (want(bc, "prefill")) {
        double *pf = calloc((size_t)R, sizeof(double)), *pfc = calloc((size_t)R, sizeof(double));
        for (int k = 0; k < R; k++) {
            run_reqs(e, r, 1, 512, 1, NULL);
            pf[k] = r[0].t_tok[0] - r[0].t_submit;
            pfc[k] = g_run_cpu / TH;
        }
        double pt = median(pf, R), ptc = median(pfc, R);
        double gfl = prefill_flops(m, 512) / ptc / 1e9;
        printf(
            "[%s] prefill 512: %.1f tok/s, %.1f GFLOP/s = %.1f%% of sgemm peak (CPU-normalised); "
            "wall %.1f tok/s = %.1f%%\n",
            name, 512 / ptc, gfl, 100 * gfl / bc->sgemm_cpu, 512 / pt,
            100 * prefill_flops(m, 512) / pt / 1e9 / bc->sgemm_gflops);
        free(pf);
        free(pfc);
    }

    /* Adapter cold load, and TTFT with a cold adapter (load + set + first token) vs a warm one. */
    if (want(bc, "load")) {
        double lt = median(load_t, B_ADAPTERS);
        double *cold = calloc((size_t)R, sizeof(double)), *warm = calloc((size_t)R, sizeof(double));
        double *reload = calloc((size_t)R, sizeof(double));
        for (int k = 0; k < R; k++) {
            snprintf(adir, sizeof adir, "%s/adapters/b%d", bc->root, k % B_ADAPTERS);
            double t = now_s();
            peft_adapter *a = NULL;
            lora_set *s = NULL;
            if (peft_load(adir, m, NULL, &err, &a) != 0) die("adapter", &err);
            reload[k] = now_s() - t;
            const peft_adapter *one = a;
            if (lora_set_create(m, &one, NULL, 1, &err, &s) != 0) die("lora set", &err);
            const void *sp[1] = {s};
            run_reqs(e, r, 1, 16, 1, sp);
            cold[k] = r[0].t_tok[0] - t;
            lora_set_destroy(s);
            peft_free(a);
            run_reqs(e, r, 1, 16, 1, same);
            warm[k] = r[0].t_tok[0] - r[0].t_submit;
        }
        /* For honesty: loads into memory the process never touched (the pool bypassed), what every
         * first load cost before the reserve. */
        double *fresh = calloc((size_t)R, sizeof(double));
        ps_pool_bypass(1);
        for (int k = 0; k < R; k++) {
            snprintf(adir, sizeof adir, "%s/adapters/b%d", bc->root, k % B_ADAPTERS);
            peft_adapter *a = NULL;
            double t = now_s();
            if (peft_load(adir, m, NULL, &err, &a) != 0) die("adapter", &err);
            fresh[k] = now_s() - t;
            peft_free(a);
        }
        ps_pool_bypass(0);
        printf(
            "[%s] adapter cold load (page cache warm, rank %d, 7 modules x %d layers, %.1f MiB): "
            "%.1f ms median of the %d first loads (into reserved memory), %.1f ms after an adapter "
            "was unloaded (released memory reused), %.1f ms into never-touched memory (pool "
            "bypassed, as without a reserve)\n",
            name, max_rank, m->cfg.n_layers, ad_mib, lt * 1e3, B_ADAPTERS, median(reload, R) * 1e3,
            median(fresh, R) * 1e3);
        free(fresh);
        printf("[%s] TTFT 16-token prompt: cold adapter %.1f ms, warm adapter %.1f ms\n", name,
               median(cold, R) * 1e3, median(warm, R) * 1e3);
        printf(
            "[%s] RSS total %.0f MiB (engine with its resident 256 MiB KV pool + model + adapter "
            "reserve + %d adapters); per loaded adapter %.1f MiB of regions (RSS grew %.1f MiB per "
            "adapter: the loads landed in the "
            "pre-faulted reserve)\n",
            name, rss_total, B_ADAPTERS, ps_per_ad, rss_per_ad);
        free(cold);
        free(reload);
        free(warm);
    }

    /* Server overhead: a 1-token request over HTTP vs the engine's own submit-to-token time,
     * the two alternating (R·4 pairs; the overhead is the median of the pairs' differences). */
    if (is_f32 && bc->lorad && want(bc, "server")) {
        int port, np = R * 4;
        pid_t pid = start_lorad(bc->lorad, dir, bc->threads, &port);
        if (pid < 0) {
            printf("[%s] server overhead: could not start %s\n", name, bc->lorad);
        } else {
            double *ht = calloc((size_t)np, sizeof(double));
            double *et = calloc((size_t)np, sizeof(double));
            double *dt = calloc((size_t)np, sizeof(double));
            int nh = 0;
            const char *body = "{\"model\": \"smol135\", \"prompt\": [300, 337, 374, 411], "
                               "\"max_tokens\": 1, \"temperature\": 0}";
            http_post(port, body); /* warm-up */
            for (int k = 0; k < np; k++) {
                run_reqs(e, r, 1, 4, 1, NULL);
                double t_eng = r[0].t_tok[0] - r[0].t_submit;
                double t = http_post(port, body);
                if (t < 0) continue;
                ht[nh] = t;
                et[nh] = t_eng;
                dt[nh++] = t - t_eng;
            }
            if (nh == 0) {
                printf("[%s] server overhead: every HTTP request failed\n", name);
            } else {
                double od = median(dt, nh);
                printf("[%s] server: 1-token request over HTTP %.2f ms, engine alone %.2f ms, "
                       "overhead %.2f ms (median of %d pairs' differences)\n",
                       name, median(ht, nh) * 1e3, median(et, nh) * 1e3, od * 1e3, nh);
            }
            free(ht);
            free(et);
            free(dt);
            kill(pid, SIGTERM);
            waitpid(pid, NULL, 0);
        }
    }

    eng_destroy(e);
    for (int i = 0; i < B_ADAPTERS; i++) {
        lora_set_destroy(set[i]);
        lora_set_destroy(set2[i]);
        peft_free(ad[i]);
    }
    for (int i = 0; i < B_MAX_STREAMS; i++)
        free(r[i].t_tok);
    free(base1);
    free(lora1);
    lr_model_free(m);
}

/* BF16 against F32 single-stream decode, both models loaded and their engines alternating
 * (2R+1 pairs, the ratio the median of the pairs' ratios): the two models' own sections run a
 * minute apart, too far for a ratio on a machine whose memory speed drifts. */
static void bench_dtype_pairs(const bench_cfg *bc)
{
    const char *names[2] = {"smol135", "smol135_bf16"};
    lr_model *m[2] = {NULL, NULL};
    eng_engine *e[2] = {NULL, NULL};
    lr_error err;
    lr_error_clear(&err);
    for (int i = 0; i < 2; i++) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/%s", bc->root, names[i]);
        if (lr_model_load(dir, &err, &m[i]) != 0) die("model", &err);
        eng_params ep;
        memset(&ep, 0, sizeof ep);
        ep.model = m[i];
        ep.threads = bc->threads;
        ep.max_batch_tokens = 512;
        ep.max_seqs = 8;
        ep.max_queue = 8;
        if (eng_create(&ep, &err, &e[i]) != 0) die("engine", &err);
    }
    int N = bc->tokens, RS = 2 * bc->reps + 1;
    g_cap = N > 2 ? N : 2;
    b_req r[1];
    r[0].t_tok = calloc((size_t)g_cap, sizeof(double));
    double *v[2], *pr = calloc((size_t)RS, sizeof(double));
    for (int i = 0; i < 2; i++)
        v[i] = calloc((size_t)RS, sizeof(double));
    run_reqs(e[0], r, 1, 8, N, NULL); /* warm-up: first-touch of each engine's KV blocks */
    run_reqs(e[1], r, 1, 8, N, NULL);
    for (int k = 0; k < RS; k++) {
        for (int i = 0; i < 2; i++) {
            run_reqs(e[i], r, 1, 8, N, NULL);
            v[i][k] = N * bc->threads / g_run_cpu;
        }
        pr[k] = v[1][k] / v[0][k];
    }
    printf("BF16 / F32 single-stream decode: %.2fx (median of %d pairs, engines alternating; "
           "F32 %.2f, BF16 %.2f tok/s medians) CPU-normalised\n",
           median(pr, RS), RS, median(v[0], RS), median(v[1], RS));
    for (int i = 0; i < 2; i++) {
        eng_destroy(e[i]);
        lr_model_free(m[i]);
        free(v[i]);
    }
    free(pr);
    free(r[0].t_tok);
}

int main(int argc, char **argv)
{
    bench_cfg bc = {NULL, NULL, NULL, 2, 48, 3, 0, 0, 0};
    const char *dtypes = "f32,bf16";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--root"))
            bc.root = argv[i + 1];
        else if (!strcmp(argv[i], "--lorad"))
            bc.lorad = argv[i + 1];
        else if (!strcmp(argv[i], "--threads"))
            bc.threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--tokens"))
            bc.tokens = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps"))
            bc.reps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--dtypes"))
            dtypes = argv[i + 1];
        else if (!strcmp(argv[i], "--only"))
            bc.only = argv[i + 1];
        else
            break;
    }
    if (!bc.root || bc.threads < 1 || bc.tokens < 4 || bc.reps < 1) {
        fprintf(stderr, "usage: lr-bench --root DIR [--lorad PATH] [--threads N] [--tokens N] "
                        "[--reps N] [--dtypes f32,bf16] [--only single,long,streams,prefill,"
                        "load,server]\n");
        return 2;
    }
    lr_error err;
    lr_error_clear(&err);
    kern_pool *pool = NULL;
    if (kern_pool_create(bc.threads, &err, &pool) != 0) die("pool", &err);
    printf("lr-bench: %d threads, ISA %s, %d tokens per stream, median of %d runs\n", bc.threads,
           kern_isa_name(kern_get_isa()), bc.tokens, bc.reps);
    double bw_cpu;
    double bw_wall = bench_bandwidth(pool, 5, &bw_cpu);
    kern_pool_destroy(pool);
    bc.sgemm_gflops = bench_sgemm(5, bc.threads, &bc.sgemm_cpu);
    openblas_set_num_threads(1); /* as the engine's pool sets it */
    /* The ceiling uses the larger of the two: a figure that is too high only makes our ratio
     * look worse, never better. */
    bc.bw_gbs = bw_cpu > bw_wall ? bw_cpu : bw_wall;
    printf("machine: read bandwidth %.2f GB/s (best of 1 and 16 streams per thread; wall %.2f, "
           "per-thread CPU time %.2f), "
           "OpenBLAS sgemm peak %.1f GFLOP/s CPU-normalised (wall %.1f; 1024^3, %d threads)\n",
           bc.bw_gbs, bw_wall, bw_cpu, bc.sgemm_cpu, bc.sgemm_gflops, bc.threads);
    fflush(stdout);
    if (strstr(dtypes, "f32")) bench_model(&bc, "smol135", 1);
    fflush(stdout);
    if (strstr(dtypes, "bf16")) bench_model(&bc, "smol135_bf16", 0);
    fflush(stdout);
    if (strstr(dtypes, "f32") && strstr(dtypes, "bf16") && want(&bc, "single"))
        bench_dtype_pairs(&bc);
    return 0;
}
