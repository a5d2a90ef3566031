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

/* Where lr_read_file_with puts a file: alloc returns memory for `need` bytes (the file and its
 * NUL) of a file of `size` bytes open on fd, and in *off how many bytes into it the file starts
 * (e.g. to align what the file holds); NULL when out of memory. release gives back a buffer
 * alloc returned (the read failed or the file changed). */
typedef struct lr_read_alloc {
    char *(*alloc)(void *ctx, int fd, size_t size, size_t need, size_t *off);
    void (*release)(void *ctx, char *buf);
    void *ctx;
} lr_read_alloc;

/* lr_read_file into memory from a: *data points at the file's first byte (NUL after its last),
 * *len is its length. Same checks, errors and retries as lr_read_file. */
int lr_read_file_with(const char *path, const char *label, size_t max, const lr_read_alloc *a,
                      char **data, size_t *len, lr_error *err);

/* The transparent huge page and base page sizes lr_map_huge and lr_prefault work in. */
#define LR_HUGE ((size_t)2 << 20)
#define LR_PAGE ((size_t)4096)

/* A fresh private anonymous mapping of at least len bytes starting on a 2 MiB boundary, with
 * MADV_HUGEPAGE advice, so the kernel can back all of it with transparent huge pages (fewer
 * page faults, and fewer TLB misses for whoever streams through it). Over-allocates by 2 MiB
 * and trims. *mapped gets the length to give lr_unmap (len rounded up to 4 KiB). NULL when the
 * mapping fails. */
void *lr_map_huge(size_t len, size_t *mapped);
/* munmap of what lr_map_huge returned (p may be NULL). */
void lr_unmap(void *p, size_t mapped);
/* Fault every page of [p, p + len) in for writing (page aligned), 2 MiB at a time:
 * MADV_POPULATE_WRITE (Linux 5.14) reports a failure instead of leaving it to the OOM killer;
 * where the kernel lacks it, one byte per 4 KiB page is written (the memory must still be
 * fresh: this writes zeros). Per 2 MiB, because one call over the whole range holds the
 * process's mmap lock throughout (another thread's mmap waited 2 -> 350 ms). MAP_POPULATE is
 * no use: on a private mapping it maps the shared zero page, and every later write still
 * faults. Returns 0, or -1 (errno) when the memory cannot be had. */
int lr_prefault(void *p, size_t len);

#endif
