"""greedy_argmax: input errors, reference semantics, opcheck and torch.compile on CPU;
exact equality with torch.argmax on the GPU (random rows, planted ties / NaN / inf / -0.0,
strided and misaligned rows, masks, values, CUDA graphs). GPU tests carry the `gpu` mark
and are skipped by tests/conftest.py where there is no CUDA device or no built extension.
"""

import pytest
import torch

import ferrum_ext
from ferrum_ext import ops, reference
from ferrum_ext.testing import capture_graph, poison_

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INF, NAN = float("inf"), float("nan")

# ---- CPU: input errors ----------------------------------------------------------


@pytest.mark.parametrize("call, exc, match", [
    (lambda: ops.greedy_argmax([[1.0]]), TypeError, "logits: expected a torch.Tensor"),
    (lambda: ops.greedy_argmax(torch.zeros(2, 5, dtype=torch.int32)), TypeError, "logits: expected dtype"),
    (lambda: ops.greedy_argmax(torch.zeros(2, 5, dtype=torch.float64)), TypeError, "logits: expected dtype"),
    (lambda: ops.greedy_argmax(torch.zeros(5)), ValueError, "logits: expected 2 dimensions"),
    (lambda: ops.greedy_argmax(torch.zeros(2, 3, 5)), ValueError, "logits: expected 2 dimensions"),
    (lambda: ops.greedy_argmax(torch.zeros(2, 0)), ValueError, "logits: expected a non-empty last dimension"),
    (lambda: ops.greedy_argmax(torch.zeros(5, 4).t()), ValueError, "logits: expected a unit stride"),
    (lambda: ops.greedy_argmax(torch.zeros(2, 5), allowed=torch.ones(2, 5)), TypeError,
     "allowed: expected dtype bool or uint8"),
    (lambda: ops.greedy_argmax(torch.zeros(2, 5), allowed=torch.ones(3, 5, dtype=torch.bool)), ValueError,
     "allowed: expected shape"),
    (lambda: ops.greedy_argmax(torch.zeros(2, 5), allowed=torch.ones(4, dtype=torch.bool)), ValueError,
     "allowed: expected shape"),
    (lambda: ops.greedy_argmax(torch.zeros(2, 5), allowed=torch.ones(1, 5, dtype=torch.bool)), ValueError,
     "allowed: expected shape"),
    (lambda: ops.greedy_argmax(torch.zeros(2, 5), allowed=torch.ones(5, 2, dtype=torch.bool).t()), ValueError,
     "allowed: expected a unit stride"),
    (lambda: ops.greedy_argmax(torch.zeros(2, 5), allowed=torch.ones(2, 5, dtype=torch.bool, device="meta")),
     ValueError, "allowed: expected a tensor on cpu"),
    (lambda: ops.greedy_argmax(torch.zeros(2, 5), out=torch.empty(2, dtype=torch.int32)), TypeError,
     "out: expected dtype torch.int64"),
    (lambda: ops.greedy_argmax(torch.zeros(2, 5), out=torch.empty(3, dtype=torch.int64)), ValueError,
     "out: expected shape"),
    (lambda: ops.greedy_argmax(torch.zeros(2, 5), out=torch.empty(2, 2, dtype=torch.int64)[:, 0]), ValueError,
     "out: expected a contiguous tensor"),
    (lambda: ops.greedy_argmax(torch.zeros(2, 5), out=torch.empty(2, dtype=torch.int64, device="meta")),
     ValueError, "out: expected a tensor on cpu"),
    (lambda: ops.greedy_argmax(torch.zeros(2, 5), return_value=True, out=torch.empty(2, dtype=torch.int64)),
     TypeError, "out: with return_value=True expected a pair"),
    (lambda: ops.greedy_argmax(torch.zeros(2, 5), return_value=True,
                               out=(torch.empty(2, dtype=torch.int64), torch.empty(2, dtype=torch.float16))),
     TypeError, r"out\[1\]: expected dtype torch.float32"),
    (lambda: ops.greedy_argmax(torch.zeros(2, 5), return_value=True,
                               out=(torch.empty(2, dtype=torch.int64), torch.empty(3))),
     ValueError, r"out\[1\]: expected shape"),
    (lambda: ops.greedy_argmax(torch.zeros(2, 5), return_value=True,
                               out=(torch.empty(2), torch.empty(2))),
     TypeError, r"out\[0\]: expected dtype torch.int64"),
])
def test_input_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---- CPU: semantics of the wrapper (reference or CPU kernel) ----------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_planted_cases(dtype):
    rows = [
        [1.0, 3.0, 3.0, 2.0],        # tie -> first
        [NAN, 5.0, NAN, INF],        # NaN beats inf; first NaN
        [1.0, INF, 2.0, INF],        # +inf tie
        [-INF, -INF, -INF, -INF],    # all -inf -> 0
        [-1.0, -0.0, 0.0, -2.0],     # -0.0 == +0.0 -> first
        [7.0, 7.0, 7.0, 7.0],        # all equal -> 0
        [-5.0, -3.0, -4.0, NAN],     # NaN last
    ]
    logits = torch.tensor(rows, dtype=dtype)
    expected = torch.tensor([1, 0, 1, 0, 1, 0, 3])
    assert torch.equal(ops.greedy_argmax(logits), expected)
    assert torch.equal(torch.argmax(logits, -1), expected)  # the contract itself
    ids, values = ops.greedy_argmax(logits, return_value=True)
    assert torch.equal(ids, expected)
    assert values.dtype == dtype
    want_values = logits.float()[torch.arange(7), expected]
    assert torch.equal(values.float().nan_to_num(123.0), want_values.nan_to_num(123.0))


