/* http.h — the HTTP front end on libmicrohttpd: one thread per connection (so an SSE stream or
 * a stalled client never blocks anyone else), idle connections closed after a timeout, bodies
 * accumulated up to a limit, every request handed to api_handle().
 */
#ifndef LR_HTTP_H
#define LR_HTTP_H

#include <stdint.h>

#include "api.h"
#include "err.h"

typedef struct http_server http_server;

typedef struct http_params {
    const char *host;       /* address to bind (IPv4 or IPv6 literal, or a name) */
    int port;               /* 0 = ephemeral */
    int64_t max_body_bytes; /* 413 past it */
    int idle_timeout;       /* seconds a connection may stay idle/stalled */
    int header_timeout;     /* seconds to deliver a whole request (headers + body), 0 = none */
    int max_connections;
    api_ctx *api;                        /* borrowed; outlives the server */
    void (*on_request_done)(void *user); /* called after each request (wakes the control loop) */
    void *user;
} http_params;

/* Bind and start serving. *port_out is the real port. Errors: LR_EIO with the reason
 * ("cannot bind 127.0.0.1:8080: address in use"). */
int http_start(const http_params *p, lr_error *err, http_server **out, int *port_out);
/* Connections closed because a request did not arrive whole within header_timeout. */
long long http_header_timeouts(const http_server *s);
/* Requests currently being served (from the first byte to the last byte of the reply). */
int http_in_flight(const http_server *s);
/* Stop accepting, close every connection, join their threads, free. http_stop(NULL) is a no-op. */
void http_stop(http_server *s);

#endif
