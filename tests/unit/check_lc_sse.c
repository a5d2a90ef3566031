/* check_lc_sse.c — loractl's Server-Sent Events reader (clients/lc_sse.c).
 *
 * The events expected from each stream are written out by hand from the WHATWG rules (lines end
 * in LF, CRLF or CR; "data:" with or without one space; data lines joined by LF; comments and
 * other fields ignored; an unterminated last event dropped). Every stream is fed whole, one byte
 * at a time, and split in two at every offset: the events must be the same each time.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "../../clients/lc_sse.h"

#define MAX_EVENTS 16

typedef struct {
    char ev[MAX_EVENTS][256];
    int n;
    int stop_after; /* return an error after this many events; 0 = never */
} sink;

static int on_event(void *ud, const char *data, size_t len)
{
    sink *s = ud;
    ck_assert_int_lt(s->n, MAX_EVENTS);
    ck_assert_uint_lt(len, sizeof(s->ev[0]));
    ck_assert_uint_eq(strlen(data), len); /* NUL-terminated at len */
    memcpy(s->ev[s->n], data, len + 1);
    s->n++;
    return s->stop_after && s->n >= s->stop_after ? LR_ECANCELED : 0;
}

/* Feed `text` in pieces cut at the given offsets (ascending, may be empty). */
static int feed_cut(const char *text, const size_t *cuts, int ncuts, sink *out, size_t max)
{
    lc_sse r;
    lr_error err;
    lr_error_clear(&err);
    memset(out, 0, sizeof(*out));
    lc_sse_init(&r, max, on_event, out);
    size_t len = strlen(text), at = 0;
    int rc = 0;
    for (int i = 0; i <= ncuts && rc == 0; i++) {
        size_t end = i < ncuts ? cuts[i] : len;
        rc = lc_sse_feed(&r, text + at, end - at, &err);
        at = end;
    }
    lc_sse_free(&r);
    return rc;
}

static void expect_events(const char *text, const char *const *want, int nwant)
{
    size_t len = strlen(text);
    sink s;
    ck_assert_int_eq(feed_cut(text, NULL, 0, &s, 1 << 20), 0);
    ck_assert_int_eq(s.n, nwant);
    for (int i = 0; i < nwant; i++)
        ck_assert_str_eq(s.ev[i], want[i]);
    for (size_t cut = 0; cut <= len; cut++) { /* two pieces, every split point */
        ck_assert_int_eq(feed_cut(text, &cut, 1, &s, 1 << 20), 0);
        ck_assert_int_eq(s.n, nwant);
        for (int i = 0; i < nwant; i++)
            ck_assert_str_eq(s.ev[i], want[i]);
    }
    size_t *all = malloc(len * sizeof(*all)); /* one byte at a time */
    for (size_t i = 0; i < len; i++)
        all[i] = i + 1;
    ck_assert_int_eq(feed_cut(text, all, (int)len, &s, 1 << 20), 0);
    free(all);
    ck_assert_int_eq(s.n, nwant);
    for (int i = 0; i < nwant; i++)
        ck_assert_str_eq(s.ev[i], want[i]);
}

START_TEST(test_line_endings)
{
    /* CRLF inside a multi-line event must not end the event early: the LF belongs to the CR */
    const char *want[] = {"a", "b", "c", "d", "m1\nm2\nm3"};
    expect_events("data: a\n\ndata: b\r\n\r\ndata: c\r\rdata: d\n\r\n"
                  "data: m1\r\ndata: m2\rdata: m3\r\n\r\n",
                  want, 5);
}
END_TEST

START_TEST(test_fields)
{
    /* no space, two spaces (one kept), empty data, multi-line, "data" without colon */
    const char *want[] = {"x", " y", "", "l1\nl2\nl3", ""};
    expect_events("data:x\n\ndata:  y\n\ndata:\n\ndata: l1\ndata: l2\ndata:l3\n\ndata\n\n", want,
                  5);
}
END_TEST

START_TEST(test_ignored)
{
    /* comments, other fields, blank lines without data, a field named "datax", and a last
     * event with no blank line after it (dropped) */
    const char *want[] = {"{\"k\":1}", "[DONE]"};
    expect_events(": keep-alive\n\n\nevent: message\nid: 7\nretry: 100\ndatax: no\n"
                  "data: {\"k\":1}\n\n:c\r\ndata: [DONE]\n\ndata: unterminated\n",
                  want, 2);
}
END_TEST

START_TEST(test_bounds)
{
    sink s;
    /* a line longer than the bound is refused, wherever the cut falls */
    char big[200];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    memcpy(big, "data: ", 6);
    for (size_t cut = 0; cut < sizeof(big); cut += 7)
        ck_assert_int_eq(feed_cut(big, &cut, 1, &s, 64), LR_ETOOLARGE);
    /* an event whose data lines add up past the bound, each line within it */
    ck_assert_int_eq(
        feed_cut("data: 0123456789\ndata: 0123456789\ndata: 0123456789\n\n", NULL, 0, &s, 24),
        LR_ETOOLARGE);
    ck_assert_int_eq(s.n, 0);
    /* exactly at the bound is fine */
    ck_assert_int_eq(feed_cut("data: 0123456789\n\n", NULL, 0, &s, 16), 0);
    ck_assert_int_eq(s.n, 1);
}
END_TEST

START_TEST(test_callback_stops)
{
    sink s;
    lc_sse r;
    lr_error err;
    lr_error_clear(&err);
    memset(&s, 0, sizeof(s));
    s.stop_after = 1;
    lc_sse_init(&r, 1024, on_event, &s);
    const char *t = "data: 1\n\ndata: 2\n\n";
    ck_assert_int_eq(lc_sse_feed(&r, t, strlen(t), &err), LR_ECANCELED);
    ck_assert_int_eq(s.n, 1);
    ck_assert_int_eq(err.code, LR_ECANCELED);
    lc_sse_free(&r);
    lc_sse_free(NULL);
}
END_TEST

static Suite *lc_sse_suite(void)
{
    Suite *s = suite_create("lc_sse");
    struct {
        const char *name;
        const TTest *fn;
    } cases[] = {{"line_endings", test_line_endings},
                 {"fields", test_fields},
                 {"ignored", test_ignored},
                 {"bounds", test_bounds},
                 {"callback_stops", test_callback_stops}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        TCase *tc = tcase_create(cases[i].name);
        tcase_set_timeout(tc, 30);
        tcase_add_test(tc, cases[i].fn);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(lc_sse_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