@pytest.mark.parametrize("mask_dtype", (torch.bool, torch.uint8))
def test_cpu_masked_semantics(mask_dtype):
    logits = torch.tensor([
        [9.0, 1.0, 2.0, 3.0],
        [9.0, -INF, 2.0, -INF],
        [0.0, -INF, 5.0, -INF],
        [NAN, 1.0, NAN, 0.0],
        [1.0, 2.0, 3.0, 4.0],
        [4.0, 4.0, 4.0, 4.0],
    ])
    allowed = torch.tensor([
        [0, 1, 1, 0],   # best allowed 2.0 at 2
        [0, 1, 0, 1],   # only -inf allowed -> first allowed (1), not a masked-out slot
        [1, 0, 0, 0],   # 0.0 at 0
        [0, 1, 1, 1],   # allowed NaN at 2 wins; masked NaN at 0 ignored
        [0, 0, 0, 0],   # none allowed -> -1
        [0, 0, 1, 1],   # tie among allowed -> first allowed
    ]).to(mask_dtype)
    if mask_dtype == torch.uint8:
        allowed = allowed * 7  # any nonzero byte allows
    ids, values = ops.greedy_argmax(logits, return_value=True, allowed=allowed)
    assert ids.tolist() == [2, 1, 0, 2, -1, 2]
    assert values[[0, 1, 2, 5]].tolist() == [2.0, -INF, 0.0, 4.0]
    assert values[3].isnan() and values[4].item() == -INF
    # A [V] mask broadcasts over rows.
    ids = ops.greedy_argmax(logits, allowed=torch.tensor([0, 1, 1, 0], dtype=mask_dtype))
    assert ids.tolist() == [2, 2, 2, 2, 2, 1]


def test_cpu_out_is_written_and_returned():
    logits = torch.randn(3, 17)
    out = torch.full((3,), -7, dtype=torch.int64)
    assert ops.greedy_argmax(logits, out=out) is out
    assert torch.equal(out, torch.argmax(logits, -1))
    pair = (torch.empty(3, dtype=torch.int64), torch.empty(3))
    ids, values = ops.greedy_argmax(logits, return_value=True, out=pair)
    assert ids is pair[0] and values is pair[1]
    assert torch.equal(values, logits.max(-1).values)


