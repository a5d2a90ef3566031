/* util.c — helpers shared by several modules (see util.h). This is not a grab-bag for anything
 * small: a helper moves here only once two modules had written it twice. */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int lr_read_file(const char *path, const char *label, size_t max, char **out, size_t *len,
                 lr_error *err)
{
    *out = NULL;
    if (len) *len = 0;
    if (!label) label = path;
    /* O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return lr_error_set(err, errno == ENOENT ? LR_ENOTFOUND : LR_EIO, "%s: cannot open: %s",
                            label, strerror(errno));
    int rc = 0;
    char *buf = NULL;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = lr_error_set(err, LR_EFORMAT, "%s: not a regular file", label);
        goto out;
    }
    if ((uint64_t)st.st_size > max) {
        rc = lr_error_set(err, LR_ETOOLARGE, "%s: %lld bytes is over the %zu-byte limit", label,
                          (long long)st.st_size, max);
        goto out;
    }
    size_t size = (size_t)st.st_size, got = 0;
    if (!(buf = malloc(size + 1))) {
        rc = lr_error_set(err, LR_ENOMEM, "%s: out of memory", label);
        goto out;
    }
    /* A regular file does not block; read until EOF or the size fstat saw (it may shrink). */
    while (got < size) {
        ssize_t k = read(fd, buf + got, size - got);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) {
            rc = lr_error_set(err, LR_EIO, "%s: read failed: %s", label, strerror(errno));
            goto out;
        }
        if (k == 0) break;
        got += (size_t)k;
    }
    buf[got] = '\0';
    *out = buf;
    buf = NULL;
    if (len) *len = got;
out:
    free(buf);
    close(fd);
    return rc;
}
