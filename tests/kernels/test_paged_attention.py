"""paged_attention_decode and write_kv_cache: input errors (CPU), opcheck, torch.compile,
and GPU tests against the fp32 reference (ferrum_ext.reference)."""

import math

import pytest
import torch

import ferrum_ext
from ferrum_ext import ops, reference
from ferrum_ext.testing import assert_rel_close, capture_graph, make_cache, make_problem, poison_

DTYPES = (torch.float16, torch.bfloat16)
LAYOUTS = ("vllm", "nhd")


def _decode(q, kc, vc, bt, sl, layout, **kw):
    scale = 1.0 / math.sqrt(q.shape[-1])
    out = poison_(torch.empty_like(q))
    ops.paged_attention_decode(q, kc, vc, bt, sl, scale, layout, out=out, **kw)
    ref = reference.paged_attention_decode(q, kc, vc, bt, sl, scale, layout)
    return out, ref


# ---- CPU: input errors ------------------------------------------------------------


def _cpu_problem(layout="vllm", dtype=torch.float16, d=64, bs=16, h=8, kvh=2):
    return make_problem([5, 20], h, kvh, d, bs, dtype, layout, "cpu")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_decode_cpu_matches_reference(layout):
    q, kc, vc, bt, sl = _cpu_problem(layout)
    out, ref = _decode(q, kc, vc, bt, sl, layout)
    assert_rel_close(out, ref)


def test_decode_errors():
    q, kc, vc, bt, sl = _cpu_problem()
    s = 0.125
    call = ops.paged_attention_decode
    with pytest.raises(TypeError, match="query"):
        call(q.int(), kc, vc, bt, sl, s)
    with pytest.raises(TypeError, match="key_cache"):
        call(q.float(), kc, vc, bt, sl, s)
    with pytest.raises(ValueError, match="query"):
        call(q[0], kc, vc, bt, sl, s)
    with pytest.raises(ValueError, match="query: expected a contiguous"):
        call(q.transpose(0, 1), kc, vc, bt, sl, s)
    with pytest.raises(TypeError, match="key_cache"):
        call(q, kc.bfloat16(), vc, bt, sl, s)
    with pytest.raises(TypeError, match="value_cache"):
        call(q, kc, vc.bfloat16(), bt, sl, s)
    with pytest.raises(ValueError, match="layout"):
        call(q, kc, vc, bt, sl, s, "paged")
    with pytest.raises(ValueError, match="key_cache: layout 'nhd'"):
        call(q, kc, vc, bt, sl, s, "nhd")
    q2, kc2, vc2, bt2, sl2 = _cpu_problem("nhd")
    with pytest.raises(ValueError, match="key_cache: layout 'vllm'"):
        call(q2, kc2, vc2, bt2, sl2, s, "vllm")
    with pytest.raises(ValueError, match="value_cache"):
        call(q, kc, vc[:, :, :, :8].contiguous(), bt, sl, s)
    with pytest.raises(ValueError, match="key_cache: expected shape"):
        call(q[:, :, :48].contiguous(), kc, vc, bt, sl, s)
    with pytest.raises(ValueError, match="num_heads"):
        call(q[:, :7].contiguous(), kc, vc, bt, sl, s)
    with pytest.raises(TypeError, match="block_tables"):
        call(q, kc, vc, bt.long(), sl, s)
    with pytest.raises(ValueError, match="block_tables"):
        call(q, kc, vc, bt[:1], sl, s)
    with pytest.raises(TypeError, match="seq_lens"):
        call(q, kc, vc, bt, sl.long(), s)
    with pytest.raises(ValueError, match="seq_lens"):
        call(q, kc, vc, bt, sl[:1].contiguous(), s)
    with pytest.raises(ValueError, match="block_tables: .* narrower"):
        call(q, kc, vc, bt, sl, s, max_seq_len=bt.shape[1] * 16 + 1)
    with pytest.raises(ValueError, match="max_seq_len"):
        call(q, kc, vc, bt, sl, s, max_seq_len=-1)
    with pytest.raises(ValueError, match="num_splits"):
        call(q, kc, vc, bt, sl, s, num_splits=0)
    with pytest.raises(ValueError, match="out"):
        call(q, kc, vc, bt, sl, s, out=torch.empty(3, 8, 64, dtype=q.dtype))
    with pytest.raises(TypeError, match="out"):
        call(q, kc, vc, bt, sl, s, out=torch.empty_like(q, dtype=torch.bfloat16))


