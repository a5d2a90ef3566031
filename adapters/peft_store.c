/* peft_store.c — huge-page regions for adapter tensors, and the file read into one (see
 * peft_store.h). This module knows nothing of safetensors beyond where its data section starts;
 * parsing is core/safetensors, placing tensors is adapters/peft.
 */
#include "peft_store.h"

#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define PS_HUGE ((size_t)2 << 20)
#define PS_PAGE ((size_t)4096)

/* Released regions kept for the next loads: an adapter evicted and another loaded (the
 * registry's steady state) then reuses memory the process already touched. Fresh memory costs
 * a page fault and a zeroing per page — on the VMs we measured, ~50 ms for a 20 MiB adapter
 * against ~10 ms for the whole load into reused memory. At most PS_KEEP regions and
 * PS_KEEP_BYTES in all; a region is reused for a request between half its size and its size. */
#define PS_KEEP 4
#define PS_KEEP_BYTES ((size_t)64 << 20)

static pthread_mutex_t ps_mu = PTHREAD_MUTEX_INITIALIZER;
static ps_region ps_kept[PS_KEEP];
static size_t ps_kept_bytes;

static int ps_take_kept(size_t len, ps_region *reg)
{
    int best = -1;
    pthread_mutex_lock(&ps_mu);
    for (int i = 0; i < PS_KEEP; i++)
        if (ps_kept[i].p && ps_kept[i].len >= len && ps_kept[i].len / 2 <= len &&
            (best < 0 || ps_kept[i].len < ps_kept[best].len))
            best = i;
    if (best >= 0) {
        *reg = ps_kept[best];
        ps_kept_bytes -= reg->len;
        ps_kept[best].p = NULL;
        ps_kept[best].len = 0;
    }
    pthread_mutex_unlock(&ps_mu);
    return best >= 0;
}

int ps_alloc(size_t n, ps_region *reg)
{
    reg->p = NULL;
    reg->len = 0;
    if (n == 0) n = 1;
    size_t len = (n + PS_PAGE - 1) & ~(PS_PAGE - 1);
    if (ps_take_kept(len, reg)) return 0;
    /* Over-allocate by one huge page and trim, so the region starts on a 2 MiB boundary and
     * the kernel can back all of it with huge pages. */
    size_t span = len + PS_HUGE;
    char *base = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return LR_ENOMEM;
    char *p = (char *)(((uintptr_t)base + PS_HUGE - 1) & ~(uintptr_t)(PS_HUGE - 1));
    if (p > base) munmap(base, (size_t)(p - base));
    size_t tail = (size_t)(base + span - (p + len));
    if (tail) munmap(p + len, tail);
#ifdef MADV_HUGEPAGE
    /* Advice only: without transparent huge pages this is plain 4 KiB pages. */
    if (len >= PS_HUGE) madvise(p, len, MADV_HUGEPAGE);
#endif
    reg->p = p;
    reg->len = len;
    return 0;
}

void ps_release(ps_region *reg)
{
    if (!reg->p) return;
    int kept = 0;
    pthread_mutex_lock(&ps_mu);
    if (ps_kept_bytes + reg->len <= PS_KEEP_BYTES)
        for (int i = 0; i < PS_KEEP && !kept; i++)
            if (!ps_kept[i].p) {
                ps_kept[i] = *reg;
                ps_kept_bytes += reg->len;
                kept = 1;
            }
    pthread_mutex_unlock(&ps_mu);
    if (!kept) munmap(reg->p, reg->len);
    reg->p = NULL;
    reg->len = 0;
}

int ps_contains(const ps_region *reg, const void *p)
{
    const char *c = p;
    return reg->p && c >= reg->p && c < reg->p + reg->len;
}

/* Bytes to put before the file so that its safetensors data section (at 8 + header length)
 * starts 64-byte aligned: tensors of whole cache lines are then aligned for the kernels. A file
 * too short to say is not padded (the parser will refuse it). */
static size_t data_pad(int fd, size_t size)
{
    unsigned char h[8];
    if (size < 8 || pread(fd, h, 8, 0) != 8) return 0;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | h[i];
    return (size_t)((64 - (8 + n) % 64) % 64);
}

/* lr_read_file_with's allocator: a region whose file bytes start at data_pad. */
static char *region_alloc(void *ctx, int fd, size_t size, size_t need, size_t *off)
{
    ps_region *reg = ctx;
    *off = data_pad(fd, size);
    if (ps_alloc(*off + need, reg) != 0) return NULL;
    return reg->p;
}

static void region_release(void *ctx, char *buf)
{
    (void)buf;
    ps_release(ctx);
}

int ps_read_file(const char *path, const char *label, size_t max, ps_region *reg, char **data,
                 size_t *len, lr_error *err)
{
    reg->p = NULL;
    reg->len = 0;
    *len = 0;
    const lr_read_alloc ra = {region_alloc, region_release, reg};
    return lr_read_file_with(path, label, max, &ra, data, len, err);
}
