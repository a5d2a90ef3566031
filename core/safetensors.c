/* safetensors.c — strict safetensors reader: mmap, validate, look up (SPEC-HF.md §A).
 *
 * This module validates a file completely once, at open, so that everything it hands out is
 * safe to read: the 8-byte header length, the JSON header (an object, duplicate keys refused,
 * space padding allowed), every entry's dtype, shape and data_offsets, and the layout of the
 * byte buffer (sorted by offset, starting at 0, no holes, no overlap, ending exactly at EOF).
 * It also resolves sharded checkpoints through model.safetensors.index.json.
 * It is not a writer, does not convert dtypes (model.c does) and never logs: every problem is
 * returned as an lr_error whose message begins with the file's name.
 */
#include "safetensors.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct st_file {
    char label[128];     /* base name of the file, or the caller's label */
    const uint8_t *base; /* the whole file, size bytes */
    size_t size;
    void *map;    /* our mmap (NULL for st_open_mem and for empty files) */
    json_t *root; /* parsed header; tensor names point into its keys */
    int n;        /* tensors, in data order */
    st_tensor *t;
    const st_tensor **by_name; /* [n] sorted by name, for st_find */
};

struct st_set {
    st_file **files;
    int nfiles;
    int n;
    const st_tensor **by_name; /* [n] sorted by name */
};

static const char *const dtype_names[] = {
#define ST_DT_NAME(name, bits) #name,
    ST_DTYPE_MAP(ST_DT_NAME)
#undef ST_DT_NAME
};
static const int dtype_bits[] = {
#define ST_DT_BITS(name, bits) bits,
    ST_DTYPE_MAP(ST_DT_BITS)
#undef ST_DT_BITS
};

const char *st_dtype_name(int dtype)
{
    return dtype >= 0 && dtype < ST_DTYPE_COUNT ? dtype_names[dtype] : "?";
}

int st_dtype_bits(int dtype)
{
    return dtype >= 0 && dtype < ST_DTYPE_COUNT ? dtype_bits[dtype] : 0;
}

static int dtype_parse(const char *s)
{
    for (int i = 0; i < ST_DTYPE_COUNT; i++)
        if (strcmp(s, dtype_names[i]) == 0) return i;
    return -1;
}

int st_tensor_is_float(const st_tensor *t)
{
    return t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16;
}

