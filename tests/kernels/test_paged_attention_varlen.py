"""paged_attention_varlen (plain and tiled-Q4): input errors (CPU), opcheck, torch.compile,
GPU tests against the fp32 reference and against paged_attention_decode."""

import math

import pytest
import torch

import ferrum_ext
from ferrum_ext import ops, reference
from ferrum_ext.testing import assert_rel_close, capture_graph, make_problem, poison_, rel_error

LAYOUTS = ("vllm", "nhd")


def _varlen_problem(q_lens, ctx_lens, h, kvh, d, bs, dtype, layout, device, seed=0):
    q, kc, vc, bt, sl = make_problem(ctx_lens, h, kvh, d, bs, dtype, layout, device, seed=seed, q_rows=sum(q_lens))
    cu = torch.tensor([0] + torch.tensor(q_lens).cumsum(0).tolist(), dtype=torch.int32, device=device)
    return q, kc, vc, cu, sl, bt


def _run(args, layout, tiled, **kw):
    q, kc, vc, cu, sl, bt = args
    scale = 1.0 / math.sqrt(q.shape[-1])
    out = poison_(torch.empty_like(q))
    ops.paged_attention_varlen(q, kc, vc, cu, sl, bt, scale, layout, tiled, out=out, **kw)
    ref = reference.paged_attention_varlen(q, kc, vc, cu, sl, bt, scale, layout)
    return out, ref


def _replay_cases(graph, args, out, scale, layout, cases, what):
    """Replays a graph captured over args for each (q_lens, ctx) case: new cu_seqlens_q, seq_lens and
    queries in place (same total M), poisoned out, checked against the reference."""
    q, kc, vc, cu, sl, bt = args
    for q_lens, ctx in cases:
        assert sum(q_lens) == q.shape[0]
        cu.copy_(torch.tensor([0] + torch.tensor(q_lens).cumsum(0).tolist(), dtype=torch.int32))
        sl.copy_(torch.tensor(ctx, dtype=torch.int32))
        q.copy_(torch.randn_like(q))
        poison_(out)
        graph.replay()
        torch.cuda.synchronize()
        ref = reference.paged_attention_varlen(q, kc, vc, cu, sl, bt, scale, layout)
        assert_rel_close(out, ref, what=f"{what}q_lens {q_lens} ctx {ctx}")


# ---- CPU ------------------------------------------------------------------------------


def test_varlen_cpu_matches_reference_and_decode():
    args = _varlen_problem([1, 3, 1], [10, 20, 33], 8, 2, 64, 16, torch.float16, "vllm", "cpu")
    out, ref = _run(args, "vllm", True)
    assert_rel_close(out, ref)
    q, kc, vc, cu, sl, bt = args
    dec = reference.paged_attention_decode(q[[0, 4]], kc, vc, bt[[0, 2]], sl[[0, 2]], 0.125, "vllm")
    assert_rel_close(ref[[0, 4]], dec)