def test_cpu_empty_batch_and_strided_rows():
    assert ops.greedy_argmax(torch.zeros(0, 5)).shape == (0,)
    big = torch.randn(4, 40)
    view = big[:, 3:30]
    assert torch.equal(ops.greedy_argmax(view), torch.argmax(view, -1))


# ---- CPU: opcheck and torch.compile ----------------------------------------------

needs_op = pytest.mark.skipif(not ferrum_ext.cuda_ops_available(), reason="ferrum_ext._C not built")


def _samples():
    g = torch.Generator().manual_seed(0)
    out = []
    for dtype in DTYPES:
        for batch, vocab in ((1, 1), (3, 31), (5, 1000)):
            logits = torch.randn(batch, vocab, generator=g).to(dtype)
            ids = torch.empty(batch, dtype=torch.int64)
            values = torch.empty(batch, dtype=dtype)
            mask = torch.rand(batch, vocab, generator=g) < 0.5
            out.append((ids, None, logits, None))
            out.append((ids.clone(), values, logits, None))
            out.append((ids.clone(), values.clone(), logits, mask))
            out.append((ids.clone(), None, logits, mask[0].to(torch.uint8)))
    return out


@needs_op
@pytest.mark.parametrize("args", _samples(), ids=lambda a: f"{a[2].dtype}-{tuple(a[2].shape)}-"
                         f"{'v' if a[1] is not None else ''}{'m' if a[3] is not None else ''}")
def test_opcheck(args):
    torch.library.opcheck(torch.ops.ferrum_ext.greedy_argmax.default, args)


def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    def step(logits, allowed):
        ids = ops.greedy_argmax(logits * 2.0)
        masked_ids, values = ops.greedy_argmax(logits, return_value=True, allowed=allowed)
        return ids, masked_ids, values

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    logits = torch.randn(4, 50)
    allowed = torch.rand(4, 50) < 0.3
    got = compiled(logits, allowed)
    want = step(logits, allowed)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


# ---- GPU: exact equality with torch.argmax -------------------------------------


def _poisoned(batch, dtype, device="cuda"):
    return poison_(torch.empty(batch, dtype=torch.int64, device=device)), \
        poison_(torch.empty(batch, dtype=dtype, device=device))


def _check(logits, allowed=None, what=""):
    """Kernel vs torch.argmax (or the reference when masked), ids exactly, values bitwise."""
    batch = logits.shape[0]
    ids, values = _poisoned(batch, logits.dtype, logits.device)
    ops.greedy_argmax(logits, return_value=True, allowed=allowed, out=(ids, values))
    ids_only = poison_(torch.empty(batch, dtype=torch.int64, device=logits.device))
    ops.greedy_argmax(logits, allowed=allowed, out=ids_only)
    if allowed is None:
        want = torch.argmax(logits, -1)
        want_values = logits.gather(-1, want.unsqueeze(-1)).squeeze(-1)
    else:
        want, want_values = reference.greedy_argmax(logits, return_value=True, allowed=allowed)
    torch.cuda.synchronize()
    bad = (ids != want).nonzero().flatten()
    assert bad.numel() == 0, (
        f"{what} shape {tuple(logits.shape)} stride {logits.stride()} {logits.dtype}: "
        f"{bad.numel()} rows differ, first rows {bad[:5].tolist()}: "
        f"kernel {ids[bad[:5]].tolist()} vs expected {want[bad[:5]].tolist()}")
    assert torch.equal(ids_only, ids), f"{what}: ids without values differ from ids with values"
    bits = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}[logits.dtype]
    assert torch.equal(values.view(bits), want_values.view(bits)), (
        f"{what}: values are not the logits at the ids (bitwise): "
        f"{values[:5].tolist()} vs {want_values[:5].tolist()}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", (1, 2, 3, 7, 64, 257))
@pytest.mark.parametrize("vocab", (1, 31, 32000, 128256, 151936))
def test_gpu_random(dtype, batch, vocab):
    g = torch.Generator(device="cuda").manual_seed(batch * 1000003 + vocab)
    logits = torch.randn(batch, vocab, device="cuda", generator=g).to(dtype)
    _check(logits, what="random")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", (1, 5, 133))
