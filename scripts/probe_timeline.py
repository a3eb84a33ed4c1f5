"""Cold-L2 device timeline of one call: every kernel (and memset) after the benchmarks' flush, with
its start and end measured from the end of the flush kernel (torch.profiler / CUPTI), median over
runs. Shows the launch gap before the first kernel, each kernel's time and the gaps between them.

    python scripts/probe_timeline.py [CASE ...]   (default: all; names in CASES)
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_fused_moe import ours as moe_layer  # noqa: E402
from benchmarks.bench_paged_decode import BLOCK, HEADS  # noqa: E402
from benchmarks.harness import BenchContext  # noqa: E402
from ferrum_ext import ops  # noqa: E402
from ferrum_ext.testing import make_block_tables, make_cache  # noqa: E402


def timeline(ctx: BenchContext, fn, runs: int = 30) -> None:
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            ctx._flush.zero_()
            fn()
        torch.cuda.synchronize()
    events = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                    key=lambda e: e.time_range.start)
    calls, current, flush_end = [], None, 0.0
    for e in events:
        if "FillFunctor" in e.name:  # the flush (zero_) kernel opens a run
            if current:
                calls.append(current)
            current, flush_end = [], e.time_range.end
        elif current is not None:
            current.append((e.name, e.time_range.start - flush_end, e.time_range.end - flush_end))
    if current:
        calls.append(current)
    shape = [len(c) for c in calls]
    calls = [c for c in calls if len(c) == statistics.mode(shape)]
    for i in range(len(calls[0])):
        name = calls[0][i][0].split("(")[0].split("<")[0].replace("void ", "")[-48:]
        start = statistics.median(c[i][1] for c in calls)
        end = statistics.median(c[i][2] for c in calls)
        print(f"  {name:48s} start {start:7.2f}  end {end:7.2f}  ({end - start:6.2f} us)")


def decode_case(b: int, length: int, kvh: int, layout: str = "vllm", head_dim: int = 128,
                splits: int | None = None):
    gen = torch.Generator().manual_seed(0)
    nblk = length // BLOCK
    kc, vc = make_cache(b * nblk, BLOCK, kvh, head_dim, torch.bfloat16, layout, "cuda")
    bt = make_block_tables([length] * b, BLOCK, nblk, b * nblk, "cuda", gen)
    q = torch.randn(b, HEADS, head_dim, device="cuda", dtype=torch.bfloat16)
    sl = torch.full((b,), length, dtype=torch.int32, device="cuda")
    out = torch.empty_like(q)
    return lambda: ops.paged_attention_decode(q, kc, vc, bt, sl, head_dim**-0.5, layout, max_seq_len=length,
                                              num_splits=splits, out=out)


_MOE_WEIGHTS = {}


def moe_case(t: int, tier: str | None = None):
    """Qwen3-30B-A3B layer at T tokens, w13 interleaved (as the models and the benchmark run it)."""
    E, k, H, I = 128, 8, 2048, 768
    if not _MOE_WEIGHTS:
        w13 = torch.randn(E, 2 * I, H, device="cuda", dtype=torch.bfloat16) / H**0.5
        _MOE_WEIGHTS["w"] = (ops.interleave_gate_up(w13), torch.randn(E, H, I, device="cuda", dtype=torch.bfloat16) / I**0.5)
    w13, w2 = _MOE_WEIGHTS["w"]
    x = torch.randn(t, H, device="cuda", dtype=torch.bfloat16)
    logits = torch.randn(t, E, device="cuda")
    out = torch.empty(t, H, device="cuda", dtype=torch.bfloat16)
    moe_layer(x, logits, w13, w2, k, out, tier)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        moe_layer(x, logits, w13, w2, k, out, tier)
    return graph.replay


def read_case(nbytes: int):
    from probe_read_floor import BLOCK, _read_oneshot

    x = torch.randn(nbytes // 4, device="cuda")
    out = torch.empty(x.numel() // BLOCK + 1, device="cuda")
    grid = (out.numel(),)
    return lambda: _read_oneshot[grid](x, out, x.numel(), BLOCK=BLOCK, EVICT="evict_first", num_warps=8)


CASES = {
    "read67MB": lambda: read_case(67_108_864),
    "decode_b1": lambda: decode_case(1, 32768, 4),
    "decode_b8": lambda: decode_case(8, 8192, 4),
    "decode_b1_nhd": lambda: decode_case(1, 32768, 4, "nhd"),
    "decode_b8_nhd": lambda: decode_case(8, 8192, 4, "nhd"),
    # head_dim 64: "nhd" copies one tensor box per block of K and of V, as many ops as "vllm"
    "decode_b1_h64": lambda: decode_case(1, 65536, 4, "vllm", 64),
    "decode_b1_h64_nhd": lambda: decode_case(1, 65536, 4, "nhd", 64),
    # forced split counts: how the attention kernel alone (merge apart) scales with more, shorter CTAs
    **{f"decode_b{b}_{kvh}kv_s{s}": (lambda b=b, length=length, kvh=kvh, s=s:
                                     decode_case(b, length, kvh, splits=s))
       for b, length, kvh, splits in [(1, 32768, 4, (64, 128, 256)), (8, 8192, 4, (8, 16, 32)),
                                      (64, 4096, 4, (1, 2, 4)), (64, 4096, 8, (1, 2))]
       for s in splits},
    "moe_t1": lambda: moe_case(1),
    "moe_t4": lambda: moe_case(4),
    "moe_t4_gemv": lambda: moe_case(4, "gemv"),
    "moe_t8_gemv": lambda: moe_case(8, "gemv"),
    "moe_t8": lambda: moe_case(8),
    "moe_t16": lambda: moe_case(16),
    "moe_t64": lambda: moe_case(64),
    "moe_t1024": lambda: moe_case(1024),
    "moe_t4096": lambda: moe_case(4096),
}


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    ctx = BenchContext(iters=50)
    for name in sys.argv[1:] or list(CASES):
        fn = CASES[name]()
        t = ctx.time(fn)
        print(f"{name}: {t.median_us:.2f} us (events, median of {t.runs})", flush=True)
        timeline(ctx, fn)


if __name__ == "__main__":
    main()