def test_varlen_errors():
    q, kc, vc, cu, sl, bt = _varlen_problem([2, 3], [10, 20], 8, 2, 64, 16, torch.float16, "vllm", "cpu")
    call = ops.paged_attention_varlen
    s = 0.125
    with pytest.raises(TypeError, match="cu_seqlens_q"):
        call(q, kc, vc, cu.long(), sl, bt, s)
    with pytest.raises(ValueError, match="cu_seqlens_q"):
        call(q, kc, vc, cu[:2].contiguous(), sl, bt, s)
    with pytest.raises(ValueError, match="cu_seqlens_q: expected non-decreasing"):
        call(q, kc, vc, torch.tensor([0, 4, 3], dtype=torch.int32), sl, bt, s)
    with pytest.raises(ValueError, match="query: expected cu_seqlens_q"):
        call(q[:4].contiguous(), kc, vc, cu, sl, bt, s)
    with pytest.raises(ValueError, match="seq_lens: sequence 0 has a chunk"):
        call(q, kc, vc, cu, torch.tensor([1, 20], dtype=torch.int32), bt, s)
    with pytest.raises(TypeError, match="seq_lens"):
        call(q, kc, vc, cu, sl.long(), bt, s)
    with pytest.raises(ValueError, match="block_tables"):
        call(q, kc, vc, cu, sl, bt[:1], s)
    with pytest.raises(ValueError, match="block_tables: .* narrower"):
        call(q, kc, vc, cu, sl, bt, s, max_seq_len=10_000)
    with pytest.raises(ValueError, match="max_q_len"):
        call(q, kc, vc, cu, sl, bt, s, max_q_len=-2)
    with pytest.raises(ValueError, match="key_cache: expected shape"):
        call(q[..., :32].contiguous(), kc, vc, cu, sl, bt, s)
    with pytest.raises(ValueError, match="key_cache: layout 'nhd'"):
        call(q, kc, vc, cu, sl, bt, s, "nhd")
    with pytest.raises(ValueError, match="num_heads"):
        call(q[:, :3].contiguous(), kc, vc, cu, sl, bt, s)


@pytest.mark.skipif(not ferrum_ext.cuda_ops_available(), reason="needs the built extension (op registration)")
def test_varlen_opcheck_cpu():
    q, kc, vc, cu, sl, bt = _varlen_problem([2, 5], [10, 20], 8, 2, 64, 16, torch.float16, "nhd", "cpu")
    for tiled in (False, True):
        torch.library.opcheck(torch.ops.ferrum_ext.paged_attention_varlen,
                              (torch.empty_like(q), q, kc, vc, cu, sl, bt, 0.125, "nhd", tiled, 48, -1, 0))


def test_varlen_torch_compile_fullgraph_cpu():
    q, kc, vc, cu, sl, bt = _varlen_problem([2, 5], [10, 20], 8, 2, 64, 16, torch.float16, "nhd", "cpu")

    @torch.compile(fullgraph=True)
    def f(q, kc, vc, cu, sl, bt):
        return ops.paged_attention_varlen(q, kc, vc, cu, sl, bt, 0.125, "nhd", True, max_seq_len=48) * 2

    assert_rel_close(f(q, kc, vc, cu, sl, bt), reference.paged_attention_varlen(q, kc, vc, cu, sl, bt, 0.125, "nhd") * 2)


# ---- GPU ----------------------------------------------------------------------------

_Q_LENS = [1, 2, 3, 4, 5, 7, 8, 64, 513, 1]


def _ctx_for(q_lens, seed):
    gen = torch.Generator().manual_seed(seed)
    return [q + int(torch.randint(0, 700, (1,), generator=gen)) for q in q_lens]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("head_dim", (64, 128, 256))
@pytest.mark.parametrize("group", (1, 4, 8))
def test_varlen_matches_reference(dtype, layout, head_dim, group):
    kvh = 2
    ctx = _ctx_for(_Q_LENS, head_dim + group)
    args = _varlen_problem(_Q_LENS, ctx, kvh * group, kvh, head_dim, 16, dtype, layout, "cuda", seed=group)
    outs = {}
    for tiled, max_q_len in ((False, None), (True, None), (True, max(_Q_LENS))):
        out, ref = _run(args, layout, tiled, max_q_len=max_q_len)
        assert_rel_close(out, ref, what=f"varlen tiled={tiled} max_q_len={max_q_len} {layout} d{head_dim} g{group}")
        outs[(tiled, max_q_len)] = out
    for key, out in outs.items():
        assert rel_error(out, outs[(False, None)]) <= 2 * (2e-3 if dtype == torch.float16 else 1e-2), key


