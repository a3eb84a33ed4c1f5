"""Pure-PyTorch twins of every op: same signatures as ferrum_ext.ops.

They are the oracle of the GPU tests and the path taken on CPU or where the
extension is not built. Written for clarity, not speed: fp32 math, rounding to
the output dtype where the kernels round.
"""

import torch


def _into(out: torch.Tensor | None, result: torch.Tensor) -> torch.Tensor:
    if out is None:
        return result
    out.copy_(result)
    return out


# ---- layers -------------------------------------------------------------------


def _normalize(x32: torch.Tensor, weight: torch.Tensor, eps: float, dtype: torch.dtype) -> torch.Tensor:
    # As Hugging Face LLaMA/Qwen: fp32 statistics, round, then scale by the weight.
    inv_rms = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return ((x32 * inv_rms).to(dtype).float() * weight.float()).to(dtype)


def rms_norm(input: torch.Tensor, weight: torch.Tensor, eps: float, *, out: torch.Tensor | None = None):
    return _into(out, _normalize(input.float(), weight, eps, input.dtype))


def fused_add_rms_norm(input: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                       *, out: torch.Tensor | None = None):
    """residual += input (rounded to its dtype, in place); returns rms_norm(residual) * weight."""
    residual.copy_((input.float() + residual.float()).to(residual.dtype))
    return _into(out, _normalize(residual.float(), weight, eps, input.dtype))


def silu_and_mul(input: torch.Tensor, *, out: torch.Tensor | None = None):
    d = input.shape[-1] // 2
    gate, up = input[..., :d].float(), input[..., d:].float()
    return _into(out, (torch.nn.functional.silu(gate).to(input.dtype).float() * up).to(input.dtype))


# ---- moe ----------------------------------------------------------------------


def moe_route(router_logits: torch.Tensor, top_k: int, renormalize: bool = True, *, out=None):
    """Qwen3-MoE routing: softmax over experts in fp32, top-k by repeated arg-max (ties to the
    lower expert id), optional renormalisation of the k weights (a zero sum gives 1/k each).
    Returns (weights fp32 [T, k], ids int32 [T, k])."""
    probs = torch.softmax(router_logits.float(), dim=-1)
    num_tokens = probs.shape[0]
    weights = torch.empty(num_tokens, top_k, dtype=torch.float32, device=probs.device)
    ids = torch.empty(num_tokens, top_k, dtype=torch.int32, device=probs.device)
    remaining = probs.clone()
    for j in range(top_k):
        idx = torch.argmax(remaining, dim=-1, keepdim=True)  # first maximum
        weights[:, j] = remaining.gather(1, idx).squeeze(1)
        ids[:, j] = idx.squeeze(1).to(torch.int32)
        remaining.scatter_(1, idx, -1.0)
    if renormalize:
        total = weights[:, 0].clone()
        for j in range(1, top_k):  # fixed order, as the kernel sums
            total = total + weights[:, j]
        weights = torch.where(total[:, None] > 0, weights / total[:, None],
                              torch.full_like(weights, 1.0 / top_k))
    if out is not None:
        out[0].copy_(weights)
        out[1].copy_(ids)
        return out[0], out[1]
    return weights, ids


