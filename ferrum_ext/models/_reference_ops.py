"""TEMPORARY pure-PyTorch twins of the attention / argmax / MoE ops.

Same signatures as ferrum_ext.ops / ferrum_ext.reference (DESIGN.md section 2).
They exist only until those ops are merged into ferrum_ext.reference; then
delete this file (ferrum_ext/models/_kernels.py prefers ferrum_ext.ops).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _into(out, result):
    if out is None:
        return result
    out.copy_(result)
    return out


def _block_size(key_cache: torch.Tensor, layout: str) -> int:
    return key_cache.shape[3] if layout == "vllm" else key_cache.shape[1]


def write_kv_cache(key, value, key_cache, value_cache, slot_mapping, layout):
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    key, value = key[keep], value[keep]
    bs = _block_size(key_cache, layout)
    blocks, offs = slots // bs, slots % bs
    if layout == "vllm":
        x = key_cache.shape[-1]
        key_cache[blocks, :, :, offs, :] = key.reshape(key.shape[0], key.shape[1], -1, x).to(key_cache.dtype)
        value_cache[blocks, :, :, offs] = value.to(value_cache.dtype)
    else:
        key_cache[blocks, offs] = key.to(key_cache.dtype)
        value_cache[blocks, offs] = value.to(value_cache.dtype)


def gather_kv(key_cache, value_cache, block_table_row, seq_len: int, layout: str):
    """K and V of one sequence as [seq_len, kv_heads, head_dim]."""
    bs = _block_size(key_cache, layout)
    blocks = block_table_row[: (seq_len + bs - 1) // bs].long()
    if layout == "vllm":
        k = key_cache[blocks].permute(0, 3, 1, 2, 4)  # [nb, bs, kvh, D//x, x]
        k = k.reshape(-1, k.shape[2], k.shape[3] * k.shape[4])
        v = value_cache[blocks].permute(0, 3, 1, 2).reshape(-1, value_cache.shape[1], value_cache.shape[2])
    else:
        k = key_cache[blocks].reshape(-1, key_cache.shape[2], key_cache.shape[3])
        v = value_cache[blocks].reshape(-1, value_cache.shape[2], value_cache.shape[3])
    return k[:seq_len], v[:seq_len]


def _attend(q, k, v, scale, first_pos):
    """q [n, H, D] at positions first_pos.., k/v [L, kvh, D]; causal; fp32 math."""
    group = q.shape[1] // k.shape[1]
    k = k.float().repeat_interleave(group, dim=1)
    v = v.float().repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), k) * scale
    pos_q = first_pos + torch.arange(q.shape[0], device=q.device)
    mask = torch.arange(k.shape[0], device=q.device)[None, :] > pos_q[:, None]
    scores = scores.masked_fill(mask[None], float("-inf"))
    return torch.einsum("hqk,khd->qhd", torch.softmax(scores, dim=-1), v).to(q.dtype)


def paged_attention_varlen(query, key_cache, value_cache, cu_seqlens_q, seq_lens, block_tables, scale,
                           layout="vllm", tiled_q4=False, *, max_seq_len=None, max_q_len=None, out=None):
    result = torch.empty_like(query)
    cu, lens = cu_seqlens_q.tolist(), seq_lens.tolist()
    for s, seq_len in enumerate(lens):
        q = query[cu[s]:cu[s + 1]]
        k, v = gather_kv(key_cache, value_cache, block_tables[s], seq_len, layout)
        result[cu[s]:cu[s + 1]] = _attend(q, k, v, scale, seq_len - q.shape[0])
    return _into(out, result)


def paged_attention_decode(query, key_cache, value_cache, block_tables, seq_lens, scale, layout="vllm", *,
                           max_seq_len=None, num_splits=None, out=None):
    cu = torch.arange(query.shape[0] + 1, dtype=torch.int32, device=query.device)
    return paged_attention_varlen(query, key_cache, value_cache, cu, seq_lens, block_tables, scale, layout,
                                  out=out)


def greedy_argmax(logits, *, return_value=False, allowed=None, out=None):
    if allowed is not None:
        raise NotImplementedError("allowed= is not supported by the temporary reference")
    ids = torch.argmax(logits, dim=-1)
    ids = _into(out, ids)
    if return_value:
        return ids, logits.gather(-1, ids[:, None])[:, 0]
    return ids


def moe_route(router_logits, top_k, renormalize):
    probs = torch.softmax(router_logits.float(), dim=-1)
    work = probs.clone()
    weights, ids = [], []
    for _ in range(top_k):  # repeated arg-max: ties go to the lower expert index
        idx = torch.argmax(work, dim=-1)
        weights.append(probs.gather(-1, idx[:, None]))
        ids.append(idx[:, None])
        work.scatter_(-1, idx[:, None], float("-inf"))
    weights, ids = torch.cat(weights, -1), torch.cat(ids, -1).to(torch.int32)
    if renormalize:
        weights = weights / weights.sum(-1, keepdim=True)
    return weights, ids


def fused_moe(hidden, w13, w2, topk_weights, topk_ids, *, gemv_threshold=4, prefill_threshold=32, tier=None,
              out=None):
    acc = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
    inter = w13.shape[1] // 2
    for e in torch.unique(topk_ids[topk_ids >= 0]).tolist():
        tok, j = torch.where(topk_ids == e)
        h = F.linear(hidden[tok].float(), w13[e].float())
        act = (F.silu(h[:, :inter]) * h[:, inter:]).to(hidden.dtype).float()
        y = F.linear(act, w2[e].float()) * topk_weights[tok, j, None].float()
        acc.index_add_(0, tok, y)
    return _into(out, acc.to(hidden.dtype))