@pytest.mark.gpu
@pytest.mark.parametrize("tiled,max_q_len", ((False, None), (True, None), (True, 100)))
@pytest.mark.parametrize("group", (2, 3, 5, 16))
@pytest.mark.parametrize("block_size", (8, 32))
def test_varlen_groups_and_block_sizes(tiled, max_q_len, group, block_size):
    q_lens = [4, 1, 9, 2, 100]
    ctx = [4, 2000, 100, 33, 150]
    args = _varlen_problem(q_lens, ctx, 2 * group, 2, 96 if group == 2 else 128, block_size, torch.bfloat16,
                           "vllm", "cuda", seed=3)
    out, ref = _run(args, "vllm", tiled, max_q_len=max_q_len)
    assert_rel_close(out, ref)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("group", (1, 3, 4, 8, 16))
@pytest.mark.parametrize("max_q_len", (5, 8, 33))
def test_varlen_tiled_wide_tiles(layout, group, max_q_len):
    """Tiled with a host bound 4 < max_q_len < 64 packs up to 64 query rows per CTA (8 tokens at
    group 8, a tile of 1 token at most for decode rows): decode rows, chunks shorter than, equal to
    and one below the bound, contexts ending mid-block and a long one (split-K), against the
    reference and the plain path."""
    q_lens = [1, max_q_len, 2, max_q_len - 1, 4, 1, min(max_q_len, 7)]
    ctx = [q + c for q, c in zip(q_lens, (700, 15, 16, 4097, 33, 0, 511))]
    args = _varlen_problem(q_lens, ctx, 2 * group, 2, 128, 16, torch.bfloat16, layout, "cuda", seed=group + max_q_len)
    tiled, ref = _run(args, layout, True, max_q_len=max_q_len)
    assert_rel_close(tiled, ref, what=f"tiled max_q_len={max_q_len} g{group} {layout}")
    plain, _ = _run(args, layout, False, max_q_len=max_q_len)
    assert rel_error(tiled, plain) <= 2e-2, f"tiled vs plain, max_q_len={max_q_len} g{group} {layout}"


@pytest.mark.gpu
@pytest.mark.parametrize("tiled", (False, True))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_varlen_split_k_long_context(tiled, layout):
    q_lens, ctx = [4, 1, 3], [20000, 9000, 4097]
    args = _varlen_problem(q_lens, ctx, 32, 4, 128, 16, torch.float16, layout, "cuda", seed=4)
    for splits in (None, 1, 17):
        out, ref = _run(args, layout, tiled, num_splits=splits)
        assert_rel_close(out, ref, what=f"num_splits={splits}")


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS)
def test_varlen_decode_rows_agree_with_decode(layout):
    ctx = [50, 3000, 17, 1]
    q, kc, vc, cu, sl, bt = _varlen_problem([1, 1, 1, 1], ctx, 32, 8, 128, 16, torch.bfloat16, layout, "cuda")
    scale = 1 / math.sqrt(128)
    dec = ops.paged_attention_decode(q, kc, vc, bt, sl, scale, layout)
    for tiled in (False, True):
        var = ops.paged_attention_varlen(q, kc, vc, cu, sl, bt, scale, layout, tiled)
        assert rel_error(var, dec) <= 2e-3, f"tiled={tiled}: varlen decode rows differ from decode"


@pytest.mark.gpu
@pytest.mark.parametrize("tiled,max_q_len", ((False, None), (True, None), (True, 64)))
def test_varlen_cuda_graph_replay(tiled, max_q_len):
    """Capture for fixed M, B and max_seq_len; replay with other q_len splits and contexts."""
    b, max_len = 4, 4096
    q, kc, vc, cu, sl, bt = _varlen_problem([6] * b, [max_len] * b, 16, 4, 128, 16, torch.bfloat16, "nhd", "cuda",
                                            seed=8)
    scale = 1 / math.sqrt(128)
    out = torch.empty_like(q)
    run = lambda: ops.paged_attention_varlen(q, kc, vc, cu, sl, bt, scale, "nhd", tiled,  # noqa: E731
                                             max_seq_len=max_len, max_q_len=max_q_len, out=out)
    cases = (([6] * 4, [6, 100, 4096, 3000]), ([1, 1, 21, 1], [1, 4096, 21, 9]), ([0, 24, 0, 0], [0, 4000, 5, 0]))
    _replay_cases(capture_graph(run)[0], (q, kc, vc, cu, sl, bt), out, scale, "nhd", cases, "")


