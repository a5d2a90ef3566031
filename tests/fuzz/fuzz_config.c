/* fuzz_config.c — libFuzzer target: config.json + generation_config.json (lr_config_parse).
 *
 * Input: config.json text, optionally followed by a NUL byte and generation_config.json text.
 * Accepted configs must have the sizes the loader relies on (positive dimensions, eos ids within
 * LR_MAX_EOS), and the RoPE table is computed for them as lr_model_load would.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

int fuzz_config_one(const uint8_t *data, size_t size);

int fuzz_config_one(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    const char *nul = memchr(data, 0, size);
    const char *gen = nul ? text + (nul - (const char *)data) + 1 : NULL;
    lr_config cfg;
    lr_error err;
    memset(&err, 0, sizeof err);
    if (lr_config_parse(text, gen, &cfg, &err) == 0) {
        if (cfg.hidden <= 0 || cfg.n_layers <= 0 || cfg.n_heads <= 0 || cfg.head_dim <= 0 ||
            cfg.n_kv_heads <= 0 || cfg.vocab <= 0 || cfg.n_eos < 0 || cfg.n_eos > LR_MAX_EOS)
            abort();
        if (cfg.sliding_window && cfg.window_layer) {
            volatile uint8_t s = cfg.window_layer[cfg.n_layers - 1];
            (void)s;
        }
        if (cfg.arch != LR_ARCH_T5 && cfg.head_dim <= (1 << 16)) {
            float *inv = malloc(sizeof(float) * (size_t)(cfg.head_dim / 2 + 1));
            if (inv) {
                lr_rope_inv_freq(&cfg, inv);
                free(inv);
            }
        }
        lr_config_clear(&cfg);
    } else if (err.msg[0] == 0) {
        abort(); /* a refusal must say why */
    }
    free(text);
    return 0;
}

/* The libFuzzer entry points (tests/fuzz/run.sh builds with -DLR_LIBFUZZER); check_regress calls
 * fuzz_config_one directly. */
#ifdef LR_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_config_one(data, size);
}
#endif
