/* check_peft_store.c — the adapter memory pool (adapters/peft_store): ps_reserve's arena, split,
 * best fit, coalescing, capacity, fallback to fresh mappings, and adapters loaded from dirty
 * pool memory.
 *
 * Expected layouts are worked out by hand from the documented rules (2 MiB units handed out,
 * best fit, merge on release); residency and unmapping are checked with mincore(), not through
 * the pool's own statistics; the random rounds keep a shadow model of every live region and a
 * tag written over every byte, so an overlap is caught whether or not ASan could see it (it
 * cannot: this is mmap memory). Each test runs in its own process (CK_FORK), so each starts
 * with an empty pool.
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "model.h"
#include "peft.h"
#include "peft_store.h"

#define MiB ((size_t)1 << 20)
#define HUGE (2 * MiB)

/* ----------------------------------------------------------------------------------- helpers */

/* Pages of [p, p + len) resident, or -1 when part of it is not mapped (mincore: ENOMEM). */
static long resident_pages(const char *p, size_t len)
{
    size_t n = (len + 4095) / 4096;
    unsigned char *v = malloc(n);
    ck_assert_ptr_nonnull(v);
    long got = -1;
    if (mincore((void *)p, len, v) == 0) {
        got = 0;
        for (size_t i = 0; i < n; i++)
            got += v[i] & 1;
    } else {
        ck_assert_int_eq(errno, ENOMEM);
    }
    free(v);
    return got;
}

static int inside(const ps_region *r, const char *base, size_t len)
{
    return r->p >= base && r->p + r->len <= base + len;
}

/* Reserve `bytes` and return the arena: the pool must hold exactly that one span. */
static ps_region reserve(size_t bytes)
{
    ck_assert_int_eq(ps_reserve(bytes), 0);
    ps_region s[4];
    ck_assert_int_eq(ps_pool_spans(s, 4), 1);
    ck_assert_uint_eq(s[0].len, (bytes + HUGE - 1) / HUGE * HUGE);
    ck_assert_uint_eq((uintptr_t)s[0].p % HUGE, 0);
    return s[0];
}

static void expect_spans(const ps_region *want, int n)
{
    ps_region got[70];
    int k = ps_pool_spans(got, 70);
    ck_assert_int_eq(k, n);
    for (int i = 0; i < n; i++) {
        ck_assert_ptr_eq(got[i].p, want[i].p);
        ck_assert_uint_eq(got[i].len, want[i].len);
    }
}

static ps_region take(size_t n)
{
    ps_region r;
    ck_assert_int_eq(ps_alloc(n, &r), 0);
    ck_assert_ptr_nonnull(r.p);
    ck_assert_uint_ge(r.len, n);
    ck_assert_uint_eq((uintptr_t)r.p % HUGE, 0);
    memset(r.p, 0x5a, n); /* every byte asked for is writable */
    return r;
}

/* ----------------------------------------------------------------------------------- reserve */

START_TEST(test_reserve_resident)
{
    ps_stats st;
    ck_assert_int_eq(ps_reserve(0), 0);
    ps_get_stats(&st);
    ck_assert_uint_eq(st.reserved, 0);
    ck_assert_int_eq(st.pool_spans, 0);
    ck_assert_uint_eq(st.pool_cap, 64 * MiB);

    ps_region a = reserve(10 * MiB + 1); /* rounded up to 12 MiB */
    ck_assert_uint_eq(a.len, 12 * MiB);
    /* every page is already there: the point of the reserve */
    ck_assert_int_eq(resident_pages(a.p, a.len), (long)(a.len / 4096));
    ps_get_stats(&st);
    ck_assert_uint_eq(st.reserved, 12 * MiB);
    ck_assert_uint_eq(st.pool_bytes, 12 * MiB);
    ck_assert_uint_eq(st.pool_largest, 12 * MiB);
    ck_assert_uint_eq(st.in_use, 0);
    ck_assert_uint_eq(st.pool_cap, 64 * MiB); /* max(64 MiB, reserved) */

    /* A second reserve adds an arena and raises the capacity past 64 MiB. */
    ck_assert_int_eq(ps_reserve(60 * MiB), 0);
    ps_get_stats(&st);
    ck_assert_uint_eq(st.reserved, 72 * MiB);
    ck_assert_uint_eq(st.pool_cap, 72 * MiB);
    ck_assert_uint_eq(st.pool_bytes, 72 * MiB);
}
END_TEST

