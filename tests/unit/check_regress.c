/* check_regress.c — replays every fuzz reproducer and seed through its parser in make test.
 *
 * tests/fuzz/ holds one libFuzzer target per parser (fuzz_<target>.c, entry fuzz_<target>_one)
 * and, per target, a seed corpus (tests/fuzz/corpus/<target>/) and the inputs that once crashed,
 * hung or broke a contract (tests/fuzz/regress/<target>/, described in tests/fuzz/regress/
 * README.md). This suite links the same target functions into the ASan + UBSan build and runs
 * every file through them, so a finding that was fixed stays fixed. A target's checks abort()
 * on a broken contract and the sanitizers abort on memory errors; either fails the test (fork
 * mode). Run from the repository root (as tests/run_all.sh does), or set LORAD_FUZZ_DIR.
 *
 * One TCase per target: each counts the files it ran and fails if there are none, so a moved
 * folder cannot turn the suite into a test that always passes.
 */
#include <check.h>
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int fuzz_safetensors_one(const uint8_t *data, size_t size);
int fuzz_config_one(const uint8_t *data, size_t size);
int fuzz_tokenizer_one(const uint8_t *data, size_t size);
int fuzz_precompiled_one(const uint8_t *data, size_t size);
void fuzz_peft_init(void);
int fuzz_peft_one(const uint8_t *data, size_t size);
void fuzz_jinja_init(void);
int fuzz_jinja_one(const uint8_t *data, size_t size);
void fuzz_api_init(void);
int fuzz_api_one(const uint8_t *data, size_t size);

typedef int (*one_fn)(const uint8_t *data, size_t size);

static const char *fuzz_dir(void)
{
    const char *d = getenv("LORAD_FUZZ_DIR");
    return d && *d ? d : "tests/fuzz";
}

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, n = 0;
    uint8_t *buf = malloc(cap);
    for (size_t got; buf && (got = fread(buf + n, 1, cap - n, f)) > 0;) {
        n += got;
        if (n == cap) {
            uint8_t *nb = realloc(buf, cap *= 2);
            if (!nb)
                free(buf);
            buf = nb;
        }
    }
    fclose(f);
    *len = n;
    return buf;
}

/* Run every regular file of DIR/<kind>/<target>/ through one(); returns the number of files. */
static int replay_dir(const char *kind, const char *target, one_fn one)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s/%s", fuzz_dir(), kind, target);
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        size_t len = 0;
        uint8_t *data = slurp(path, &len);
        ck_assert_msg(data != NULL, "cannot read %s", path);
        /* Name the file first: if the parser crashes, the log says which input did it. */
        fprintf(stderr, "check_regress: %s\n", path);
        one(data, len);
        free(data);
        n++;
    }
    closedir(d);
    return n;
}

static void replay(const char *target, one_fn one)
{
    int seeds = replay_dir("corpus", target, one);
    int regress = replay_dir("regress", target, one);
    ck_assert_msg(seeds > 0, "no seed files in %s/corpus/%s (run from the repository root)",
                  fuzz_dir(), target);
    fprintf(stderr, "check_regress: %s: %d seeds, %d reproducers replayed\n", target, seeds,
            regress);
}

START_TEST(test_safetensors)
{
    replay("safetensors", fuzz_safetensors_one);
}
END_TEST

START_TEST(test_config)
{
    replay("config", fuzz_config_one);
}
END_TEST

START_TEST(test_tokenizer)
{
    replay("tokenizer", fuzz_tokenizer_one);
}
END_TEST

START_TEST(test_precompiled)
{
    replay("precompiled", fuzz_precompiled_one);
}
END_TEST

START_TEST(test_peft)
{
    fuzz_peft_init();
    replay("peft", fuzz_peft_one);
}
END_TEST

START_TEST(test_jinja)
{
    fuzz_jinja_init();
    replay("jinja", fuzz_jinja_one);
}
END_TEST

START_TEST(test_api)
{
    fuzz_api_init();
    replay("api", fuzz_api_one);
}
END_TEST

static Suite *regress_suite(void)
{
    Suite *s = suite_create("regress");
    struct {
        const char *name;
        const TTest *test;
    } cases[] = {
        {"safetensors", test_safetensors}, {"config", test_config},
        {"tokenizer", test_tokenizer},     {"precompiled", test_precompiled},
        {"peft", test_peft},               {"jinja", test_jinja},
        {"api", test_api},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        TCase *tc = tcase_create(cases[i].name);
        tcase_set_timeout(tc, 300);
        tcase_add_test(tc, cases[i].test);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(regress_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
