/* http.c — libmicrohttpd glue: connection threads, body accumulation, replies and SSE, and the
 * per-request bookkeeping for /metrics and drain. Routing and JSON live in api.c.
 *
 * Threading mode: MHD_USE_THREAD_PER_CONNECTION with an internal poll() listener. A streamed
 * reply's content reader blocks (in its own connection thread) until the engine produced text,
 * which is allowed in this mode; a stalled client only holds its own thread, and
 * MHD_OPTION_CONNECTION_TIMEOUT closes it once idle. A client that disconnects is noticed by
 * polling its socket for POLLRDHUP while we wait, so its sequences are canceled promptly.
 *
 * Header timeout: MHD's timeout is an idle timeout, which a slowloris client (one byte every few
 * seconds) never trips. So every connection is also on a list with the time its current request
 * began (the connection's start, or the end of its previous reply); a watchdog thread shuts down
 * the socket of any connection that has not delivered a whole request (headers and body) within
 * --header-timeout. MHD then sees end-of-file and closes it on its own thread. Entries leave
 * the list in MHD's CLOSED notification, which comes before MHD closes the descriptor, so the
 * watchdog (holding the same lock) never touches a reused descriptor. */
#include "http.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "log.h"

/* One accepted connection, for the header-timeout watchdog (MHD's socket context). */
typedef struct http_conn {
    int fd;
    int waiting;          /* 1 while a request is being received (the deadline applies) */
    int shut;             /* the watchdog shut it down already */
    struct timespec since; /* when the current request began */
    struct http_conn *prev, *next;
} http_conn;

struct http_server {
    struct MHD_Daemon *d;
    http_params p;
    atomic_int in_flight;
    pthread_mutex_t mu; /* guards conns and stop */
    pthread_cond_t cv;
    http_conn *conns;
    int stop;
    int watchdog_on;
    pthread_t watchdog;
    atomic_llong header_timeouts;
};

/* Per-request state (MHD's con_cls). */
typedef struct http_req {
    http_server *srv;
    struct MHD_Connection *conn;
    char *body;
    size_t len, cap;
    int too_large;
    size_t discarded; /* body bytes read and dropped past the limit */
    struct timespec t0;
    met_endpoint ep;
    int status;
    int handled; /* api_handle() answered it */
} http_req;

static double since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) * 1e-9;
}

/* api_conn.alive: has the peer closed or reset its side? */
static int conn_alive(void *user)
{
    http_req *r = user;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return 1;
    struct pollfd pfd = {.fd = ci->connect_fd, .events = POLLRDHUP};
    if (poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)))
        return 0;
    return 1;
}

/* The connection's watchdog entry: mark a request as received whole (waiting 0) or a new one
 * as begun (waiting 1, clock restarted). */
static void conn_mark(http_server *srv, struct MHD_Connection *conn, int waiting)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    http_conn *c = ci ? ci->socket_context : NULL;
    if (!c) return;
    pthread_mutex_lock(&srv->mu);
    c->waiting = waiting;
    clock_gettime(CLOCK_MONOTONIC, &c->since);
    pthread_mutex_unlock(&srv->mu);
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    http_server *srv = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        http_conn *c = calloc(1, sizeof *c);
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (!c || !ci) {
            free(c); /* without an entry the connection only has the idle timeout */
            *socket_context = NULL;
            return;
        }
        c->fd = ci->connect_fd;
        c->waiting = 1;
        clock_gettime(CLOCK_MONOTONIC, &c->since);
        pthread_mutex_lock(&srv->mu);
        c->next = srv->conns;
        if (srv->conns) srv->conns->prev = c;
        srv->conns = c;
        pthread_mutex_unlock(&srv->mu);
        *socket_context = c;
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        http_conn *c = *socket_context;
        if (!c) return;
        pthread_mutex_lock(&srv->mu);
        if (c->prev) c->prev->next = c->next;
        else srv->conns = c->next;
        if (c->next) c->next->prev = c->prev;
        pthread_mutex_unlock(&srv->mu);
        free(c);
        *socket_context = NULL;
    }
}