@pytest.mark.parametrize("vocab", (4097, 151936))
def test_gpu_planted_ties(dtype, batch, vocab):
    """Many equal maxima per row, spread over the whole row (so over every split chunk)."""
    g = torch.Generator(device="cuda").manual_seed(vocab + batch)
    # Small integers: every value occurs thousands of times, the max 3 mostly late in the row.
    logits = torch.randint(0, 3, (batch, vocab), device="cuda", generator=g).to(dtype)
    for b in range(batch):
        start = int(torch.randint(0, vocab, (1,), generator=g, device="cuda"))
        count = 1 + b % 40
        pos = torch.randint(start, vocab, (count,), generator=g, device="cuda")
        logits[b, pos] = 3.0
    # Row 0: maxima at both sides of every multiple of 256 and 1024 (chunk edges).
    edges = torch.arange(256, vocab, 256, device="cuda")
    logits[0, edges] = 4.0
    logits[0, (edges - 1)] = 4.0
    _check(logits, what="ties")
    # All-equal rows: index 0, also for the largest value and for -inf / +inf / NaN.
    for fill in (0.0, -1.5, INF, -INF, NAN):
        _check(torch.full((batch, vocab), fill, device="cuda", dtype=dtype), what=f"all {fill}")
    # Only the last two entries hold the max.
    logits = torch.zeros(batch, vocab, device="cuda", dtype=dtype)
    logits[:, -2:] = 1.0
    _check(logits, what="last-two")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch, vocab", ((1, 151936), (3, 32000), (200, 4099), (2, 31)))
def test_gpu_nan_inf_zero(dtype, batch, vocab):
    g = torch.Generator(device="cuda").manual_seed(7)
    base = torch.randn(batch, vocab, device="cuda", generator=g).to(dtype)

    def pos(k):
        return torch.randint(0, vocab, (batch, k), device="cuda", generator=g)

    x = base.clone()
    x.scatter_(1, pos(3), NAN)  # several NaNs per row: the first one wins
    x.scatter_(1, pos(3), INF)
    _check(x, what="nan+inf")
    x = base.clone()
    x.scatter_(1, pos(2), INF)  # +inf ties
    _check(x, what="+inf")
    x = -base.abs() - 1.0
    x.scatter_(1, pos(4), -INF)
    _check(x, what="negative with -inf")
    # -0.0 and +0.0 tie: whichever comes first wins.
    x = -base.abs() - 1.0
    p = pos(2)
    x.scatter_(1, p[:, :1], -0.0)
    x.scatter_(1, p[:, 1:], 0.0)
    _check(x, what="-0.0 vs +0.0")
    x = torch.full((batch, vocab), -INF, device="cuda", dtype=dtype)
    x[:, -1] = NAN
    _check(x, what="nan last")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", (1, 3, 64, 257))
