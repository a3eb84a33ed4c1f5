"""moe_route, moe_align and fused_moe against their reference twins.

CPU: every input error, the references against each other, opcheck, torch.compile(fullgraph=True).
GPU (marked gpu): every tier forced and chosen automatically over awkward token counts, skewed and
padded routing, router ties, exact bucketing, determinism, CUDA-graph replay; chained layers and
back-to-back launches through the programmatic-dependent-launch chain (route -> align -> GEMMs -> combine).
"""

import math

import pytest
import torch
from torch.library import opcheck

import ferrum_ext
from ferrum_ext import ops, reference
from ferrum_ext.testing import assert_rel_close, capture_graph, poison_, rel_error, same_bits

needs_ops = pytest.mark.skipif(not ferrum_ext.cuda_ops_available(), reason="ferrum_ext._C not built")
# "prefill" is the Hopper tier (CUTLASS grouped GEMMs) on 9.x GPUs built for 9.0a from
# ops.moe.MOE_SM90_MIN_PAIRS pairs on, else mma.sync; "prefill_mma" keeps the mma.sync tier covered.
TIERS = ["gemv", "small", "prefill", "prefill_mma", None]


def make_moe(num_tokens, num_experts, top_k, hidden, inter, dtype, device, seed=0):
    """hidden [T, H] ~ N(0, 1); weights scaled so that every stage stays O(1)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(num_tokens, hidden, generator=g).to(device, dtype)
    w13 = (torch.randn(num_experts, 2 * inter, hidden, generator=g) / math.sqrt(hidden)).to(device, dtype)
    w2 = (torch.randn(num_experts, hidden, inter, generator=g) / math.sqrt(inter)).to(device, dtype)
    logits = torch.randn(num_tokens, num_experts, generator=g).to(device)
    weights, ids = reference.moe_route(logits, top_k, True)
    return x, w13, w2, weights, ids


def diff_summary(a: torch.Tensor, b: torch.Tensor) -> str:
    """Where two float tensors differ: count, rows, max |a - b| over finite pairs, NaN counts."""
    ne = a.float() != b.float()
    ne &= ~(a.float().isnan() & b.float().isnan())
    idx = ne.nonzero()
    fin = a.float().isfinite() & b.float().isfinite()
    md = (a.float() - b.float())[fin].abs().max().item() if fin.any() else float("nan")
    rows = sorted(set(idx[:, 0].tolist())) if idx.numel() else []
    return (f"{idx.shape[0]} elements differ in rows {rows[:16]}, max |diff| {md:.3e}, "
            f"NaN {int(a.float().isnan().sum())} / {int(b.float().isnan().sum())}")


# ---- CPU: input errors ---------------------------------------------------------------------------


def _cpu_args(**kw):
    x, w13, w2, w, ids = make_moe(3, 8, 2, 64, 64, torch.bfloat16, "cpu")
    args = dict(hidden=x, w13=w13, w2=w2, topk_weights=w, topk_ids=ids)
    args.update(kw)
    return args


@pytest.mark.parametrize("change,exc,match", [
    (dict(hidden=torch.randn(3, 64)), TypeError, "hidden: expected dtype"),
    (dict(hidden=torch.randn(3, 96, dtype=torch.bfloat16)), ValueError, "hidden: expected a hidden size"),
    (dict(w13=torch.randn(8, 128, 64, dtype=torch.float16)), TypeError, "w13: expected dtype torch.bfloat16"),
    (dict(w13=torch.randn(8, 128, 128, dtype=torch.bfloat16)), ValueError, "w13: expected shape"),
    (dict(w13=torch.randn(8, 96, 64, dtype=torch.bfloat16)), ValueError, "w13: expected shape"),
    (dict(w2=torch.randn(8, 64, 32, dtype=torch.bfloat16)), ValueError, "w2: expected shape"),
    (dict(w2=torch.randn(4, 64, 64, dtype=torch.bfloat16)), ValueError, "w2: expected shape"),
    (dict(topk_ids=torch.zeros(3, 2, dtype=torch.int64)), TypeError, "topk_ids: expected dtype int32"),
    (dict(topk_ids=torch.zeros(4, 2, dtype=torch.int32)), ValueError, "topk_ids: expected shape"),
    (dict(topk_ids=torch.zeros(3, 9, dtype=torch.int32), topk_weights=torch.zeros(3, 9)), ValueError,
     "topk_ids: top_k = 9"),
    (dict(topk_weights=torch.zeros(3, 3)), ValueError, "topk_weights: expected shape"),
    (dict(topk_weights=torch.zeros(3, 2, dtype=torch.int32)), TypeError, "topk_weights: expected dtype"),
    (dict(tier="fast"), ValueError, "tier: expected one of"),
    (dict(gemv_threshold=-1), ValueError, "gemv_threshold"),
    (dict(w13_interleaved=1), ValueError, "w13_interleaved: expected a bool"),
])
def test_fused_moe_rejects(change, exc, match):
    with pytest.raises(exc, match=match):
        ops.fused_moe(**_cpu_args(**change))


def test_fused_moe_rejects_bad_out():
    with pytest.raises(ValueError, match="out: expected shape"):
        ops.fused_moe(**_cpu_args(), out=torch.empty(2, 64, dtype=torch.bfloat16))


def test_route_rejects():
    with pytest.raises(ValueError, match="top_k: expected an int"):
        ops.moe_route(torch.randn(3, 8), 9)
    with pytest.raises(ValueError, match="top_k: expected an int"):
        ops.moe_route(torch.randn(3, 64), 17)
    with pytest.raises(ValueError, match="router_logits: expected 1..512 experts"):
        ops.moe_route(torch.randn(3, 513), 2)
    with pytest.raises(TypeError, match="router_logits: expected dtype"):
        ops.moe_route(torch.zeros(3, 8, dtype=torch.int32), 2)
    with pytest.raises(ValueError, match="out: expected shape"):
        ops.moe_route(torch.randn(3, 8), 2, out=(torch.empty(3, 3), torch.empty(3, 2, dtype=torch.int32)))


def test_align_rejects():
    with pytest.raises(TypeError, match="topk_ids: expected dtype int32"):
        ops.moe_align(torch.zeros(3, 2, dtype=torch.int64), 8, 16)
    with pytest.raises(ValueError, match="block_m"):
        ops.moe_align(torch.zeros(3, 2, dtype=torch.int32), 8, 0)
    with pytest.raises(ValueError, match="num_experts"):
        ops.moe_align(torch.zeros(3, 2, dtype=torch.int32), 0, 16)


# ---- CPU: the references --------------------------------------------------------------------------


def test_route_reference_semantics():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.5], [2.0, 2.0, 2.0, 2.0]])
    w, ids = reference.moe_route(logits, 2, False)
    assert ids.tolist() == [[1, 2], [0, 1]]  # ties to the lower id
    p = torch.softmax(logits, -1)
    torch.testing.assert_close(w[0], p[0, 1:3])
    w, _ = reference.moe_route(logits, 2, True)
    torch.testing.assert_close(w, torch.full((2, 2), 0.5))


def _load_align_emulation():
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "emulate_moe_align_multi.py"
    spec = importlib.util.spec_from_file_location("emulate_moe_align_multi", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("num_pairs,num_experts,block_m", [
    (4096, 8, 16), (4097, 3, 1), (5000, 128, 128), (9000, 64, 64), (20000, 16, 1),
])
def test_align_multi_cta_emulation_cpu(num_pairs, num_experts, block_m):
    """The multi-CTA moe_align's index math (scripts/emulate_moe_align_multi.py, step for step with
    route_align.cuh) reproduces reference.moe_align, and its constants match the wrapper's."""
    emu = _load_align_emulation()
    assert emu.MIN_PAIRS == ops.moe.MOE_ALIGN_MULTI_CTA_MIN_PAIRS
    assert emu.MAX_EXPERTS == ops.moe.MOE_ALIGN_MULTI_CTA_MAX_EXPERTS
    g = torch.Generator().manual_seed(num_pairs)
    ids = torch.randint(-1, num_experts + 1, (num_pairs,), generator=g)
    ids[torch.rand(num_pairs, generator=g) < 0.5] = 0  # skewed
    emu.check(ids.tolist(), num_experts, block_m)


