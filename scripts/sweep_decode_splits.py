"""Times paged_attention_decode over forced split counts, to check the host split plan.

    python scripts/sweep_decode_splits.py [--in-order] [--layout nhd]   (GPU; one line per shape)

Same shapes and byte count as benchmarks/bench_paged_decode.py (bf16, shuffled block tables);
"auto" is the plan the launcher picks. --in-order gives every sequence consecutive cache blocks
(what paging costs in DRAM locality: compare with the default).
"""

import argparse
import math

import torch

from benchmarks.bench_paged_decode import HEAD_DIM, HEADS, SHAPES, _paged_cache
from benchmarks.harness import BenchContext

SPLITS = [None, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--in-order", action="store_true", help="block tables 0, 1, 2, ... instead of shuffled")
    ap.add_argument("--layout", default="vllm", choices=["vllm", "nhd"])
    ap.add_argument("--splits", nargs="*", type=int, help="forced split counts to time beside auto")
    args = ap.parse_args()
    ctx = BenchContext(iters=30)
    gen = torch.Generator().manual_seed(0)
    from ferrum_ext import ops

    for b, length, kvh in SHAPES:
        kc, vc, bt = _paged_cache(b, length, kvh, torch.bfloat16, args.layout, gen)
        if args.in_order:
            bt = torch.arange(bt.numel(), device="cuda", dtype=torch.int32).view_as(bt)
        q = torch.randn(b, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
        sl = torch.full((b,), length, dtype=torch.int32, device="cuda")
        out = torch.empty_like(q)
        nbytes = 2 * b * length * kvh * HEAD_DIM * 2
        cells = []
        for s in [None] + args.splits if args.splits is not None else SPLITS:
            if s is not None and s * 64 > length:
                continue
            t = ctx.time(lambda: ops.paged_attention_decode(q, kc, vc, bt, sl, 1 / math.sqrt(HEAD_DIM),
                                                            args.layout, max_seq_len=length, num_splits=s,
                                                            out=out))
            cells.append(f"{'auto' if s is None else s}:{nbytes / t.median_us / 1e3:.0f}")
        print(f"B={b} L={length} kv={kvh}  GB/s by splits  " + "  ".join(cells), flush=True)
        del kc, vc, bt


if __name__ == "__main__":
    main()
