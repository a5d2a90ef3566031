/* peft_store.h — the bulk memory of a loaded adapter (prefix ps_).
 *
 * An adapter's tensors are tens of MiB that are written once at load and then only read. Taken
 * from malloc they cost one page fault per 4 KiB on first touch, which on a virtual machine
 * dominated the whole load: an 18.6 MiB rank-16 all-module F32 adapter of a SmolLM-135M-shaped
 * base took 72-100 ms, nearly all of it page faults, twice over (the file read into a malloc'd
 * buffer, then every tensor copied into its own malloc'd array). With huge pages and tensors
 * used in place it takes 10-15 ms (perf: the kernel's copy from the page cache and the zeroing
 * of the huge pages are what is left). So:
 *   - the safetensors file is read straight into one anonymous mapping asking for transparent
 *     huge pages (MADV_HUGEPAGE; 2 MiB per fault), placed so that its data section starts on a
 *     64-byte boundary — F32 tensors are then used where they lie, with no second copy;
 *   - what must be converted (F16/BF16, unaligned tensors, DoRA factors) goes to a second such
 *     region sized before anything is converted.
 * The file is read, not mmapped: a private copy cannot fault (SIGBUS) if the file is truncated
 * or rewritten while in use. Like lr_read_file (core/util), the read refuses anything but a
 * regular file, opens non-blocking (a FIFO never blocks the loader), enforces a size limit, and
 * re-reads a few times a file whose size or times moved while it was read.
 */
#ifndef LR_PEFT_STORE_H
#define LR_PEFT_STORE_H

#include <stddef.h>

#include "err.h"

/* One anonymous mapping: p (2 MiB aligned) .. p + len. {NULL, 0} is an empty region. */
typedef struct ps_region {
    char *p;
    size_t len;
} ps_region;

/* Read the whole file at path into a new region (released with ps_release). On success *data
 * points at the file's first byte inside the region and *len is its size; the byte after it is
 * NUL. `label` names the file in messages. Errors: LR_ENOTFOUND / LR_EIO (cannot open or read),
 * LR_EFORMAT (not a regular file; it kept changing while read), LR_ETOOLARGE (over max bytes),
 * LR_ENOMEM. */
int ps_read_file(const char *path, const char *label, size_t max, ps_region *reg, char **data,
                 size_t *len, lr_error *err);

/* A new zero-filled region of at least n bytes (n > 0). Returns 0 or LR_ENOMEM. */
int ps_alloc(size_t n, ps_region *reg);

/* Unmap the region and empty it. ps_release on an empty region does nothing. */
void ps_release(ps_region *reg);

/* 1 if p lies inside the region. */
int ps_contains(const ps_region *reg, const void *p);

#endif
