"""One small call of every kernel family, for compute-sanitizer memcheck:

    compute-sanitizer --tool memcheck --error-exitcode 3 python scripts/sanitize_kernels.py

Sizes are odd so tails and scalar paths run; each family is one function.
"""

import torch

from ferrum_ext import ops


def layers():
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(7, 1000, device="cuda", dtype=dtype)
        w = torch.randn(1000, device="cuda", dtype=dtype)
        ops.rms_norm(x, w)
        ops.rms_norm(x[:, 1:993], w[:992])  # misaligned rows: the scalar path
        ops.fused_add_rms_norm(x, torch.randn_like(x), w)
        ops.silu_and_mul(x)
        ops.silu_and_mul(x[:, 1:-1])


def moe():
    for dtype in (torch.bfloat16, torch.float16):
        for tokens in (1, 5, 40, 300):
            x = torch.randn(tokens, 192, device="cuda", dtype=dtype)
            w13 = torch.randn(16, 256, 192, device="cuda", dtype=dtype) * 0.05
            w2 = torch.randn(16, 192, 128, device="cuda", dtype=dtype) * 0.05
            w, ids = ops.moe_route(torch.randn(tokens, 16, device="cuda"), 3, True)
            ids[::3, 1] = -1
            for tier in ("gemv", "small", "prefill"):
                ops.fused_moe(x, w13, w2, w, ids, tier=tier)
            ops.moe_align(ids, 16, 16)


FAMILIES = [layers, moe]

if __name__ == "__main__":
    for family in FAMILIES:
        family()
        torch.cuda.synchronize()
        print(f"memcheck run: {family.__name__} ok")