def test_align_reference_layout():
    ids = torch.tensor([[2, 0], [2, -1], [0, 2], [5, 2]], dtype=torch.int32)  # 5 >= E: skipped
    sorted_ids, block_expert, num_padded = reference.moe_align(ids, 4, 4)
    # expert 0: pairs 1, 4 -> one tile; expert 2: pairs 0, 2, 5, 7 -> one tile.
    assert num_padded.tolist() == [8]
    assert sorted_ids.tolist()[:8] == [1, 4, 8, 8, 0, 2, 5, 7]
    assert sorted_ids.numel() == 8 + 4 * 3 and set(sorted_ids.tolist()[8:]) == {8}
    assert block_expert.tolist() == [0, 2, -1, -1, -1]


def test_fused_moe_references_agree():
    x, w13, w2, w, ids = make_moe(9, 8, 3, 64, 128, torch.float32, "cpu")
    ids[2, 1] = -1
    ids[4, :] = -1
    loop = reference.fused_moe(x.bfloat16(), w13.bfloat16(), w2.bfloat16(), w, ids)
    grouped = reference.fused_moe_grouped_reference(x.bfloat16(), w13.bfloat16(), w2.bfloat16(), w, ids)
    assert rel_error(loop, grouped) < 1e-6
    assert torch.all(loop[4] == 0)
    # Against a direct dense formula in fp32.
    dense = torch.zeros(9, 64)
    for t in range(9):
        for j in range(3):
            e = int(ids[t, j])
            if e < 0:
                continue
            gu = w13[e] @ x[t]
            dense[t] += w[t, j] * (w2[e] @ (torch.nn.functional.silu(gu[:128]) * gu[128:]))
    assert_rel_close(reference.fused_moe(x, w13, w2, w, ids), dense, tol=1e-5)


def test_cpu_path_runs_every_tier():
    args = _cpu_args()
    ref = reference.fused_moe(**args)
    for tier in TIERS + ["prefill_sm90", "auto"]:
        assert_rel_close(ops.fused_moe(**args, tier=tier), ref)
    args.update(w13=ops.interleave_gate_up(args["w13"]), w13_interleaved=True)
    assert torch.equal(ops.fused_moe(**args), ref)
    assert torch.equal(reference.fused_moe(**args), ref)


