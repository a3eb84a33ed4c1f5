"""Paged attention decode (one query token per sequence), ferrum_ext vs unpaged SDPA.

Bytes that must move: the K and V of every context token once,
    bytes = 2 (K and V) * batch * context * kv_heads * head_dim * element_size
(query and output are < 0.1% of it and not counted). Rates compare with the read ceiling.
Baseline: torch.nn.functional.scaled_dot_product_attention on the same K/V laid out
contiguously ([B, kv_heads, L, D], enable_gqa=True), timed in the same run.
Cases (batch, context, kv_heads), 32 query heads, head_dim 128, block_size 16, shuffled
block tables, both cache layouts, fp16 and bf16.
"""

import math

import torch

from ferrum_ext import ops
from ferrum_ext.testing import make_block_tables, make_cache, rel_error

SHAPES = [(1, 32768, 4), (8, 8192, 4), (64, 4096, 4), (64, 4096, 8), (256, 2048, 8), (32, 1024, 8)]
HEADS, HEAD_DIM, BLOCK = 32, 128, 16


def _paged_cache(b, length, kvh, dtype, layout, gen):
    nblk = length // BLOCK
    num_blocks = b * nblk
    kc, vc = make_cache(num_blocks, BLOCK, kvh, HEAD_DIM, dtype, layout, "cuda")
    bt = make_block_tables([length] * b, BLOCK, nblk, num_blocks, "cuda", gen)
    return kc, vc, bt


def _contiguous_kv(kc, vc, bt, layout):
    """The paged K/V of every sequence as [B, kv_heads, L, D] (the SDPA baseline's input)."""
    b, nblk = bt.shape
    idx = bt.long().flatten()
    if layout == "vllm":
        k = kc[idx].permute(0, 3, 1, 2, 4).flatten(-2)  # [B*nblk, bs, kvh, D]
        v = vc[idx].permute(0, 3, 1, 2)
    else:
        k, v = kc[idx], vc[idx]
    kvh = k.shape[2]
    k = k.reshape(b, nblk * BLOCK, kvh, HEAD_DIM).transpose(1, 2).contiguous()
    v = v.reshape(b, nblk * BLOCK, kvh, HEAD_DIM).transpose(1, 2).contiguous()
    return k, v


def run(ctx):
    rows = []
    gen = torch.Generator().manual_seed(0)
    scale = 1.0 / math.sqrt(HEAD_DIM)
    for dtype in (torch.bfloat16, torch.float16):
        e = torch.finfo(dtype).bits // 8
        for b, length, kvh in SHAPES:
            case = f"B={b} L={length} {HEADS}q/{kvh}kv h{HEAD_DIM}"
            nbytes = 2 * b * length * kvh * HEAD_DIM * e
            q = torch.randn(b, HEADS, HEAD_DIM, device="cuda", dtype=dtype)
            sl = torch.full((b,), length, dtype=torch.int32, device="cuda")
            base = None
            for layout in ("vllm", "nhd"):
                kc, vc, bt = _paged_cache(b, length, kvh, dtype, layout, gen)
                out = torch.empty_like(q)
                # Each layout gets its own random cache, so each gets its own SDPA reference;
                # SDPA is timed once per shape.
                k, v = _contiguous_kv(kc, vc, bt, layout)
                q4 = q.unsqueeze(2)
                sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(  # noqa: E731
                    q4, k, v, scale=scale, enable_gqa=True)
                ref = sdpa().squeeze(2)
                if base is None:
                    base = ctx.time(sdpa)
                del k, v
                ops.paged_attention_decode(q, kc, vc, bt, sl, scale, layout, max_seq_len=length, out=out)
                err = rel_error(out, ref)
                if err > 2e-2:
                    raise AssertionError(f"{case} {layout} {dtype}: output differs from SDPA (rel {err:.2e})")
                t = ctx.time(lambda: ops.paged_attention_decode(q, kc, vc, bt, sl, scale, layout,
                                                                max_seq_len=length, out=out))
                rows.append(ctx.row("paged_attention_decode", case, dtype, t, bytes_moved=nbytes,
                                    baseline=base, baseline_name="sdpa unpaged", variant=layout))
                del kc, vc, bt
            torch.cuda.empty_cache()
    return rows