def test_kernel_support_errors():
    """What only the CUDA kernels refuse (checked for CUDA tensors; tested here directly)."""
    check = ops.check_kernel_support
    check("query", torch.bfloat16, 128, 16, 16)
    with pytest.raises(TypeError, match="query: expected dtype float16 or bfloat16"):
        check("query", torch.float32, 128, 16, 4)
    with pytest.raises(ValueError, match="query: unsupported head_dim 48"):
        check("query", torch.float16, 48, 16, 4)
    with pytest.raises(ValueError, match="key_cache: unsupported block_size 12"):
        check("query", torch.float16, 64, 12, 4)
    with pytest.raises(ValueError, match="query: GQA group 32"):
        check("query", torch.float16, 64, 16, 32)
    with pytest.raises(ValueError, match="key: unsupported head_dim 40"):
        check("key", torch.float16, 40)


def test_cpu_reference_takes_any_size():
    """On CPU the reference runs: fp32, tiny head_dim, odd block size, group 32 (model tests use these)."""
    q, kc, vc, bt, sl = make_problem([5, 9], 32, 1, 16, 4, torch.float32, "vllm", "cpu")
    out, ref = _decode(q, kc, vc, bt, sl, "vllm")
    assert_rel_close(out, ref)
    k = torch.randn(2, 1, 16)
    ops.write_kv_cache(k, k, kc, vc, torch.tensor([0, 7]), "vllm")


def test_write_kv_cache_errors():
    kc, vc = make_cache(4, 16, 2, 64, torch.float16, "vllm", "cpu")
    k = torch.randn(3, 2, 64, dtype=torch.float16)
    v = torch.randn(3, 2, 64, dtype=torch.float16)
    slots = torch.tensor([0, 5, -1])
    call = ops.write_kv_cache
    with pytest.raises(TypeError, match="key"):
        call(k.int(), v.int(), kc, vc, slots)
    with pytest.raises(TypeError, match="key_cache"):
        call(k.float(), v.float(), kc, vc, slots)
    with pytest.raises(TypeError, match="value"):
        call(k, v.bfloat16(), kc, vc, slots)
    with pytest.raises(ValueError, match="value"):
        call(k, v[:2], kc, vc, slots)
    with pytest.raises(ValueError, match="key_cache"):
        call(k[:, :1].contiguous(), v[:, :1].contiguous(), kc, vc, slots)
    with pytest.raises(ValueError, match="key_cache: layout 'nhd'"):
        call(k, v, kc, vc, slots, "nhd")
    with pytest.raises(TypeError, match="slot_mapping"):
        call(k, v, kc, vc, slots.float())
    with pytest.raises(ValueError, match="slot_mapping"):
        call(k, v, kc, vc, slots[:2])
    with pytest.raises(ValueError, match="layout"):
        call(k, v, kc, vc, slots, "hnd")
    with pytest.raises(ValueError, match="key_cache"):
        call(k[..., :32].contiguous(), v[..., :32].contiguous(), kc, vc, slots)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("idx_dtype", (torch.int32, torch.int64))
def test_write_kv_cache_cpu(layout, idx_dtype):
    _check_write(layout, torch.bfloat16, idx_dtype, "cpu")