def test_interleave_gate_up_layout():
    num_experts, inter, hidden = 2, 24, 3
    w13 = torch.arange(num_experts * 2 * inter * hidden, dtype=torch.float32).view(num_experts, 2 * inter, hidden)
    packed = ops.interleave_gate_up(w13)
    # Row r of an expert: block r // 16; gate row 8 * block + r % 16 below 8 in the block, else that up row.
    order = [8 * (r // 16) + r % 16 if r % 16 < 8 else inter + 8 * (r // 16) + r % 16 - 8 for r in range(2 * inter)]
    assert torch.equal(packed, w13[:, order])
    assert torch.equal(reference.deinterleave_gate_up(packed), w13)
    with pytest.raises(ValueError, match="w13: expected shape"):
        ops.interleave_gate_up(torch.zeros(1, 40, 8))
    with pytest.raises(TypeError, match="w13: expected dtype"):
        ops.interleave_gate_up(torch.zeros(1, 32, 8, dtype=torch.int32))


@needs_ops
def test_opcheck_and_compile_cpu():
    x, w13, w2, w, ids = make_moe(5, 8, 2, 64, 64, torch.bfloat16, "cpu")
    for w13_op, interleaved in ((w13, False), (ops.interleave_gate_up(w13), True)):
        opcheck(torch.ops.ferrum_ext.fused_moe.default,
                (torch.empty_like(x), x, w13_op, w2, w, ids, 4, 32, "auto", interleaved))
    logits = torch.randn(5, 8)
    opcheck(torch.ops.ferrum_ext.moe_route.default,
            (torch.empty(5, 2), torch.empty(5, 2, dtype=torch.int32), logits, 2, True))
    sizes = reference.moe_align_sizes(10, 8, 4)
    opcheck(torch.ops.ferrum_ext.moe_align.default,
            (torch.empty(sizes[0], dtype=torch.int32), torch.empty(sizes[1], dtype=torch.int32),
             torch.empty(1, dtype=torch.int32), ids, 8, 4))

    def layer(logits, x):
        wts, i = ops.moe_route(logits, 2, True)
        return ops.fused_moe(x, w13, w2, wts, i)

    compiled = torch.compile(layer, fullgraph=True)
    assert_rel_close(compiled(logits, x), reference.fused_moe(x, w13, w2, *reference.moe_route(logits, 2, True)))


# ---- GPU ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("num_experts,top_k", [(8, 2), (64, 6), (128, 8), (256, 16), (512, 10), (3, 3)])
@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.gpu
def test_route_matches_reference(dtype, num_experts, top_k, renormalize):
    for num_tokens in (1, 7, 513):
        logits = (torch.randn(num_tokens, num_experts, device="cuda") * 3).to(dtype)
        w, ids = ops.moe_route(logits, top_k, renormalize)
        rw, rids = reference.moe_route(logits, top_k, renormalize)
        assert torch.equal(ids, rids), f"ids differ at T={num_tokens}"
        torch.testing.assert_close(w, rw, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.gpu
def test_route_ties_and_strided(dtype):
    # Few distinct values: many exact ties, which must go to the lower expert id.
    logits = torch.randint(0, 3, (300, 128), device="cuda").to(dtype)
    logits[0] = 1.0  # every expert tied
    w, ids = ops.moe_route(logits, 8, True)
    rw, rids = reference.moe_route(logits, 8, True)
    assert torch.equal(ids, rids)
    assert ids[0].tolist() == list(range(8))
    torch.testing.assert_close(w, rw, rtol=2e-6, atol=1e-7)
    wide = torch.randn(33, 200, device="cuda").to(dtype)
    strided = wide[:, 10:138]
    w, ids = ops.moe_route(strided, 4, False)
    rw, rids = reference.moe_route(strided, 4, False)
    assert torch.equal(ids, rids)
    torch.testing.assert_close(w, rw, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("num_tokens,top_k,num_experts,block_m", [
    (1, 8, 128, 4), (3, 2, 8, 16), (33, 8, 128, 16), (257, 8, 128, 64), (4097, 8, 128, 128),
    (5, 16, 256, 16), (100, 10, 512, 64), (2000, 1, 8, 128), (7, 4, 4096, 16),
])
@pytest.mark.parametrize("routing", ["random", "one_expert", "padded"])
@pytest.mark.gpu
def test_align_matches_reference_exactly(num_tokens, top_k, num_experts, block_m, routing):
    scores = torch.rand(num_tokens, num_experts, device="cuda")
    ids = scores.topk(top_k, dim=-1).indices.to(torch.int32)
    if routing == "one_expert":
        ids[:, 0] = 3 % num_experts
    elif routing == "padded":
        ids[::3, :] = -1
        ids[1::5, -1] = num_experts  # out of range: skipped like padding
    sizes = reference.moe_align_sizes(ids.numel(), num_experts, block_m)
    outs = tuple(poison_(torch.empty(n, dtype=torch.int32, device="cuda")) for n in (*sizes, 1))
    got = ops.moe_align(ids, num_experts, block_m, out=outs)
    want = reference.moe_align(ids, num_experts, block_m)
    for name, g, w in zip(("sorted_pair_ids", "block_expert_ids", "num_padded"), got, want):
        assert torch.equal(g, w), f"{name} differs: first mismatch at {(g != w).nonzero()[:1].tolist()}"


def _check_fused(num_tokens, num_experts, top_k, hidden, inter, dtype, tier, routing="random", seed=0,
                 interleaved=False):
    """fused_moe against the grouped reference (HF-order w13); with `interleaved` the op gets
    ops.interleave_gate_up(w13) and w13_interleaved=True."""
    x, w13, w2, w, ids = make_moe(num_tokens, num_experts, top_k, hidden, inter, dtype, "cuda", seed)
    if routing == "one_expert":
        ids[:] = torch.arange(top_k, dtype=torch.int32, device="cuda")  # every token: experts 0..k-1
    elif routing == "padded":
        ids[::4] = -1
        ids[1::3, 0] = -1
    out = poison_(torch.empty_like(x))
    w13_op = ops.interleave_gate_up(w13) if interleaved else w13
    ops.fused_moe(x, w13_op, w2, w, ids, tier=tier, w13_interleaved=interleaved, out=out)
    ref = reference.fused_moe_grouped_reference(x, w13, w2, w, ids)
    assert_rel_close(out, ref, what=f"fused_moe T={num_tokens} E={num_experts} k={top_k} H={hidden} I={inter} "
                                    f"{dtype} tier={tier} routing={routing} interleaved={interleaved}")
    return x, w13, w2, w, ids, out


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("num_tokens", [1, 2, 3, 4, 5, 31, 32, 33, 257])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.gpu
def test_fused_moe_tiers(tier, num_tokens, dtype):
    _check_fused(num_tokens, 64, 6, 256, 192, dtype, tier, seed=num_tokens)


# E 64, k 6: pairs per expert 8, 28, 66 and 197, one T for each tile height of the forced mma.sync
# prefill tier (fused_moe.cu prefill_block_m: 16, 64, 96 and 128 rows); "one_expert" puts all T
# pairs of 6 experts in tiles that are full but for the last.
@pytest.mark.parametrize("num_tokens", [85, 300, 700, 2100])
@pytest.mark.parametrize("routing", ["random", "one_expert"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.gpu
def test_fused_moe_prefill_tile_heights(num_tokens, routing, dtype):
    _check_fused(num_tokens, 64, 6, 256, 192, dtype, "prefill_mma", routing, seed=num_tokens)


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("num_tokens", [1, 3, 5, 33, 257])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.gpu
def test_fused_moe_tiers_interleaved(tier, num_tokens, dtype):
    _check_fused(num_tokens, 64, 6, 256, 192, dtype, tier, seed=num_tokens, interleaved=True)


@pytest.mark.parametrize("shape", [
    (128, 8, 2048, 768),   # Qwen3-30B-A3B
    (128, 8, 4096, 384),   # 235B hidden, a TP slice of I
    (8, 2, 1024, 1792),    # Mixtral-like, scaled
    (256, 16, 320, 64),    # E 256, k 16, H not a multiple of 128
    (8, 1, 192, 128),
])
@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.gpu
def test_fused_moe_shapes(shape, tier):
    num_experts, top_k, hidden, inter = shape
    for num_tokens in (1, 20, 130):
        _check_fused(num_tokens, num_experts, top_k, hidden, inter, torch.bfloat16, tier, seed=num_tokens)


@pytest.mark.parametrize("routing", ["one_expert", "padded"])
@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("num_tokens", [1, 3, 17, 300])
@pytest.mark.gpu
def test_fused_moe_skewed_and_padded(routing, tier, num_tokens):
    x, w13, w2, w, ids, out = _check_fused(num_tokens, 64, 4, 128, 128, torch.bfloat16, tier, routing)
    if routing == "padded":
        assert torch.all(out[::4] == 0), "rows whose ids are all -1 must be zero"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("routing", ["random", "one_expert", "padded"])
@pytest.mark.gpu
def test_gemv_tier_decode_shapes(dtype, routing):
    """The GEMV tier at Qwen3-30B-A3B expert shapes (H 2048, I 768: gate_up 2 stages, down 1 stage per
    item; E 16 to keep the weights small), T = 1..3: one pair per tile, or ("one_expert") T pairs
    sharing each tile; the persistent grid gives every warp several items."""
    for num_tokens in (1, 2, 3):
        _check_fused(num_tokens, 16, 8, 2048, 768, dtype, "gemv", routing, seed=num_tokens)


@pytest.mark.parametrize("tier", [None, "prefill", "small"])
@pytest.mark.gpu
def test_fused_moe_large_batch(tier):
    _check_fused(4097, 16, 4, 256, 128, torch.bfloat16, tier)
    _check_fused(4097, 16, 4, 256, 128, torch.float16, tier)


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.gpu
def test_fused_moe_deterministic_and_row_independent(tier):
    x, w13, w2, w, ids = make_moe(40, 32, 4, 256, 128, torch.bfloat16, "cuda")
    a = ops.fused_moe(x, w13, w2, w, ids, tier=tier)
    b = ops.fused_moe(x, w13, w2, w, ids, tier=tier)
    assert torch.equal(a, b), "two runs differ"
    x2, w_2, ids2 = x.clone(), w.clone(), ids.clone()
    x2[1:] = torch.randn_like(x2[1:])
    ids2[1:] = ids2[1:].flip(0)
    w_2[1:] = w_2[1:].flip(0)
    c = ops.fused_moe(x2, w13, w2, w_2, ids2, tier=tier)
    assert torch.equal(a[0], c[0]), "row 0 changed when the other rows changed"


def _check_graph_replay(num_tokens, num_experts, top_k, hidden, inter, tier=None, interleaved=False):
    """route + fused_moe captured once, replayed with new logits and hidden: matches the reference."""
    x, w13, w2, _, _ = make_moe(num_tokens, num_experts, top_k, hidden, inter, torch.bfloat16, "cuda")
    w13_op = ops.interleave_gate_up(w13) if interleaved else w13
    logits = torch.randn(num_tokens, num_experts, device="cuda")
    out = torch.empty_like(x)

    def step():
        w, ids = ops.moe_route(logits, top_k, True)
        ops.fused_moe(x, w13_op, w2, w, ids, tier=tier, w13_interleaved=interleaved, out=out)

    graph, _ = capture_graph(step)
    for _ in range(3):
        logits.copy_(torch.randn_like(logits))
        x.copy_(torch.randn_like(x))
        poison_(out)
        graph.replay()
        torch.cuda.synchronize()
        ref = reference.fused_moe_grouped_reference(x, w13, w2, *reference.moe_route(logits, top_k, True))
        assert_rel_close(out, ref, what=f"graph replay T={num_tokens} tier={tier} interleaved={interleaved}")


@pytest.mark.parametrize("num_tokens", [1, 8, 64, 1100])  # 1100 * 4 pairs: multi-CTA moe_align
@pytest.mark.gpu
def test_fused_moe_cuda_graph(num_tokens):
    _check_graph_replay(num_tokens, 32, 4, 256, 128)


@pytest.mark.gpu
def test_fused_moe_loop_reference_on_gpu():
    x, w13, w2, w, ids = make_moe(6, 16, 3, 128, 64, torch.float16, "cuda")
    ids[2, 1] = -1
    assert_rel_close(ops.fused_moe(x, w13, w2, w, ids), reference.fused_moe(x, w13, w2, w, ids))


@pytest.mark.gpu
def test_auto_selection_matches_forced():
    """auto (defaults gemv_threshold 4, prefill_threshold 32) is bit-identical to forcing the tier it
    should pick: "gemv" for T < 4, "small" for 4 <= T < 32, "prefill" from 32; thresholds move it."""
    for num_tokens, tier in ((1, "gemv"), (3, "gemv"), (4, "small"), (16, "small"), (31, "small"),
                             (32, "prefill")):
        x, w13, w2, w, ids = make_moe(num_tokens, 32, 8, 256, 128, torch.bfloat16, "cuda", seed=num_tokens)
        assert torch.equal(ops.fused_moe(x, w13, w2, w, ids), ops.fused_moe(x, w13, w2, w, ids, tier=tier)), \
            f"auto != {tier} at T={num_tokens}"
    x, w13, w2, w, ids = make_moe(3, 32, 8, 256, 128, torch.bfloat16, "cuda", seed=7)
    assert torch.equal(ops.fused_moe(x, w13, w2, w, ids, gemv_threshold=1),
                       ops.fused_moe(x, w13, w2, w, ids, tier="small")), "gemv_threshold=1: T=3 should run small"
    assert torch.equal(ops.fused_moe(x, w13, w2, w, ids, gemv_threshold=1, prefill_threshold=2),
                       ops.fused_moe(x, w13, w2, w, ids, tier="prefill")), "prefill_threshold=2: T=3 should run prefill"


# ---- GPU: chained layers through the PDL chain ----------------------------------------------------


@pytest.mark.parametrize("num_tokens", [1, 3, 16])
@pytest.mark.gpu
def test_chained_layers_back_to_back(num_tokens):
    """Layers launched back to back (route -> align -> gate_up -> down -> combine -> route ...) with
    each layer's output, RMS-normalised by torch kernels, as the next layer's input, and fused_moe
    calls with no kernel in between, on the auto tier (defaults: T = 1, 3 run "gemv", T = 16
    "small"): programmatic dependent launch (csrc/common/pdl_launch.h) must never let a kernel read an
    input before its producer finished, nor overwrite a buffer a previous kernel still reads. Checked
    against the reference layer by layer, bit-identical (same bits, see same_bits) over repeated eager
    runs, and CUDA-graph replay equal to eager.

    History (H100, 2026-11-27): with `* 2.0` between layers, T = 3 and 16 "were not bit-identical".
    That was the test: silu(g) * u is quadratic in x, so activations grew doubly exponentially
    (|out| ~ 3e10 after layer 6, ~2e20 after the first back-to-back call) and the last call overflowed
    to inf - inf = NaN in one row (T = 1 stayed finite, 2e24). torch.equal is False on NaN even for
    identical bits, while assert_rel_close accepts NaN where the reference has NaN. Now: RMS norm
    between layers (every stage O(1)), a finiteness check, and bitwise comparison."""
    num_experts, top_k, hidden, inter, layers = 64, 8, 512, 256, 6
    g = torch.Generator(device="cpu").manual_seed(11)
    ws = [((torch.randn(num_experts, 2 * inter, hidden, generator=g) / math.sqrt(hidden)).cuda().bfloat16(),
           (torch.randn(num_experts, hidden, inter, generator=g) / math.sqrt(inter)).cuda().bfloat16(),
           torch.randn(hidden, num_experts, generator=g).cuda())
          for _ in range(layers)]
    x0 = torch.randn(num_tokens, hidden, generator=g).cuda().bfloat16()
    fixed_w, fixed_ids = reference.moe_route(torch.randn(num_tokens, num_experts, generator=g).cuda(), top_k, True)
    bufs = [torch.empty_like(x0) for _ in range(layers + 2)]

    def router_logits(x, router):
        return (x.float()[:, :, None] * router[None]).sum(1)

    def rms_norm(o):  # torch kernels between layers; keeps every layer's input O(1)
        xf = o.float()
        return (xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + 1e-6)).to(o.dtype)

    def step():
        x = x0
        for i, (w13, w2, router) in enumerate(ws):
            w, ids = ops.moe_route(router_logits(x, router), top_k, True)
            x = rms_norm(ops.fused_moe(x, w13, w2, w, ids, out=bufs[i]))
        # Two fused_moe calls in a row with nothing between them, the second reading the first's output.
        a = ops.fused_moe(x, ws[0][0], ws[0][1], fixed_w, fixed_ids, out=bufs[layers])
        return ops.fused_moe(a, ws[1][0], ws[1][1], fixed_w, fixed_ids, out=bufs[layers + 1])

    def check_layers(final):
        # Each layer against the reference run on our own previous output (a chained reference would
        # diverge wherever a rounding difference flips a near-tie in the routing).
        x = x0
        for i, (w13, w2, router) in enumerate(ws):
            w, ids = reference.moe_route(router_logits(x, router), top_k, True)
            assert_rel_close(bufs[i], reference.fused_moe_grouped_reference(x, w13, w2, w, ids),
                             what=f"layer {i} of {layers}, T={num_tokens}")
            x = rms_norm(bufs[i])
        a = reference.fused_moe_grouped_reference(x, ws[0][0], ws[0][1], fixed_w, fixed_ids)
        assert_rel_close(bufs[layers], a, what="first of two back-to-back calls")
        assert_rel_close(final, reference.fused_moe_grouped_reference(bufs[layers], ws[1][0], ws[1][1], fixed_w,
                                                                      fixed_ids),
                         what="second of two back-to-back calls (reads the first one's output)")

    for b in bufs:
        poison_(b)
    got = step().clone()
    torch.cuda.synchronize()
    check_layers(got)
    for i, b in enumerate(bufs):
        assert torch.isfinite(b).all(), f"buffer {i} holds non-finite values: the chain is not O(1)"
    for r in range(3):  # determinism of the whole chain
        again = step()
        assert same_bits(again, got), f"eager run {r + 2} differs: {diff_summary(again, got)}"

    graph, res = capture_graph(step)
    for _ in range(3):
        for b in bufs:
            poison_(b)
        graph.replay()
        torch.cuda.synchronize()
        assert same_bits(res, got), f"graph replay differs from eager: {diff_summary(res, got)}"


# ---- GPU: the Hopper prefill tier (tier="prefill_sm90") -------------------------------------------
#
# moe_align(block_m=1) -> gather -> CUTLASS grouped GEMM (gate_up) -> silu*up -> grouped GEMM (down)
# -> combine through the inverse permutation. Failures here with "prefill_mma" passing point at the
# Hopper tier (csrc/moe/prefill_sm90.cu, grouped_gemm_sm90_impl.cuh).

is_sm90 = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9,
                             reason="needs a compute capability 9.x GPU")


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("routing", ["random", "one_expert", "padded"])
@pytest.mark.parametrize("num_tokens", [33, 257, 4097])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.gpu
@is_sm90
def test_prefill_sm90_matches_reference(routing, num_tokens, dtype, interleaved):
    # E 32, k 4: ~4 rows per expert at T=33 (most of a 128-row tile empty), ~512 at T=4097 (4 m-tiles);
    # "one_expert" puts all T rows on experts 0..3 and leaves 28 groups empty; 2I = 384 and H = 320 are
    # not multiples of the 256-column tile, K = 320 not a multiple of the 64-deep k-tile.
    # interleaved: SiLU·mul in the gate_up GEMM's epilogue (silu_mul_epilogue_sm90.cuh), no gu pass.
    x, w13, w2, w, ids, out = _check_fused(num_tokens, 32, 4, 320, 192, dtype, "prefill_sm90", routing,
                                           seed=num_tokens, interleaved=interleaved)
    if routing == "padded":
        assert torch.all(out[::4] == 0), "rows whose ids are all -1 must be zero"


@pytest.mark.parametrize("shape", [
    (128, 8, 2048, 768),   # Qwen3-30B-A3B
    (128, 8, 4096, 384),   # 235B hidden, a TP slice of I
    (8, 2, 1024, 1792),    # Mixtral-like, scaled
    (256, 16, 320, 64),    # E 256, k 16, K = I = 64: one k-tile in the down GEMM
    (8, 1, 64, 128),       # H 64: one k-tile in gate_up, a 64-column down GEMM
])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.gpu
@is_sm90
def test_prefill_sm90_shapes(shape, interleaved):
    num_experts, top_k, hidden, inter = shape
    for num_tokens in (1, 40, 300):
        _check_fused(num_tokens, num_experts, top_k, hidden, inter, torch.bfloat16, "prefill_sm90", seed=num_tokens,
                     interleaved=interleaved)


@pytest.mark.gpu
@is_sm90
def test_prefill_sm90_qwen3_30b_large():
    # The benchmark's shape at T = 2048 (16384 pairs, ~128 rows per expert), both dtypes.
    _check_fused(2048, 128, 8, 2048, 768, torch.bfloat16, "prefill_sm90")
    _check_fused(2048, 128, 8, 2048, 768, torch.float16, "prefill_sm90", "padded")
    _check_fused(2048, 128, 8, 2048, 768, torch.bfloat16, "prefill_sm90", interleaved=True)


@pytest.mark.gpu
@is_sm90
def test_prefill_sm90_agrees_with_mma_and_is_deterministic():
    x, w13, w2, w, ids = make_moe(700, 64, 6, 512, 256, torch.bfloat16, "cuda", seed=3)
    a = ops.fused_moe(x, w13, w2, w, ids, tier="prefill_sm90")
    b = ops.fused_moe(x, w13, w2, w, ids, tier="prefill_sm90")
    assert torch.equal(a, b), "two runs of prefill_sm90 differ"
    old = ops.fused_moe(x, w13, w2, w, ids, tier="prefill_mma")
    assert_rel_close(a, old, tol=1e-2, what="prefill_sm90 vs prefill_mma")
    # Row independence: row 0's result must not depend on the other rows.
    x2, w_2, ids2 = x.clone(), w.clone(), ids.clone()
    x2[1:] = torch.randn_like(x2[1:])
    ids2[1:] = ids2[1:].flip(0)
    w_2[1:] = w_2[1:].flip(0)
    c = ops.fused_moe(x2, w13, w2, w_2, ids2, tier="prefill_sm90")
    assert torch.equal(a[0], c[0]), "row 0 changed when the other rows changed"
    # The fused SiLU·mul epilogue: deterministic, row-independent, and within tolerance of the gu pass.
    w13i = ops.interleave_gate_up(w13)
    d = ops.fused_moe(x, w13i, w2, w, ids, tier="prefill_sm90", w13_interleaved=True)
    assert torch.equal(d, ops.fused_moe(x, w13i, w2, w, ids, tier="prefill_sm90", w13_interleaved=True)), \
        "two runs of the interleaved prefill_sm90 differ"
    assert_rel_close(d, a, tol=1e-2, what="prefill_sm90 interleaved vs Hugging Face order")
    f = ops.fused_moe(x2, w13i, w2, w_2, ids2, tier="prefill_sm90", w13_interleaved=True)
    assert torch.equal(d[0], f[0]), "interleaved: row 0 changed when the other rows changed"


@pytest.mark.gpu
@is_sm90
def test_prefill_sm90_interleaved_graph_replay():
    _check_graph_replay(300, 16, 4, 256, 128, tier="prefill_sm90", interleaved=True)


def _kernel_names(fn):
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type.name == "CUDA"]


@pytest.mark.gpu
@is_sm90
def test_prefill_dispatch_on_sm90():
    # "prefill_sm90" must take the CUTLASS tier on Hopper; "prefill_mma" not.
    x, w13, w2, w, ids = make_moe(64, 16, 4, 256, 128, torch.bfloat16, "cuda")
    # P = 256 < MOE_SM90_MIN_PAIRS: "prefill" and auto stay on mma.sync (test_auto_sm90_threshold covers P above).
    for tier, want in (("prefill", False), (None, False), ("prefill_sm90", True), ("prefill_mma", False)):
        names = _kernel_names(lambda: ops.fused_moe(x, w13, w2, w, ids, tier=tier))
        got = any("cutlass" in n or "GemmUniversal" in n for n in names)
        assert got == want, f"tier={tier}: expected CUTLASS kernels {want}, launched {sorted(set(names))}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] == 9,
                    reason="needs a GPU that is not compute capability 9.x")
def test_prefill_sm90_unavailable_elsewhere():
    x, w13, w2, w, ids = make_moe(40, 8, 2, 128, 64, torch.bfloat16, "cuda")
    with pytest.raises(RuntimeError, match="prefill_sm90"):
        ops.fused_moe(x, w13, w2, w, ids, tier="prefill_sm90")
    assert_rel_close(ops.fused_moe(x, w13, w2, w, ids, tier="prefill"),
                     reference.fused_moe_grouped_reference(x, w13, w2, w, ids))


@pytest.mark.parametrize("num_tokens", [40, 600, 1500])  # 1500 * 4 pairs: multi-CTA moe_align
@pytest.mark.gpu
@is_sm90
def test_prefill_sm90_cuda_graph(num_tokens):
    # Group sizes live on the device: replays with new routing must follow it without re-capture.
    num_experts, top_k, hidden, inter = 32, 4, 256, 128
    x, w13, w2, _, _ = make_moe(num_tokens, num_experts, top_k, hidden, inter, torch.bfloat16, "cuda")
    logits = torch.randn(num_tokens, num_experts, device="cuda")
    out = torch.empty_like(x)

    def step():
        w, ids = ops.moe_route(logits, top_k, True)
        ops.fused_moe(x, w13, w2, w, ids, tier="prefill_sm90", out=out)

    graph, _ = capture_graph(step)
    for i in range(3):
        logits.copy_(torch.randn_like(logits) * (1 + 4 * i))  # sharper routing each replay: skewed groups
        x.copy_(torch.randn_like(x))
        poison_(out)
        graph.replay()
        torch.cuda.synchronize()
        ref = reference.fused_moe_grouped_reference(x, w13, w2, *reference.moe_route(logits, top_k, True))
        assert_rel_close(out, ref, what=f"prefill_sm90 graph replay {i} T={num_tokens}")


# ---- GPU: multi-CTA moe_align (P >= MOE_ALIGN_MULTI_CTA_MIN_PAIRS, E <= 1024) --------------------
#
# count -> scan -> scatter (csrc/moe/route_align.cuh); scripts/emulate_moe_align_multi.py checks the
# same index math on the CPU. A failure here with test_align_matches_reference_exactly passing at
# small P points at the multi-CTA kernels.

def _align_ids(num_pairs, top_k, num_experts, routing, seed):
    g = torch.Generator(device="cpu").manual_seed(seed)
    num_tokens = num_pairs // top_k
    ids = torch.randint(0, num_experts, (num_tokens, top_k), generator=g, dtype=torch.int32)
    if routing == "skewed":  # ~70% of the pairs on expert 1, the rest random
        ids[torch.rand(ids.shape, generator=g) < 0.7] = 1 % num_experts
    elif routing == "invalid":  # ids < 0 and >= E are skipped
        ids[torch.rand(ids.shape, generator=g) < 0.2] = -1
        ids[torch.rand(ids.shape, generator=g) < 0.05] = num_experts
    elif routing == "one_expert":
        ids[:] = num_experts - 1
    elif routing == "all_invalid":
        ids[:] = -1
    return ids.cuda()


def _align_check(ids, num_experts, block_m, what):
    sizes = reference.moe_align_sizes(ids.numel(), num_experts, block_m)
    outs = tuple(poison_(torch.empty(n, dtype=torch.int32, device="cuda")) for n in (*sizes, 1))
    got = ops.moe_align(ids, num_experts, block_m, out=outs)
    want = reference.moe_align(ids, num_experts, block_m)
    for name, g, w in zip(("sorted_pair_ids", "block_expert_ids", "num_padded"), got, want):
        assert torch.equal(g, w), (f"{what}: {name} differs: first mismatch at "
                                   f"{(g != w).nonzero()[:1].tolist()} of {g.numel()}")
    return got


@pytest.mark.parametrize("num_pairs,top_k", [
    (4095, 1), (4096, 8), (4097, 1), (4098, 3), (6144, 8), (32776, 8), (131072, 8), (200003, 1),
])
@pytest.mark.parametrize("block_m", [1, 16, 64, 128])
@pytest.mark.parametrize("routing", ["random", "skewed", "invalid", "one_expert"])
@pytest.mark.gpu
def test_align_multi_cta_matches_reference(num_pairs, top_k, block_m, routing):
    ids = _align_ids(num_pairs, top_k, 128, routing, seed=num_pairs + block_m)
    _align_check(ids, 128, block_m, f"P={num_pairs} E=128 block_m={block_m} routing={routing}")


@pytest.mark.parametrize("num_experts", [1, 8, 1000, 1024])
@pytest.mark.parametrize("block_m", [1, 128])
@pytest.mark.parametrize("routing", ["random", "invalid", "all_invalid"])
@pytest.mark.gpu
def test_align_multi_cta_experts(num_experts, block_m, routing):
    ids = _align_ids(8192, 4, num_experts, routing, seed=num_experts)
    _align_check(ids, num_experts, block_m, f"P=8192 E={num_experts} block_m={block_m} routing={routing}")


@pytest.mark.parametrize("block_m", [1, 16, 64, 128])
@pytest.mark.gpu
def test_align_multi_cta_equals_one_cta_path(block_m):
    """The same ids through both paths: E = 1024 takes the multi-CTA kernels at P >= 4096, E = 1025
    (> MOE_ALIGN_MULTI_CTA_MAX_EXPERTS) the one-CTA kernel; expert 1024 is never used, so the used parts
    are identical (only the buffer sizes differ by block_m - 1)."""
    ids = _align_ids(20000, 4, 1024, "skewed", seed=block_m)
    multi = _align_check(ids, 1024, block_m, "multi-CTA (E=1024)")
    one = _align_check(ids, 1025, block_m, "one-CTA (E=1025)")
    n = int(multi[2].item())
    assert n == int(one[2].item())
    assert torch.equal(multi[0][:n], one[0][:n]), "sorted_pair_ids differ between the paths"
    assert torch.equal(multi[1][: n // block_m], one[1][: n // block_m]), "block_expert_ids differ"
    assert torch.all(multi[0][n:] == ids.numel()) and torch.all(one[0][n:] == ids.numel())
    assert torch.all(multi[1][n // block_m:] == -1) and torch.all(one[1][n // block_m:] == -1)


@pytest.mark.gpu
def test_align_multi_cta_deterministic_and_graph():
    ids = _align_ids(50000, 5, 64, "skewed", seed=1)
    sizes = reference.moe_align_sizes(ids.numel(), 64, 64)
    want = reference.moe_align(ids, 64, 64)
    outs = tuple(torch.empty(n, dtype=torch.int32, device="cuda") for n in (*sizes, 1))
    for _ in range(3):
        got = ops.moe_align(ids, 64, 64)
        assert all(torch.equal(g, w) for g, w in zip(got, want)), "eager run differs from the reference"
    graph, _ = capture_graph(lambda: ops.moe_align(ids, 64, 64, out=outs))
    for i in range(3):
        ids.copy_(_align_ids(50000, 5, 64, "random" if i % 2 else "skewed", seed=10 + i))
        for o in outs:
            poison_(o)
        graph.replay()
        torch.cuda.synchronize()
        want = reference.moe_align(ids, 64, 64)
        for name, g, w in zip(("sorted_pair_ids", "block_expert_ids", "num_padded"), outs, want):
            assert torch.equal(g, w), f"graph replay {i}: {name} differs"


@pytest.mark.gpu
def test_align_path_switch():
    lim = ops.moe.MOE_ALIGN_MULTI_CTA_MIN_PAIRS
    for num_pairs, multi in ((lim - 1, False), (lim, True)):
        ids = _align_ids(num_pairs, 1, 128, "random", seed=0)
        names = " ".join(_kernel_names(lambda: ops.moe_align(ids, 128, 16)))
        assert ("moe_align_count_kernel" in names) == multi, f"P={num_pairs}: launched {names}"
        assert ("moe_align_scatter_kernel" in names) == multi, f"P={num_pairs}: launched {names}"


# ---- GPU: one-warp moe_align (P <= MOE_ALIGN_WARP_MAX_PAIRS) ------------------------------------


@pytest.mark.parametrize("num_pairs", [1, 2, 5, 8, 16, 24, 31, 32, 33])
@pytest.mark.parametrize("block_m", [1, 4, 16, 64])
@pytest.mark.parametrize("routing", ["random", "skewed", "invalid", "one_expert", "all_invalid"])
@pytest.mark.gpu
def test_align_warp_path_matches_reference(num_pairs, block_m, routing):
    """Decode-sized P through the one-warp kernel (33: the one-CTA kernel, same contract): duplicates,
    ids < 0 and >= E skipped, every padding slot the sentinel P, tiles past num_padded -1."""
    for num_experts in (8, 128):
        ids = _align_ids(num_pairs, 1, num_experts, routing, seed=num_pairs * 7 + block_m)
        _align_check(ids, num_experts, block_m, f"P={num_pairs} E={num_experts} block_m={block_m} routing={routing}")
    ids = _align_ids(num_pairs, 1, 4096, routing, seed=num_pairs)  # E larger than any shared-memory plan
    _align_check(ids, 4096, block_m, f"P={num_pairs} E=4096 block_m={block_m} routing={routing}")


@pytest.mark.gpu
def test_align_warp_path_switch():
    lim = ops.moe.MOE_ALIGN_WARP_MAX_PAIRS
    for num_pairs, warp in ((lim, True), (lim + 1, False)):
        ids = _align_ids(num_pairs, 1, 128, "random", seed=0)
        names = " ".join(_kernel_names(lambda: ops.moe_align(ids, 128, 4)))
        assert ("moe_align_warp_kernel" in names) == warp, f"P={num_pairs}: launched {names}"


@pytest.mark.parametrize("tier", ["prefill_mma", "prefill_sm90", None])
@pytest.mark.parametrize("routing", ["random", "padded", "one_expert"])
@pytest.mark.gpu
def test_fused_moe_multi_cta_align(tier, routing):
    # P = 4500 * 4 = 18000 >= both switches: multi-CTA align in every prefill tier, and auto on sm90 takes
    # the Hopper tier (gather by token, grouped combine).
    if tier == "prefill_sm90" and torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("needs a compute capability 9.x GPU")
    _check_fused(4500, 16, 4, 256, 128, torch.bfloat16, tier, routing, seed=4500)


@pytest.mark.gpu
@is_sm90
def test_auto_sm90_threshold():
    """"prefill" and auto take the Hopper tier from MOE_SM90_MIN_PAIRS pairs on (H100 measurements: the
    mma.sync tier is faster below), forced tiers whatever P; results agree with the reference."""
    lim = ops.moe.MOE_SM90_MIN_PAIRS
    for num_tokens, top_k, want in ((lim - 1, 1, False), (lim, 1, True), (lim // 8 - 1, 8, False),
                                    (lim // 8, 8, True)):
        x, w13, w2, w, ids = make_moe(num_tokens, 16, top_k, 64, 64, torch.bfloat16, "cuda", seed=num_tokens)
        ref = reference.fused_moe_grouped_reference(x, w13, w2, w, ids)
        for tier, expect in ((None, want), ("prefill", want), ("prefill_mma", False), ("prefill_sm90", True)):
            out = poison_(torch.empty_like(x))
            names = _kernel_names(lambda: ops.fused_moe(x, w13, w2, w, ids, tier=tier, out=out))
            got = any("cutlass" in n or "GemmUniversal" in n for n in names)
            assert got == expect, f"T={num_tokens} k={top_k} tier={tier}: CUTLASS launched {got}, expected {expect}"
            assert_rel_close(out, ref, what=f"T={num_tokens} k={top_k} tier={tier}")


@pytest.mark.parametrize("routing", ["random", "padded", "one_expert"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.gpu
@is_sm90
def test_prefill_sm90_gather_by_token_odd_shapes(routing, dtype):
    # H = 320 (40 16-byte chunks: a partial round of 128 per warp), H = 4160 (520 chunks: 4 full rounds +
    # a partial one), k = 3, 13; T not a multiple of the 8 tokens per CTA.
    _check_fused(1001, 32, 3, 320, 192, dtype, "prefill_sm90", routing, seed=1)
    _check_fused(203, 16, 13, 4160, 64, dtype, "prefill_sm90", routing, seed=2)
