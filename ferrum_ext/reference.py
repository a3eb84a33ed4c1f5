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
                           num_splits: int | None = None, out: torch.Tensor | None = None):
    """Packed queries [M, H, D]; query i of sequence s sits at seq_lens[s] - q_len[s] + i, causal."""
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