START_TEST(test_reserve_too_large)
{
    /* More address space than exists: refused, nothing kept, the pool still works. */
    ck_assert_int_eq(ps_reserve(SIZE_MAX / 2), LR_ENOMEM);
    ck_assert_int_eq(ps_reserve(((size_t)1 << 47) + HUGE), LR_ENOMEM);
    ps_stats st;
    ps_get_stats(&st);
    ck_assert_uint_eq(st.reserved, 0);
    ck_assert_int_eq(st.pool_spans, 0);
    ps_region r;
    ck_assert_int_eq(ps_alloc(SIZE_MAX - 10, &r), LR_ENOMEM);
    ck_assert_ptr_null(r.p);
    r = take(100);
    ps_release(&r);
    ck_assert_ptr_null(r.p);
}
END_TEST

/* ------------------------------------------------------------------------- split and coalesce */

START_TEST(test_split_and_coalesce)
{
    ps_region A = reserve(64 * MiB);
    char *b = A.p;
    ps_stats st;

    /* 5 MiB: the first 6 MiB of the arena (whole 2 MiB units). */
    ps_region r1 = take(5 * MiB);
    ck_assert_ptr_eq(r1.p, b);
    ck_assert_uint_eq(r1.len, 6 * MiB);
    /* 1 byte: the next 2 MiB. */
    ps_region r2 = take(1);
    ck_assert_ptr_eq(r2.p, b + 6 * MiB);
    ck_assert_uint_eq(r2.len, 2 * MiB);
    expect_spans(&(ps_region){b + 8 * MiB, 56 * MiB}, 1);
    ps_get_stats(&st);
    ck_assert_uint_eq(st.in_use, 8 * MiB);
    ck_assert_uint_eq(st.pool_bytes, 56 * MiB);

    /* 55 MiB + 1 rounds up to 56 MiB: the whole rest of the arena, no split. */
    ps_region r3 = take(55 * MiB + 1);
    ck_assert_ptr_eq(r3.p, b + 8 * MiB);
    ck_assert_uint_eq(r3.len, 56 * MiB);
    expect_spans(NULL, 0);

    /* The pool is empty: a fresh mapping, outside the arena, of the page-rounded size. */
    ps_region r4 = take(3 * MiB + 5);
    ck_assert(!inside(&r4, b, 64 * MiB));
    ck_assert_uint_eq(r4.len, 3 * MiB + 4096);

    /* Give back the middle first (no neighbour free), then the ends: it must end as one span. */
    ps_release(&r2);
    ck_assert_ptr_null(r2.p);
    expect_spans(&(ps_region){b + 6 * MiB, 2 * MiB}, 1);
    ps_release(&r3); /* joins r2's span on its left */
    expect_spans(&(ps_region){b + 6 * MiB, 58 * MiB}, 1);
    ps_release(&r1); /* joins on its right */
    expect_spans(&(ps_region){b, 64 * MiB}, 1);

    /* The fresh region does not fit under the 64 MiB capacity: unmapped, not kept. */
    char *p4 = r4.p;
    size_t l4 = r4.len;
    ps_release(&r4);
    ck_assert_int_eq(resident_pages(p4, l4), -1);
    expect_spans(&(ps_region){b, 64 * MiB}, 1);
    ps_get_stats(&st);
    ck_assert_uint_eq(st.in_use, 0);
    ck_assert_uint_eq(st.pool_bytes, 64 * MiB);
    /* and the arena is still resident and usable */
    ck_assert_int_eq(resident_pages(b, 64 * MiB), (long)(64 * MiB / 4096));
}
END_TEST

