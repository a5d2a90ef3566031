/* check_kv.c — the KV block pool: sizing from the budget, all-or-nothing reservation, release,
 * and that distinct positions/layers/sequences map to distinct, stable memory. */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "kv.h"

/* 2 layers, kv_dim 4, 3 tokens per block: one block = 2*2*3*4 floats = 192 bytes. */
static kv_params small(int64_t bytes)
{
    kv_params p = {2, 4, 3, bytes, 10, 0};
    return p;
}

START_TEST(test_sizing)
{
    kv_pool *p;
    lr_error e;
    kv_params kp = small(192 * 5 + 100);
    ck_assert_int_eq(kv_pool_create(&kp, &e, &p), 0);
    ck_assert_int_eq(kv_blocks_total(p), 5);
    ck_assert_int_eq(kv_blocks_free(p), 5);
    ck_assert_int_eq(kv_blocks_used(p), 0);
    ck_assert_int_eq((int)kv_block_bytes(p), 192);
    ck_assert_int_eq(kv_blocks_for(p, 0), 0);
    ck_assert_int_eq(kv_blocks_for(p, 1), 1);
    ck_assert_int_eq(kv_blocks_for(p, 3), 1);
    ck_assert_int_eq(kv_blocks_for(p, 4), 2);
    kv_pool_destroy(p);
    kp = small(191);
    ck_assert_int_eq(kv_pool_create(&kp, &e, &p), LR_EINVAL);
    ck_assert_ptr_null(p);
    ck_assert_ptr_nonnull(strstr(e.msg, "192 bytes"));
    kp = small(1000);
    kp.block_tokens = 0;
    ck_assert_int_eq(kv_pool_create(&kp, &e, &p), LR_EINVAL);
    kv_pool_destroy(NULL);
}
END_TEST

START_TEST(test_reserve_release)
{
    kv_pool *p;
    kv_params kp = small(192 * 5);
    ck_assert_int_eq(kv_pool_create(&kp, NULL, &p), 0);
    kv_seq a, b;
    ck_assert_int_eq(kv_seq_init(p, &a), 0);
    ck_assert_int_eq(kv_seq_init(p, &b), 0);
    ck_assert_int_eq(a.max_blocks, 4);                      /* ceil(10 / 3) */
    ck_assert_int_eq(kv_seq_reserve(p, &a, KV_SELF, 7), 0); /* 3 blocks */
    ck_assert_int_eq(kv_seq_capacity(p, &a, KV_SELF), 9);
    ck_assert_int_eq(kv_blocks_used(p), 3);
    ck_assert_int_eq(kv_seq_reserve(p, &a, KV_SELF, 9), 0); /* already there */
    ck_assert_int_eq(kv_blocks_used(p), 3);
    /* b wants 3 blocks, only 2 free: nothing taken. */
    ck_assert_int_eq(kv_seq_reserve(p, &b, KV_SELF, 8), LR_ENOMEM);
    ck_assert_int_eq(kv_blocks_free(p), 2);
    ck_assert_int_eq(b.n_blocks[KV_SELF], 0);
    /* Beyond the context: refused without taking. */
    ck_assert_int_eq(kv_seq_reserve(p, &b, KV_SELF, 13), LR_ERANGE);
    ck_assert_int_eq(kv_seq_reserve(p, &b, KV_CROSS, 4), 0); /* cross table, same pool */
    ck_assert_int_eq(kv_blocks_free(p), 0);
    ck_assert_int_eq(kv_seq_reserve(p, &a, KV_SELF, 10), LR_ENOMEM);
    kv_seq_release(p, &b);
    ck_assert_int_eq(kv_blocks_free(p), 2);
    ck_assert_int_eq(kv_seq_reserve(p, &a, KV_SELF, 10), 0);
    ck_assert_int_eq(kv_blocks_used(p), 4);
    /* Every block id is distinct. */
    for (int i = 0; i < a.n_blocks[KV_SELF]; i++)
        for (int j = i + 1; j < a.n_blocks[KV_SELF]; j++)
            ck_assert_int_ne(a.blocks[KV_SELF][i], a.blocks[KV_SELF][j]);
    kv_seq_release(p, &a);
    kv_seq_release(p, &a); /* idempotent */
    ck_assert_int_eq(kv_blocks_free(p), 5);
    kv_seq_free(&a);
    kv_seq_free(&b);
    kv_pool_destroy(p);
}
END_TEST