@pytest.mark.gpu
def test_varlen_opcheck_cuda():
    q, kc, vc, cu, sl, bt = _varlen_problem([2, 5], [10, 20], 8, 2, 64, 16, torch.float16, "vllm", "cuda")
    for tiled in (False, True):
        torch.library.opcheck(torch.ops.ferrum_ext.paged_attention_varlen,
                              (torch.empty_like(q), q, kc, vc, cu, sl, bt, 0.125, "vllm", tiled, 48, 64, 0))


# ---- chunked-prefill kernel (chunks >= 64 tokens, 128 query rows per CTA) -------------------------

_TOL = {torch.float16: 2e-3, torch.bfloat16: 1e-2}


def test_varlen_prefill_path_error():
    q, kc, vc, cu, sl, bt = _varlen_problem([2, 3], [10, 20], 8, 2, 64, 16, torch.float16, "vllm", "cpu")
    with pytest.raises(ValueError, match="_prefill_path"):
        ops.paged_attention_varlen(q, kc, vc, cu, sl, bt, 0.125, _prefill_path="fast")
    for path in ("auto", "new", "old"):  # CPU: the reference whatever the path
        out = ops.paged_attention_varlen(q, kc, vc, cu, sl, bt, 0.125, _prefill_path=path)
        assert_rel_close(out, reference.paged_attention_varlen(q, kc, vc, cu, sl, bt, 0.125))


@pytest.mark.skipif(not ferrum_ext.cuda_ops_available(), reason="needs the built extension (op registration)")
def test_varlen_prefill_opcheck_cpu():
    q, kc, vc, cu, sl, bt = _varlen_problem([70, 5], [80, 20], 8, 2, 64, 16, torch.float16, "vllm", "cpu")
    for path in (0, 1, 2):
        torch.library.opcheck(torch.ops.ferrum_ext.paged_attention_varlen,
                              (torch.empty_like(q), q, kc, vc, cu, sl, bt, 0.125, "vllm", True, 96, 70, 0, path))


def _check_paths(args, layout, what, tiled=(False, True), max_q_len=None, **kw):
    """New (forced) prefill kernel vs the reference and vs the previous kernels ("old"), both tiled modes."""
    q, kc, vc, cu, sl, bt = args
    scale = 1.0 / math.sqrt(q.shape[-1])
    ref = reference.paged_attention_varlen(q, kc, vc, cu, sl, bt, scale, layout)

    def call(t, path):
        out = poison_(torch.empty_like(q))
        ops.paged_attention_varlen(q, kc, vc, cu, sl, bt, scale, layout, t, max_q_len=max_q_len, out=out,
                                   _prefill_path=path, **kw)
        return out

    old = call(True, "old")
    assert_rel_close(old, ref, what=f"old path {what}")
    for t in tiled:
        new = call(t, "new")
        assert_rel_close(new, ref, what=f"prefill kernel tiled={t} {what}")
        assert rel_error(new, old) <= 2 * _TOL[q.dtype], f"prefill kernel vs old path: tiled={t} {what}"
    assert_rel_close(call(True, "auto"), ref, what=f"auto {what}")