/* The header-timeout watchdog: every 200 ms, shut down connections whose request is late. */
static void *watchdog_main(void *arg)
{
    http_server *srv = arg;
    pthread_mutex_lock(&srv->mu);
    while (!srv->stop) {
        struct timespec now, until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += 200 * 1000 * 1000;
        if (until.tv_nsec >= 1000000000) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&srv->cv, &srv->mu, &until);
        clock_gettime(CLOCK_MONOTONIC, &now);
        for (http_conn *c = srv->conns; c && !srv->stop; c = c->next) {
            if (!c->waiting || c->shut) continue;
            double age = (double)(now.tv_sec - c->since.tv_sec) +
                         (double)(now.tv_nsec - c->since.tv_nsec) * 1e-9;
            if (age < (double)srv->p.header_timeout) continue;
            shutdown(c->fd, SHUT_RDWR);
            c->shut = 1;
            atomic_fetch_add(&srv->header_timeouts, 1);
            log_msg(LOG_DEBUG, "http: closing a connection: no whole request within %ds",
                    srv->p.header_timeout);
        }
    }
    pthread_mutex_unlock(&srv->mu);
    return NULL;
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    ssize_t n = api_stream_read(cls, buf, max);
    if (n > 0) return n;
    return n == 0 ? MHD_CONTENT_READER_END_OF_STREAM : MHD_CONTENT_READER_END_WITH_ERROR;
}

static void stream_free(void *cls)
{
    api_stream_free(cls);
}

static enum MHD_Result send_reply(http_req *r, api_reply *rep)
{
    struct MHD_Response *resp;
    if (rep->stream) {
        resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, stream_reader,
                                                 rep->stream, stream_free);
        if (!resp) {
            api_stream_free(rep->stream);
            return MHD_NO;
        }
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    } else {
        resp = MHD_create_response_from_buffer(rep->len, rep->body ? rep->body : (char *)"",
                                               rep->body ? MHD_RESPMEM_MUST_FREE
                                                         : MHD_RESPMEM_PERSISTENT);
        if (!resp) {
            free(rep->body);
            return MHD_NO;
        }
    }
    if (rep->content_type) MHD_add_response_header(resp, "Content-Type", rep->content_type);
    if (rep->allow) MHD_add_response_header(resp, "Allow", rep->allow);
    if (atomic_load(&r->srv->p.api->draining)) MHD_add_response_header(resp, "Connection", "close");
    enum MHD_Result ok = MHD_queue_response(r->conn, (unsigned)rep->status, resp);
    MHD_destroy_response(resp);
    return ok;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_size, void **con_cls)
{
    http_server *srv = cls;
    http_req *r = *con_cls;
    if (!r) {
        /* First call: headers only. */
        r = calloc(1, sizeof *r);
        if (!r) return MHD_NO;
        r->srv = srv;
        r->conn = conn;
        r->ep = MET_EP_OTHER;
        r->status = 500;
        clock_gettime(CLOCK_MONOTONIC, &r->t0);
        atomic_fetch_add(&srv->in_flight, 1);
        *con_cls = r;
        return MHD_YES;
    }
    if (*upload_size > 0) {
        /* Accumulate the body up to the limit; past it, keep reading and discard, so that the
         * client can read our 413 instead of seeing a reset connection. */
        size_t n = *upload_size;
        *upload_size = 0;
        if (r->too_large || r->len + n > (size_t)srv->p.max_body_bytes) {
            /* A client that keeps sending far past the limit is hostile: drop it. */
            r->discarded += n;
            if (r->discarded > 16 * (size_t)srv->p.max_body_bytes + (16u << 20)) return MHD_NO;
            r->too_large = 1;
            free(r->body);
            r->body = NULL;
            r->len = r->cap = 0;
            return MHD_YES;
        }
        if (r->len + n + 1 > r->cap) {
            size_t c = r->cap ? r->cap : 4096;
            while (c < r->len + n + 1)
                c *= 2;
            char *b = realloc(r->body, c);
            if (!b) return MHD_NO;
            r->body = b;
            r->cap = c;
        }
        memcpy(r->body + r->len, upload_data, n);
        r->len += n;
        return MHD_YES;
    }
    /* The request arrived whole: from here only the idle timeout applies. */
    conn_mark(srv, conn, 0);
    api_conn ac = {.alive = conn_alive,
                   .user = r,
                   .authorization = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                                MHD_HTTP_HEADER_AUTHORIZATION)};
    api_reply rep;
    api_handle(srv->p.api, method, url, r->body ? r->body : "", r->len, r->too_large, &ac, &rep);
    free(r->body);
    r->body = NULL;
    r->ep = rep.ep;
    r->status = rep.status;
    r->handled = 1;
    if (rep.status == 499) {
        /* The client is gone; there is nobody to answer. */
        free(rep.body);
        return MHD_NO;
    }
    return send_reply(r, &rep);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    http_server *srv = cls;
    http_req *r = *con_cls;
    if (!r) return;
    *con_cls = NULL;
    int status = r->status;
    /* A streamed reply cut short by the client counts as 499 (client closed request), and so
     * does a request whose client left (or was cut off) before it was handled: neither is a
     * server error. */
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && (status == 200 || !r->handled))
        status = 499;
    met_request_done(srv->p.api->met, r->ep, status, since(&r->t0));
    log_msg(LOG_DEBUG, "%s %d %.3fs", met_endpoint_name(r->ep), status, since(&r->t0));
    free(r->body);
    free(r);
    /* A keep-alive connection now waits for its next request: the deadline applies again. */
    conn_mark(srv, conn, 1);
    atomic_fetch_sub(&srv->in_flight, 1);
    if (srv->p.on_request_done) srv->p.on_request_done(srv->p.user);
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    log_msg(LOG_DEBUG, "http: %s", line);
}

