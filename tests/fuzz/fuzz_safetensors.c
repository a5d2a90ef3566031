/* fuzz_safetensors.c — libFuzzer target: the safetensors header and layout validator.
 *
 * The input is a whole .safetensors file. st_open_mem() must accept or refuse it without
 * touching memory outside the buffer; when it accepts, every tensor it hands out must lie inside
 * the buffer with nbytes = numel * bits / 8, which this target checks independently (a failed
 * check aborts, so libFuzzer reports it as a finding).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

int fuzz_safetensors_one(const uint8_t *data, size_t size);

int fuzz_safetensors_one(const uint8_t *data, size_t size)
{
    /* A private copy, so ASan sees a read one byte past the end of the input. */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    lr_error err;
    st_file *f = NULL;
    if (st_open_mem(buf, size, "fuzz.safetensors", &err, &f) == 0) {
        int n = st_count(f);
        const uint8_t *lo = buf, *hi = buf + size;
        for (int i = 0; i < n; i++) {
            const st_tensor *t = st_at(f, i);
            if (!t || !t->name || t->ndim < 0 || t->ndim > ST_MAX_DIMS)
                abort();
            /* numel is the product of the shape and fits; nbytes follows from the dtype. */
            int64_t numel = 1;
            for (int d = 0; d < t->ndim; d++) {
                if (t->shape[d] < 0)
                    abort();
                if (t->shape[d] && numel > INT64_MAX / t->shape[d])
                    abort();
                numel *= t->shape[d];
            }
            if (numel != t->numel)
                abort();
            int bits = st_dtype_bits(t->dtype);
            if (bits <= 0 || (uint64_t)numel * (uint64_t)bits % 8 ||
                (uint64_t)numel * (uint64_t)bits / 8 != t->nbytes)
                abort();
            if (t->nbytes) {
                const uint8_t *p = t->data;
                if (p < lo || p > hi || t->nbytes > (size_t)(hi - p))
                    abort();
                volatile uint8_t sink = p[0] ^ p[t->nbytes - 1];
                (void)sink;
            } else if (t->data) {
                abort();
            }
            if (st_find(f, t->name) != t)
                abort();
            char shape[128];
            st_shape_str(t->shape, t->ndim, shape, sizeof shape);
        }
        (void)st_metadata(f, "format");
        st_close(f);
    } else if (err.msg[0] == 0) {
        abort(); /* a refusal must say why */
    }
    free(buf);
    return 0;
}

/* The libFuzzer entry points (tests/fuzz/run.sh builds with -DLR_LIBFUZZER); check_regress calls
 * fuzz_safetensors_one directly. */
#ifdef LR_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_safetensors_one(data, size);
}
#endif
