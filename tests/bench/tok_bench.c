/* tok_bench.c — tokenizer throughput: MB/s on ~10 MB of mixed text, and the worst cases.
 *
 * For each tokenizer directory (arguments, or every <name>/ under $LORAD_TOK_CACHE, default
 * tests/.cache/tok): build ~10 MB of text from the golden corpus strings (tests/data/tok) mixed
 * with generated prose (words, numbers, punctuation, accents, CJK, emoji, newlines), encode it
 * in ~2 KB documents and print MB/s; then time one 1 MB string of a single repeated character
 * for several characters (letter, space, newline, digit, punctuation, CJK) — these must stay
 * well under a second (no quadratic regex or BPE). Times are this thread's CPU time, so a busy
 * machine does not distort them much. Not pass/fail: it prints figures.
 */
#include <dirent.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "tokenizer.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts); /* CPU time: the machine may be shared */
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct text {
    char *p;
    size_t n, cap;
} text;

static void put(text *t, const char *s, size_t n)
{
    if (t->n + n + 1 > t->cap) {
        t->cap = (t->n + n + 1) * 2;
        t->p = realloc(t->p, t->cap);
        if (!t->p) {
            fprintf(stderr, "out of memory\n");
            exit(1);
        }
    }
    memcpy(t->p + t->n, s, n);
    t->n += n;
    t->p[t->n] = 0;
}

static uint64_t rng = 88172645463325252ull;
static unsigned rnd(unsigned n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (unsigned)(rng % n);
}

/* Golden corpus strings (if present) + generated prose, ~target bytes, valid UTF-8. */
static void build_corpus(text *t, size_t target)
{
    text corpus = {0};
    DIR *d = opendir("tests/data/tok");
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (strncmp(de->d_name, "golden_", 7)) continue;
        char path[600];
        snprintf(path, sizeof path, "tests/data/tok/%s", de->d_name);
        json_t *g = json_load_file(path, JSON_ALLOW_NUL, NULL);
        json_t *cases = json_object_get(g, "cases");
        for (size_t i = 0; i < json_array_size(cases); i++) {
            json_t *s = json_object_get(json_array_get(cases, i), "text");
            put(&corpus, json_string_value(s), json_string_length(s));
            put(&corpus, "\n", 1);
        }
        json_decref(g);
        break; /* one golden file holds the whole corpus */
    }
    if (d) closedir(d);
    static const char *words[] = {"the",
                                  "model",
                                  "adapter",
                                  "serving",
                                  "tokenizer",
                                  "request",
                                  "batch",
                                  "of",
                                  "and",
                                  "in",
                                  "Mixture",
                                  "experts",
                                  "LoRA",
                                  "weights",
                                  "is",
                                  "a",
                                  "to",
                                  "with",
                                  "without",
                                  "café",
                                  "naïve",
                                  "über",
                                  "Straße",
                                  "東京",
                                  "数据",
                                  "😀",
                                  "don't",
                                  "it's",
                                  "we'll",
                                  "HTTP/1.1",
                                  "2024",
                                  "3.14159",
                                  "1,000,000",
                                  "x86_64",
                                  "int main(void)",
                                  "{\"k\": [1, 2]}",
                                  "—",
                                  "«ok»"};
    static const char *punct[] = {" ",  " ",  " ",  " ",  ", ", ". ",   "! ", "? ",
                                  "\n", "  ", "\t", ": ", "; ", "\n\n", " (", ") "};
    while (t->n < target) {
        if (corpus.n && rnd(40) == 0) {
            put(t, corpus.p, corpus.n > 4096 ? 4096 : corpus.n);
            continue;
        }
        const char *w = words[rnd(sizeof words / sizeof *words)];
        put(t, w, strlen(w));
        const char *p = punct[rnd(sizeof punct / sizeof *punct)];
        put(t, p, strlen(p));
    }
    free(corpus.p);
}