def _check_write(layout, dtype, idx_dtype, device, strided=False):
    gen = torch.Generator().manual_seed(1)
    kvh, d, bs, nb, t = 3, 128, 16, 9, 37
    kc, vc = make_cache(nb, bs, kvh, d, dtype, layout, "cpu", gen)
    if strided:  # key/value as slices of a fused qkv row, like a model's projection output
        qkv = torch.randn(t, (4 + 2 * kvh) * d, generator=gen).to(dtype)
        k = qkv[:, 4 * d : (4 + kvh) * d].view(t, kvh, d)
        v = qkv[:, (4 + kvh) * d :].view(t, kvh, d)
    else:
        k = torch.randn(t, kvh, d, generator=gen).to(dtype)
        v = torch.randn(t, kvh, d, generator=gen).to(dtype)
    slots = torch.randperm(nb * bs, generator=gen)[:t]
    slots[::5] = -1
    slots = slots.to(idx_dtype)
    ref_k, ref_v = kc.clone(), vc.clone()
    reference.write_kv_cache(k, v, ref_k, ref_v, slots, layout)
    kc, vc, k, v, slots = (x.to(device) for x in (kc, vc, k, v, slots))
    ops.write_kv_cache(k, v, kc, vc, slots, layout)
    assert torch.equal(kc.cpu(), ref_k), "key_cache differs from the reference"
    assert torch.equal(vc.cpu(), ref_v), "value_cache differs from the reference"
    # the written slots really hold the inputs (guards against a reference bug)
    g_k, g_v = reference.gather_kv(ref_k, ref_v, torch.arange(nb, dtype=torch.int32), nb * bs, layout)
    keep = slots.cpu() >= 0
    assert torch.equal(g_k[slots.cpu()[keep].long()], k.cpu()[keep])
    assert torch.equal(g_v[slots.cpu()[keep].long()], v.cpu()[keep])


def _opcheck_samples(device):
    samples = []
    for layout in LAYOUTS:
        q, kc, vc, bt, sl = make_problem([1, 17, 40], 8, 2, 64, 16, torch.float16, layout, device, seed=3)
        out = torch.empty_like(q)
        samples.append((out, q, kc, vc, bt, sl, 0.125, layout, bt.shape[1] * 16, 0))
        samples.append((out, q, kc, vc, bt, sl, 0.125, layout, 48, 2))
        samples.append((out, q, kc, vc, bt, sl, 0.125, layout, 48, 3))
    return samples


@pytest.mark.skipif(not ferrum_ext.cuda_ops_available(), reason="needs the built extension (op registration)")
def test_opcheck_cpu():
    for args in _opcheck_samples("cpu"):
        torch.library.opcheck(torch.ops.ferrum_ext.paged_attention_decode, args)
    kc, vc = make_cache(4, 16, 2, 64, torch.float16, "nhd", "cpu")
    k, v = torch.randn(3, 2, 64, dtype=torch.float16), torch.randn(3, 2, 64, dtype=torch.float16)
    torch.library.opcheck(torch.ops.ferrum_ext.write_kv_cache, (k, v, kc, vc, torch.tensor([0, 9, -1]), "nhd"))


def test_torch_compile_fullgraph_cpu():
    q, kc, vc, bt, sl = _cpu_problem()

    @torch.compile(fullgraph=True)
    def f(q, kc, vc, bt, sl):
        return ops.paged_attention_decode(q, kc, vc, bt, sl, 0.125, "vllm", max_seq_len=32) * 2

    assert_rel_close(f(q, kc, vc, bt, sl), reference.paged_attention_decode(q, kc, vc, bt, sl, 0.125) * 2)


# ---- GPU ----------------------------------------------------------------------------

