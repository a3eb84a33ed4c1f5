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
    HALF_TYPES,
    check_kv_cache,
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


def _check_index(name: str, t: torch.Tensor, tokens: int, like: torch.Tensor) -> None:
    check_tensor(name, t, dtypes=(torch.int32, torch.int64), ndim=1, contiguous=True)
    check_shape(name, t, (tokens,))
    check_same_device(name, t, "qkv", like)


def qk_norm_rope_write_cache(qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                             key_cache: torch.Tensor, value_cache: torch.Tensor, slot_mapping: torch.Tensor,
                             layout: str, num_heads: int, num_kv_heads: int,
                             q_norm_weight: torch.Tensor | None = None, k_norm_weight: torch.Tensor | None = None,
                             eps: float = 1e-6, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Attention prologue: split qkv [T, (H + 2 KVH) D], RMSNorm q/k per head (when weights are given),
    half-split RoPE at `positions` from cos/sin [max_positions, D/2] (fp32), write k/v into the paged
    cache at slot_mapping (negative = skip); returns q [T, H, D]."""
    check_tensor("qkv", qkv, dtypes=HALF_TYPES, ndim=2)
    check_rows("qkv", qkv)
    if num_heads <= 0 or num_kv_heads <= 0 or num_heads % num_kv_heads:
        raise ValueError(f"num_heads: expected a positive multiple of num_kv_heads, got {num_heads} and {num_kv_heads}")
    tokens, width = qkv.shape
    head_dim = width // (num_heads + 2 * num_kv_heads)
    if head_dim * (num_heads + 2 * num_kv_heads) != width or head_dim % 2 or head_dim > 256:
        raise ValueError(f"qkv: expected [T, (num_heads + 2 * num_kv_heads) * head_dim] with an even head_dim "
                         f"<= 256, got shape {tuple(qkv.shape)}")
    _check_index("positions", positions, tokens, qkv)
    _check_index("slot_mapping", slot_mapping, tokens, qkv)
    if positions.dtype != slot_mapping.dtype:
        raise TypeError("slot_mapping: expected the dtype of positions")
    for name, table in (("cos", cos), ("sin", sin)):
        check_tensor(name, table, dtypes=(torch.float32,), ndim=2, contiguous=True)
        check_same_device(name, table, "qkv", qkv)
        if table.shape[1] != head_dim // 2:
            raise ValueError(f"{name}: expected shape [max_positions, {head_dim // 2}], got {tuple(table.shape)}")
    check_shape("sin", sin, cos.shape)
    for name, w in (("q_norm_weight", q_norm_weight), ("k_norm_weight", k_norm_weight)):
        if w is not None:
            check_tensor(name, w, ndim=1, contiguous=True)
            check_same_dtype(name, w, "qkv", qkv)
            check_same_device(name, w, "qkv", qkv)
            check_shape(name, w, (head_dim,))
    check_kv_cache(key_cache, value_cache, layout, num_kv_heads, head_dim, qkv)
    shape = (tokens, num_heads, head_dim)
    if out is None:
        out = torch.empty(shape, dtype=qkv.dtype, device=qkv.device)
    else:
        check_out(out, shape, "qkv", qkv)
    return _run("qk_norm_rope_write_cache", out, qkv, positions, cos, sin, key_cache, value_cache, slot_mapping,
                layout, num_heads, num_kv_heads, q_norm_weight, k_norm_weight, float(eps))


# ---- sampling -----------------------------------------------------------------

MASK_TYPES = (torch.bool, torch.uint8)


def _check_vector_out(name: str, t, length: int, dtype: torch.dtype, like: torch.Tensor) -> None:
    check_tensor(name, t, contiguous=True)
    check_shape(name, t, (length,))
    if t.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {t.dtype}")
    check_same_device(name, t, "logits", like)


def greedy_argmax(logits: torch.Tensor, *, return_value: bool = False, allowed: torch.Tensor | None = None,
                  out=None):
    """Token ids of the largest logit per row: exactly torch.argmax(logits, -1), fast at any batch.

    logits [B, V] float32/float16/bfloat16, unit stride in the last dimension, any row stride.
    Ties go to the lowest index; NaN counts as the largest value (the first NaN wins).
    allowed: optional bool/uint8 mask, [B, V] or [V]; only entries with allowed != 0 compete,
    and a row with none allowed gives id -1.
    Returns int64 ids [B]; with return_value=True the pair (ids, values) where
    values[b] = logits[b, ids[b]] in the logits dtype (-inf for id -1).
    out: the ids tensor to write, or the (ids, values) pair with return_value=True.
    """
    check_tensor("logits", logits, dtypes=FLOAT_TYPES, ndim=2)
    check_rows("logits", logits)
    batch, vocab = logits.shape
    if vocab == 0:
        raise ValueError("logits: expected a non-empty last dimension (the vocabulary), "
                         f"got shape {tuple(logits.shape)}")
    if vocab >= 2**31 - 1:
        raise ValueError(f"logits: vocabulary of {vocab} entries is too large (< 2**31 - 1)")
    if allowed is not None:
        check_tensor("allowed", allowed, dtypes=MASK_TYPES)
        if tuple(allowed.shape) not in ((batch, vocab), (vocab,)):
            raise ValueError(f"allowed: expected shape {(batch, vocab)} or {(vocab,)}, "
                             f"got {tuple(allowed.shape)}")
        check_rows("allowed", allowed)
        check_same_device("allowed", allowed, "logits", logits)
    if return_value:
        if out is None:
            ids = torch.empty(batch, dtype=torch.int64, device=logits.device)
            values = torch.empty(batch, dtype=logits.dtype, device=logits.device)
        else:
            if not isinstance(out, (tuple, list)) or len(out) != 2:
                raise TypeError("out: with return_value=True expected a pair (ids, values)")
            ids, values = out
            _check_vector_out("out[0]", ids, batch, torch.int64, logits)
            _check_vector_out("out[1]", values, batch, logits.dtype, logits)
    else:
        values = None
        if out is None:
            ids = torch.empty(batch, dtype=torch.int64, device=logits.device)
        else:
            _check_vector_out("out", out, batch, torch.int64, logits)
            ids = out
    if cuda_ops_available():
        torch.ops.ferrum_ext.greedy_argmax(ids, values, logits, allowed)
    else:
        reference.greedy_argmax(logits, return_value=return_value, allowed=allowed,
                                out=(ids, values) if return_value else ids)
    return (ids, values) if return_value else ids


def _register_greedy_argmax() -> None:
    def cpu_kernel(ids, values, logits, allowed):
        if values is None:
            reference.greedy_argmax(logits, allowed=allowed, out=ids)
        else:
            reference.greedy_argmax(logits, return_value=True, allowed=allowed, out=(ids, values))

    torch.library.register_kernel(f"{_LIB}::greedy_argmax", "cpu", cpu_kernel)
    torch.library.register_fake(f"{_LIB}::greedy_argmax", lambda ids, values, logits, allowed: None)


if cuda_ops_available():
    for _name in ("rms_norm", "fused_add_rms_norm", "silu_and_mul", "qk_norm_rope_write_cache"):
        _register_cpu_and_fake(_name)
    _register_greedy_argmax()
