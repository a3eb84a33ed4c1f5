"""Varlen paged attention: speculative verify (q_len 4 / 8 per sequence) and chunked prefill.

Verify: 32 query heads, head_dim 128, bf16, block 16, shuffled blocks, "vllm" layout.
  bytes = 2 * batch * context * kv_heads * head_dim * 2 (K and V read once)
  Rows: decode (q_len 1, paged_attention_decode) is the baseline of every row of the shape;
  plain and tiled-Q4 at q_len 4, tiled at q_len 8. Targets: tiled q4 <= 1.1x decode,
  q8 <= 1.4x decode, tiled >= 2x plain at q4.
Chunked prefill: batch 4, chunk 2048 over a context of 4096 (the chunk is the last 2048
  positions), causal. FLOPs = 4 * B * chunk * ctx_eff * H * D, ctx_eff = mean visible keys
  = context - chunk + (chunk + 1) / 2. Baseline: SDPA on the gathered contiguous K/V with
  the causal mask at the right offset (enable_gqa=True), timed in the same run. Variants: the
  chunked-prefill kernel ("vllm" tiled / plain, "nhd") and the previous 64-row tiled kernel.
"""

import math

import torch

from ferrum_ext import ops
from ferrum_ext.testing import make_block_tables

HEADS, D, BS = 32, 128, 16
VERIFY = [(8, 8192, 4), (64, 4096, 4), (64, 4096, 8), (256, 2048, 8)]


def _cache(b, length, kvh, dtype, gen):
    nblk = length // BS
    x = 16 // torch.empty((), dtype=dtype).element_size()
    kc = torch.randn(b * nblk, kvh, D // x, BS, x, device="cuda", dtype=dtype)
    vc = torch.randn(b * nblk, kvh, D, BS, device="cuda", dtype=dtype)
    bt = make_block_tables([length] * b, BS, nblk, b * nblk, "cuda", gen)
    return kc, vc, bt


def _cu(b, q_len):
    return torch.arange(0, (b + 1) * q_len, q_len, dtype=torch.int32, device="cuda")


def run(ctx):
    rows = []
    gen = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16
    scale = 1 / math.sqrt(D)
    for b, length, kvh in VERIFY:
        case = f"verify B={b} L={length} {HEADS}q/{kvh}kv"
        nbytes = 2 * b * length * kvh * D * 2
        kc, vc, bt = _cache(b, length, kvh, dtype, gen)
        sl = torch.full((b,), length, dtype=torch.int32, device="cuda")
        q1 = torch.randn(b, HEADS, D, device="cuda", dtype=dtype)
        dec = ctx.time(lambda: ops.paged_attention_decode(q1, kc, vc, bt, sl, scale, "vllm", max_seq_len=length))
        rows.append(ctx.row("paged_varlen", case, dtype, dec, bytes_moved=nbytes, variant="decode q1"))
        for q_len, tiled in ((4, False), (4, True), (8, True)):
            q = torch.randn(b * q_len, HEADS, D, device="cuda", dtype=dtype)
            cu = _cu(b, q_len)
            t = ctx.time(lambda: ops.paged_attention_varlen(q, kc, vc, cu, sl, bt, scale, "vllm", tiled,
                                                            max_seq_len=length, max_q_len=q_len))
            rows.append(ctx.row("paged_varlen", case, dtype, t, bytes_moved=nbytes, baseline=dec,
                                baseline_name="decode q1", variant=f"{'tiled' if tiled else 'plain'} q{q_len}"))
        del kc, vc, bt
        torch.cuda.empty_cache()

    # chunked prefill
    b, chunk, length, kvh = 4, 2048, 4096, 8
    kc, vc, bt = _cache(b, length, kvh, dtype, gen)
    sl = torch.full((b,), length, dtype=torch.int32, device="cuda")
    q = torch.randn(b * chunk, HEADS, D, device="cuda", dtype=dtype)
    cu = _cu(b, chunk)
    ctx_eff = length - chunk + (chunk + 1) / 2
    flops = 4 * b * chunk * ctx_eff * HEADS * D
    idx = bt.long().flatten()
    k = kc[idx].permute(0, 3, 1, 2, 4).reshape(b, length, kvh, D).transpose(1, 2).contiguous()
    v = vc[idx].permute(0, 3, 1, 2).reshape(b, length, kvh, D).transpose(1, 2).contiguous()
    qs = q.view(b, chunk, HEADS, D).transpose(1, 2)
    mask = (torch.arange(length, device="cuda")[None, :]
            <= (length - chunk + torch.arange(chunk, device="cuda"))[:, None])
    base = ctx.time(lambda: torch.nn.functional.scaled_dot_product_attention(qs, k, v, attn_mask=mask, scale=scale,
                                                                             enable_gqa=True))
    case = f"prefill B={b} chunk={chunk} L={length} {HEADS}q/{kvh}kv"
    # "prefill": the chunked-prefill kernel (the automatic choice at max_q_len >= 64, either tiled mode);
    # "64-row (old)": the previous tiled kernel, 64 query rows per CTA (_prefill_path="old").
    for variant, tiled, path in (("prefill", True, "auto"), ("prefill plain", False, "auto"),
                                 ("64-row (old)", True, "old")):
        t = ctx.time(lambda: ops.paged_attention_varlen(q, kc, vc, cu, sl, bt, scale, "vllm", tiled,
                                                        max_seq_len=length, max_q_len=chunk, _prefill_path=path))
        rows.append(ctx.row("paged_varlen", case, dtype, t, flops=flops, baseline=base,
                            baseline_name="sdpa causal (gathered)", variant=variant))
    # the same chunk in the "nhd" layout (prefill kernel)
    kn = kc.permute(0, 3, 1, 2, 4).reshape(kc.shape[0], BS, kvh, D).contiguous()
    vn = vc.permute(0, 3, 1, 2).reshape(vc.shape[0], BS, kvh, D).contiguous()
    t = ctx.time(lambda: ops.paged_attention_varlen(q, kn, vn, cu, sl, bt, scale, "nhd", True,
                                                    max_seq_len=length, max_q_len=chunk))
    rows.append(ctx.row("paged_varlen", case, dtype, t, flops=flops, baseline=base,
                        baseline_name="sdpa causal (gathered)", variant="prefill nhd"))
    return rows
