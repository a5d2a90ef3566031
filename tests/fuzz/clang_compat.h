/* clang_compat.h — force-included into the fuzz build only (clang-14, Debian 12).
 *
 * clang 14 rejects __builtin_cpu_supports("f16c"), which core/model.c uses to pick its F16C
 * conversion path. Fuzzing needs the parsers, not the fast path, so in this build the check
 * answers "not supported" and the portable conversion runs (bit-identical by model.h's contract).
 */
#ifndef LR_FUZZ_CLANG_COMPAT_H
#define LR_FUZZ_CLANG_COMPAT_H
#if defined(__clang__) && __clang_major__ < 16
#define __builtin_cpu_supports(feature) 0
#endif
#endif
