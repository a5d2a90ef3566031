/* err.h — lorad's error codes and the error struct that becomes an HTTP error body.
 *
 * Every fallible function returns 0 or a negative lr_err. Functions that can say more fill a
 * caller-owned lr_error (may be NULL): a code, the HTTP status it maps to, and a message in full
 * sentences naming what was wrong and where ("model.safetensors: tensor 'x' ends past the file").
 */
#ifndef LR_ERR_H
#define LR_ERR_H

#include <stddef.h>

/* X(name, value, http status, text) */
#define LR_ERRNO_MAP(X)                                                                            \
    X(OK, 0, 200, "success")                                                                       \
    X(ENOMEM, -1, 500, "out of memory")                                                            \
    X(EIO, -2, 500, "i/o error")                                                                   \
    X(EFORMAT, -3, 400, "malformed input")                                                         \
    X(EINVAL, -4, 400, "invalid argument")                                                         \
    X(EUNSUPPORTED, -5, 400, "unsupported")                                                        \
    X(ENOTFOUND, -6, 404, "not found")                                                             \
    X(ERANGE, -7, 400, "value out of range")                                                       \
    X(EBUSY, -8, 429, "busy")                                                                      \
    X(ETOOLARGE, -9, 413, "too large")                                                             \
    X(EINCOMPAT, -10, 422, "incompatible")                                                         \
    X(EAUTH, -11, 401, "unauthorized")                                                             \
    X(EFORBIDDEN, -12, 403, "forbidden")                                                           \
    X(ESHUTDOWN, -13, 503, "shutting down")                                                        \
    X(ECANCELED, -14, 499, "canceled")                                                             \
    X(EINTERNAL, -15, 500, "internal error")

typedef enum {
#define LR_ERR_ENUM(name, val, http, text) LR_##name = (val),
    LR_ERRNO_MAP(LR_ERR_ENUM)
#undef LR_ERR_ENUM
} lr_err;

/* A detailed error. Plain data, caller-owned; usually on the stack. */
typedef struct lr_error {
    int code;      /* an lr_err */
    int http;      /* HTTP status for this error (may be refined by the setter) */
    char msg[512]; /* full sentence(s), NUL-terminated, never contains secrets */
} lr_error;

/* Static text of an error code ("out of memory"); never NULL. */
const char *lr_strerror(int code);
/* The HTTP status an error code maps to by default. */
int lr_err_http(int code);
/* Fill *e (if non-NULL) with code, its default HTTP status and a printf-style message.
 * Returns code, so `return lr_error_set(e, LR_EFORMAT, "...")` reads naturally. */
int lr_error_set(lr_error *e, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Prefix an existing message: "file.json: " + old message. Returns e->code (or 0 if e is NULL). */
int lr_error_prefix(lr_error *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Reset to LR_OK with an empty message. */
void lr_error_clear(lr_error *e);

/* Programmer errors: on in release builds too. */
#define LR_ASSERT(cond)                                                                            \
    do {                                                                                           \
        if (!(cond))                                                                               \
            lr_assert_fail(#cond, __FILE__, __LINE__);                                             \
    } while (0)
void lr_assert_fail(const char *cond, const char *file, int line) __attribute__((noreturn));

#endif
