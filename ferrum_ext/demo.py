"""A demo of the layer ops on an embedded input: the kernels on a GPU, their
reference twins on CPU. Prints which path ran, the time and the error."""

import time

import torch

import ferrum_ext
from ferrum_ext import ops, reference
from ferrum_ext.testing import rel_error


def layer_demo(rows: int = 4096, hidden: int = 4096) -> int:
    on_gpu = torch.cuda.is_available() and ferrum_ext.cuda_ops_available()
    device = "cuda" if on_gpu else "cpu"
    path = "CUDA kernels" if on_gpu else f"reference twins on CPU ({ferrum_ext.extension_error() or 'no CUDA device'})"
    print(f"ferrum_ext demo: rms_norm + silu_and_mul on [{rows}, {hidden}] bf16 via {path}")
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(rows, 2 * hidden, generator=gen).to(device, torch.bfloat16)
    w = torch.randn(hidden, generator=gen).to(device, torch.bfloat16)
    for name, fn, ref in (
        ("silu_and_mul", lambda: ops.silu_and_mul(x), lambda: reference.silu_and_mul(x)),
        ("rms_norm", lambda: ops.rms_norm(x[:, :hidden], w), lambda: reference.rms_norm(x[:, :hidden], w, 1e-6)),
    ):
        fn()
        if on_gpu:
            torch.cuda.synchronize()
        start = time.perf_counter()
        reps = 20 if on_gpu else 2
        for _ in range(reps):
            out = fn()
        if on_gpu:
            torch.cuda.synchronize()
        us = (time.perf_counter() - start) / reps * 1e6
        print(f"  {name:<14} {us:10.1f} us/call   rel. error vs reference {rel_error(out, ref()):.1e}")
    return 0
