/* lc_sse.h — an incremental Server-Sent Events reader for loractl.
 *
 * Bytes arrive from libcurl in arbitrary chunks; lc_sse_feed() splits them into lines (LF, CRLF
 * or CR, even when a CRLF pair straddles two chunks), joins the `data:` lines of one event with
 * "\n" and calls the event callback at each blank line, as the WHATWG EventSource algorithm does.
 * Other fields (event:, id:, retry:) and comment lines (":...") are ignored: lorad sends none that
 * loractl needs. An event still open at the end of the stream is dropped, as the spec says.
 */
#ifndef LC_SSE_H
#define LC_SSE_H

#include <stddef.h>

#include "err.h"

/* Called once per complete event with its data (NUL-terminated, borrowed until the callback
 * returns). Return 0 to go on, or a negative lr_err to stop: lc_sse_feed() then returns it. */
typedef int (*lc_sse_event_fn)(void *ud, const char *data, size_t len);

typedef struct lc_sse {
    char *line; /* the line being read (not yet terminated), heap, grows */
    size_t line_len, line_cap;
    char *data; /* the data of the event being read, heap, grows */
    size_t data_len, data_cap;
    int has_data;     /* a data: field was seen in this event */
    int after_cr;     /* the last byte was a CR: a following LF belongs to it */
    size_t max_bytes; /* refuse lines or events larger than this */
    lc_sse_event_fn fn;
    void *ud;
} lc_sse;

/* Start a reader; max_bytes bounds one line and one event's data. Allocates nothing yet. */
void lc_sse_init(lc_sse *s, size_t max_bytes, lc_sse_event_fn fn, void *ud);
/* Feed n bytes. Returns 0, LR_ETOOLARGE (a line or event past max_bytes), LR_ENOMEM, or what the
 * callback returned; err says which. After an error the reader must only be freed. */
int lc_sse_feed(lc_sse *s, const char *p, size_t n, lr_error *err);
/* Free the buffers (the struct itself is the caller's). lc_sse_free(NULL) does nothing. */
void lc_sse_free(lc_sse *s);

#endif
