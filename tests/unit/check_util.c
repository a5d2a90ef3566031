/* check_util.c — lr_read_file: exact contents, limits, and refusal of what is not a regular file
 * (a FIFO must be refused at once, not read: the test's timeout catches a hang). */
#include <check.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

static char dir[64];

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/check_util_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

/* Write n bytes to dir/name; returns the path in a static buffer. */
static const char *put(const char *name, const void *data, size_t n)
{
    static char path[128];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data, 1, n, f), n);
    fclose(f);
    return path;
}

START_TEST(test_contents)
{
    /* Bytes including a NUL and high bytes come back exactly, NUL-terminated, with their length. */
    static const char data[] = {'a', 0, '\xff', '\n', 'z'};
    const char *p = put("f.bin", data, sizeof data);
    lr_error e;
    char *buf = NULL;
    size_t len = 99;
    ck_assert_int_eq(lr_read_file(p, NULL, sizeof data, &buf, &len, &e), 0);
    ck_assert_uint_eq(len, sizeof data);
    ck_assert_int_eq(memcmp(buf, data, sizeof data), 0);
    ck_assert_int_eq(buf[len], 0);
    free(buf);
    /* An empty file is an empty string; len may be NULL. */
    p = put("empty", "", 0);
    ck_assert_int_eq(lr_read_file(p, NULL, 0, &buf, NULL, &e), 0);
    ck_assert_str_eq(buf, "");
    free(buf);
}
END_TEST

START_TEST(test_refusals)
{
    lr_error e;
    char *buf = (char *)1;
    char path[128];
    /* Missing: not found, message names the label and not the path. */
    snprintf(path, sizeof path, "%s/absent.json", dir);
    ck_assert_int_eq(lr_read_file(path, "absent.json", 10, &buf, NULL, &e), LR_ENOTFOUND);
    ck_assert_ptr_null(buf);
    ck_assert_ptr_nonnull(strstr(e.msg, "absent.json"));
    ck_assert_ptr_null(strstr(e.msg, dir));
    /* One byte over the limit. */
    const char *p = put("big", "0123456789", 10);
    ck_assert_int_eq(lr_read_file(p, NULL, 9, &buf, NULL, &e), LR_ETOOLARGE);
    ck_assert_ptr_nonnull(strstr(e.msg, p));
    ck_assert_int_eq(lr_read_file(p, NULL, 10, &buf, NULL, &e), 0);
    free(buf);
    /* A directory and a FIFO (no writer: a blocking open would wait forever). */
    ck_assert_int_eq(lr_read_file(dir, NULL, 10, &buf, NULL, &e), LR_EFORMAT);
    snprintf(path, sizeof path, "%s/fifo", dir);
    ck_assert_int_eq(mkfifo(path, 0600), 0);
    ck_assert_int_eq(lr_read_file(path, "fifo", 10, &buf, NULL, &e), LR_EFORMAT);
    ck_assert_ptr_nonnull(strstr(e.msg, "not a regular file"));
    ck_assert_ptr_null(buf);
}
END_TEST

/* A file rewritten in place (truncate, then write it again from the start) can read back at its
 * full length with wrong bytes; lr_read_file must either return the true contents or refuse
 * ("changed while it was being read"), never wrong contents. */
#define FLIP_N (256 * 1024)
static unsigned char flip_good[FLIP_N];
static atomic_int flip_stop;
static char flip_path[128];

static void *flipper(void *arg)
{
    (void)arg;
    for (unsigned i = 0; !atomic_load(&flip_stop); i++) {
        int fd = open(flip_path, O_WRONLY);
        if (fd < 0) break;
        if (i % 2) {
            if (ftruncate(fd, FLIP_N / 3) != 0) break;
        } else if (write(fd, flip_good, FLIP_N) != FLIP_N) {
            break;
        }
        close(fd);
        usleep(200);
    }
    return NULL;
}

START_TEST(test_rewritten_in_place)
{
    for (size_t i = 0; i < FLIP_N; i++)
        flip_good[i] = (unsigned char)(i * 2654435761u >> 13);
    snprintf(flip_path, sizeof flip_path, "%s", put("flip.bin", flip_good, FLIP_N));
    atomic_store(&flip_stop, 0);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, flipper, NULL), 0);
    int whole = 0, wrong = 0, refused = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        char *buf = NULL;
        size_t len = 0;
        lr_error e;
        if (lr_read_file(flip_path, "flip.bin", FLIP_N * 2, &buf, &len, &e) != 0) {
            refused++;
        } else if (len == FLIP_N) {
            whole++;
            wrong += memcmp(buf, flip_good, FLIP_N) != 0;
        }
        free(buf);
        clock_gettime(CLOCK_MONOTONIC, &t1);
    } while ((t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9 < 1.0);
    atomic_store(&flip_stop, 1);
    pthread_join(th, NULL);
    ck_assert_msg(wrong == 0, "%d of %d full-length reads had wrong contents (%d refused)", wrong,
                  whole, refused);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("util");
    TCase *tc = tcase_create("read_file");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, test_contents);
    tcase_add_test(tc, test_refusals);
    tcase_add_test(tc, test_rewritten_in_place);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
