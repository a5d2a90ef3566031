/* peft_store.c — huge-page regions for adapter tensors, the pool of already-touched memory
 * they come from (filled at startup by ps_reserve), and the file read into one (see
 * peft_store.h). This module knows nothing of safetensors beyond where its data section starts;
 * parsing is core/safetensors, placing tensors is adapters/peft.
 */
#include "peft_store.h"

#include "util.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* The pool: free spans of memory the process has already touched, for the next loads. Fresh
 * memory costs a page fault and a zeroing per page (per 2 MiB with huge pages; on a VM the
 * host's first touch of guest memory comes on top): measured, ~47-52 ms for the first loads of
 * a 19.5 MiB adapter in a fresh process against ~6.5 ms into touched memory. Spans come from
 * arenas (ps_reserve: pre-faulted at startup) and from released fresh regions; they are kept
 * sorted by address and merged when they touch, so that an arena handed out and given back in
 * pieces becomes one span again. Arena memory and fresh memory never merge, so that fresh spans
 * can be told apart and unmapped whole.
 *
 * Capacity: the pool holds at most max(PS_KEEP_BYTES, reserved) bytes in at most PS_SPANS
 * spans. Arena memory always comes back (it is what the reserve was for): when it does not fit,
 * fresh spans are unmapped to make room. A fresh region that does not fit is unmapped. Only
 * when all slots hold arena spans is an arena piece unmapped (munmap of part of a mapping is
 * fine). A span is unmapped either by the release that owns it or, once, when it is evicted
 * from the pool — never both, never while handed out. One mutex guards everything; munmap runs
 * after it is dropped. */
#define PS_SPANS 64
#define PS_ARENAS 8
#define PS_KEEP_BYTES ((size_t)64 << 20)

static pthread_mutex_t ps_mu = PTHREAD_MUTEX_INITIALIZER;
static ps_region ps_free[PS_SPANS]; /* free spans, [0, ps_n) sorted by address, disjoint */
static int ps_n;
static ps_region ps_arena[PS_ARENAS]; /* what ps_reserve mapped, [0, ps_na) */
static int ps_na;
static size_t ps_free_bytes; /* sum of ps_free[].len */
static size_t ps_reserved;   /* bytes ps_reserve added, in all */
static size_t ps_in_use;     /* bytes handed out and not yet released */
static int ps_bypass;        /* ps_pool_bypass: ps_alloc maps fresh memory */

static size_t ps_cap(void)
{
    return ps_reserved > PS_KEEP_BYTES ? ps_reserved : PS_KEEP_BYTES;
}

/* The arena p lies in, or -1 for fresh memory. Spans and regions cut from an arena stay inside
 * it, so their first byte says which they are. (A fresh mapping can overlap an arena's range
 * only where a piece of it was unmapped; it then counts as arena memory, which is harmless.) */
static int arena_of(const char *p)
{
    for (int i = 0; i < ps_na; i++)
        if (ps_contains(&ps_arena[i], p)) return i;
    return -1;
}

static void span_remove(int i)
{
    memmove(&ps_free[i], &ps_free[i + 1], sizeof ps_free[0] * (size_t)(ps_n - i - 1));
    ps_n--;
}

/* Under ps_mu: the best-fitting free span for len bytes (a multiple of LR_PAGE), split if it is
 * larger than len rounded up to 2 MiB. Returns 1 and fills *reg, or 0 when no span is large
 * enough. */
static int pool_take(size_t len, ps_region *reg)
{
    int best = -1;
    for (int i = 0; i < ps_n; i++)
        if (ps_free[i].len >= len && (best < 0 || ps_free[i].len < ps_free[best].len)) best = i;
    if (best < 0) return 0;
    ps_region *s = &ps_free[best];
    /* Hand out whole 2 MiB units, so the rest of the span still starts on a huge page. */
    size_t take = (len + LR_HUGE - 1) & ~(LR_HUGE - 1);
    if (take >= s->len) {
        *reg = *s;
        span_remove(best);
    } else {
        reg->p = s->p;
        reg->len = take;
        s->p += take;
        s->len -= take;
    }
    ps_free_bytes -= reg->len;
    return 1;
}

/* Spans taken out of the pool under ps_mu, to be unmapped once it is dropped. */
typedef struct ps_evicted {
    ps_region r[PS_SPANS + 1];
    int n;
} ps_evicted;

/* Under ps_mu: move the largest fresh span (skipping index `keep`) to ev. Returns 0 when there
 * is none. */
static int evict_fresh(int keep, ps_evicted *ev)
{
    int best = -1;
    for (int i = 0; i < ps_n; i++)
        if (i != keep && arena_of(ps_free[i].p) < 0 &&
            (best < 0 || ps_free[i].len > ps_free[best].len))
            best = i;
    if (best < 0) return 0;
    ev->r[ev->n++] = ps_free[best];
    ps_free_bytes -= ps_free[best].len;
    span_remove(best);
    return 1;
}

/* Under ps_mu: put r into the pool, merged with the free spans of its kind it touches, within
 * the capacity (see above). Whatever must be unmapped — r itself when it is not kept, fresh
 * spans evicted for it — is added to ev. A free span overlapping r means r was released twice:
 * LR_ASSERT. */
static void pool_put(ps_region r, ps_evicted *ev)
{
    int i = 0;
    while (i < ps_n && ps_free[i].p < r.p)
        i++;
    /* ps_free[i - 1] lies below r and ps_free[i] above: neither may overlap it. */
    LR_ASSERT(i == 0 || ps_free[i - 1].p + ps_free[i - 1].len <= r.p);
    LR_ASSERT(i == ps_n || r.p + r.len <= ps_free[i].p);
    int kind = arena_of(r.p);
    if (kind < 0 && ps_free_bytes + r.len > ps_cap()) {
        ev->r[ev->n++] = r;
        return;
    }
    int join_prev = i > 0 && ps_free[i - 1].p + ps_free[i - 1].len == r.p &&
                    arena_of(ps_free[i - 1].p) == kind;
    int join_next = i < ps_n && r.p + r.len == ps_free[i].p && arena_of(ps_free[i].p) == kind;
    if (!join_prev && !join_next && ps_n == PS_SPANS) {
        /* No slot: an arena piece may take a fresh span's. */
        if (kind < 0 || !evict_fresh(-1, ev)) {
            ev->r[ev->n++] = r;
            return;
        }
        i = 0;
        while (i < ps_n && ps_free[i].p < r.p)
            i++;
    }
    int at;
    if (join_prev && join_next) {
        ps_free[i - 1].len += r.len + ps_free[i].len;
        span_remove(i);
        at = i - 1;
    } else if (join_prev) {
        ps_free[i - 1].len += r.len;
        at = i - 1;
    } else if (join_next) {
        ps_free[i].p = r.p;
        ps_free[i].len += r.len;
        at = i;
    } else {
        memmove(&ps_free[i + 1], &ps_free[i], sizeof ps_free[0] * (size_t)(ps_n - i));
        ps_free[i] = r;
        ps_n++;
        at = i;
    }
    ps_free_bytes += r.len;
    /* Arena memory came back over the capacity: fresh spans make room. (Arena spans alone never
     * exceed it: they are at most what was reserved.) */
    while (ps_free_bytes > ps_cap()) {
        /* evict_fresh never removes `at` (an arena span), but may shift it down by one */
        ps_region mine = ps_free[at];
        if (!evict_fresh(at, ev)) break;
        if (at >= ps_n || ps_free[at].p != mine.p) at--;
    }
}

int ps_alloc(size_t n, ps_region *reg)
{
    reg->p = NULL;
    reg->len = 0;
    if (n == 0) n = 1;
    if (n > SIZE_MAX / 2) return LR_ENOMEM;
    size_t len = (n + LR_PAGE - 1) & ~(LR_PAGE - 1);
    pthread_mutex_lock(&ps_mu);
    int hit = !ps_bypass && pool_take(len, reg);
    if (hit) ps_in_use += reg->len;
    pthread_mutex_unlock(&ps_mu);
    if (hit) return 0;
    size_t mapped; /* == len: len is a multiple of LR_PAGE */
    char *p = lr_map_huge(len, &mapped);
    if (!p) return LR_ENOMEM;
    reg->p = p;
    reg->len = len;
    pthread_mutex_lock(&ps_mu);
    ps_in_use += len;
    pthread_mutex_unlock(&ps_mu);
    return 0;
}

void ps_release(ps_region *reg)
{
    if (!reg->p) return;
    ps_evicted ev;
    ev.n = 0;
    pthread_mutex_lock(&ps_mu);
    LR_ASSERT(ps_in_use >= reg->len);
    ps_in_use -= reg->len;
    pool_put(*reg, &ev);
    pthread_mutex_unlock(&ps_mu);
    for (int i = 0; i < ev.n; i++)
        munmap(ev.r[i].p, ev.r[i].len);
    reg->p = NULL;
    reg->len = 0;
}

int ps_reserve(size_t bytes)
{
    if (bytes == 0) return 0;
    if (bytes > SIZE_MAX / 4) return LR_ENOMEM;
    size_t len = (bytes + LR_HUGE - 1) & ~(LR_HUGE - 1);
    size_t mapped; /* == len: len is a multiple of LR_PAGE */
    char *p = lr_map_huge(len, &mapped);
    if (!p) return LR_ENOMEM;
    if (lr_prefault(p, len) != 0) { /* ~15-40 ms for 256 MiB with huge pages, measured */
        munmap(p, len);
        return LR_ENOMEM;
    }
    ps_evicted ev;
    ev.n = 0;
    int kept = 0;
    pthread_mutex_lock(&ps_mu);
    if (ps_na < PS_ARENAS) {
        ps_arena[ps_na++] = (ps_region){p, len};
        ps_reserved += len;
        pool_put((ps_region){p, len}, &ev);
        kept = 1;
    }
    pthread_mutex_unlock(&ps_mu);
    if (!kept) munmap(p, len);
    for (int i = 0; i < ev.n; i++)
        munmap(ev.r[i].p, ev.r[i].len);
    return kept ? 0 : LR_ENOMEM;
}

void ps_get_stats(ps_stats *st)
{
    pthread_mutex_lock(&ps_mu);
    st->reserved = ps_reserved;
    st->pool_bytes = ps_free_bytes;
    st->pool_cap = ps_cap();
    st->in_use = ps_in_use;
    st->pool_spans = ps_n;
    st->pool_largest = 0;
    for (int i = 0; i < ps_n; i++)
        if (ps_free[i].len > st->pool_largest) st->pool_largest = ps_free[i].len;
    pthread_mutex_unlock(&ps_mu);
}

int ps_pool_spans(ps_region *out, int max)
{
    pthread_mutex_lock(&ps_mu);
    int n = ps_n;
    for (int i = 0; i < n && i < max; i++)
        out[i] = ps_free[i];
    pthread_mutex_unlock(&ps_mu);
    return n;
}

void ps_pool_bypass(int on)
{
    pthread_mutex_lock(&ps_mu);
    ps_bypass = on != 0;
    pthread_mutex_unlock(&ps_mu);
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