# (head_dim, block_size) x dtype x layout; the GQA shape rotates so every case differs.
_GQA_SHAPES = ((8, 8), (16, 2), (12, 3), (32, 4))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("head_dim", (64, 96, 128, 256))
@pytest.mark.parametrize("block_size", (8, 16, 32))
def test_decode_matrix(dtype, layout, head_dim, block_size):
    h, kvh = _GQA_SHAPES[(head_dim // 32 + block_size // 8) % len(_GQA_SHAPES)]
    seq_lens = [1, 15, 16, 17, 511, 513, 0, 4097]
    q, kc, vc, bt, sl = make_problem(seq_lens, h, kvh, head_dim, block_size, dtype, layout, "cuda",
                                     seed=head_dim + block_size)
    for splits in (None, 1, 5):
        out, ref = _decode(q, kc, vc, bt, sl, layout, num_splits=splits)
        assert_rel_close(out, ref, what=f"decode {layout} d{head_dim} bs{block_size} {h}q/{kvh}kv "
                                        f"splits={splits}")
    assert torch.count_nonzero(out[6]) == 0, "seq_lens == 0 must give zeros"


# Context lengths for the full matrix: 1 token, ends mid-block and around block / 64-token
# boundaries, 0 (zeros out), a few blocks, and > one 256-token split (auto plan splits).
_FULL_LENS = [1, 7, 31, 33, 0, 47, 100, 161, 300, 1025]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("head_dim", (64, 96, 128, 256))
@pytest.mark.parametrize("block_size", (8, 16, 32))
@pytest.mark.parametrize("group", (1, 4, 8, 16))
def test_decode_full_matrix(dtype, layout, head_dim, block_size, group):
    """Every dtype x layout x head_dim x block_size x GQA group at odd contexts; auto, single-pass
    and forced split counts (33 is capped by the plan to what the longest context allows)."""
    kvh = 2 if group < 16 else 1
    q, kc, vc, bt, sl = make_problem(_FULL_LENS, kvh * group, kvh, head_dim, block_size, dtype, layout, "cuda",
                                     seed=head_dim * 7 + block_size + group)
    what = f"{dtype} {layout} d{head_dim} bs{block_size} group {group} ({kvh * group}q/{kvh}kv)"
    for splits in (None, 1, 3, 33):
        out, ref = _decode(q, kc, vc, bt, sl, layout, num_splits=splits)
        assert_rel_close(out, ref, what=f"{what} splits={splits}")
        assert torch.count_nonzero(out[4]) == 0, f"{what} splits={splits}: seq_lens == 0 must give zeros"
        for i, n in enumerate(_FULL_LENS):  # per sequence, so a failure names the length
            if n:
                assert_rel_close(out[i], ref[i], what=f"{what} splits={splits} seq_len={n}")


@pytest.mark.gpu
@pytest.mark.parametrize("group", (1, 2, 3, 4, 5, 8, 16))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_decode_gqa_groups(group, layout):
    kvh = 2
    seq_lens = [33, 700, 64, 1000, 17]
    q, kc, vc, bt, sl = make_problem(seq_lens, kvh * group, kvh, 128, 16, torch.bfloat16, layout, "cuda", seed=group)
    out, ref = _decode(q, kc, vc, bt, sl, layout)
    assert_rel_close(out, ref, what=f"group {group}")


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_long_context_split_paths_agree(layout, dtype):
    q, kc, vc, bt, sl = make_problem([32768], 32, 4, 128, 16, dtype, layout, "cuda", seed=7)
    outs = {}
    for splits in (None, 1, 2, 64, 256):
        out, ref = _decode(q, kc, vc, bt, sl, layout, num_splits=splits)
        assert_rel_close(out, ref, what=f"32k context, num_splits={splits}")
        outs[splits] = out
    # Each path rounds its output to dtype once, so they agree to the dtype's tolerance
    # (bf16 measured 2.9e-3 apart on H100), not bit for bit.
    for splits, out in outs.items():
        assert_rel_close(out, outs[1], what=f"num_splits={splits} vs single pass")


@pytest.mark.gpu
def test_decode_many_sequences_mixed():
    gen = torch.Generator().manual_seed(11)
    seq_lens = torch.randint(0, 3000, (67,), generator=gen).tolist()
    q, kc, vc, bt, sl = make_problem(seq_lens, 32, 8, 128, 16, torch.float16, "vllm", "cuda", seed=11)
    out, ref = _decode(q, kc, vc, bt, sl, "vllm")
    assert_rel_close(out, ref)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS)
def test_decode_unused_block_table_entries_never_read(layout):
    """Entries past ceil(seq_len / block_size) hold a huge id: reading one would fault."""
    seq_lens = [5, 300, 33]
    q, kc, vc, bt, sl = make_problem(seq_lens, 8, 2, 128, 16, torch.bfloat16, layout, "cuda", seed=5)
    for s, n in enumerate(seq_lens):
        bt[s, (n + 15) // 16 :] = 2**30
    for splits in (None, 3):
        out, ref = _decode(q, kc, vc, bt, sl, layout, num_splits=splits)
        torch.cuda.synchronize()
        assert_rel_close(out, ref, what=f"splits={splits}")


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS)
def test_decode_cuda_graph_replay(layout):
    """Capture once for an upper bound max_seq_len, then change seq_lens and block_tables in place."""
    max_len, bs = 8192, 16
    first = [100, 4000, 1, 2048]
    q, kc, vc, bt, sl = make_problem([max_len] * 4, 32, 4, 128, bs, torch.bfloat16, layout, "cuda", seed=2,
                                     extra_cols=0)
    sl.copy_(torch.tensor(first, dtype=torch.int32))
    scale = 1 / math.sqrt(128)
    out = torch.empty_like(q)
    graph, _ = capture_graph(
        lambda: ops.paged_attention_decode(q, kc, vc, bt, sl, scale, layout, max_seq_len=max_len, out=out))
    for lens in (first, [8192, 3, 777, 0], [17, 8000, 8191, 4096]):
        sl.copy_(torch.tensor(lens, dtype=torch.int32))
        bt.copy_(bt[torch.randperm(4, device="cuda")])
        q.copy_(torch.randn_like(q))
        poison_(out)
        graph.replay()
        torch.cuda.synchronize()
        assert_rel_close(out, reference.paged_attention_decode(q, kc, vc, bt, sl, scale, layout),
                         what=f"{lens}")


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("strided", (False, True))
def test_write_kv_cache_gpu(layout, dtype, strided):
    _check_write(layout, dtype, torch.int64, "cuda", strided)
    _check_write(layout, dtype, torch.int32, "cuda", strided)


@pytest.mark.gpu
def test_write_then_decode_roundtrip():
    """New tokens written with write_kv_cache are attended by the decode kernel."""
    seq_lens = [40, 17]
    q, kc, vc, bt, sl = make_problem(seq_lens, 16, 4, 128, 16, torch.float16, "vllm", "cuda", seed=9)
    k = torch.randn(2, 4, 128, device="cuda", dtype=torch.float16)
    v = torch.randn(2, 4, 128, device="cuda", dtype=torch.float16)
    slots = torch.stack([bt[s, (n - 1) // 16].long() * 16 + (n - 1) % 16 for s, n in enumerate(seq_lens)])
    ops.write_kv_cache(k, v, kc, vc, slots, "vllm")
    out, ref = _decode(q, kc, vc, bt, sl, "vllm")
    assert_rel_close(out, ref)


@pytest.mark.gpu
def test_opcheck_cuda():
    for args in _opcheck_samples("cuda"):
        torch.library.opcheck(torch.ops.ferrum_ext.paged_attention_decode, args)


@pytest.mark.gpu
def test_torch_compile_fullgraph_cuda():
    q, kc, vc, bt, sl = make_problem([5, 300], 16, 4, 128, 16, torch.bfloat16, "nhd", "cuda")

    @torch.compile(fullgraph=True)
    def f(q, kc, vc, bt, sl):
        return ops.paged_attention_decode(q, kc, vc, bt, sl, 0.1, "nhd", max_seq_len=320) + 1

    assert_rel_close(f(q, kc, vc, bt, sl), reference.paged_attention_decode(q, kc, vc, bt, sl, 0.1, "nhd") + 1)
