"""How the Hopper tier's time depends on the rows per expert (partial m-tiles), Qwen3-30B-A3B, bf16,
w13 interleaved, CUDA-graph replay of fused_moe alone (routing given), cold L2, median of 50.

"balanced" routing gives every expert exactly T * k / E rows (token t takes experts t*k .. t*k+k-1
mod E), "random" the benchmark's softmax top-k. At T = 4096 balanced rows fill two 128-row tiles
exactly; random rows (256 +- 16) leave about half the experts a third, nearly empty tile.

    python scripts/probe_moe_balance.py [T ...]   (default: 3840 4096 4352)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_fused_moe import _graphs, kernel_breakdown  # noqa: E402
from benchmarks.harness import BenchContext  # noqa: E402
from ferrum_ext import ops  # noqa: E402


def routing(kind: str, num_tokens: int, num_experts: int, top_k: int):
    if kind == "balanced":
        ids = (torch.arange(num_tokens * top_k, device="cuda") % num_experts).view(num_tokens, top_k)
        return torch.full((num_tokens, top_k), 1.0 / top_k, device="cuda"), ids.to(torch.int32)
    return ops.moe_route(torch.randn(num_tokens, num_experts, device="cuda"), top_k, True)


def main() -> None:
    counts = [int(a) for a in sys.argv[1:]] or [3840, 4096, 4352]
    E, k, H, I = 128, 8, 2048, 768
    ctx = BenchContext(iters=50)
    w13 = ops.interleave_gate_up(torch.randn(E, 2 * I, H, device="cuda", dtype=torch.bfloat16) / H**0.5)
    w2 = torch.randn(E, H, I, device="cuda", dtype=torch.bfloat16) / I**0.5
    breakdowns = []
    for num_tokens in counts:
        for kind in ("balanced", "random"):
            sets = []
            for _ in range(3):
                w, ids = routing(kind, num_tokens, E, k)
                sets.append((torch.randn(num_tokens, H, device="cuda", dtype=torch.bfloat16), w, ids,
                             torch.empty(num_tokens, H, device="cuda", dtype=torch.bfloat16)))
            counts_e = torch.bincount(sets[0][2].flatten().long(), minlength=E)
            tiles = int(((counts_e + 127) // 128).sum())

            def step(x, w, ids, out):
                return ops.fused_moe(x, w13, w2, w, ids, out=out, tier="prefill_sm90", w13_interleaved=True)

            graphs = _graphs(sets, step)
            us = ctx.time(lambda g: g.replay(), graphs).median_us
            tflops = 2 * num_tokens * k * 3 * H * I / us / 1e6
            print(f"T={num_tokens} {kind:>8}: {us:8.1f} us {tflops:6.1f} TFLOP/s  rows/expert "
                  f"{int(counts_e.min())}..{int(counts_e.max())}  128-row m-tiles {tiles}", flush=True)
            breakdowns.append((num_tokens, kind, sets[0], step))
            del graphs
    for num_tokens, kind, args, step in breakdowns:  # profiler last: CUPTI slows later short kernels
        print(f"T={num_tokens} {kind}: {kernel_breakdown(lambda: step(*args))}", flush=True)


if __name__ == "__main__":
    main()
