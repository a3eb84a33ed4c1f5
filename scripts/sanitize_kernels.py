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


FAMILIES = [layers]

if __name__ == "__main__":
    for family in FAMILIES:
        family()
        torch.cuda.synchronize()
        print(f"memcheck run: {family.__name__} ok")
