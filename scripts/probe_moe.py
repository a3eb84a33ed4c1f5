"""One MoE layer (Qwen3-30B-A3B shape, bf16, random routing) run a few times, to profile:

    ncu --launch-skip 10 --launch-count 5 -k regex:moe python scripts/probe_moe.py [T]
"""

import sys

import torch

from ferrum_ext import ops

E, K, H, I = 128, 8, 2048, 768


def main():
    T = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(T, H, device="cuda", dtype=torch.bfloat16, generator=g)
    w13 = torch.randn(E, 2 * I, H, device="cuda", dtype=torch.bfloat16, generator=g) * 0.02
    w2 = torch.randn(E, H, I, device="cuda", dtype=torch.bfloat16, generator=g) * 0.02
    logits = torch.randn(T, E, device="cuda", dtype=torch.float32, generator=g)
    for _ in range(4):
        w, ids = ops.moe_route(logits, K, True)
        ops.fused_moe(x, w13, w2, w, ids)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
