"""Typed entry points of every op.

Each wrapper checks its arguments (on any device, so errors are testable on
CPU), allocates `out` when the caller gives none, and runs
torch.ops.ferrum_ext.<op>. Where the extension is not built it runs the twin in
ferrum_ext.reference instead. When it is built, each op also gets a CPU kernel
(the reference) and a fake kernel, so opcheck and torch.compile(fullgraph=True)
work on any device.
"""

import torch

from ferrum_ext import reference
from ferrum_ext._checks import (
    FLOAT_TYPES,
    check_out,
    check_rows,
    check_same_device,
    check_same_dtype,
    check_shape,
    check_tensor,
)
from ferrum_ext._extension import cuda_ops_available

_LIB = "ferrum_ext"


def _run(name: str, out: torch.Tensor, *args) -> torch.Tensor:
    """Calls the out-variant op `name(out, *args)`, or its reference twin."""
    if cuda_ops_available():
        getattr(torch.ops.ferrum_ext, name)(out, *args)
    else:
        getattr(reference, name)(*args, out=out)
    return out


def _register_cpu_and_fake(name: str) -> None:
    """A CPU kernel (the reference twin) and a fake kernel for the out-variant op `name`."""
    twin = getattr(reference, name)

    def cpu_kernel(out, *args):
        twin(*args, out=out)

    torch.library.register_kernel(f"{_LIB}::{name}", "cpu", cpu_kernel)
    torch.library.register_fake(f"{_LIB}::{name}", lambda out, *args: None)


# ---- layers -------------------------------------------------------------------


def _check_norm(input: torch.Tensor, weight: torch.Tensor) -> None:
    check_tensor("input", input, dtypes=FLOAT_TYPES, min_ndim=1)
    check_rows("input", input)
    check_tensor("weight", weight, ndim=1, contiguous=True)
    check_same_dtype("weight", weight, "input", input)
    check_same_device("weight", weight, "input", input)
    check_shape("weight", weight, (input.shape[-1],))


def rms_norm(input: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, *,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """RMSNorm over the last dimension: rms_norm(input) * weight, statistics in fp32."""
    _check_norm(input, weight)
    if out is None:
        out = torch.empty(input.shape, dtype=input.dtype, device=input.device)
    else:
        check_out(out, input.shape, "input", input)
    return _run("rms_norm", out, input, weight, float(eps))


def fused_add_rms_norm(input: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       eps: float = 1e-6, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """residual += input in place; returns rms_norm(residual) * weight. `out` may be `input`."""
    _check_norm(input, weight)
    check_tensor("residual", residual)
    check_rows("residual", residual)
    check_same_dtype("residual", residual, "input", input)
    check_same_device("residual", residual, "input", input)
    check_shape("residual", residual, input.shape)
    if out is None:
        out = torch.empty(input.shape, dtype=input.dtype, device=input.device)
    else:
        check_out(out, input.shape, "input", input)
    return _run("fused_add_rms_norm", out, input, residual, weight, float(eps))


def silu_and_mul(input: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """SwiGLU: silu(input[..., :d]) * input[..., d:] for input [..., 2d]."""
    check_tensor("input", input, dtypes=FLOAT_TYPES, min_ndim=1)
    check_rows("input", input)
    if input.shape[-1] % 2:
        raise ValueError(f"input: expected an even last dimension [..., 2 * d], got shape {tuple(input.shape)}")
    shape = (*input.shape[:-1], input.shape[-1] // 2)
    if out is None:
        out = torch.empty(shape, dtype=input.dtype, device=input.device)
    else:
        check_out(out, shape, "input", input)
    return _run("silu_and_mul", out, input)


if cuda_ops_available():
    for _name in ("rms_norm", "fused_add_rms_norm", "silu_and_mul"):
        _register_cpu_and_fake(_name)