/* Cut at a UTF-8 boundary near `at`. */
static size_t boundary(const char *s, size_t n, size_t at)
{
    if (at >= n) return n;
    while (at < n && ((unsigned char)s[at] & 0xC0) == 0x80)
        at++;
    return at;
}

static void bench_dir(const char *dir, const text *corpus)
{
    lr_error e = {0};
    tok_tokenizer *t = NULL;
    double t0 = now();
    if (tok_load_dir(dir, &e, &t)) {
        printf("%-28s load failed: %s\n", dir, e.msg);
        return;
    }
    double load = now() - t0;
    tok_ids ids = {0};
    size_t ntok = 0, nout = 0;
    double dec = 0;
    t0 = now();
    for (size_t i = 0; i < corpus->n;) {
        size_t j = boundary(corpus->p, corpus->n, i + 2048);
        ids.n = 0;
        if (tok_encode(t, corpus->p + i, j - i, 1, &ids)) {
            printf("%s: encode failed at %zu\n", dir, i);
            break;
        }
        ntok += ids.n;
        /* Decode the same ids (timed separately, subtracted from the encode time). */
        double d0 = now();
        char *s = NULL;
        size_t sl = 0;
        if (tok_decode(t, ids.v, ids.n, 0, &s, &sl) == 0) nout += sl;
        free(s);
        dec += now() - d0;
        i = j;
    }
    double dt = now() - t0 - dec;
    printf("%-28s load %5.2f s | encode %6.2f MB/s (%zu MB, %zu tokens, %.2f bytes/token) | "
           "decode %5.2f M tokens/s\n",
           dir, load, (double)corpus->n / dt / 1e6, corpus->n >> 20, ntok,
           (double)corpus->n / (double)(ntok ? ntok : 1), (double)ntok / dec / 1e6);
    (void)nout;
    static const char *reps[] = {"a", " ", "\n", "1", "!", "\xE6\x9D\xB1", "\xF0\x9F\x98\x80"};
    static const char *names[] = {"'a'", "' '", "'\\n'", "'1'", "'!'", "U+6771", "U+1F600"};
    printf("%-28s 1 MB of one char:", "");
    size_t mb = 1 << 20;
    char *s = malloc(mb + 8);
    for (size_t r = 0; r < sizeof reps / sizeof *reps; r++) {
        size_t k = strlen(reps[r]), n = 0;
        while (n + k <= mb) {
            memcpy(s + n, reps[r], k);
            n += k;
        }
        ids.n = 0;
        t0 = now();
        int rc = tok_encode(t, s, n, 0, &ids);
        printf(" %s %.3fs%s", names[r], now() - t0, rc ? "(error)" : "");
        fflush(stdout);
    }
    printf("\n");
    free(s);
    free(ids.v);
    tok_destroy(t);
}

int main(int argc, char **argv)
{
    text corpus = {0};
    build_corpus(&corpus, 10u << 20);
    if (argc > 1) {
        for (int i = 1; i < argc; i++)
            bench_dir(argv[i], &corpus);
    } else {
        const char *root = getenv("LORAD_TOK_CACHE");
        if (!root || !*root) root = "tests/.cache/tok";
        DIR *d = opendir(root);
        if (!d) {
            fprintf(stderr, "tok_bench: no %s (run tests/tokgold/fetch.sh) and no arguments\n",
                    root);
            return 1;
        }
        char *names[64];
        int n = 0;
        struct dirent *de;
        while ((de = readdir(d)) && n < 64) {
            char path[1024];
            struct stat st;
            snprintf(path, sizeof path, "%s/%s/tokenizer.json", root, de->d_name);
            if (de->d_name[0] != '.' && stat(path, &st) == 0) {
                snprintf(path, sizeof path, "%s/%s", root, de->d_name);
                names[n++] = strdup(path);
            }
        }
        closedir(d);
        for (int i = 0; i < n; i++) {
            bench_dir(names[i], &corpus);
            free(names[i]);
        }
    }
    free(corpus.p);
    return 0;
}
