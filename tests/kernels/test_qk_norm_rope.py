"""qk_norm_rope_write_cache against its reference twin, and the twin against HF's RoPE formula."""

import pytest
import torch
from torch.library import opcheck

import ferrum_ext
from ferrum_ext import ops, reference
from ferrum_ext.testing import assert_rel_close, make_cache, poisoned_like, rope_tables

needs_ops = pytest.mark.skipif(not ferrum_ext.cuda_ops_available(), reason="ferrum_ext._C not built")


def make_case(tokens, heads, kv_heads, head_dim, layout, dtype, device, num_blocks=40, block_size=16):
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, dtype=dtype, device=device)
    positions = torch.randint(0, 500, (tokens,), device=device)
    slots = torch.randperm(num_blocks * block_size, device=device)[:tokens]
    slots[::5] = -1  # padding rows: no cache write
    cos, sin = rope_tables(512, head_dim, device=device)
    kc, vc = make_cache(num_blocks, block_size, kv_heads, head_dim, dtype, layout, device)
    qn = torch.randn(head_dim, dtype=dtype, device=device)
    kn = torch.randn(head_dim, dtype=dtype, device=device)
    return qkv, positions, cos, sin, kc, vc, slots, qn, kn


def test_reference_matches_hf_rotary_formula():
    tokens, h, kvh, d = 5, 4, 2, 64
    qkv, pos, cos, sin, kc, vc, slots, _, _ = make_case(tokens, h, kvh, d, "nhd", torch.float32, "cpu")
    q = reference.qk_norm_rope_write_cache(qkv, pos, cos, sin, kc, vc, slots, "nhd", h, kvh)
    # Hugging Face: cos/sin repeated over both halves, x * cos + rotate_half(x) * sin.
    c = torch.cat([cos[pos], cos[pos]], -1)[:, None]
    s = torch.cat([sin[pos], sin[pos]], -1)[:, None]
    raw_q = qkv.view(tokens, h + 2 * kvh, d)[:, :h]
    rotate_half = torch.cat([-raw_q[..., d // 2:], raw_q[..., : d // 2]], -1)
    torch.testing.assert_close(q, raw_q * c + rotate_half * s)


def test_rejects_bad_head_split():
    qkv, pos, cos, sin, kc, vc, slots, _, _ = make_case(3, 4, 2, 64, "nhd", torch.bfloat16, "cpu")
    with pytest.raises(ValueError, match="qkv: expected \\[T, \\(num_heads"):
        ops.qk_norm_rope_write_cache(qkv[:, :-2], pos, cos, sin, kc, vc, slots, "nhd", 4, 2)
    with pytest.raises(ValueError, match="num_heads: expected a positive multiple"):
        ops.qk_norm_rope_write_cache(qkv, pos, cos, sin, kc, vc, slots, "nhd", 3, 2)


def test_rejects_bad_tables_and_indices():
    qkv, pos, cos, sin, kc, vc, slots, qn, _ = make_case(3, 4, 2, 64, "nhd", torch.bfloat16, "cpu")
    with pytest.raises(ValueError, match="cos: expected shape \\[max_positions, 32\\]"):
        ops.qk_norm_rope_write_cache(qkv, pos, cos[:, :16].contiguous(), sin, kc, vc, slots, "nhd", 4, 2)
    with pytest.raises(TypeError, match="positions: expected dtype int32 or int64"):
        ops.qk_norm_rope_write_cache(qkv, pos.float(), cos, sin, kc, vc, slots, "nhd", 4, 2)
    with pytest.raises(ValueError, match="slot_mapping: expected shape \\(3,\\)"):
        ops.qk_norm_rope_write_cache(qkv, pos, cos, sin, kc, vc, slots[:2], "nhd", 4, 2)
    with pytest.raises(ValueError, match="q_norm_weight: expected shape \\(64,\\)"):
        ops.qk_norm_rope_write_cache(qkv, pos, cos, sin, kc, vc, slots, "nhd", 4, 2, q_norm_weight=qn[:32])


def test_rejects_cache_not_matching_layout():
    qkv, pos, cos, sin, kc, vc, slots, _, _ = make_case(3, 4, 2, 64, "nhd", torch.bfloat16, "cpu")
    with pytest.raises(ValueError, match="key_cache: layout 'vllm' expects"):
        ops.qk_norm_rope_write_cache(qkv, pos, cos, sin, kc, vc, slots, "vllm", 4, 2)
    with pytest.raises(ValueError, match="layout: expected 'vllm' or 'nhd'"):
        ops.qk_norm_rope_write_cache(qkv, pos, cos, sin, kc, vc, slots, "hnd", 4, 2)


@needs_ops
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_opcheck(device):
    qkv, pos, cos, sin, kc, vc, slots, qn, kn = make_case(3, 4, 2, 64, "vllm", torch.bfloat16, device)
    q_out = torch.empty(3, 4, 64, dtype=qkv.dtype, device=device)
    opcheck(torch.ops.ferrum_ext.qk_norm_rope_write_cache.default,
            (q_out, qkv, pos, cos, sin, kc, vc, slots, "vllm", 4, 2, qn, kn, 1e-6))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["vllm", "nhd"])
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(4, 1, 64), (16, 2, 96), (32, 4, 128), (8, 8, 256)])
@pytest.mark.parametrize("with_norm", [True, False])
def test_matches_reference(dtype, layout, heads, kv_heads, head_dim, with_norm):
    qkv, pos, cos, sin, kc, vc, slots, qn, kn = make_case(37, heads, kv_heads, head_dim, layout, dtype, "cuda")
    if not with_norm:
        qn = kn = None
    kc_ref, vc_ref = kc.clone(), vc.clone()
    q_ref = reference.qk_norm_rope_write_cache(qkv, pos, cos, sin, kc_ref, vc_ref, slots, layout, heads, kv_heads,
                                               qn, kn, 1e-6)
    q = ops.qk_norm_rope_write_cache(qkv, pos.int(), cos, sin, kc, vc, slots.int(), layout, heads, kv_heads, qn, kn,
                                     1e-6, out=poisoned_like(q_ref))
    assert_rel_close(q, q_ref, what="q")
    assert_rel_close(kc, kc_ref, what="key_cache")
    assert torch.equal(vc, vc_ref), "value_cache: v must be copied exactly, padding slots untouched"


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["vllm", "nhd"])
@pytest.mark.parametrize("lead,pad", [(0, 2), (1, 1), (2, 6), (4, 4), (8, 8)])
def test_strided_and_misaligned_rows(layout, lead, pad):
    """qkv as a column slice of a wider buffer: rows that break 16-, 8- and 4-byte vector alignment,
    and (lead 8) 16-byte aligned rows of a wider stride."""
    heads, kv_heads, head_dim = 8, 2, 256
    qkv, pos, cos, sin, kc, vc, slots, qn, kn = make_case(29, heads, kv_heads, head_dim, layout, torch.bfloat16,
                                                         "cuda")
    wide = torch.randn(qkv.shape[0], lead + qkv.shape[1] + pad, device="cuda", dtype=qkv.dtype)
    wide[:, lead:lead + qkv.shape[1]] = qkv
    qkv = wide[:, lead:lead + qkv.shape[1]]
    kc_ref, vc_ref = kc.clone(), vc.clone()
    q_ref = reference.qk_norm_rope_write_cache(qkv, pos, cos, sin, kc_ref, vc_ref, slots, layout, heads, kv_heads,
                                               qn, kn, 1e-6)
    q = ops.qk_norm_rope_write_cache(qkv, pos, cos, sin, kc, vc, slots, layout, heads, kv_heads, qn, kn, 1e-6,
                                     out=poisoned_like(q_ref))
    assert_rel_close(q, q_ref, what="q")
    assert_rel_close(kc, kc_ref, what="key_cache")
    assert torch.equal(vc, vc_ref), "value_cache: v must be copied exactly"
