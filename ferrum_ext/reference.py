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
