"""Where small-batch decode time goes under the benchmark protocol: the op's median time per forced
split count, and from torch.profiler the attention kernel, the merge kernel and the merge's tail
(merge end - attention end) of cold launches.

    python scripts/probe_decode_small.py [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_paged_decode import HEAD_DIM, HEADS, _paged_cache  # noqa: E402
from benchmarks.harness import BenchContext  # noqa: E402
from ferrum_ext import ops  # noqa: E402

CASES = [(1, 32768, 4), (8, 8192, 4), (64, 4096, 4)]
SPLITS = [None, 8, 16, 32, 64, 128]


def kernel_times(ctx: BenchContext, fn, runs: int = 20) -> dict:
    """Per-run device durations of the attention and merge kernels, after the flush."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            ctx._flush.zero_()
            fn()
        torch.cuda.synchronize()
    kernels = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                     key=lambda e: e.time_range.start)
    attn, merge, tail = [], [], []
    last_attn_end = None
    for e in kernels:
        if "paged_attention_kernel" in e.name:
            attn.append(e.time_range.end - e.time_range.start)
            last_attn_end = e.time_range.end
        elif "merge_splits" in e.name and last_attn_end is not None:
            merge.append(e.time_range.end - e.time_range.start)
            tail.append(e.time_range.end - last_attn_end)
    med = lambda xs: round(statistics.median(xs), 2) if xs else None  # noqa: E731
    return {"attn_us": med(attn), "merge_us": med(merge), "tail_us": med(tail)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    ctx = BenchContext(iters=50)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for b, length, kvh in CASES:
        kc, vc, bt = _paged_cache(b, length, kvh, torch.bfloat16, "vllm", gen)
        q = torch.randn(b, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
        sl = torch.full((b,), length, dtype=torch.int32, device="cuda")
        out = torch.empty_like(q)
        nbytes = 2 * b * length * kvh * HEAD_DIM * 2
        for splits in SPLITS:
            def fn(splits=splits):
                ops.paged_attention_decode(q, kc, vc, bt, sl, HEAD_DIM**-0.5, "vllm", max_seq_len=length,
                                           num_splits=splits, out=out)
            t = ctx.time(fn)
            row = {"case": f"B={b} L={length} {kvh}kv", "splits": splits or "auto", "us": round(t.median_us, 2),
                   "tbps": round(nbytes / t.median_us / 1e6, 3), **kernel_times(ctx, fn)}
            rows.append(row)
            print(row, flush=True)
        del kc, vc
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
