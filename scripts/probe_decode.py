"""Probe of the decode kernel's throughput: shuffled vs in-order block tables, and
one launch to profile (`ncu --launch-skip 3 --launch-count 1 -k regex:paged_attention`).

    python scripts/probe_decode.py [--profile] [--long]
"""

import math
import sys

import torch

from benchmarks.harness import BenchContext
from ferrum_ext import ops

B, L, KVH, H, D, BS = 64, 4096, 4, 32, 128, 16
if "--long" in sys.argv:
    B, L = 1, 32768


def main():
    nblk = L // BS
    num_blocks = B * nblk
    kc = torch.randn(num_blocks, KVH, D // 8, BS, 8, device="cuda", dtype=torch.bfloat16)
    vc = torch.randn(num_blocks, KVH, D, BS, device="cuda", dtype=torch.bfloat16)
    q = torch.randn(B, H, D, device="cuda", dtype=torch.bfloat16)
    sl = torch.full((B,), L, dtype=torch.int32, device="cuda")
    tables = {
        "in-order": torch.arange(num_blocks, device="cuda", dtype=torch.int32).view(B, nblk),
        "shuffled": torch.randperm(num_blocks, device="cuda").to(torch.int32).view(B, nblk),
    }
    out = torch.empty_like(q)
    nbytes = 2 * B * L * KVH * D * 2
    if "--profile" in sys.argv:
        for _ in range(5):
            ops.paged_attention_decode(q, kc, vc, tables["shuffled"], sl, 1 / math.sqrt(D), "vllm", out=out)
        torch.cuda.synchronize()
        return
    ctx = BenchContext(iters=30)
    for name, bt in tables.items():
        for layout in ("vllm",):
            t = ctx.time(lambda: ops.paged_attention_decode(q, kc, vc, bt, sl, 1 / math.sqrt(D), layout, out=out))
            print(f"{name:<9} {layout}: {t.median_us:8.1f} us  {nbytes / t.median_us / 1e3:7.0f} GB/s")


if __name__ == "__main__":
    main()