START_TEST(test_best_fit)
{
    ps_region A = reserve(64 * MiB);
    char *b = A.p;
    ps_region a = take(8 * MiB), x = take(2 * MiB), c = take(4 * MiB), y = take(2 * MiB),
              rest = take(48 * MiB);
    ck_assert_ptr_eq(c.p, b + 10 * MiB);
    ck_assert_ptr_eq(rest.p, b + 16 * MiB);
    ps_release(&a);
    ps_release(&c);
    ps_region want[2] = {{b, 8 * MiB}, {b + 10 * MiB, 4 * MiB}};
    expect_spans(want, 2);
    /* 3 MiB fits both; the 4 MiB span is the better fit and is taken whole. */
    ps_region r = take(3 * MiB);
    ck_assert_ptr_eq(r.p, b + 10 * MiB);
    ck_assert_uint_eq(r.len, 4 * MiB);
    /* 5 MiB: only the 8 MiB span fits; split, its last 2 MiB stay free (still aligned). */
    ps_region s = take(5 * MiB);
    ck_assert_ptr_eq(s.p, b);
    ck_assert_uint_eq(s.len, 6 * MiB);
    expect_spans(&(ps_region){b + 6 * MiB, 2 * MiB}, 1);
    /* Release all but y in an order that joins left, right and both ways. */
    ps_release(&x); /* b+6..8 free and b+8..10 → one span b+6..10 */
    expect_spans(&(ps_region){b + 6 * MiB, 4 * MiB}, 1);
    ps_release(&rest);
    ps_region w2[2] = {{b + 6 * MiB, 4 * MiB}, {b + 16 * MiB, 48 * MiB}};
    expect_spans(w2, 2);
    ps_release(&r); /* b+10..14: joins b+6..10 */
    ps_region w3[2] = {{b + 6 * MiB, 8 * MiB}, {b + 16 * MiB, 48 * MiB}};
    expect_spans(w3, 2);
    ps_release(&s);
    ps_region w4[2] = {{b, 14 * MiB}, {b + 16 * MiB, 48 * MiB}};
    expect_spans(w4, 2);
    ps_release(&y); /* the last gap: both sides join */
    expect_spans(&(ps_region){b, 64 * MiB}, 1);
}
END_TEST

/* ------------------------------------------------------------------------ fallback, capacity */

START_TEST(test_larger_than_pool)
{
    ps_region A = reserve(8 * MiB);
    ps_region r = take(9 * MiB);
    ck_assert(!inside(&r, A.p, A.len));
    ck_assert(r.p + r.len <= A.p || r.p >= A.p + A.len); /* no overlap at all */
    ck_assert_uint_eq(r.len, 9 * MiB);
    expect_spans(&A, 1); /* untouched */
    memset(r.p, 1, r.len);
    ps_release(&r); /* 8 + 9 MiB is within the 64 MiB capacity: kept */
    ps_stats st;
    ps_get_stats(&st);
    ck_assert_uint_eq(st.pool_bytes, 17 * MiB);
    ck_assert_uint_eq(st.pool_largest >= 9 * MiB, 1);
}
END_TEST

START_TEST(test_capacity_without_reserve)
{
    /* No reserve: released regions are kept up to 64 MiB, the rest is unmapped. */
    ps_region r[3];
    for (int i = 0; i < 3; i++)
        r[i] = take(30 * MiB);
    char *p2 = r[2].p;
    ps_release(&r[0]);
    ps_release(&r[1]);
    ps_release(&r[2]);
    ps_stats st;
    ps_get_stats(&st);
    ck_assert_uint_eq(st.pool_bytes, 60 * MiB);
    ck_assert_int_eq(resident_pages(p2, 30 * MiB), -1);
    /* A kept region is reused: a 20 MiB request comes from the pool, not from mmap. */
    ps_region again = take(20 * MiB);
    ps_get_stats(&st);
    ck_assert_uint_eq(st.pool_bytes, 40 * MiB);
    ck_assert_uint_eq(again.len, 20 * MiB);
    ps_release(&again);
}
END_TEST

START_TEST(test_arena_evicts_fresh)
{
    /* The arena handed out whole, then a fresh region released into the pool (fits the 64 MiB
     * capacity); when the arena comes back, the fresh span is unmapped to make room. */
    ps_region A = reserve(64 * MiB);
    ps_region all = take(64 * MiB);
    ck_assert_ptr_eq(all.p, A.p);
    ps_region f = take(30 * MiB);
    char *fp = f.p;
    ck_assert(!inside(&f, A.p, A.len));
    ps_release(&f);
    ps_stats st;
    ps_get_stats(&st);
    ck_assert_uint_eq(st.pool_bytes, 30 * MiB);
    ck_assert_int_eq(resident_pages(fp, 30 * MiB), (long)(30 * MiB / 4096));
    ps_release(&all);
    expect_spans(&A, 1);
    ck_assert_int_eq(resident_pages(fp, 30 * MiB), -1);
    ck_assert_int_eq(resident_pages(A.p, A.len), (long)(A.len / 4096));
}
END_TEST

