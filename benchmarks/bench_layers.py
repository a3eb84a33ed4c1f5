"""Layer ops: rms_norm, fused_add_rms_norm, silu_and_mul.

Bytes that must move (all bandwidth-bound):
  rms_norm            rows * hidden * e (read) + rows * hidden * e (write)     (+ the weight, negligible)
  fused_add_rms_norm  rows * hidden * e * 4 (input, residual read; residual, out written)
  silu_and_mul        rows * 2d * e (read) + rows * d * e (write)
e = element size. Reads and writes both count, so rates compare with the copy
ceiling. Baseline: the same math in PyTorch eager, timed in the same run.
"""

import torch

from ferrum_ext import ops

SHAPES = [(4096, 4096), (8192, 8192), (16384, 5120)]  # [rows, hidden]; all larger than L2
ROTATE = 3


def _norm_torch(x, w, eps=1e-6):
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def run(ctx):
    rows = []
    for dtype in (torch.bfloat16, torch.float16):
        e = torch.finfo(dtype).bits // 8
        for m, h in SHAPES:
            case = f"[{m}, {h}]"
            xs = [(torch.randn(m, h, device="cuda", dtype=dtype),
                   torch.randn(h, device="cuda", dtype=dtype),
                   torch.empty(m, h, device="cuda", dtype=dtype)) for _ in range(ROTATE)]
            t = ctx.time(lambda x, w, o: ops.rms_norm(x, w, 1e-6, out=o), xs)
            base = ctx.time(lambda x, w, o: _norm_torch(x, w), xs)
            rows.append(ctx.row("rms_norm", case, dtype, t, bytes_moved=2 * m * h * e, ceiling="copy",
                                baseline=base, baseline_name="torch eager"))

            rs = [(x, w, o, torch.randn_like(x)) for x, w, o in xs]
            t = ctx.time(lambda x, w, o, r: ops.fused_add_rms_norm(x, r, w, 1e-6, out=o), rs)
            base = ctx.time(lambda x, w, o, r: _norm_torch(r.add_(x), w), rs)
            rows.append(ctx.row("fused_add_rms_norm", case, dtype, t, bytes_moved=4 * m * h * e, ceiling="copy",
                                baseline=base, baseline_name="torch eager"))
            del xs, rs

            d = h
            gs = [(torch.randn(m, 2 * d, device="cuda", dtype=dtype),
                   torch.empty(m, d, device="cuda", dtype=dtype)) for _ in range(ROTATE)]
            t = ctx.time(lambda x, o: ops.silu_and_mul(x, out=o), gs)
            base = ctx.time(lambda x, o: torch.nn.functional.silu(x[:, :d]) * x[:, d:], gs)
            rows.append(ctx.row("silu_and_mul", f"[{m}, 2x{d}]", dtype, t, bytes_moved=3 * m * d * e,
                                ceiling="copy", baseline=base, baseline_name="torch eager"))
            del gs
    return rows
