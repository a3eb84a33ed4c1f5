"""Cold-L2 launches of the bandwidth-bound ops, for Nsight Compute:

    ncu --cache-control none --clock-control none -k regex:"paged_attention|merge_splits|argmax" \
        --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
        python scripts/probe_cold_launches.py

Each case runs three times, each after the benchmarks' flush (256 MiB written), so with
--cache-control none ncu sees what the benchmarks time: dram__bytes_write.sum of a read-only
kernel is the flush's dirty lines written back under it.
"""

import math

import torch

from benchmarks.bench_paged_decode import HEAD_DIM, HEADS, _paged_cache
from ferrum_ext import ops

flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")


def cold(fn, runs=3):
    for _ in range(runs):
        flush.zero_()
        fn()
    torch.cuda.synchronize()


def main():
    gen = torch.Generator().manual_seed(0)
    for b, length, kvh in ((1, 32768, 4), (8, 8192, 4), (64, 4096, 4), (64, 4096, 8)):
        for layout in ("vllm",):
            kc, vc, bt = _paged_cache(b, length, kvh, torch.bfloat16, layout, gen)
            q = torch.randn(b, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
            sl = torch.full((b,), length, dtype=torch.int32, device="cuda")
            print(f"decode B={b} L={length} kv={kvh} {layout}", flush=True)
            cold(lambda: ops.paged_attention_decode(q, kc, vc, bt, sl, 1 / math.sqrt(HEAD_DIM), layout,
                                                    max_seq_len=length))
            del kc, vc, bt
    for b in (64, 256):
        logits = torch.randn(b, 151936, device="cuda")
        print(f"argmax B={b} fp32", flush=True)
        cold(lambda: ops.greedy_argmax(logits))


if __name__ == "__main__":
    main()
