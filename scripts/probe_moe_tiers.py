"""Whole-layer time of every fused_moe tier forced, across token counts (Qwen3-30B-A3B, bf16, w13
interleaved, CUDA-graph replay, cold L2, median of 50): the data behind the tier thresholds, the
prefill tier's block_m choice and the Hopper tier's threshold (kSm90MinPairs).

    python scripts/probe_moe_tiers.py [T ...]   (default: 2 4 8 16 32 64 128 256 512 1024)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_fused_moe import _graphs, ours  # noqa: E402
from benchmarks.harness import BenchContext  # noqa: E402
from ferrum_ext import ops  # noqa: E402

TIERS = ("gemv", "small", "prefill_mma", "prefill_sm90")


def main() -> None:
    counts = [int(a) for a in sys.argv[1:]] or [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
    E, k, H, I = 128, 8, 2048, 768
    ctx = BenchContext(iters=50)
    w13 = ops.interleave_gate_up(torch.randn(E, 2 * I, H, device="cuda", dtype=torch.bfloat16) / H**0.5)
    w2 = torch.randn(E, H, I, device="cuda", dtype=torch.bfloat16) / I**0.5
    print("T " + " ".join(f"{t:>12}" for t in TIERS) + "   (us)")
    for num_tokens in counts:
        sets = [(torch.randn(num_tokens, H, device="cuda", dtype=torch.bfloat16),
                 torch.randn(num_tokens, E, device="cuda"),
                 torch.empty(num_tokens, H, device="cuda", dtype=torch.bfloat16)) for _ in range(3)]
        cells = []
        for tier in TIERS:
            if (tier == "gemv" and num_tokens > 64) or (tier == "prefill_sm90" and num_tokens < 256):
                cells.append(f"{'-':>12}")
                continue
            graphs = _graphs(sets, lambda x, lg, o: ours(x, lg, w13, w2, k, o, tier))
            cells.append(f"{ctx.time(lambda g: g.replay(), graphs).median_us:12.1f}")
            del graphs
        print(f"{num_tokens} " + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()
