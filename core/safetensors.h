/* safetensors.h — strict reader of HuggingFace safetensors files and sharded sets (prefix st_).
 *
 * Used by the model loader (core/model.c) and the PEFT adapter loader. A file is mmapped
 * read-only and validated completely at open (SPEC-HF.md §A): after st_open() succeeds every
 * tensor's bytes lie inside the mapping and match its dtype and shape, so callers never re-check
 * bounds. Tensor data is NOT aligned in general (old writers, odd header lengths): read it with
 * memcpy or unaligned-safe loads.
 *
 * Ownership: st_file / st_set own their mappings and every st_tensor they hand out. Pointers
 * returned by st_find/st_at/st_set_find (the tensor, its name, file label and data) are borrowed
 * and valid until st_close / st_set_close. Every error fills the caller's lr_error with a
 * message that names the file and the problem.
 */
#ifndef LR_SAFETENSORS_H
#define LR_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

/* Every dtype spelling of the format, in the safetensors enum order. Files may contain any of
 * them; lorad computes only with F32, F16 and BF16 and refuses the others where it needs a
 * tensor (st_tensor_is_float). */
/* clang-format off */
#define ST_DTYPE_MAP(X)                                                                            \
    X(BOOL, 8) X(U8, 8) X(I8, 8) X(I16, 16) X(U16, 16) X(I32, 32) X(U32, 32) X(I64, 64)             \
    X(U64, 64) X(F16, 16) X(BF16, 16) X(F32, 32) X(F64, 64) X(C64, 64)                             \
    X(F8_E4M3, 8) X(F8_E5M2, 8) X(F8_E8M0, 8) X(F8_E4M3FNUZ, 8) X(F8_E5M2FNUZ, 8)                  \
    X(F4, 4) X(F6_E2M3, 6) X(F6_E3M2, 6)
/* clang-format on */

typedef enum {
#define ST_DT_ENUM(name, bits) ST_##name,
    ST_DTYPE_MAP(ST_DT_ENUM)
#undef ST_DT_ENUM
    ST_DTYPE_COUNT
} st_dtype;

#define ST_MAX_DIMS 8            /* rank limit we accept */
#define ST_MAX_HEADER 100000000u /* MAX_HEADER_SIZE of the reference reader */

/* One tensor of a file. Plain data, borrowed from its st_file. */
typedef struct st_tensor {
    const char *name; /* NUL-terminated tensor name */
    const char *file; /* label of the owning file (its base name), for error messages */
    st_dtype dtype;
    int ndim;                   /* 0 = scalar */
    int64_t shape[ST_MAX_DIMS]; /* shape[0 .. ndim) */
    int64_t numel;              /* product of shape (1 for a scalar) */
    const void *data;           /* start of its bytes; may be unaligned; NULL iff nbytes == 0 */
    size_t nbytes;              /* numel * bits / 8 */
} st_tensor;

typedef struct st_file st_file;
typedef struct st_set st_set;

/* The dtype's spelling in the format ("BF16") and its size in bits; "?" / 0 for bad values. */
const char *st_dtype_name(int dtype);
int st_dtype_bits(int dtype);

/* Open and fully validate the safetensors file at path (mmap, read-only). On success *out is a
 * new file (close with st_close). On error returns a negative lr_err (LR_EIO for open/stat/mmap
 * failures, LR_EFORMAT for a malformed file, LR_ETOOLARGE for a header over ST_MAX_HEADER) and
 * the message starts with the file's base name. */
int st_open(const char *path, lr_error *err, st_file **out);
/* The same validation over a caller's buffer (for fuzzing and tests). buf is borrowed and must
 * outlive the st_file; label names it in messages (NULL → "<memory>"). */
int st_open_mem(const void *buf, size_t len, const char *label, lr_error *err, st_file **out);
/* Release the file and its mapping. st_close(NULL) does nothing. */
void st_close(st_file *f);

const char *st_file_label(const st_file *f);
/* Number of tensors and the i-th one, in data-offset order (0 <= i < st_count). */
int st_count(const st_file *f);
const st_tensor *st_at(const st_file *f, int i);
/* The tensor called name, or NULL if the file has none. O(log n). */
const st_tensor *st_find(const st_file *f, const char *name);
/* The __metadata__ value for key, or NULL if absent. */
const char *st_metadata(const st_file *f, const char *key);

/* True for F32 / F16 / BF16 — the dtypes lorad computes with. */
int st_tensor_is_float(const st_tensor *t);
/* Format "[2, 3]" into buf (always NUL-terminated); returns buf. For error messages. */
char *st_shape_str(const int64_t *shape, int ndim, char *buf, size_t size);

/* A model's weights: DIR/model.safetensors.index.json (sharded; each weight_map entry is
 * resolved in its shard, and shard names must be plain file names inside dir) if it exists,
 * else DIR/model.safetensors. Every shard is validated at open; a tensor missing from the shard
 * weight_map names is an error. On success *out is a new set (close with st_set_close). */
int st_set_open_dir(const char *dir, lr_error *err, st_set **out);
void st_set_close(st_set *s);
/* Tensors of the set: for a sharded set exactly those listed in weight_map. Sorted by name. */
int st_set_count(const st_set *s);
const st_tensor *st_set_at(const st_set *s, int i);
const st_tensor *st_set_find(const st_set *s, const char *name);
/* Number of files in the set (1 when not sharded). */
int st_set_nfiles(const st_set *s);

#endif
