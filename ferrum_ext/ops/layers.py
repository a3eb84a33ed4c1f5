"""Layer ops: RMSNorm (plain and fused with the residual add), SwiGLU, the fused q/k-norm + RoPE + cache write."""

import torch

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
from ferrum_ext.ops._dispatch import register_cpu_and_fake, run


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
    return run("rms_norm", out, input, weight, float(eps))


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
    return run("fused_add_rms_norm", out, input, residual, weight, float(eps))


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
    return run("silu_and_mul", out, input)





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
    cache_kv_heads, _ = check_kv_cache(key_cache, value_cache, layout, qkv.dtype, head_dim, "qkv", qkv)
    if cache_kv_heads != num_kv_heads:
        raise ValueError(f"key_cache: expected {num_kv_heads} kv heads (num_kv_heads), got {cache_kv_heads}")
    shape = (tokens, num_heads, head_dim)
    if out is None:
        out = torch.empty(shape, dtype=qkv.dtype, device=qkv.device)
    else:
        check_out(out, shape, "qkv", qkv)
    return run("qk_norm_rope_write_cache", out, qkv, positions, cos, sin, key_cache, value_cache, slot_mapping,
                layout, num_heads, num_kv_heads, q_norm_weight, k_norm_weight, float(eps))




def register() -> None:
    for name in ("rms_norm", "fused_add_rms_norm", "silu_and_mul", "qk_norm_rope_write_cache"):
        register_cpu_and_fake(name)
