#!/usr/bin/python3
"""Generate what lr-bench needs, idempotently (each generator keeps a .gen_stamp):

  gen_bench.py ROOT   ->  ROOT/smol135 (F32), ROOT/smol135_bf16 (BF16),
                          ROOT/adapters/b0..b7 (rank 16, alpha 32, all seven projections)

The adapters are ordinary gen_adapter.py adapters; only the variant (rank 16 on all seven
modules, a seed per adapter) is defined here, because the test variants are smaller.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "gen"))
import gen_adapter  # noqa: E402
import gen_model  # noqa: E402


def main():
    if len(sys.argv) != 2:
        raise SystemExit("usage: gen_bench.py ROOT")
    root = sys.argv[1]
    f32 = os.path.join(root, "smol135")
    bf16 = os.path.join(root, "smol135_bf16")
    gen_model.generate("smol135", f32)
    gen_model.generate("smol135", bf16, "bf16")
    for i in range(8):
        name = "b%d" % i
        gen_adapter.VARIANTS[name] = dict(r=16, lora_alpha=32, seed_offset=500 + i,
                                          target_modules=gen_adapter.ALL7)
        gen_adapter.generate(f32, name, os.path.join(root, "adapters", name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