_PF_Q_LENS = [1, 64, 3, 65, 1, 127, 128, 129, 17, 513, 1, 63]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("head_dim", (64, 128, 256))
@pytest.mark.parametrize("group", (1, 4, 8))
def test_prefill_matches_reference(dtype, layout, head_dim, group):
    """Chunks 64..513 (64, 65, 127, 128, 129: tile edges) mixed with decode rows and short chunks;
    contexts end mid-block (tails poisoned with NaN), block tables shuffled."""
    ctx = _ctx_for(_PF_Q_LENS, 7 * head_dim + group)
    ctx = [c + (5 if c % 16 == 0 else 0) for c in ctx]
    args = _varlen_problem(_PF_Q_LENS, ctx, 2 * group, 2, head_dim, 16, dtype, layout, "cuda", seed=group + 1)
    _check_paths(args, layout, f"{layout} d{head_dim} g{group} {dtype}", max_q_len=max(_PF_Q_LENS))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_prefill_chunk_2048(dtype, layout):
    """The benchmark's shape class (32q/8kv, h128): a 2048-token chunk over a longer context, picked by
    the automatic choice (max_q_len 2048), next to decode rows and a short prompt."""
    q_lens, ctx = [2048, 1, 100, 1, 40], [2048 + 1111, 5000, 100, 37, 41]
    args = _varlen_problem(q_lens, ctx, 32, 8, 128, 16, dtype, layout, "cuda", seed=11)
    _check_paths(args, layout, f"chunk 2048 {layout} {dtype}", max_q_len=2048)


@pytest.mark.gpu
@pytest.mark.parametrize("group", (2, 3, 5, 16))
@pytest.mark.parametrize("block_size", (8, 32))
def test_prefill_groups_and_block_sizes(group, block_size):
    """Odd groups (128 rows not a multiple of the group: padding rows), head_dim 96, block sizes 8 / 32."""
    q_lens, ctx = [70, 1, 200, 5, 64], [70, 2000, 333, 33, 1000]
    args = _varlen_problem(q_lens, ctx, 2 * group, 2, 96 if group in (2, 5) else 128, block_size,
                           torch.bfloat16, "vllm" if group % 2 else "nhd", "cuda", seed=group)
    _check_paths(args, "vllm" if group % 2 else "nhd", f"g{group} bs{block_size}", max_q_len=200)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("head_dim", (64, 96, 128, 256))
@pytest.mark.parametrize("block_size", (8, 16, 32))
def test_prefill_block_sizes(layout, head_dim, block_size):
    """Both layouts at every head_dim, blocks of 8, 16 and 32, 3 kv heads: the sm_90 copy paths.
    "nhd" (head_dim 64 / 128 / 256; 96 keeps cp.async): K/V copied as TMA boxes of [block_size
    tokens][64 dims] into 128-byte-swizzled tiles; "vllm" (every head_dim): each block of a head
    bulk-copied whole (K [D/8][bs][8], V [D][bs]) into per-block tiles (kKvVllmBulk). The keys of a prefill tile (32 tokens x group 4) end exactly on a 64-key
    stage (ctx 64; 512, 960), on a block boundary mid-stage (480: the stage's later blocks are not
    copied, their stale V rows must be zeroed), and mid-block (862, 937, 1001; 648 at blocks 16 / 32:
    the NaN-poisoned tail slots arrive with the block; "vllm" V then has an 8-token unit straddling
    the end); ~1000-key contexts take each stage's mbarrier through many phases."""
    q_lens, ctx = [64, 1, 200, 130, 5, 96], [64, 777, 648, 960, 40, 1001]
    args = _varlen_problem(q_lens, ctx, 12, 3, head_dim, block_size, torch.bfloat16, layout, "cuda",
                           seed=head_dim + block_size)
    _check_paths(args, layout, f"{layout} d{head_dim} bs{block_size}", max_q_len=200)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS)
def test_prefill_with_split_k_short_rows(layout):
    """Long-context decode / short rows split across CTAs (their merge runs over every row) while
    a chunk goes to the prefill kernel, which must be the last writer of its rows."""
    q_lens, ctx = [4, 1, 300, 1], [20000, 9000, 4097, 301]
    args = _varlen_problem(q_lens, ctx, 32, 4, 128, 16, torch.float16, layout, "cuda", seed=4)
    for splits in (None, 17):
        _check_paths(args, layout, f"num_splits={splits}", max_q_len=300, num_splits=splits)


