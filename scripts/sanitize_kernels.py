"""One small call of every kernel family, for compute-sanitizer memcheck:

    compute-sanitizer --tool memcheck --error-exitcode 3 python scripts/sanitize_kernels.py

Sizes are odd so tails and scalar paths run; each family is one function.
"""

import torch

from ferrum_ext import ops


def layers():
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(7, 1000, device="cuda", dtype=dtype)
        w = torch.randn(1000, device="cuda", dtype=dtype)
        ops.rms_norm(x, w)
        ops.rms_norm(x[:, 1:993], w[:992])  # misaligned rows: the scalar path
        ops.fused_add_rms_norm(x, torch.randn_like(x), w)
        ops.silu_and_mul(x)
        ops.silu_and_mul(x[:, 1:-1])
    for layout in ("vllm", "nhd"):
        heads, kv_heads, d, bs = 8, 2, 128, 16
        qkv = torch.randn(7, (heads + 2 * kv_heads) * d, device="cuda", dtype=torch.bfloat16)
        pos = torch.arange(7, device="cuda")
        slots = torch.tensor([3, -1, 17, 40, 41, -1, 5], device="cuda")
        cos = torch.rand(16, d // 2, device="cuda")
        shape = (4, kv_heads, d // 8, bs, 8) if layout == "vllm" else (4, bs, kv_heads, d)
        kc = torch.zeros(shape, device="cuda", dtype=torch.bfloat16)
        vc = torch.zeros((4, kv_heads, d, bs) if layout == "vllm" else shape, device="cuda", dtype=torch.bfloat16)
        w = torch.ones(d, device="cuda", dtype=torch.bfloat16)
        ops.qk_norm_rope_write_cache(qkv, pos, cos, cos, kc, vc, slots, layout, heads, kv_heads, w, w)


def attention():
    from ferrum_ext.testing import make_problem

    for layout in ("vllm", "nhd"):
        # decode: single pass and split-K, a zero length, lengths ending mid-block
        q, kc, vc, bt, sl = make_problem([0, 1, 17, 513, 4097], 32, 4, 128, 16, torch.bfloat16, layout, "cuda")
        for splits in (None, 1, 9):
            ops.paged_attention_decode(q, kc, vc, bt, sl, 0.088, layout, num_splits=splits)
        # decode at other head_dims / block sizes
        for d, bs in ((64, 8), (96, 32), (256, 32), (256, 8)):
            q2, kc2, vc2, bt2, sl2 = make_problem([0, 5, 33, 300], 16, 2, d, bs, torch.float16, layout, "cuda")
            for splits in (None, 1, 7):
                ops.paged_attention_decode(q2, kc2, vc2, bt2, sl2, 0.1, layout, num_splits=splits)
        k = torch.randn(5, 4, 128, device="cuda", dtype=torch.bfloat16)
        ops.write_kv_cache(k, k, kc, vc, torch.tensor([0, -1, 77, 3, 200], device="cuda"), layout)
        # varlen: plain, tiled-Q4, 64-row tiles, split-K
        q_lens = [1, 3, 5, 0, 70]
        q, kc, vc, bt, sl = make_problem([1, 700, 9, 4, 2100], 16, 2, 96, 8, torch.float16, layout, "cuda",
                                         q_rows=sum(q_lens))
        cu = torch.tensor([0, 1, 4, 9, 9, 79], dtype=torch.int32, device="cuda")
        for tiled, mql, splits in ((False, None, None), (True, None, None), (True, 70, None), (True, None, 5)):
            ops.paged_attention_varlen(q, kc, vc, cu, sl, bt, 0.1, layout, tiled, max_q_len=mql, num_splits=splits)
        # chunked-prefill kernel (forced: this grid is too small for the automatic choice), with split-K
        # on the short rows and a context ending mid-block
        for tiled, mql, splits in ((True, 70, None), (False, None, 5)):
            ops.paged_attention_varlen(q, kc, vc, cu, sl, bt, 0.1, layout, tiled, max_q_len=mql, num_splits=splits,
                                       _prefill_path="new")
    # chunked prefill at the head_dims / block sizes of its sm_90 copy paths ("nhd": tensor maps,
    # "vllm": bulk copies of whole blocks), contexts ending mid-block
    q_lens = [100, 1, 70]
    cu = torch.tensor([0, 100, 101, 171], dtype=torch.int32, device="cuda")
    for layout in ("nhd", "vllm"):
        for d, bs in ((64, 32), (128, 16), (256, 8)) + (((96, 16),) if layout == "vllm" else ()):
            q, kc, vc, bt, sl = make_problem([301, 9, 70], 8, 2, d, bs, torch.bfloat16, layout, "cuda",
                                             q_rows=sum(q_lens))
            ops.paged_attention_varlen(q, kc, vc, cu, sl, bt, 0.1, layout, True, max_q_len=100, _prefill_path="new")


def sampling():
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for batch, vocab in ((1, 32001), (3, 151936), (200, 1003)):  # split rows, one CTA per row
            buf = torch.randn(batch, vocab + 5, device="cuda", dtype=dtype)
            ops.greedy_argmax(buf[:, :vocab], return_value=True)
            x = buf[:, 3:vocab + 3]  # misaligned rows: head and tail elements
            ops.greedy_argmax(x, return_value=True)
            mask = torch.rand(batch, vocab + 1, device="cuda") < 0.5
            ops.greedy_argmax(x, return_value=True, allowed=mask[:, 1:])  # misaligned mask
            ops.greedy_argmax(x, allowed=mask[0, :vocab].to(torch.uint8))


def moe():
    for dtype in (torch.bfloat16, torch.float16):
        for tokens in (1, 3, 5, 40, 300, 1500):  # 1500 * 3 pairs: the multi-CTA moe_align
            x = torch.randn(tokens, 192, device="cuda", dtype=dtype)
            w13 = torch.randn(16, 256, 192, device="cuda", dtype=dtype) * 0.05
            w2 = torch.randn(16, 192, 128, device="cuda", dtype=dtype) * 0.05
            w, ids = ops.moe_route(torch.randn(tokens, 16, device="cuda"), 3, True)
            ids[::3, 1] = -1
            w13i = ops.interleave_gate_up(w13)
            for tier in ("gemv", "small", "prefill", "prefill_mma", "prefill_sm90"):
                if tier == "prefill_sm90" and torch.cuda.get_device_capability()[0] != 9:
                    continue
                ops.fused_moe(x, w13, w2, w, ids, tier=tier)
                ops.fused_moe(x, w13i, w2, w, ids, tier=tier, w13_interleaved=True)
            for block_m in (1, 16, 128):
                ops.moe_align(ids, 16, block_m)


FAMILIES = [layers, attention, sampling, moe]

if __name__ == "__main__":
    for family in FAMILIES:
        family()
        torch.cuda.synchronize()
        print(f"memcheck run: {family.__name__} ok")
