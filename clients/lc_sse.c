/* lc_sse.c — the Server-Sent Events line splitter behind `loractl --stream`.
 *
 * This is only the framing layer (lines, fields, events); what an event's JSON means is
 * loractl.c's business. It holds at most one line and one event in memory, both bounded.
 */
#include "lc_sse.h"

#include <stdlib.h>
#include <string.h>

void lc_sse_init(lc_sse *s, size_t max_bytes, lc_sse_event_fn fn, void *ud)
{
    memset(s, 0, sizeof(*s));
    s->max_bytes = max_bytes;
    s->fn = fn;
    s->ud = ud;
}

void lc_sse_free(lc_sse *s)
{
    if (!s) return;
    free(s->line);
    free(s->data);
    s->line = s->data = NULL;
    s->line_len = s->line_cap = s->data_len = s->data_cap = 0;
}

/* Make room for `extra` more bytes plus a NUL in a growing buffer, bounded by max. */
static int grow(char **buf, size_t *cap, size_t len, size_t extra, size_t max, const char *what,
                lr_error *err)
{
    if (len + extra > max)
        return lr_error_set(err, LR_ETOOLARGE, "server-sent event %s longer than %zu bytes", what,
                            max);
    if (len + extra + 1 <= *cap) return 0;
    size_t ncap = *cap ? *cap : 256;
    while (ncap < len + extra + 1)
        ncap *= 2;
    char *nb = realloc(*buf, ncap);
    if (!nb) return lr_error_set(err, LR_ENOMEM, "out of memory reading a server-sent event");
    *buf = nb;
    *cap = ncap;
    return 0;
}

/* One complete line (without its terminator): a field, a comment or the blank line that ends an
 * event. */
static int on_line(lc_sse *s, lr_error *err)
{
    const char *ln = s->line ? s->line : "";
    size_t n = s->line_len;
    if (n == 0) {
        if (!s->has_data) return 0;
        s->has_data = 0;
        size_t len = s->data_len;
        s->data_len = 0;
        int rc = s->fn(s->ud, s->data ? s->data : "", len);
        if (rc < 0 && err && err->code == LR_OK)
            lr_error_set(err, rc, "the server-sent event handler stopped the stream");
        return rc;
    }
    if (ln[0] == ':') return 0; /* a comment (keep-alive) */
    const char *colon = memchr(ln, ':', n);
    size_t name_len = colon ? (size_t)(colon - ln) : n;
    if (name_len != 4 || memcmp(ln, "data", 4) != 0) return 0;
    const char *v = colon ? colon + 1 : ln + n;
    if (v < ln + n && *v == ' ') v++; /* one optional space after the colon belongs to the syntax */
    size_t vlen = (size_t)(ln + n - v);
    size_t sep = s->has_data ? 1 : 0;
    int rc = grow(&s->data, &s->data_cap, s->data_len, vlen + sep, s->max_bytes, "data", err);
    if (rc < 0) return rc;
    if (sep) s->data[s->data_len++] = '\n';
    memcpy(s->data + s->data_len, v, vlen);
    s->data_len += vlen;
    s->data[s->data_len] = '\0';
    s->has_data = 1;
    return 0;
}

int lc_sse_feed(lc_sse *s, const char *p, size_t n, lr_error *err)
{
    size_t i = 0;
    while (i < n) {
        if (s->after_cr) {
            s->after_cr = 0;
            if (p[i] == '\n') {
                i++;
                continue;
            }
        }
        /* Copy the run of ordinary bytes up to the next line terminator in one go. */
        size_t j = i;
        while (j < n && p[j] != '\n' && p[j] != '\r')
            j++;
        if (j > i) {
            int rc = grow(&s->line, &s->line_cap, s->line_len, j - i, s->max_bytes, "line", err);
            if (rc < 0) return rc;
            memcpy(s->line + s->line_len, p + i, j - i);
            s->line_len += j - i;
            s->line[s->line_len] = '\0';
        }
        if (j == n) break;
        s->after_cr = p[j] == '\r';
        int rc = on_line(s, err);
        s->line_len = 0;
        if (rc < 0) return rc;
        i = j + 1;
    }
    return 0;
}
