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


# ---- attention ----------------------------------------------------------------


def _cache_geometry(key_cache: torch.Tensor, value_cache: torch.Tensor, layout: str):
    """(num_kv_heads, block_size, head_dim) of a paged cache in `layout`."""
    if layout == "vllm":
        return key_cache.shape[1], key_cache.shape[3], value_cache.shape[2]
    return key_cache.shape[2], key_cache.shape[1], key_cache.shape[3]


def write_kv_cache(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                   slot_mapping: torch.Tensor, layout: str = "vllm") -> None:
    """key/value [T, kv_heads, D] into the caches at slot = block * block_size + offset; slot < 0 skips."""
    kvh, bs, d = _cache_geometry(key_cache, value_cache, layout)
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    k, v = key[keep], value[keep]
    blk, off = slots // bs, slots % bs
    if layout == "vllm":
        x = key_cache.shape[4]
        key_cache[blk, :, :, off, :] = k.reshape(-1, kvh, d // x, x).to(key_cache.dtype)
        value_cache[blk, :, :, off] = v.to(value_cache.dtype)
    else:
        key_cache[blk, off] = k.to(key_cache.dtype)
        value_cache[blk, off] = v.to(value_cache.dtype)


def gather_kv(key_cache: torch.Tensor, value_cache: torch.Tensor, block_table: torch.Tensor, n: int,
              layout: str = "vllm"):
    """The first n tokens of one sequence as contiguous (K, V) [n, kv_heads, D]."""
    kvh, bs, d = _cache_geometry(key_cache, value_cache, layout)
    nblk = (n + bs - 1) // bs
    blocks = block_table[:nblk].long()
    if layout == "vllm":
        k = key_cache[blocks].permute(0, 3, 1, 2, 4).reshape(nblk * bs, kvh, d)
        v = value_cache[blocks].permute(0, 3, 1, 2).reshape(nblk * bs, kvh, d)
    else:
        k = key_cache[blocks].reshape(nblk * bs, kvh, d)
        v = value_cache[blocks].reshape(nblk * bs, kvh, d)
    return k[:n], v[:n]


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, qpos: torch.Tensor) -> torch.Tensor:
    """q [nq, H, D] at positions qpos [nq] attends causally to k/v [n, kvh, D]; fp32 out, zeros where nothing is visible."""
    nq, h, d = q.shape
    n, kvh = k.shape[0], k.shape[1]
    if n == 0:
        return torch.zeros(nq, h, d, dtype=torch.float32, device=q.device)
    g = h // kvh
    kf = k.float().repeat_interleave(g, dim=1)
    vf = v.float().repeat_interleave(g, dim=1)
    s = torch.einsum("qhd,khd->hqk", q.float(), kf) * scale
    visible = torch.arange(n, device=q.device)[None, :] <= qpos[:, None]  # [nq, n]
    s = s.masked_fill(~visible[None], float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # rows with nothing visible -> 0
    return torch.einsum("hqk,khd->qhd", p, vf)


def paged_attention_decode(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float, layout: str = "vllm",
                           *, max_seq_len: int | None = None, num_splits: int | None = None,
                           out: torch.Tensor | None = None):
    """One query token per sequence: softmax(q K^T * scale) V over the first seq_lens[b] cached tokens."""
    b, h, d = query.shape
    result = torch.zeros(b, h, d, dtype=torch.float32, device=query.device)
    for i, n in enumerate(seq_lens.tolist()):
        if n <= 0:
            continue
        k, v = gather_kv(key_cache, value_cache, block_tables[i], n, layout)
        qpos = torch.tensor([n - 1], device=query.device)
        result[i] = _attend(query[i : i + 1], k, v, scale, qpos)[0]
    return _into(out, result.to(query.dtype))


def paged_attention_varlen(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                           cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor, block_tables: torch.Tensor,
                           scale: float, layout: str = "vllm", tiled_q4: bool = False, *,
                           max_seq_len: int | None = None, max_q_len: int | None = None,
                           num_splits: int | None = None, out: torch.Tensor | None = None,
                           _prefill_path: str = "auto"):
    """Packed queries [M, H, D]; query i of sequence s sits at seq_lens[s] - q_len[s] + i, causal.
    (max_seq_len, max_q_len, num_splits, _prefill_path only steer the CUDA kernels.)"""
    m, h, d = query.shape
    result = torch.zeros(m, h, d, dtype=torch.float32, device=query.device)
    cu = cu_seqlens_q.tolist()
    for s, n in enumerate(seq_lens.tolist()):
        q0, q1 = cu[s], cu[s + 1]
        if q1 <= q0 or n <= 0:
            continue
        k, v = gather_kv(key_cache, value_cache, block_tables[s], n, layout)
        qpos = torch.arange(n - (q1 - q0), n, device=query.device)
        result[q0:q1] = _attend(query[q0:q1], k, v, scale, qpos)
    return _into(out, result.to(query.dtype))
def _rope(x32: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Half-split rotation of x32 [T, heads, D] by cos/sin [T, D/2]."""
    x1, x2 = x32.chunk(2, dim=-1)
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


def _scatter_kv(key, value, key_cache, value_cache, slot_mapping, layout):
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    k, v = key[keep], value[keep]
    if layout == "vllm":
        bs, x = key_cache.shape[3], key_cache.shape[4]
        blk, off = slots // bs, slots % bs
        key_cache[blk, :, :, off, :] = k.reshape(k.shape[0], k.shape[1], -1, x)
        value_cache[blk, :, :, off] = v
    else:
        bs = key_cache.shape[1]
        key_cache[slots // bs, slots % bs] = k
        value_cache[slots // bs, slots % bs] = v


def qk_norm_rope_write_cache(qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                             key_cache: torch.Tensor, value_cache: torch.Tensor, slot_mapping: torch.Tensor,
                             layout: str, num_heads: int, num_kv_heads: int,
                             q_norm_weight: torch.Tensor | None = None, k_norm_weight: torch.Tensor | None = None,
                             eps: float = 1e-6, *, out: torch.Tensor | None = None):
    """Returns q [T, H, D] (normed, rotated); writes k (normed, rotated) and v into the paged cache."""
    tokens, dtype = qkv.shape[0], qkv.dtype
    heads = qkv.reshape(tokens, num_heads + 2 * num_kv_heads, -1)
    q, k, v = heads.split([num_heads, num_kv_heads, num_kv_heads], dim=1)
    q32, k32 = q.float(), k.float()
    if q_norm_weight is not None:
        q32 = _normalize(q32, q_norm_weight, eps, dtype).float()
    if k_norm_weight is not None:
        k32 = _normalize(k32, k_norm_weight, eps, dtype).float()
    pos = positions.long()
    cos_t, sin_t = cos[pos], sin[pos]
    q_out = _rope(q32, cos_t, sin_t).to(dtype)
    _scatter_kv(_rope(k32, cos_t, sin_t).to(dtype), v, key_cache, value_cache, slot_mapping, layout)
    return _into(out, q_out)


# ---- sampling -----------------------------------------------------------------


def greedy_argmax(logits: torch.Tensor, *, return_value: bool = False, allowed: torch.Tensor | None = None,
                  out=None):
    """ids[b] = torch.argmax(logits[b]) (first index on ties, the first NaN wins).

    With `allowed` (bool/uint8, [B, V] or [V]) only entries with allowed != 0 compete; a
    row with none allowed gives -1. return_value=True also returns values[b] =
    logits[b, ids[b]] in the logits dtype (-inf where ids is -1). `out` is the ids tensor,
    or the (ids, values) pair with return_value=True.
    """
    if allowed is None:
        ids = torch.argmax(logits, dim=-1)
    else:
        ok = (allowed != 0).expand(logits.shape)
        x = logits.float()  # exact for fp16 / bf16
        masked = torch.where(ok, x, torch.full_like(x, float("-inf")))
        ids = torch.argmax(masked, dim=-1)  # a NaN here is an allowed NaN: the first one wins
        best = masked.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        # Max -inf: every allowed entry is -inf (ties), so the first allowed one wins, not
        # the first masked-out slot that argmax saw.
        first_allowed = torch.argmax(ok.to(torch.uint8), dim=-1)
        ids = torch.where(best == float("-inf"), first_allowed, ids)
        ids = torch.where(ok.any(dim=-1), ids, torch.full_like(ids, -1))
    if not return_value:
        return _into(out, ids)
    values = logits.gather(-1, ids.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    values = torch.where(ids >= 0, values, torch.full_like(values, float("-inf")))
    if out is None:
        return ids, values
    out[0].copy_(ids)
    out[1].copy_(values)
    return out[0], out[1]
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


def interleave_gate_up(w13: torch.Tensor) -> torch.Tensor:
    """w13 [E, 2I, H] with gate rows then up rows (Hugging Face) -> the same rows interleaved by 8:
    gate 0..7, up 0..7, gate 8..15, up 8..15, ... (a new tensor; I must be a multiple of 8)."""
    num_experts, two_inter, hidden_size = w13.shape
    return (w13.reshape(num_experts, 2, two_inter // 16, 8, hidden_size).transpose(1, 2)
            .reshape(num_experts, two_inter, hidden_size).contiguous())


def deinterleave_gate_up(w13: torch.Tensor) -> torch.Tensor:
    """The inverse of interleave_gate_up: back to gate rows then up rows."""
    num_experts, two_inter, hidden_size = w13.shape
    return (w13.reshape(num_experts, two_inter // 16, 2, 8, hidden_size).transpose(1, 2)
            .reshape(num_experts, two_inter, hidden_size).contiguous())


def _moe_expert(x32: torch.Tensor, w13_e: torch.Tensor, w2_e: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One expert on fp32 rows x32 [n, H]: h = silu(gate) * up rounded to dtype, y = h @ w2^T rounded
    to dtype (where the kernels round), returned in fp32."""
    inter = w13_e.shape[0] // 2
    gate_up = x32 @ w13_e.float().t()
    h = (torch.nn.functional.silu(gate_up[:, :inter]) * gate_up[:, inter:]).to(dtype).float()
    return (h @ w2_e.float().t()).to(dtype).float()


def fused_moe(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor, *, gemv_threshold: int = 4, prefill_threshold: int = 32,
              tier: str | None = None, w13_interleaved: bool = False, out: torch.Tensor | None = None):
    """Per-(token, expert) loop: out[t] = sum_j w[t, j] * expert_{ids[t, j]}(hidden[t]) in fp32, j in
    order, ids outside [0, E) skipped. The tier arguments do not change the result."""
    if w13_interleaved:
        w13 = deinterleave_gate_up(w13)
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
                                w13_interleaved: bool = False, out: torch.Tensor | None = None):
    """The same function as fused_moe, grouped by expert (one matmul per expert hit): the fast oracle."""
    if w13_interleaved:
        w13 = deinterleave_gate_up(w13)
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