START_TEST(test_addressing)
{
    kv_pool *p;
    kv_params kp = small(192 * 6);
    ck_assert_int_eq(kv_pool_create(&kp, NULL, &p), 0);
    kv_seq s[2];
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(kv_seq_init(p, &s[i]), 0);
        ck_assert_int_eq(kv_seq_reserve(p, &s[i], KV_SELF, 8), 0);
    }
    /* Write a distinct tag into every (seq, layer, K/V, pos, d), then read all back: any
     * overlap between two addresses would overwrite a tag. */
    for (int q = 0; q < 2; q++)
        for (int l = 0; l < 2; l++)
            for (int pos = 0; pos < 8; pos++)
                for (int d = 0; d < 4; d++) {
                    kv_k(p, &s[q], KV_SELF, l, pos)[d] = (float)(((q * 2 + l) * 8 + pos) * 8 + d);
                    kv_v(p, &s[q], KV_SELF, l, pos)[d] =
                        (float)(((q * 2 + l) * 8 + pos) * 8 + d + 4);
                }
    for (int q = 0; q < 2; q++)
        for (int l = 0; l < 2; l++)
            for (int pos = 0; pos < 8; pos++)
                for (int d = 0; d < 4; d++) {
                    ck_assert(kv_k(p, &s[q], KV_SELF, l, pos)[d] ==
                              (float)(((q * 2 + l) * 8 + pos) * 8 + d));
                    ck_assert(kv_v(p, &s[q], KV_SELF, l, pos)[d] ==
                              (float)(((q * 2 + l) * 8 + pos) * 8 + d + 4));
                }
    for (int i = 0; i < 2; i++) {
        kv_seq_release(p, &s[i]);
        kv_seq_free(&s[i]);
    }
    ck_assert_int_eq(kv_blocks_used(p), 0);
    kv_pool_destroy(p);
}
END_TEST

/* Resident set size in bytes (/proc/self/statm). */
static int64_t rss_bytes(void)
{
    long pages = 0, res = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &res) != 2) res = 0;
        fclose(f);
    }
    return (int64_t)res * sysconf(_SC_PAGESIZE);
}

/* A lazy pool costs address space only; a resident one is in memory from creation (and reads
 * as zeros, and holds what is written like any other). */
START_TEST(test_resident)
{
    const int64_t budget = (int64_t)16 << 20;
    kv_params kp = {4, 256, 16, budget, 64, 0}; /* blocks of 128 KiB */
    kv_pool *p;
    int64_t r0 = rss_bytes();
    ck_assert_int_eq(kv_pool_create(&kp, NULL, &p), 0);
    int64_t lazy = rss_bytes() - r0;
    ck_assert_msg(lazy < budget / 4, "a lazy pool made %lld bytes resident", (long long)lazy);
    kv_pool_destroy(p);
    kp.resident = 1;
    r0 = rss_bytes();
    ck_assert_int_eq(kv_pool_create(&kp, NULL, &p), 0);
    int64_t res = rss_bytes() - r0;
    ck_assert_msg(res >= budget - (1 << 20), "a resident pool of %lld bytes made only %lld resident",
                  (long long)budget, (long long)res);
    kv_seq s;
    ck_assert_int_eq(kv_seq_init(p, &s), 0);
    ck_assert_int_eq(kv_seq_reserve(p, &s, KV_SELF, 64), 0);
    for (int l = 0; l < 4; l++)
        for (int pos = 0; pos < 64; pos++) {
            ck_assert(kv_k(p, &s, KV_SELF, l, pos)[255] == 0.0f);
            kv_v(p, &s, KV_SELF, l, pos)[7] = (float)(l * 64 + pos);
        }
    for (int l = 0; l < 4; l++)
        for (int pos = 0; pos < 64; pos++)
            ck_assert(kv_v(p, &s, KV_SELF, l, pos)[7] == (float)(l * 64 + pos));
    kv_seq_release(p, &s);
    kv_seq_free(&s);
    kv_pool_destroy(p);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("kv");
    TCase *tc = tcase_create("sizing");
    tcase_add_test(tc, test_sizing);
    suite_add_tcase(s, tc);
    tc = tcase_create("blocks");
    tcase_add_test(tc, test_reserve_release);
    tcase_add_test(tc, test_addressing);
    tcase_add_test(tc, test_resident);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
