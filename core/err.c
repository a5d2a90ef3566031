/* err.c — error codes, their text and HTTP mapping, and the lr_error helpers.
 * This module only formats errors; it never logs or exits (except LR_ASSERT's abort). */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *lr_strerror(int code)
{
    switch (code) {
#define LR_ERR_TEXT(name, val, http, text)                                                         \
    case (val):                                                                                    \
        return text;
        LR_ERRNO_MAP(LR_ERR_TEXT)
#undef LR_ERR_TEXT
    default:
        return "unknown error";
    }
}

int lr_err_http(int code)
{
    switch (code) {
#define LR_ERR_HTTP(name, val, http, text)                                                         \
    case (val):                                                                                    \
        return http;
        LR_ERRNO_MAP(LR_ERR_HTTP)
#undef LR_ERR_HTTP
    default:
        return 500;
    }
}

int lr_error_set(lr_error *e, int code, const char *fmt, ...)
{
    if (!e)
        return code;
    e->code = code;
    e->http = lr_err_http(code);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return code;
}

int lr_error_prefix(lr_error *e, const char *fmt, ...)
{
    if (!e)
        return 0;
    char head[256], old[sizeof e->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof head, fmt, ap);
    va_end(ap);
    memcpy(old, e->msg, sizeof old);
    snprintf(e->msg, sizeof e->msg, "%s%s", head, old);
    return e->code;
}

void lr_error_clear(lr_error *e)
{
    if (!e)
        return;
    e->code = LR_OK;
    e->http = 200;
    e->msg[0] = '\0';
}

void lr_assert_fail(const char *cond, const char *file, int line)
{
    fprintf(stderr, "lorad: assertion failed: %s (%s:%d)\n", cond, file, line);
    abort();
}