START_TEST(test_span_slots)
{
    /* 70 separate 2 MiB holes in a 280 MiB arena: 64 slots hold them; more holes than slots
     * cannot be kept and are unmapped, and the pool stays consistent. */
    ps_region A = reserve(280 * MiB);
    ps_region r[140];
    for (int i = 0; i < 140; i++) {
        r[i] = take(HUGE);
        ck_assert_ptr_eq(r[i].p, A.p + (size_t)i * HUGE);
    }
    for (int i = 0; i < 140; i += 2)
        ps_release(&r[i]); /* 70 holes, none touching another */
    ps_stats st;
    ps_get_stats(&st);
    ck_assert_int_eq(st.pool_spans, 64);
    ck_assert_uint_eq(st.pool_bytes, 64 * HUGE);
    ck_assert_int_eq(resident_pages(A.p + 138 * HUGE, HUGE), -1); /* the 70th hole: unmapped */
    for (int i = 1; i < 140; i += 2)
        ps_release(&r[i]); /* each joins its neighbours */
    ps_get_stats(&st);
    ck_assert_uint_eq(st.in_use, 0);
    /* Regions 0..127 merge into one span; the holes 128, 130 .. 138 were unmapped, so each odd
     * region 129 .. 139 touches nothing free and takes a slot of its own: 7 spans. */
    ps_region s[70];
    ck_assert_int_eq(ps_pool_spans(s, 70), 7);
    ck_assert_ptr_eq(s[0].p, A.p);
    ck_assert_uint_eq(s[0].len, 128 * HUGE);
    for (int i = 1; i < 7; i++) {
        ck_assert_ptr_eq(s[i].p, A.p + (size_t)(127 + 2 * i) * HUGE);
        ck_assert_uint_eq(s[i].len, HUGE);
    }
}
END_TEST

START_TEST(test_bypass)
{
    ps_region A = reserve(16 * MiB);
    ps_pool_bypass(1);
    ps_region r = take(MiB);
    ck_assert(!inside(&r, A.p, A.len));
    expect_spans(&A, 1);
    ps_pool_bypass(0);
    ps_region q = take(MiB);
    ck_assert_ptr_eq(q.p, A.p);
    ps_release(&q);
    ps_release(&r);
    ps_stats st;
    ps_get_stats(&st);
    ck_assert_uint_eq(st.in_use, 0);
}
END_TEST

START_TEST(test_double_release_aborts)
{
    ps_region A = reserve(8 * MiB);
    (void)A;
    ps_region keep = take(4 * MiB), r = take(MiB), copy = r;
    ps_release(&r);
    ps_release(&copy); /* overlaps a free span: LR_ASSERT */
    ps_release(&keep);
}
END_TEST

/* ----------------------------------------------------------------------------- random rounds */

#define LIVE_MAX 24

typedef struct live {
    ps_region r;
    size_t n;            /* bytes asked for */
    unsigned char tag;   /* written over all r.len bytes */
} live;

static uint64_t rng_state;

