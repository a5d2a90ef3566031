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
 * Even in huge pages, the first touch of memory dominated the first loads of a fresh process
 * (~47-52 ms against ~6.5 ms for a load into memory the process had touched before). So regions
 * come from a pool of already-touched memory: an arena that ps_reserve maps and faults in at
 * startup (lorad does it in a background thread, --adapter-reserve-mb), plus regions released by
 * unloaded adapters. The pool splits and merges spans; only what it cannot serve is mapped fresh.
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

/* A region of at least n bytes (n > 0), 2 MiB aligned. Its contents are UNSPECIFIED: memory
 * from the pool holds whatever its previous user (or the reserve) wrote, so a caller must write
 * every byte it later reads (peft.c does: the file bytes are read in, each converted tensor is
 * written whole; padding is never read). Taken from the pool (best fit; a larger free span is
 * split, the part handed out rounded up to 2 MiB so the rest stays huge-page aligned) when a
 * free span is large enough, else freshly mapped. Returns 0 or LR_ENOMEM. Thread-safe. */
int ps_alloc(size_t n, ps_region *reg);

/* Give the region back and empty it: it joins the pool, merged with the free spans it touches.
 * The pool keeps at most max(64 MiB, bytes reserved) in 64 spans: reserved memory always comes
 * back (freshly mapped spans are unmapped to make room for it); a fresh region that does not fit
 * is unmapped. Releasing a region twice, or one overlapping a free span, is a programmer error
 * (LR_ASSERT). ps_release on an empty region does nothing. Thread-safe. */
void ps_release(ps_region *reg);

/* Map `bytes` (rounded up to 2 MiB) of huge-page memory, fault every page in now, and add it to
 * the pool, so that later ps_alloc calls find memory that is already resident (lr-bench, 19.5
 * MiB F32 adapter: ~5 ms per load into reserved memory against ~47-57 ms into fresh memory; the
 * reserve of 256 MiB took 20-600 ms, the slow end when the VM's host first backs the memory).
 * Meant to run once at startup, off the request path (lorad runs it in a thread of its own;
 * ps_alloc calls racing it just map fresh memory). Calling it again adds another arena (at most
 * 8). bytes == 0 does nothing. Returns 0 or LR_ENOMEM (nothing is kept then; the caller may carry on without it). */
int ps_reserve(size_t bytes);

/* The pool's state, for logs, the bench and tests. */
typedef struct ps_stats {
    size_t reserved;     /* bytes ps_reserve added, in all */
    size_t pool_bytes;   /* bytes in free spans (resident, ready for ps_alloc) */
    size_t pool_largest; /* the largest free span */
    size_t pool_cap;     /* most bytes the pool keeps: max(64 MiB, reserved) */
    size_t in_use;       /* bytes of regions handed out by ps_alloc and not yet released */
    int pool_spans;      /* free spans */
} ps_stats;

void ps_get_stats(ps_stats *st);

/* Copy up to max free spans, in address order, into out; returns how many there are in all. */
int ps_pool_spans(ps_region *out, int max);

/* Test and bench hook: while on != 0, ps_alloc ignores the pool and maps fresh memory (what a
 * load costs without the reserve). ps_release is unchanged. */
void ps_pool_bypass(int on);

/* 1 if p lies inside the region. */
int ps_contains(const ps_region *reg, const void *p);

#endif
