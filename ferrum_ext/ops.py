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
# ---- moe ----------------------------------------------------------------------

MOE_TIERS = (None, "auto", "gemv", "small", "prefill")


def moe_route(router_logits: torch.Tensor, top_k: int, renormalize: bool = True, *,
              out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen3-MoE router: softmax over experts in fp32, top-k by repeated arg-max (ties to the lower
    expert id), optional renormalisation (zero sum -> 1/k). Returns (weights fp32 [T, k], ids int32 [T, k])."""
    check_tensor("router_logits", router_logits, dtypes=FLOAT_TYPES, ndim=2)
    check_rows("router_logits", router_logits)
    num_tokens, num_experts = router_logits.shape
    if not 1 <= num_experts <= 512:
        raise ValueError(f"router_logits: expected 1..512 experts, got shape {tuple(router_logits.shape)}")
    if not isinstance(top_k, int) or not 1 <= top_k <= min(16, num_experts):
        raise ValueError(f"top_k: expected an int in 1..min(16, num_experts={num_experts}), got {top_k}")
    shape = (num_tokens, top_k)
    if out is None:
        weights = torch.empty(shape, dtype=torch.float32, device=router_logits.device)
        ids = torch.empty(shape, dtype=torch.int32, device=router_logits.device)
    else:
        weights, ids = out
        check_out(weights, shape, "router_logits", router_logits, dtype=torch.float32)
        check_out(ids, shape, "router_logits", router_logits, dtype=torch.int32)
    if cuda_ops_available():
        torch.ops.ferrum_ext.moe_route(weights, ids, router_logits, top_k, bool(renormalize))
    else:
        reference.moe_route(router_logits, top_k, bool(renormalize), out=(weights, ids))
    return weights, ids


def moe_align(topk_ids: torch.Tensor, num_experts: int, block_m: int, *,
              out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None):
    """Buckets pairs p = t*k + j by expert for the grouped GEMMs. Returns (sorted_pair_ids int32
    [T*k + min(E, T*k)*(block_m-1)], block_expert_ids int32 [ceil(that / block_m)], num_padded int32 [1]);
    see reference.moe_align for the layout. Sizes depend only on T*k, E and block_m."""
    check_tensor("topk_ids", topk_ids, dtypes=(torch.int32,), contiguous=True)
    if not isinstance(num_experts, int) or not 1 <= num_experts <= 4096:
        raise ValueError(f"num_experts: expected an int in 1..4096, got {num_experts}")
    if not isinstance(block_m, int) or not 1 <= block_m <= 1024:
        raise ValueError(f"block_m: expected an int in 1..1024, got {block_m}")
    max_padded, max_tiles = reference.moe_align_sizes(topk_ids.numel(), num_experts, block_m)
    if out is None:
        out = tuple(torch.empty(n, dtype=torch.int32, device=topk_ids.device) for n in (max_padded, max_tiles, 1))
    else:
        for name, t, n in zip(("sorted_pair_ids", "block_expert_ids", "num_padded"), out, (max_padded, max_tiles, 1)):
            check_tensor(f"out {name}", t, dtypes=(torch.int32,), ndim=1, contiguous=True)
            check_shape(f"out {name}", t, (n,))
            check_same_device(f"out {name}", t, "topk_ids", topk_ids)
    if cuda_ops_available():
        torch.ops.ferrum_ext.moe_align(*out, topk_ids, num_experts, block_m)
    else:
        reference.moe_align(topk_ids, num_experts, block_m, out=out)
    return tuple(out)


def _check_fused_moe(hidden, w13, w2, topk_weights, topk_ids, gemv_threshold, prefill_threshold, tier) -> None:
    check_tensor("hidden", hidden, dtypes=HALF_TYPES, ndim=2, contiguous=True)
    num_tokens, hidden_size = hidden.shape
    if hidden_size % 64:
        raise ValueError(f"hidden: expected a hidden size that is a multiple of 64, got shape {tuple(hidden.shape)}")
    for name, w in (("w13", w13), ("w2", w2)):
        check_tensor(name, w, ndim=3, contiguous=True)
        check_same_dtype(name, w, "hidden", hidden)
        check_same_device(name, w, "hidden", hidden)
    num_experts, two_inter = w13.shape[0], w13.shape[1]
    if two_inter % 128 or w13.shape[2] != hidden_size:
        raise ValueError(f"w13: expected shape [E, 2 * I, H={hidden_size}] with I a multiple of 64, "
                         f"got {tuple(w13.shape)}")
    check_shape("w2", w2, (num_experts, hidden_size, two_inter // 2))
    check_tensor("topk_ids", topk_ids, dtypes=(torch.int32,), ndim=2, contiguous=True)
    check_same_device("topk_ids", topk_ids, "hidden", hidden)
    if topk_ids.shape[0] != num_tokens:
        raise ValueError(f"topk_ids: expected shape [{num_tokens}, top_k], got {tuple(topk_ids.shape)}")
    if not 1 <= topk_ids.shape[1] <= num_experts:
        raise ValueError(f"topk_ids: top_k = {topk_ids.shape[1]} must be in 1..num_experts = {num_experts}")
    check_tensor("topk_weights", topk_weights, dtypes=FLOAT_TYPES)
    check_shape("topk_weights", topk_weights, topk_ids.shape)
    check_same_device("topk_weights", topk_weights, "hidden", hidden)
    for name, v in (("gemv_threshold", gemv_threshold), ("prefill_threshold", prefill_threshold)):
        if not isinstance(v, int) or v < 0:
            raise ValueError(f"{name}: expected a non-negative int, got {v!r}")
    if tier not in MOE_TIERS:
        raise ValueError(f"tier: expected one of {MOE_TIERS}, got {tier!r}")


def fused_moe(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor, *, gemv_threshold: int = 4, prefill_threshold: int = 32,
              tier: str | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Qwen3-MoE expert block: out[t] = sum_j topk_weights[t, j] * down_e(silu(gate_e(x)) * up_e(x))
    with e = topk_ids[t, j]; ids outside [0, E) are skipped (graph padding rows).

    hidden [T, H] fp16/bf16; w13 [E, 2I, H] (gate rows then up rows), w2 [E, H, I] as Hugging Face
    stores them; topk_weights [T, k] (fp32; other float types are converted); topk_ids int32 [T, k].
    The kernel tier comes from T: T < gemv_threshold -> "gemv", T < prefill_threshold -> "small",
    else "prefill"; `tier` forces one. Thresholds come from the caller (runtime env), never the env."""
    _check_fused_moe(hidden, w13, w2, topk_weights, topk_ids, gemv_threshold, prefill_threshold, tier)
    if out is None:
        out = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device)
    else:
        check_out(out, hidden.shape, "hidden", hidden)
    if topk_weights.dtype != torch.float32:
        topk_weights = topk_weights.float()
    topk_weights = topk_weights.contiguous()
    if cuda_ops_available():
        torch.ops.ferrum_ext.fused_moe(out, hidden, w13, w2, topk_weights, topk_ids, gemv_threshold,
                                       prefill_threshold, tier or "auto")
    else:
        reference.fused_moe_grouped_reference(hidden, w13, w2, topk_weights, topk_ids, out=out)
    return out


def _register_moe() -> None:
    lib = _LIB

    def route_cpu(weights, ids, router_logits, top_k, renormalize):
        reference.moe_route(router_logits, top_k, renormalize, out=(weights, ids))

    def align_cpu(sorted_pair_ids, block_expert_ids, num_padded, topk_ids, num_experts, block_m):
        reference.moe_align(topk_ids, num_experts, block_m, out=(sorted_pair_ids, block_expert_ids, num_padded))

    def fused_cpu(out, hidden, w13, w2, topk_weights, topk_ids, gemv_threshold, prefill_threshold, tier):
        reference.fused_moe_grouped_reference(hidden, w13, w2, topk_weights, topk_ids, out=out)

    for name, kernel in (("moe_route", route_cpu), ("moe_align", align_cpu), ("fused_moe", fused_cpu)):
        torch.library.register_kernel(f"{lib}::{name}", "cpu", kernel)
        torch.library.register_fake(f"{lib}::{name}", lambda *args: None)


if cuda_ops_available():
    for _name in ("rms_norm", "fused_add_rms_norm", "silu_and_mul", "qk_norm_rope_write_cache"):
        _register_cpu_and_fake(_name)
    _register_greedy_argmax()
    _register_moe()