static uint64_t rng(void)
{
    /* xorshift64*: fixed seed, same rounds every run */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

static void check_tag(const live *l)
{
    /* word by word (regions are whole pages): every byte must still hold the tag */
    uint64_t want = 0x0101010101010101ull * l->tag;
    const uint64_t *w = (const uint64_t *)(const void *)l->r.p;
    for (size_t i = 0; i < l->r.len / 8; i++)
        if (w[i] != want)
            ck_abort_msg("bytes %zu..%zu of a live region were overwritten (tag %02x)", 8 * i,
                         8 * i + 7, l->tag);
}

/* The pool's invariants against the shadow: live regions and free spans pairwise disjoint, free
 * spans sorted and merged, byte counts equal. */
static void check_pool(const live *lv, int n_live)
{
    ps_region s[70];
    int n = ps_pool_spans(s, 70);
    ck_assert_int_le(n, 64);
    size_t fb = 0, ib = 0;
    for (int i = 0; i < n; i++) {
        fb += s[i].len;
        ck_assert_uint_eq((uintptr_t)s[i].p % 4096, 0);
        if (i) ck_assert_msg(s[i].p > s[i - 1].p + s[i - 1].len, "spans %d/%d touch", i - 1, i);
        for (int j = 0; j < n_live; j++)
            ck_assert_msg(s[i].p + s[i].len <= lv[j].r.p || lv[j].r.p + lv[j].r.len <= s[i].p,
                          "free span %d overlaps a live region", i);
    }
    for (int j = 0; j < n_live; j++)
        ib += lv[j].r.len;
    ps_stats st;
    ps_get_stats(&st);
    ck_assert_uint_eq(st.pool_bytes, fb);
    ck_assert_uint_eq(st.in_use, ib);
    ck_assert_uint_le(st.pool_bytes, st.pool_cap);
}

START_TEST(test_random_rounds)
{
    const size_t AL = 96 * MiB;
    ps_region A = reserve(AL);
    /* Shadow of the arena, one byte per 4 KiB page: 1 while a live region covers it. */
    unsigned char *shadow = calloc(AL / 4096, 1);
    ck_assert_ptr_nonnull(shadow);
    live lv[LIVE_MAX];
    int n_live = 0, from_arena = 0, fresh = 0;
    rng_state = 0x9e3779b97f4a7c15ull;
    for (int round = 0; round < 1200; round++) {
        int do_alloc = n_live == 0 || (n_live < LIVE_MAX && rng() % 100 < 55);
        if (do_alloc) {
            /* mostly small (1 byte to 4 MiB), sometimes up to 32 MiB */
            size_t n = rng() % 8 == 0 ? 1 + rng() % (32 * MiB) : 1 + rng() % (4 * MiB);
            live *l = &lv[n_live];
            ck_assert_int_eq(ps_alloc(n, &l->r), 0);
            l->n = n;
            l->tag = (unsigned char)(1 + round % 251);
            ck_assert_uint_ge(l->r.len, n);
            ck_assert_uint_eq(l->r.len % 4096, 0);
            ck_assert_uint_eq((uintptr_t)l->r.p % HUGE, 0);
            for (int j = 0; j < n_live; j++)
                ck_assert_msg(l->r.p + l->r.len <= lv[j].r.p || lv[j].r.p + lv[j].r.len <= l->r.p,
                              "round %d: new region overlaps a live one", round);
            if (l->r.p >= A.p && l->r.p < A.p + AL) {
                ck_assert_msg(l->r.p + l->r.len <= A.p + AL, "round %d: region runs past the arena",
                              round);
                size_t pg = (size_t)(l->r.p - A.p) / 4096;
                for (size_t k = 0; k < l->r.len / 4096; k++) {
                    ck_assert_msg(!shadow[pg + k], "round %d: page %zu handed out twice", round,
                                  pg + k);
                    shadow[pg + k] = 1;
                }
                from_arena++;
            } else {
                ck_assert(l->r.p + l->r.len <= A.p || l->r.p >= A.p + AL);
                fresh++;
            }
            memset(l->r.p, l->tag, l->r.len);
            n_live++;
        } else {
            int k = (int)(rng() % (uint64_t)n_live);
            live l = lv[k];
            check_tag(&l);
            if (l.r.p >= A.p && l.r.p < A.p + AL) {
                size_t pg = (size_t)(l.r.p - A.p) / 4096;
                for (size_t q = 0; q < l.r.len / 4096; q++)
                    shadow[pg + q] = 0;
            }
            ps_release(&l.r);
            lv[k] = lv[--n_live];
        }
        if (round % 16 == 0) check_pool(lv, n_live);
    }
    while (n_live > 0) {
        check_tag(&lv[n_live - 1]);
        ps_release(&lv[--n_live].r);
    }
    check_pool(lv, 0);
    /* Both paths were exercised, and the arena is whole again in one span. */
    ck_assert_int_gt(from_arena, 100);
    ck_assert_int_gt(fresh, 5);
    ps_region s[70];
    int n = ps_pool_spans(s, 70), whole = 0;
    for (int i = 0; i < n; i++)
        whole |= s[i].p <= A.p && s[i].p + s[i].len >= A.p + AL;
    ck_assert_msg(whole, "the arena did not coalesce back into one span (%d spans)", n);
    free(shadow);
}
END_TEST

/* Threads allocating and releasing while a reserve is made: no region handed out twice (each
 * thread tags its regions and checks them before release). */
static void *worker(void *arg)
{
    uint64_t s = (uint64_t)(uintptr_t)arg * 0x9e3779b97f4a7c15ull + 1;
    ps_region mine[4] = {{0}};
    unsigned char tag = (unsigned char)(uintptr_t)arg;
    for (int round = 0; round < 300; round++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        int k = (int)(s % 4);
        if (mine[k].p) {
            for (size_t i = 0; i < mine[k].len; i += 512)
                if ((unsigned char)mine[k].p[i] != tag) return (void *)1;
            ps_release(&mine[k]);
        } else {
            if (ps_alloc(1 + s % (3 * MiB), &mine[k]) != 0) return (void *)2;
            memset(mine[k].p, tag, mine[k].len);
        }
    }
    for (int k = 0; k < 4; k++)
        ps_release(&mine[k]);
    return NULL;
}

START_TEST(test_threads)
{
    pthread_t th[4];
    for (uintptr_t i = 0; i < 4; i++)
        ck_assert_int_eq(pthread_create(&th[i], NULL, worker, (void *)(i + 1)), 0);
    ck_assert_int_eq(ps_reserve(64 * MiB), 0);
    for (int i = 0; i < 4; i++) {
        void *rv;
        pthread_join(th[i], &rv);
        ck_assert_msg(rv == NULL, "thread %d: %s", i, rv == (void *)1 ? "overlap" : "no memory");
    }
    ps_stats st;
    ps_get_stats(&st);
    ck_assert_uint_eq(st.in_use, 0);
    ck_assert_uint_le(st.pool_bytes, st.pool_cap);
}
END_TEST

/* --------------------------------------------------------------- adapters from dirty memory */

/* A one-layer Llama-shaped base (H=8, I=12, 2 heads of 4, 1 KV head, V=16), and an adapter file
 * written here: q in F32 (used in place), v in F16 (converted into the second region), up in
 * BF16 (kept BF16, B transposed in place), with DoRA magnitudes in a second adapter. Loaded once
 * into pool memory first filled with 0xff bytes (NaN in every float) and checked against the
 * written values; the DoRA factors are checked against a load into fresh (zero-filled) memory,
 * which is what every load got before the pool handed out reused memory. */
enum { H = 8, I = 12, KVD = 4, V = 16, R = 2 };
static float wbuf[7][I * I], embed_w[V * H];
static lr_layer layer;
static lr_model model;
static char tmpdir[128];

static float val(uint32_t *s)
{
    *s = *s * 1664525u + 1013904223u;
    /* multiples of 1/64 in [-1, 1]: exact in F16 and BF16 */
    return (float)((int)(*s >> 25) - 64) / 64.0f;
}

static void build_model(void)
{
    static const int rows[7] = {H, KVD, KVD, H, I, I, H}, cols[7] = {H, H, H, H, H, H, I};
    lr_mat *m[7] = {&layer.q, &layer.k, &layer.v, &layer.o, &layer.gate, &layer.up, &layer.down};
    uint32_t s = 3;
    memset(&model, 0, sizeof model);
    model.cfg.arch = LR_ARCH_LLAMA;
    model.cfg.vocab = V;
    model.cfg.hidden = H;
    model.cfg.inter = I;
    model.cfg.n_layers = 1;
    model.cfg.n_heads = 2;
    model.cfg.n_kv_heads = 1;
    model.cfg.head_dim = 4;
    for (int j = 0; j < 7; j++) {
        for (int i = 0; i < rows[j] * cols[j]; i++)
            wbuf[j][i] = val(&s) + 0.5f;
        *m[j] = (lr_mat){.dtype = LR_DT_F32, .data = wbuf[j], .rows = rows[j], .cols = cols[j]};
    }
    for (int i = 0; i < V * H; i++)
        embed_w[i] = val(&s);
    model.embed = (lr_mat){.dtype = LR_DT_F32, .data = embed_w, .rows = V, .cols = H};
    model.lm_head = model.embed;
    model.layers = &layer;
}

typedef struct tw {
    const char *name, *dtype;
    int ndim;
    int d0, d1;
    float v[I * H];
} tw;

static void put16(unsigned char *d, uint16_t h)
{
    memcpy(d, &h, 2);
}

static uint16_t f16_bits(float f)
{
    if (f == 0) return 0;
    uint32_t b;
    memcpy(&b, &f, 4);
    return (uint16_t)(((b >> 16) & 0x8000u) | ((uint32_t)((int)((b >> 23) & 0xff) - 112) << 10) |
                      ((b >> 13) & 0x3ffu));
}

static void write_adapter(const char *cfg, tw *t, int n)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/check_peft_store_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    char path[256], hdr[8192];
    snprintf(path, sizeof path, "%s/adapter_config.json", tmpdir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(cfg, f);
    fclose(f);
    size_t pos = (size_t)snprintf(hdr, sizeof hdr, "{"), off = 0;
    for (int i = 0; i < n; i++) {
        size_t es = strcmp(t[i].dtype, "F32") ? 2 : 4;
        size_t nb = es * (size_t)t[i].d0 * (size_t)(t[i].ndim == 2 ? t[i].d1 : 1);
        if (t[i].ndim == 2)
            pos += (size_t)snprintf(hdr + pos, sizeof hdr - pos,
                                    "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[%d,%d],"
                                    "\"data_offsets\":[%zu,%zu]}",
                                    i ? "," : "", t[i].name, t[i].dtype, t[i].d0, t[i].d1, off,
                                    off + nb);
        else
            pos += (size_t)snprintf(hdr + pos, sizeof hdr - pos,
                                    "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[%d],"
                                    "\"data_offsets\":[%zu,%zu]}",
                                    i ? "," : "", t[i].name, t[i].dtype, t[i].d0, off, off + nb);
        off += nb;
    }
    pos += (size_t)snprintf(hdr + pos, sizeof hdr - pos, "}");
    while (pos % 8)
        hdr[pos++] = ' ';
    unsigned char *buf = calloc(1, 8 + pos + off), *d = buf + 8 + pos;
    uint64_t hl = pos;
    memcpy(buf, &hl, 8);
    memcpy(buf + 8, hdr, pos);
    for (int i = 0; i < n; i++) {
        int ne = t[i].d0 * (t[i].ndim == 2 ? t[i].d1 : 1);
        for (int k = 0; k < ne; k++) {
            float x = t[i].v[k];
            uint32_t b;
            memcpy(&b, &x, 4);
            if (!strcmp(t[i].dtype, "F32"))
                memcpy(d, &x, 4), d += 4;
            else if (!strcmp(t[i].dtype, "F16"))
                put16(d, f16_bits(x)), d += 2;
            else
                put16(d, (uint16_t)(b >> 16)), d += 2;
        }
    }
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", tmpdir);
    f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(buf, 1, 8 + pos + off, f), 8 + pos + off);
    fclose(f);
    free(buf);
}

