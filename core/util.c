/* util.c — helpers shared by several modules (see util.h). This is not a grab-bag for anything
 * small: a helper moves here only once two modules had written it twice. */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* True if two fstat results describe the same file contents as far as the kernel can tell. */
static int same_file_state(const struct stat *a, const struct stat *b)
{
    return a->st_size == b->st_size && a->st_ino == b->st_ino &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
           a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/* One attempt: read the whole file open on fd into memory from a. *changed is set when the
 * file's size or times moved while we read it: a file rewritten in place can then read back at
 * its full length with wrong contents (measured: a quarter of full-length reads during in-place
 * rewrites), which a format without checksums (safetensors) cannot detect by itself. */
static int read_once(int fd, const char *label, size_t max, const lr_read_alloc *a, char **data,
                     size_t *len, int *changed, lr_error *err)
{
    struct stat st, after;
    *changed = 0;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        return lr_error_set(err, LR_EFORMAT, "%s: not a regular file", label);
    if ((uint64_t)st.st_size > max)
        return lr_error_set(err, LR_ETOOLARGE, "%s: %lld bytes is over the %zu-byte limit", label,
                            (long long)st.st_size, max);
    size_t size = (size_t)st.st_size, got = 0, off = 0;
    char *mem = a->alloc(a->ctx, fd, size, size + 1, &off);
    if (!mem) return lr_error_set(err, LR_ENOMEM, "%s: out of memory", label);
    char *buf = mem + off;
    /* A regular file does not block; read until EOF or the size fstat saw (it may shrink). */
    while (got < size) {
        ssize_t k = pread(fd, buf + got, size - got, (off_t)got);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) {
            int e = errno;
            a->release(a->ctx, mem);
            return lr_error_set(err, LR_EIO, "%s: read failed: %s", label, strerror(e));
        }
        if (k == 0) break;
        got += (size_t)k;
    }
    if (fstat(fd, &after) != 0 || !same_file_state(&st, &after)) {
        a->release(a->ctx, mem);
        *changed = 1;
        /* Not a server fault: the folder is not in a consistent state (a 4xx, like a file
         * caught half-written). */
        return lr_error_set(err, LR_EFORMAT,
                            "%s: the file changed while it was being read (is it being rewritten?)",
                            label);
    }
    buf[got] = '\0';
    *data = buf;
    if (len) *len = got;
    return 0;
}

int lr_read_file_with(const char *path, const char *label, size_t max, const lr_read_alloc *a,
                      char **data, size_t *len, lr_error *err)
{
    *data = NULL;
    if (len) *len = 0;
    if (!label) label = path;
    /* O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return lr_error_set(err, errno == ENOENT ? LR_ENOTFOUND : LR_EIO, "%s: cannot open: %s",
                            label, strerror(errno));
    /* A file being rewritten is read again a few times before we give up on it. */
    int rc = 0, changed = 0;
    for (int attempt = 0; attempt < 5; attempt++) {
        if ((rc = read_once(fd, label, max, a, data, len, &changed, err)) == 0 || !changed) break;
        usleep(2000u << attempt);
    }
    close(fd);
    return rc;
}

static char *heap_alloc(void *ctx, int fd, size_t size, size_t need, size_t *off)
{
    (void)ctx, (void)fd, (void)size;
    *off = 0;
    return malloc(need);
}

static void heap_release(void *ctx, char *buf)
{
    (void)ctx;
    free(buf);
}

int lr_read_file(const char *path, const char *label, size_t max, char **out, size_t *len,
                 lr_error *err)
{
    const lr_read_alloc heap = {heap_alloc, heap_release, NULL};
    return lr_read_file_with(path, label, max, &heap, out, len, err);
}

/* Linux 5.14; older headers lack the name, older kernels answer EINVAL (see lr_prefault). */
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

void *lr_map_huge(size_t len, size_t *mapped)
{
    *mapped = 0;
    if (len == 0 || len > SIZE_MAX / 2) return NULL;
    len = (len + LR_PAGE - 1) & ~(LR_PAGE - 1);
    size_t span = len + LR_HUGE;
    char *base = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return NULL;
    char *p = (char *)(((uintptr_t)base + LR_HUGE - 1) & ~(uintptr_t)(LR_HUGE - 1));
    if (p > base) munmap(base, (size_t)(p - base));
    size_t tail = (size_t)(base + span - (p + len));
    if (tail) munmap(p + len, tail);
#ifdef MADV_HUGEPAGE
    /* Advice only: without transparent huge pages this is plain 4 KiB pages. */
    if (len >= LR_HUGE) madvise(p, len, MADV_HUGEPAGE);
#endif
    *mapped = len;
    return p;
}

void lr_unmap(void *p, size_t mapped)
{
    if (p) munmap(p, mapped);
}

int lr_prefault(void *p, size_t len)
{
    char *c = p;
    for (size_t off = 0; off < len; off += LR_HUGE) {
        size_t n = len - off < LR_HUGE ? len - off : LR_HUGE;
        if (madvise(c + off, n, MADV_POPULATE_WRITE) == 0) continue;
        if (errno != EINVAL) return -1;
        for (size_t k = 0; k < n; k += LR_PAGE)
            ((volatile char *)c)[off + k] = 0;
    }
    return 0;
}