@pytest.mark.parametrize("vocab, pad, offset", (
    (151936, 64, 0),    # padded rows, aligned
    (151936, 0, 1),     # logits[:, 1:] of a wider buffer: every row misaligned
    (32000, 3, 0),      # odd row stride: each row has a different alignment
    (32001, 5, 3),      # odd vocab, odd stride, offset
    (7, 1, 1),          # tiny rows
))
def test_gpu_strided_rows(dtype, batch, vocab, pad, offset):
    g = torch.Generator(device="cuda").manual_seed(vocab + pad + offset)
    buf = torch.randn(batch, offset + vocab + pad, device="cuda", generator=g).to(dtype)
    logits = buf[:, offset:offset + vocab]
    assert logits.stride(-1) == 1
    _check(logits, what="strided")
    # Ties across the row inside a strided view.
    logits[:, vocab // 3] = 100.0
    logits[:, vocab // 2] = 100.0
    _check(logits, what="strided ties")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", (1, 7, 257))
@pytest.mark.parametrize("vocab", (31, 32000, 151936))
@pytest.mark.parametrize("mask_kind", ("bool2d", "uint8_2d", "bool1d", "uint8_1d", "bool2d_misaligned"))
def test_gpu_masked(dtype, batch, vocab, mask_kind):
    g = torch.Generator(device="cuda").manual_seed(vocab * 3 + batch)
    logits = torch.randn(batch, vocab, device="cuda", generator=g).to(dtype)
    # Plant NaN / inf, some of them masked out.
    logits.scatter_(1, torch.randint(0, vocab, (batch, 2), device="cuda", generator=g), NAN)
    logits.scatter_(1, torch.randint(0, vocab, (batch, 2), device="cuda", generator=g), INF)
    density = 0.3
    if mask_kind.endswith("1d"):
        allowed = torch.rand(vocab, device="cuda", generator=g) < density
    elif mask_kind == "bool2d_misaligned":
        allowed = (torch.rand(batch, vocab + 1, device="cuda", generator=g) < density)[:, 1:]
    else:
        allowed = torch.rand(batch, vocab, device="cuda", generator=g) < density
    if mask_kind.startswith("uint8"):
        allowed = allowed.to(torch.uint8) * torch.randint(1, 256, allowed.shape, device="cuda", generator=g,
                                                          dtype=torch.uint8)
    if allowed.dim() == 2 and batch > 2:
        allowed[1] = 0  # a row with nothing allowed -> -1, -inf
        allowed[2] = 0
        allowed[2, -1] = 1  # only the last entry allowed
    _check(logits, allowed=allowed, what=f"masked {mask_kind}")
    # Allowed entries all -inf: the first allowed one wins, not a masked-out slot.
    x = torch.full((batch, vocab), -INF, device="cuda", dtype=dtype)
    x[:, 0] = 5.0
    _check(x, allowed=allowed, what=f"masked -inf {mask_kind}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
@pytest.mark.parametrize("batch", (1, 8, 257))
@pytest.mark.parametrize("masked", (False, True))
def test_gpu_cuda_graph(dtype, batch, masked):
    vocab = 151936
    logits = torch.randn(batch, vocab, device="cuda").to(dtype)
    allowed = (torch.rand(batch, vocab, device="cuda") < 0.5) if masked else None
    ids = torch.empty(batch, dtype=torch.int64, device="cuda")
    values = torch.empty(batch, dtype=dtype, device="cuda")
    graph, _ = capture_graph(lambda: ops.greedy_argmax(logits, return_value=True, allowed=allowed, out=(ids, values)))
    for seed in range(3):
        g = torch.Generator(device="cuda").manual_seed(100 + seed)
        logits.copy_(torch.randn(batch, vocab, device="cuda", generator=g).to(dtype))
        if seed == 2:
            logits[:, 5] = NAN
        poison_(ids)
        poison_(values)
        graph.replay()
        if allowed is None:
            want = torch.argmax(logits, -1)
            want_values = logits.gather(-1, want.unsqueeze(-1)).squeeze(-1)
        else:
            want, want_values = reference.greedy_argmax(logits, return_value=True, allowed=allowed)
        torch.cuda.synchronize()
        assert torch.equal(ids, want), f"replay {seed}: ids differ in {(ids != want).sum().item()} rows"
        assert torch.equal(values.float().nan_to_num(0.5), want_values.float().nan_to_num(0.5)), \
            f"replay {seed}: values differ"


@pytest.mark.gpu
def test_gpu_matches_cpu_reference():
    """The kernel, the CPU kernel (reference) and torch.argmax on CPU agree."""
    logits = torch.randn(9, 50000, device="cuda")
    logits[:, 1234] = NAN
    logits[3] = 1.0
    allowed = torch.rand(9, 50000, device="cuda") < 0.1
    assert torch.equal(ops.greedy_argmax(logits).cpu(), ops.greedy_argmax(logits.cpu()))
    assert torch.equal(ops.greedy_argmax(logits, allowed=allowed).cpu(),
                       ops.greedy_argmax(logits.cpu(), allowed=allowed.cpu()))