static void remove_adapter(void)
{
    char p[256];
    snprintf(p, sizeof p, "%s/adapter_config.json", tmpdir);
    unlink(p);
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", tmpdir);
    unlink(p);
    rmdir(tmpdir);
}

static tw *add(tw *t, int *n, const char *name, const char *dtype, int ndim, int d0, int d1,
               uint32_t *s)
{
    tw *x = &t[(*n)++];
    x->name = name;
    x->dtype = dtype;
    x->ndim = ndim;
    x->d0 = d0;
    x->d1 = d1;
    for (int i = 0; i < d0 * (ndim == 2 ? d1 : 1); i++)
        x->v[i] = val(s);
    if (ndim == 1)
        for (int i = 0; i < d0; i++)
            x->v[i] = 0.5f + (float)i / 64.0f; /* DoRA magnitudes: positive */
    return x;
}

/* Fill the whole pool with 0xff (NaN floats, 0xffff halves): whatever a load reads without
 * having written it shows. */
static void dirty_pool(void)
{
    ps_region s[70], r[70];
    int n = ps_pool_spans(s, 70);
    for (int i = 0; i < n; i++) {
        ck_assert_int_eq(ps_alloc(s[i].len, &r[i]), 0);
        memset(r[i].p, 0xff, r[i].len);
    }
    for (int i = 0; i < n; i++)
        ps_release(&r[i]);
}