def moe_align_sizes(num_pairs: int, num_experts: int, block_m: int) -> tuple[int, int]:
    """(len(sorted_pair_ids), len(block_expert_ids)): each expert's run is padded by at most
    block_m - 1 slots and at most min(E, T*k) experts are hit."""
    max_padded = num_pairs + min(num_experts, num_pairs) * (block_m - 1)
    return max_padded, -(-max_padded // block_m)


def moe_align(topk_ids: torch.Tensor, num_experts: int, block_m: int, *, out=None):
    """Buckets the pairs p = t*k + j by expert: returns (sorted_pair_ids int32 [max_padded],
    block_expert_ids int32 [max_tiles], num_padded int32 [1]). Inside an expert the pairs are in
    ascending p; each expert's run is padded to a multiple of block_m with the sentinel T*k;
    block_expert_ids[b] is the expert of tile b, -1 past num_padded; ids outside [0, E) are skipped."""
    ids = topk_ids.reshape(-1).to(torch.int64)
    device = ids.device
    num_pairs = ids.numel()
    max_padded, max_tiles = moe_align_sizes(num_pairs, num_experts, block_m)
    valid = (ids >= 0) & (ids < num_experts)
    counts = torch.bincount(ids[valid], minlength=num_experts)
    padded = (counts + block_m - 1) // block_m * block_m
    starts = torch.cumsum(padded, 0) - padded
    firsts = torch.cumsum(counts, 0) - counts
    key = torch.where(valid, ids, torch.full_like(ids, num_experts))
    order = torch.sort(key, stable=True).indices[: int(valid.sum())]
    expert_of = key[order]
    pos = starts[expert_of] + torch.arange(order.numel(), device=device) - firsts[expert_of]
    sorted_ids = torch.full((max_padded,), num_pairs, dtype=torch.int32, device=device)
    sorted_ids[pos] = order.to(torch.int32)
    tile_expert = torch.repeat_interleave(torch.arange(num_experts, device=device), padded // block_m)
    block_expert = torch.full((max_tiles,), -1, dtype=torch.int32, device=device)
    block_expert[: tile_expert.numel()] = tile_expert.to(torch.int32)
    num_padded = padded.sum().reshape(1).to(torch.int32)
    if out is not None:
        for dst, src in zip(out, (sorted_ids, block_expert, num_padded)):
            dst.copy_(src)
        return tuple(out)
    return sorted_ids, block_expert, num_padded


def _moe_expert(x32: torch.Tensor, w13_e: torch.Tensor, w2_e: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One expert on fp32 rows x32 [n, H]: h = silu(gate) * up rounded to dtype, y = h @ w2^T rounded
    to dtype (where the kernels round), returned in fp32."""
    inter = w13_e.shape[0] // 2
    gate_up = x32 @ w13_e.float().t()
    h = (torch.nn.functional.silu(gate_up[:, :inter]) * gate_up[:, inter:]).to(dtype).float()
    return (h @ w2_e.float().t()).to(dtype).float()


def fused_moe(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor, *, gemv_threshold: int = 4, prefill_threshold: int = 32,
              tier: str | None = None, out: torch.Tensor | None = None):
    """Per-(token, expert) loop: out[t] = sum_j w[t, j] * expert_{ids[t, j]}(hidden[t]) in fp32, j in
    order, ids outside [0, E) skipped. The tier arguments do not change the result."""
    num_tokens, hidden_size = hidden.shape
    num_experts, top_k = w13.shape[0], topk_ids.shape[1]
    ids = topk_ids.tolist()
    weights = topk_weights.float()
    acc = torch.zeros(num_tokens, hidden_size, dtype=torch.float32, device=hidden.device)
    for t in range(num_tokens):
        x = hidden[t : t + 1].float()
        for j in range(top_k):
            e = ids[t][j]
            if 0 <= e < num_experts:
                acc[t] += weights[t, j] * _moe_expert(x, w13[e], w2[e], hidden.dtype)[0]
    return _into(out, acc.to(hidden.dtype))


def fused_moe_grouped_reference(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                                topk_weights: torch.Tensor, topk_ids: torch.Tensor, *, gemv_threshold: int = 4,
                                prefill_threshold: int = 32, tier: str | None = None,
                                out: torch.Tensor | None = None):
    """The same function as fused_moe, grouped by expert (one matmul per expert hit): the fast oracle."""
    num_tokens, hidden_size = hidden.shape
    num_experts, top_k = w13.shape[0], topk_ids.shape[1]
    ids = topk_ids.reshape(-1).to(torch.int64)
    valid = (ids >= 0) & (ids < num_experts)
    token_of = torch.arange(ids.numel(), device=hidden.device) // top_k
    x = hidden.float()
    y = torch.zeros(ids.numel(), hidden_size, dtype=torch.float32, device=hidden.device)
    for e in torch.unique(ids[valid]).tolist():
        sel = torch.nonzero(ids == e).squeeze(1)
        y[sel] = _moe_expert(x[token_of[sel]], w13[e], w2[e], hidden.dtype)
    weights = torch.where(valid.view(num_tokens, top_k), topk_weights.float(), 0.0)
    y = y.view(num_tokens, top_k, hidden_size)
    acc = torch.zeros(num_tokens, hidden_size, dtype=torch.float32, device=hidden.device)
    for j in range(top_k):  # fixed order
        acc += weights[:, j : j + 1] * y[:, j]
    return _into(out, acc.to(hidden.dtype))