int http_start(const http_params *p, lr_error *err, http_server **out, int *port_out)
{
    *out = NULL;
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", p->port);
    int gai = getaddrinfo(p->host, port, &hints, &ai);
    if (gai != 0)
        return lr_error_set(err, LR_EINVAL, "--host '%s': %s", p->host, gai_strerror(gai));
    http_server *s = calloc(1, sizeof *s);
    if (!s) {
        freeaddrinfo(ai);
        return lr_error_set(err, LR_ENOMEM, "out of memory");
    }
    s->p = *p;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_POLL | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    s->d =
        MHD_start_daemon(flags, (uint16_t)p->port, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR,
                         ai->ai_addr, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)p->idle_timeout,
                         MHD_OPTION_CONNECTION_LIMIT, (unsigned)p->max_connections,
                         MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_EXTERNAL_LOGGER,
                         mhd_log, s, MHD_OPTION_LISTENING_ADDRESS_REUSE, 1u,
                         MHD_OPTION_NOTIFY_CONNECTION, on_connection, s, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!s->d) {
        pthread_cond_destroy(&s->cv);
        pthread_mutex_destroy(&s->mu);
        free(s);
        return lr_error_set(err, LR_EIO,
                            "cannot listen on %s:%d (address in use, or not an address of this "
                            "machine; run with --log-level debug for details)",
                            p->host, p->port);
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    *port_out = di ? di->port : p->port;
    if (p->header_timeout > 0 && pthread_create(&s->watchdog, NULL, watchdog_main, s) == 0)
        s->watchdog_on = 1;
    else if (p->header_timeout > 0)
        log_msg(LOG_WARN, "http: no header-timeout watchdog (cannot start a thread)");
    *out = s;
    return 0;
}

int http_in_flight(const http_server *s)
{
    return s ? atomic_load(&((http_server *)s)->in_flight) : 0;
}

long long http_header_timeouts(const http_server *s)
{
    return s ? atomic_load(&((http_server *)s)->header_timeouts) : 0;
}

void http_stop(http_server *s)
{
    if (!s) return;
    /* The watchdog first, so that it never sees a connection MHD is tearing down unlisted. */
    if (s->watchdog_on) {
        pthread_mutex_lock(&s->mu);
        s->stop = 1;
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->watchdog, NULL);
    }
    MHD_stop_daemon(s->d);
    /* Every connection got its CLOSED notification; free what could be left regardless. */
    while (s->conns) {
        http_conn *c = s->conns;
        s->conns = c->next;
        free(c);
    }
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
}