static int in_arena(const void *p, const ps_region *A)
{
    return ps_contains(A, p);
}

START_TEST(test_adapter_from_dirty_pool)
{
    build_model();
    ps_region A = reserve(16 * MiB);
    dirty_pool();
    static tw t[8];
    int n = 0;
    uint32_t s = 11;
    tw *qa = add(t, &n, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "F32", 2,
                 R, H, &s);
    tw *qb = add(t, &n, "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", "F32", 2,
                 H, R, &s);
    tw *va = add(t, &n, "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight", "F16", 2,
                 R, H, &s);
    tw *vb = add(t, &n, "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight", "F16", 2,
                 KVD, R, &s);
    tw *ua = add(t, &n, "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight", "BF16", 2, R,
                 H, &s);
    tw *ub = add(t, &n, "base_model.model.model.layers.0.mlp.up_proj.lora_B.weight", "BF16", 2, I,
                 R, &s);
    write_adapter("{\"r\":2,\"lora_alpha\":4,\"target_modules\":[\"q_proj\",\"v_proj\",\"up_proj\"]}",
                  t, n);
    peft_adapter *a = NULL;
    lr_error e;
    lr_error_clear(&e);
    ck_assert_msg(peft_load(tmpdir, &model, NULL, &e, &a) == 0, "%s", e.msg);
    const peft_module *q = peft_module_at(a, 0, LR_MOD_Q), *v = peft_module_at(a, 0, LR_MOD_V),
                      *u = peft_module_at(a, 0, LR_MOD_UP);
    ck_assert(q && v && u && q->A && q->Bt && v->A && v->Bt && u->A16 && u->Bt16);
    /* the tensors live in the (dirty) arena */
    ck_assert(in_arena(q->A, &A) && in_arena(v->A, &A) && in_arena(u->Bt16, &A));
    for (int i = 0; i < R * H; i++) {
        ck_assert_float_eq(q->A[i], qa->v[i]);
        ck_assert_float_eq(v->A[i], va->v[i]);
        uint32_t b = (uint32_t)u->A16[i] << 16;
        float f;
        memcpy(&f, &b, 4);
        ck_assert_float_eq(f, ua->v[i]);
    }
    for (int o = 0; o < H; o++)
        for (int j = 0; j < R; j++)
            ck_assert_float_eq(q->Bt[j * H + o], qb->v[o * R + j]);
    for (int o = 0; o < KVD; o++)
        for (int j = 0; j < R; j++)
            ck_assert_float_eq(v->Bt[j * KVD + o], vb->v[o * R + j]);
    for (int o = 0; o < I; o++)
        for (int j = 0; j < R; j++) {
            uint32_t b = (uint32_t)u->Bt16[j * I + o] << 16;
            float f;
            memcpy(&f, &b, 4);
            ck_assert_float_eq(f, ub->v[o * R + j]);
        }
    peft_free(a);
    remove_adapter();

    /* DoRA (magnitudes, factors into the converted region) with a bias: the dirty-pool load
     * must match a load into fresh memory bit for bit. */
    n = 0;
    s = 23;
    add(t, &n, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "F16", 2, R, H,
        &s);
    add(t, &n, "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", "F16", 2, H, R,
        &s);
    add(t, &n, "base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias", "F16", 1, H, 0, &s);
    add(t, &n, "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector", "F32", 1,
        H, 0, &s);
    write_adapter("{\"r\":2,\"lora_alpha\":3,\"use_dora\":true,\"lora_bias\":true,"
                  "\"target_modules\":[\"q_proj\"]}",
                  t, n);
    peft_adapter *fresh = NULL, *dirty = NULL;
    ps_pool_bypass(1);
    ck_assert_msg(peft_load(tmpdir, &model, NULL, &e, &fresh) == 0, "%s", e.msg);
    ps_pool_bypass(0);
    dirty_pool();
    ck_assert_msg(peft_load(tmpdir, &model, NULL, &e, &dirty) == 0, "%s", e.msg);
    const peft_module *f0 = peft_module_at(fresh, 0, LR_MOD_Q),
                      *d0 = peft_module_at(dirty, 0, LR_MOD_Q);
    ck_assert(f0 && d0 && f0->dora && d0->dora && d0->bias_b && d0->mag);
    ck_assert(!in_arena(f0->dora, &A) && in_arena(d0->dora, &A));
    ck_assert_mem_eq(f0->A, d0->A, sizeof(float) * R * H);
    ck_assert_mem_eq(f0->Bt, d0->Bt, sizeof(float) * R * H);
    ck_assert_mem_eq(f0->bias_b, d0->bias_b, sizeof(float) * H);
    ck_assert_mem_eq(f0->mag, d0->mag, sizeof(float) * H);
    ck_assert_mem_eq(f0->dora, d0->dora, sizeof(float) * H);
    for (int o = 0; o < H; o++)
        ck_assert_msg(d0->dora[o] == d0->dora[o] && d0->dora[o] > 0, "dora[%d] = %g", o,
                      (double)d0->dora[o]);
    peft_free(fresh);
    peft_free(dirty);
    remove_adapter();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("peft_store");
    TCase *tc = tcase_create("reserve");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_reserve_resident);
    tcase_add_test(tc, test_reserve_too_large);
    suite_add_tcase(s, tc);
    tc = tcase_create("split_coalesce");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_split_and_coalesce);
    tcase_add_test(tc, test_best_fit);
    suite_add_tcase(s, tc);
    tc = tcase_create("fallback_capacity");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_larger_than_pool);
    tcase_add_test(tc, test_capacity_without_reserve);
    tcase_add_test(tc, test_arena_evicts_fresh);
    tcase_add_test(tc, test_span_slots);
    tcase_add_test(tc, test_bypass);
    tcase_add_test_raise_signal(tc, test_double_release_aborts, SIGABRT);
    suite_add_tcase(s, tc);
    tc = tcase_create("random");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_random_rounds);
    tcase_add_test(tc, test_threads);
    suite_add_tcase(s, tc);
    tc = tcase_create("adapter");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_adapter_from_dirty_pool);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