@pytest.mark.gpu
def test_prefill_only_long_chunks_and_max_q_len_unknown():
    """Every row in the prefill kernel (no short rows); max_q_len None with the forced path."""
    q_lens, ctx = [64, 700, 128], [64, 4000, 129]
    args = _varlen_problem(q_lens, ctx, 16, 2, 128, 16, torch.bfloat16, "nhd", "cuda", seed=5)
    _check_paths(args, "nhd", "long only, max_q_len None", max_q_len=None)
    _check_paths(args, "nhd", "long only, max_q_len 700", max_q_len=700)


@pytest.mark.gpu
def test_prefill_misaligned_out_falls_back():
    """An `out` that is 8- but not 16-byte aligned takes the previous kernels (the prefill epilogue
    stores 16 bytes, the previous kernels 8)."""
    q_lens, ctx = [100, 1], [150, 77]
    q, kc, vc, cu, sl, bt = _varlen_problem(q_lens, ctx, 8, 2, 64, 16, torch.bfloat16, "vllm", "cuda", seed=6)
    buf = poison_(torch.empty(q.numel() + 4, device="cuda", dtype=q.dtype))
    out = buf[4:].view(q.shape)
    assert out.data_ptr() % 16 == 8
    ops.paged_attention_varlen(q, kc, vc, cu, sl, bt, 0.125, "vllm", True, max_q_len=100, out=out,
                               _prefill_path="new")
    assert_rel_close(out, reference.paged_attention_varlen(q, kc, vc, cu, sl, bt, 0.125, "vllm"))


@pytest.mark.gpu
@pytest.mark.parametrize("tiled,path,layout", ((False, "new", "vllm"), (True, "new", "vllm"), (False, "auto", "vllm"),
                                               (True, "auto", "vllm"), (True, "new", "nhd")))
def test_prefill_cuda_graph_replay(tiled, path, layout):
    """Capture for (M, B, max_seq_len, max_q_len); replay with other splits of M into long and short
    chunks, zero-length sequences and other contexts (both tile lists are rebuilt on the device;
    "nhd": the tensor maps are kernel parameters baked into the graph)."""
    m, b, max_len = 600, 4, 4096
    q, kc, vc, cu, sl, bt = _varlen_problem([150] * b, [max_len] * b, 32, 8, 128, 16, torch.bfloat16, layout,
                                            "cuda", seed=9)
    scale = 1 / math.sqrt(128)
    out = torch.empty_like(q)
    run = lambda: ops.paged_attention_varlen(q, kc, vc, cu, sl, bt, scale, layout, tiled,  # noqa: E731
                                             max_seq_len=max_len, max_q_len=m, out=out, _prefill_path=path)
    cases = (([150] * 4, [150, 1000, 4096, 3000]), ([600, 0, 0, 0], [4000, 0, 3, 0]),
             ([1, 1, 1, 597], [4096, 9, 1, 597]), ([64, 63, 65, 408], [64, 4000, 65, 1000]),
             ([0, 0, 300, 300], [0, 0, 4096, 301]))
    _replay_cases(capture_graph(run)[0], (q, kc, vc, cu, sl, bt), out, scale, layout, cases,
                  f"{path} path tiled={tiled} {layout} ")


@pytest.mark.gpu
def test_prefill_opcheck_cuda():
    q, kc, vc, cu, sl, bt = _varlen_problem([70, 5], [80, 20], 8, 2, 64, 16, torch.bfloat16, "nhd", "cuda")
    for path in (0, 1, 2):
        torch.library.opcheck(torch.ops.ferrum_ext.paged_attention_varlen,
                              (torch.empty_like(q), q, kc, vc, cu, sl, bt, 0.125, "nhd", True, 96, 70, 0, path))
