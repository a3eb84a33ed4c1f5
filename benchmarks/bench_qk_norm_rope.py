"""qk_norm_rope_write_cache: the attention prologue of one step (Qwen3 shapes, bf16).

Bytes that must move, e = element size:
  read   T * (H + 2 KVH) * D * e          the fused qkv rows
  write  T * H * D * e                    q, token-major
  write  T * 2 KVH * D * e                k and v into the paged cache
(cos/sin rows and the norm weights are < 1% and not counted). Reads and writes both count:
rates compare with the copy ceiling. Baseline: the reference twin (PyTorch eager ops).
"""

import torch

from ferrum_ext import ops, reference
from ferrum_ext.testing import make_cache, rope_tables

# (tokens, heads, kv_heads, head_dim): Qwen3-30B-A3B attention (32 q / 4 kv heads, head_dim 128).
CASES = [(4096, 32, 4, 128), (16384, 32, 4, 128)]
BLOCK = 16


def _case(tokens, heads, kv_heads, d, layout, dtype, device="cuda"):
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * d, device=device, dtype=dtype)
    positions = torch.randint(0, 8192, (tokens,), device=device)
    num_blocks = tokens // BLOCK + 1
    slots = torch.randperm(num_blocks * BLOCK, device=device)[:tokens]
    cos, sin = rope_tables(8192, d, device=device)
    kc, vc = make_cache(num_blocks, BLOCK, kv_heads, d, dtype, layout, device)
    w = torch.randn(d, device=device, dtype=dtype)
    out = torch.empty(tokens, heads, d, device=device, dtype=dtype)
    return (qkv, positions, cos, sin, kc, vc, slots, layout, heads, kv_heads, w, w, 1e-6), out


def run(ctx):
    rows = []
    dtype = torch.bfloat16
    e = 2
    for tokens, heads, kv_heads, d in CASES:
        nbytes = tokens * d * e * ((heads + 2 * kv_heads) + heads + 2 * kv_heads)
        for layout in ("vllm", "nhd"):
            args, out = _case(tokens, heads, kv_heads, d, layout, dtype)
            t = ctx.time(lambda: ops.qk_norm_rope_write_cache(*args, out=out))
            base = ctx.time(lambda: reference.qk_norm_rope_write_cache(*args, out=out))
            rows.append(ctx.row("qk_norm_rope_write_cache", f"T={tokens} {heads}q/{kv_heads}kv h{d}", dtype, t,
                                bytes_moved=nbytes, ceiling="copy", baseline=base, baseline_name="torch eager",
                                variant=layout))
    return rows