char *st_shape_str(const int64_t *shape, int ndim, char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = '\0';
    used += (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ndim && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (used < size) snprintf(buf + used, size - used, "]");
    return buf;
}

/* Fill err with "label: <message>" and return code. */
static int fail(lr_error *err, const char *label, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(lr_error *err, const char *label, int code, const char *fmt, ...)
{
    if (!err) return code;
    char msg[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return lr_error_set(err, code, "%s: %s", label, msg);
}

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* ---------------------------------------------------------------------------------------- */
/* Header validation                                                                          */

/* A JSON integer in [0, INT64_MAX]; reals, strings, negatives are refused. */
static int get_nonneg_int(const json_t *v, int64_t *out)
{
    if (!json_is_integer(v)) return -1;
    json_int_t x = json_integer_value(v);
    if (x < 0) return -1;
    *out = (int64_t)x;
    return 0;
}

/* Parse one header entry `name: {dtype, shape, data_offsets}` into t, with begin/end offsets. */
static int parse_entry(const char *label, const char *name, json_t *v, st_tensor *t,
                       uint64_t *begin, uint64_t *end, lr_error *err)
{
    if (!json_is_object(v))
        return fail(err, label, LR_EFORMAT, "tensor '%.200s': entry is not a JSON object", name);
    json_t *jd = json_object_get(v, "dtype");
    json_t *js = json_object_get(v, "shape");
    json_t *jo = json_object_get(v, "data_offsets");
    if (!json_is_string(jd))
        return fail(err, label, LR_EFORMAT, "tensor '%.200s': \"dtype\" is missing or not a string",
                    name);
    int dt = dtype_parse(json_string_value(jd));
    if (dt < 0)
        return fail(err, label, LR_EFORMAT, "tensor '%.200s': unknown dtype \"%.40s\"", name,
                    json_string_value(jd));
    if (!json_is_array(js))
        return fail(err, label, LR_EFORMAT, "tensor '%.200s': \"shape\" is missing or not an array",
                    name);
    size_t nd = json_array_size(js);
    if (nd > ST_MAX_DIMS)
        return fail(err, label, LR_EFORMAT, "tensor '%.200s': rank %zu exceeds the limit of %d",
                    name, nd, ST_MAX_DIMS);
    t->name = name;
    t->file = label;
    t->dtype = (st_dtype)dt;
    t->ndim = (int)nd;
    uint64_t numel = 1;
    for (size_t i = 0; i < nd; i++) {
        int64_t d;
        if (get_nonneg_int(json_array_get(js, i), &d) != 0)
            return fail(err, label, LR_EFORMAT,
                        "tensor '%.200s': shape[%zu] is not a non-negative integer", name, i);
        t->shape[i] = d;
        if (__builtin_mul_overflow(numel, (uint64_t)d, &numel) || numel > (uint64_t)INT64_MAX)
            return fail(err, label, LR_EFORMAT,
                        "tensor '%.200s': the element count of its shape overflows 64 bits", name);
    }
    uint64_t bits;
    if (__builtin_mul_overflow(numel, (uint64_t)dtype_bits[dt], &bits))
        return fail(err, label, LR_EFORMAT, "tensor '%.200s': its byte size overflows 64 bits",
                    name);
    if (bits % 8 != 0)
        return fail(err, label, LR_EFORMAT,
                    "tensor '%.200s': %" PRIu64 " elements of %s are not a whole number of bytes",
                    name, numel, dtype_names[dt]);
    t->numel = (int64_t)numel;

    int64_t b, e;
    if (!json_is_array(jo) || json_array_size(jo) != 2 ||
        get_nonneg_int(json_array_get(jo, 0), &b) != 0 ||
        get_nonneg_int(json_array_get(jo, 1), &e) != 0)
        return fail(err, label, LR_EFORMAT,
                    "tensor '%.200s': \"data_offsets\" must be two non-negative integers", name);
    if (b > e)
        return fail(err, label, LR_EFORMAT,
                    "tensor '%.200s': data_offsets [%" PRId64 ", %" PRId64
                    "] end before they begin",
                    name, b, e);
    if ((uint64_t)(e - b) != bits / 8) {
        char sh[160];
        return fail(err, label, LR_EFORMAT,
                    "tensor '%.200s': data_offsets [%" PRId64 ", %" PRId64 "] give %" PRId64
                    " bytes but %s %s needs %" PRIu64,
                    name, b, e, e - b, dtype_names[dt],
                    st_shape_str(t->shape, t->ndim, sh, sizeof sh), bits / 8);
    }
    if ((uint64_t)(e - b) > SIZE_MAX)
        return fail(err, label, LR_EFORMAT, "tensor '%.200s' is too large for this machine", name);
    t->nbytes = (size_t)(e - b);
    *begin = (uint64_t)b;
    *end = (uint64_t)e;
    return 0;
}

/* Offsets travel beside the tensors while sorting. */
typedef struct {
    uint64_t begin, end;
    st_tensor t;
} entry;

static int cmp_entry(const void *a, const void *b)
{
    const entry *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->t.name, y->t.name);
}

static int cmp_name(const void *a, const void *b)
{
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    return strcmp(x->name, y->name);
}

/* Validate f->base[0 .. f->size) and fill f's tensor table. */
static int parse_file(st_file *f, lr_error *err)
{
    const char *label = f->label;
    if (f->size == 0)
        return fail(err, label, LR_EFORMAT,
                    "file is empty; a safetensors file starts with an 8-byte header length");
    if (f->size < 8)
        return fail(err, label, LR_EFORMAT,
                    "file is %zu bytes, too short for the 8-byte header length", f->size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | f->base[i]; /* little-endian */
    if (n == 0)
        return fail(err, label, LR_EFORMAT, "header length is 0; the header must be a JSON object");
    if (n > ST_MAX_HEADER)
        return fail(err, label, LR_ETOOLARGE,
                    "header length %" PRIu64 " exceeds the limit of %u bytes", n, ST_MAX_HEADER);
    if (8 + n > f->size)
        return fail(err, label, LR_EFORMAT,
                    "header length %" PRIu64 " runs past the end of the file (%zu bytes)", n,
                    f->size);
    const char *hdr = (const char *)f->base + 8;
    if (hdr[0] != '{') return fail(err, label, LR_EFORMAT, "header does not start with '{'");

    json_error_t je;
    f->root = json_loadb(hdr, (size_t)n, JSON_REJECT_DUPLICATES, &je);
    if (!f->root)
        return fail(err, label, LR_EFORMAT, "header is not valid JSON: %s (at byte %d of it)",
                    je.text, je.position);
    if (!json_is_object(f->root))
        return fail(err, label, LR_EFORMAT, "header is not a JSON object");

    size_t cap = json_object_size(f->root);
    if (cap > (size_t)INT32_MAX)
        return fail(err, label, LR_EFORMAT, "header lists too many tensors");
    entry *ent = calloc(cap ? cap : 1, sizeof *ent);
    if (!ent) return fail(err, label, LR_ENOMEM, "out of memory for %zu tensor entries", cap);
    int rc = 0, cnt = 0;
    const char *key;
    json_t *val;
    json_object_foreach(f->root, key, val)
    {
        if (strcmp(key, "__metadata__") == 0) {
            if (!json_is_object(val)) {
                rc = fail(err, label, LR_EFORMAT, "__metadata__ is not a JSON object");
                goto out;
            }
            const char *mk;
            json_t *mv;
            json_object_foreach(val, mk, mv)
            {
                if (!json_is_string(mv)) {
                    rc = fail(err, label, LR_EFORMAT,
                              "__metadata__ value of key '%.100s' is not a string", mk);
                    goto out;
                }
            }
            continue;
        }
        rc = parse_entry(label, key, val, &ent[cnt].t, &ent[cnt].begin, &ent[cnt].end, err);
        if (rc) goto out;
        cnt++;
    }

    /* The buffer must be tiled exactly: sorted by offsets, from 0, no hole, no overlap. */
    qsort(ent, (size_t)cnt, sizeof *ent, cmp_entry);
    uint64_t pos = 0;
    for (int i = 0; i < cnt; i++) {
        if (ent[i].begin != pos) {
            if (i == 0)
                rc = fail(err, label, LR_EFORMAT,
                          "tensor '%.200s' is first in the data buffer but starts at byte %" PRIu64
                          ", not 0",
                          ent[i].t.name, ent[i].begin);
            else
                rc = fail(err, label, LR_EFORMAT,
                          "tensor '%.200s' starts at byte %" PRIu64 " but the previous tensor "
                          "'%.200s' ends at %" PRIu64 " (%s)",
                          ent[i].t.name, ent[i].begin, ent[i - 1].t.name, pos,
                          ent[i].begin > pos ? "a hole" : "an overlap");
            goto out;
        }
        pos = ent[i].end;
    }
    if (8 + n + pos != f->size) {
        rc = fail(err, label, LR_EFORMAT,
                  "the tensors end at byte %" PRIu64 " of the file but the file has %zu bytes (%s)",
                  8 + n + pos, f->size,
                  8 + n + pos > f->size ? "data runs past the end of the file"
                                        : "trailing bytes after the last tensor");
        goto out;
    }

    f->t = calloc(cnt ? (size_t)cnt : 1, sizeof *f->t);
    f->by_name = calloc(cnt ? (size_t)cnt : 1, sizeof *f->by_name);
    if (!f->t || !f->by_name) {
        rc = fail(err, label, LR_ENOMEM, "out of memory for %d tensors", cnt);
        goto out;
    }
    const uint8_t *data = f->base + 8 + n;
    for (int i = 0; i < cnt; i++) {
        f->t[i] = ent[i].t;
        f->t[i].data = f->t[i].nbytes ? data + ent[i].begin : NULL;
        f->by_name[i] = &f->t[i];
    }
    f->n = cnt;
    qsort(f->by_name, (size_t)cnt, sizeof *f->by_name, cmp_name);
out:
    free(ent);
    return rc;
}

static st_file *file_new(const char *label)
{
    st_file *f = calloc(1, sizeof *f);
    if (f) snprintf(f->label, sizeof f->label, "%s", label);
    return f;
}

int st_open_mem(const void *buf, size_t len, const char *label, lr_error *err, st_file **out)
{
    *out = NULL;
    if (!label) label = "<memory>";
    st_file *f = file_new(label);
    if (!f) return fail(err, label, LR_ENOMEM, "out of memory");
    f->base = buf;
    f->size = len;
    int rc = parse_file(f, err);
    if (rc) {
        st_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

int st_open(const char *path, lr_error *err, st_file **out)
{
    *out = NULL;
    const char *label = base_name(path);
    /* O_NONBLOCK: a FIFO in the file's place would otherwise block open() until a writer comes;
     * it then fails the regular-file check below. It changes nothing for a regular file. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return fail(err, label, errno == ENOENT ? LR_ENOTFOUND : LR_EIO, "cannot open %s: %s", path,
                    strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return fail(err, label, LR_EIO, "cannot stat %s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return fail(err, label, LR_EIO, "%s is not a regular file", path);
    }
    st_file *f = file_new(label);
    if (!f) {
        close(fd);
        return fail(err, label, LR_ENOMEM, "out of memory");
    }
    f->size = (size_t)st.st_size;
    if (f->size > 0) {
        f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (f->map == MAP_FAILED) {
            int e = errno;
            f->map = NULL;
            close(fd);
            st_close(f);
            return fail(err, label, LR_EIO, "cannot mmap %s (%zu bytes): %s", path,
                        (size_t)st.st_size, strerror(e));
        }
        f->base = f->map;
    }
    close(fd);
    int rc = parse_file(f, err);
    if (rc) {
        st_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

void st_close(st_file *f)
{
    if (!f) return;
    if (f->map) munmap(f->map, f->size);
    json_decref(f->root);
    free(f->t);
    free(f->by_name);
    free(f);
}

const char *st_file_label(const st_file *f)
{
    return f->label;
}

int st_count(const st_file *f)
{
    return f->n;
}

const st_tensor *st_at(const st_file *f, int i)
{
    LR_ASSERT(i >= 0 && i < f->n);
    return &f->t[i];
}

static const st_tensor *find_sorted(const st_tensor *const *v, int n, const char *name)
{
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(v[mid]->name, name);
        if (c == 0) return v[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return NULL;
}

const st_tensor *st_find(const st_file *f, const char *name)
{
    return find_sorted(f->by_name, f->n, name);
}

const char *st_metadata(const st_file *f, const char *key)
{
    json_t *m = json_object_get(f->root, "__metadata__");
    return json_string_value(json_object_get(m, key)); /* NULL-safe in jansson */
}

/* ---------------------------------------------------------------------------------------- */
/* Sets of shards                                                                             */

#define INDEX_NAME "model.safetensors.index.json"
#define SINGLE_NAME "model.safetensors"
#define MAX_INDEX_BYTES (64u << 20)

void st_set_close(st_set *s)
{
    if (!s) return;
    for (int i = 0; i < s->nfiles; i++)
        st_close(s->files[i]);
    free(s->files);
    free(s->by_name);
    free(s);
}

int st_set_count(const st_set *s)
{
    return s->n;
}

const st_tensor *st_set_at(const st_set *s, int i)
{
    LR_ASSERT(i >= 0 && i < s->n);
    return s->by_name[i];
}

const st_tensor *st_set_find(const st_set *s, const char *name)
{
    return find_sorted(s->by_name, s->n, name);
}

int st_set_nfiles(const st_set *s)
{
    return s->nfiles;
}

static int join(char *buf, size_t size, const char *dir, const char *name, lr_error *err)
{
    int k = snprintf(buf, size, "%s/%s", dir, name);
    if (k < 0 || (size_t)k >= size)
        return lr_error_set(err, LR_EINVAL, "%s: path of %s is too long", dir, name);
    return 0;
}

/* A shard name must be a plain file name inside the model folder. */
static int shard_name_ok(const char *s)
{
    return s[0] != '\0' && strchr(s, '/') == NULL && strstr(s, "..") == NULL && strcmp(s, ".") != 0;
}

static int set_from_index(st_set *s, const char *dir, const char *ipath, lr_error *err)
{
    const char *label = INDEX_NAME;
    char *text;
    size_t len;
    int rc = lr_read_file(ipath, label, MAX_INDEX_BYTES, &text, &len, err);
    if (rc) return rc;
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    free(text);
    if (!root)
        return fail(err, label, LR_EFORMAT, "not valid JSON: %s (line %d, column %d)", je.text,
                    je.line, je.column);
    json_t *wm = json_object_get(root, "weight_map");
    if (!json_is_object(root) || !json_is_object(wm)) {
        rc = fail(err, label, LR_EFORMAT, "\"weight_map\" is missing or not an object");
        goto out;
    }
    size_t cap = json_object_size(wm);
    s->by_name = calloc(cap ? cap : 1, sizeof *s->by_name);
    s->files = calloc(cap ? cap : 1, sizeof *s->files);
    if (!s->by_name || !s->files) {
        rc = fail(err, label, LR_ENOMEM, "out of memory for %zu entries", cap);
        goto out;
    }
    const char *name;
    json_t *v;
    json_object_foreach(wm, name, v)
    {
        const char *shard = json_string_value(v);
        if (!shard) {
            rc = fail(err, label, LR_EFORMAT, "weight_map entry '%.200s' is not a string", name);
            goto out;
        }
        if (!shard_name_ok(shard)) {
            rc = fail(err, label, LR_EFORMAT,
                      "weight_map entry '%.200s' names shard \"%.200s\", which is not a plain file "
                      "name inside the model folder",
                      name, shard);
            goto out;
        }
        st_file *f = NULL;
        for (int i = 0; i < s->nfiles && !f; i++)
            if (strcmp(s->files[i]->label, shard) == 0) f = s->files[i];
        if (!f) {
            char path[4096];
            rc = join(path, sizeof path, dir, shard, err);
            if (rc) goto out;
            rc = st_open(path, err, &f);
            if (rc) {
                lr_error_prefix(err, "%s: weight_map shard: ", label);
                goto out;
            }
            s->files[s->nfiles++] = f;
        }
        const st_tensor *t = st_find(f, name);
        if (!t) {
            rc = fail(err, label, LR_EFORMAT,
                      "tensor '%.200s' is mapped to shard %.200s, which does not contain it", name,
                      shard);
            goto out;
        }
        s->by_name[s->n++] = t;
    }
    qsort(s->by_name, (size_t)s->n, sizeof *s->by_name, cmp_name);
out:
    json_decref(root);
    return rc;
}

int st_set_open_dir(const char *dir, lr_error *err, st_set **out)
{
    *out = NULL;
    st_set *s = calloc(1, sizeof *s);
    if (!s) return lr_error_set(err, LR_ENOMEM, "%s: out of memory", dir);
    char path[4096];
    int rc = join(path, sizeof path, dir, INDEX_NAME, err);
    if (rc) goto fail;
    if (access(path, F_OK) == 0) {
        rc = set_from_index(s, dir, path, err);
        if (rc) goto fail;
        *out = s;
        return 0;
    }
    rc = join(path, sizeof path, dir, SINGLE_NAME, err);
    if (rc) goto fail;
    if (access(path, F_OK) != 0) {
        rc = lr_error_set(err, LR_ENOTFOUND, "%s: no %s or %s in the model folder", dir,
                          SINGLE_NAME, INDEX_NAME);
        goto fail;
    }
    s->files = calloc(1, sizeof *s->files);
    if (!s->files) {
        rc = lr_error_set(err, LR_ENOMEM, "%s: out of memory", dir);
        goto fail;
    }
    rc = st_open(path, err, &s->files[0]);
    if (rc) goto fail;
    s->nfiles = 1;
    st_file *f = s->files[0];
    s->by_name = calloc(f->n ? (size_t)f->n : 1, sizeof *s->by_name);
    if (!s->by_name) {
        rc = lr_error_set(err, LR_ENOMEM, "%s: out of memory", dir);
        goto fail;
    }
    memcpy(s->by_name, f->by_name, (size_t)f->n * sizeof *s->by_name);
    s->n = f->n;
    *out = s;
    return 0;
fail:
    st_set_close(s);
    return rc;
}
