/* util.h — small helpers that more than one module needs and that belong to none of them.
 *
 * Prefix lr_. Nothing here allocates on a hot path; these run at load time.
 */
#ifndef LR_UTIL_H
#define LR_UTIL_H

#include <stddef.h>

#include "err.h"

/* Read the whole regular file at path, of at most max bytes, into a new NUL-terminated buffer
 * (*out, caller frees; *len its length without the NUL, len may be NULL). The file is opened
 * non-blocking so that a FIFO or device in its place is refused instead of hanging the caller.
 * Messages name the file by label (the path itself when label is NULL): a caller whose errors
 * reach clients passes a bare file name so that no server path leaks.
 * Returns 0, or LR_ENOTFOUND (no such file), LR_EIO (cannot open or read), LR_EFORMAT (not a
 * regular file), LR_ETOOLARGE (over max), LR_ENOMEM; *out is NULL on error. */
int lr_read_file(const char *path, const char *label, size_t max, char **out, size_t *len,
                 lr_error *err);

#endif
