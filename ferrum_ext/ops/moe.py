"""Mixture of experts (Qwen3-MoE semantics): router, bucketing, bucketed fused MoE."""

import torch

from ferrum_ext import reference
from ferrum_ext._checks import (
    FLOAT_TYPES,
    HALF_TYPES,
    check_out,
    check_rows,
    check_same_device,
    check_same_dtype,
    check_shape,
    check_tensor,
)
from ferrum_ext._extension import cuda_ops_available
from ferrum_ext.ops._dispatch import LIB


MOE_TIERS = (None, "auto", "gemv", "small", "prefill", "prefill_mma", "prefill_sm90")
# Fewest pairs T * k from which "prefill" (and auto) take the Hopper tier (csrc/moe/fused_moe.cu,
# kSm90MinPairs: from H100 measurements, the mma.sync tier is faster below).
MOE_SM90_MIN_PAIRS = 16384
# moe_align runs its multi-CTA kernels from this many pairs on, for E <= MOE_ALIGN_MULTI_CTA_MAX_EXPERTS
# (csrc/moe/route_align.cuh); the one-CTA kernel otherwise. The output is the same.
MOE_ALIGN_MULTI_CTA_MIN_PAIRS = 4096
MOE_ALIGN_MULTI_CTA_MAX_EXPERTS = 1024
# ... and its one-warp kernel up to this many pairs (kAlignWarpMaxPairs): decode sizes. Same output.
MOE_ALIGN_WARP_MAX_PAIRS = 32


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


def interleave_gate_up(w13: torch.Tensor) -> torch.Tensor:
    """One-time repack of w13 [E, 2I, H] (gate rows then up rows, as Hugging Face stores it) into the
    gate/up-interleaved layout of `fused_moe(..., w13_interleaved=True)`: rows gate 0..7, up 0..7,
    gate 8..15, up 8..15, ... of each expert. Returns a new tensor (the caller drops the old one).

    Every tier accepts both layouts; the interleaved one lets the Hopper prefill tier compute
    silu(gate) * up in its gate_up GEMM's epilogue instead of a separate pass over a [T*k, 2I]
    intermediate (docs/moe.md)."""
    check_tensor("w13", w13, dtypes=FLOAT_TYPES, ndim=3)
    if w13.shape[1] % 16:
        raise ValueError(f"w13: expected shape [E, 2 * I, H] with I a multiple of 8, got {tuple(w13.shape)}")
    return reference.interleave_gate_up(w13)


def _check_fused_moe(hidden, w13, w2, topk_weights, topk_ids, gemv_threshold, prefill_threshold, tier,
                     w13_interleaved) -> None:
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
    if not isinstance(w13_interleaved, bool):
        raise ValueError(f"w13_interleaved: expected a bool, got {w13_interleaved!r}")


def fused_moe(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor, *, gemv_threshold: int = 4, prefill_threshold: int = 32,
              tier: str | None = None, w13_interleaved: bool = False,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """Qwen3-MoE expert block: out[t] = sum_j topk_weights[t, j] * down_e(silu(gate_e(x)) * up_e(x))
    with e = topk_ids[t, j]; ids outside [0, E) are skipped (graph padding rows).

    hidden [T, H] fp16/bf16; w13 [E, 2I, H] (gate rows then up rows), w2 [E, H, I] as Hugging Face
    stores them, or w13 from interleave_gate_up with w13_interleaved=True (same results; the Hopper
    prefill tier then fuses SiLU·mul into its gate_up GEMM); topk_weights [T, k] (fp32; other float
    types are converted); topk_ids int32 [T, k].
    The kernel tier comes from T: T < gemv_threshold -> "gemv", T < prefill_threshold -> "small",
    else "prefill"; `tier` forces one. Thresholds come from the caller (runtime env), never the env.
    "prefill" runs the Hopper tier (CUTLASS grouped GEMMs, TMA + wgmma) on a compute capability 9.x
    GPU when the extension was built for 9.0a and T * k >= MOE_SM90_MIN_PAIRS, else the mma.sync
    tier; "prefill_mma" forces the mma.sync tier, "prefill_sm90" the Hopper one (a RuntimeError where
    it is unavailable)."""
    _check_fused_moe(hidden, w13, w2, topk_weights, topk_ids, gemv_threshold, prefill_threshold, tier,
                     w13_interleaved)
    if out is None:
        out = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device)
    else:
        check_out(out, hidden.shape, "hidden", hidden)
    if topk_weights.dtype != torch.float32:
        topk_weights = topk_weights.float()
    topk_weights = topk_weights.contiguous()
    if cuda_ops_available():
        torch.ops.ferrum_ext.fused_moe(out, hidden, w13, w2, topk_weights, topk_ids, gemv_threshold,
                                       prefill_threshold, tier or "auto", w13_interleaved)
    else:
        reference.fused_moe_grouped_reference(hidden, w13, w2, topk_weights, topk_ids,
                                              w13_interleaved=w13_interleaved, out=out)
    return out


def register() -> None:
    lib = LIB

    def route_cpu(weights, ids, router_logits, top_k, renormalize):
        reference.moe_route(router_logits, top_k, renormalize, out=(weights, ids))

    def align_cpu(sorted_pair_ids, block_expert_ids, num_padded, topk_ids, num_experts, block_m):
        reference.moe_align(topk_ids, num_experts, block_m, out=(sorted_pair_ids, block_expert_ids, num_padded))

    def fused_cpu(out, hidden, w13, w2, topk_weights, topk_ids, gemv_threshold, prefill_threshold, tier,
                  w13_interleaved):
        reference.fused_moe_grouped_reference(hidden, w13, w2, topk_weights, topk_ids,
                                              w13_interleaved=w13_interleaved, out=out)

    for name, kernel in (("moe_route", route_cpu), ("moe_align", align_cpu), ("fused_moe", fused_cpu)):
        torch.library.register_kernel(f"{lib}::{name}", "cpu", kernel)
        torch.library.register_fake(f"{lib}::{name}", lambda *args: None)
