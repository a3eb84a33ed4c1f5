"""Helpers for kernel tests: the per-dtype tolerances of DESIGN.md §4 in one place.

A kernel is compared with its reference twin (fp32 math) by the relative
Frobenius error ||out - ref|| / ||ref||; integer outputs must match exactly.
"""

import torch

# Relative Frobenius error allowed between a kernel and its fp32-accumulating reference.
REL_TOLERANCE = {
    torch.bfloat16: 1e-2,
    torch.float16: 2e-3,
    torch.float32: 1e-5,
}


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in fp64; inf when out holds a NaN or inf that ref does not."""
    out64, ref64 = out.double(), ref.double()
    if not torch.equal(torch.isfinite(out64), torch.isfinite(ref64)):
        return float("inf")
    finite = torch.isfinite(ref64)
    diff = torch.linalg.vector_norm((out64 - ref64)[finite])
    scale = torch.linalg.vector_norm(ref64[finite])
    return float(diff / scale) if scale > 0 else float(diff)


def assert_rel_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype | None = None,
                     tol: float | None = None, what: str = "output") -> None:
    """Asserts shape equality and rel_error(out, ref) <= the tolerance of `dtype` (default out.dtype)."""
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    tol = REL_TOLERANCE[dtype or out.dtype] if tol is None else tol
    err = rel_error(out, ref)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fills t with NaN (floats) or a sentinel (integers) so unwritten elements show."""
    if t.is_floating_point():
        return t.fill_(float("nan"))
    return t.fill_(torch.iinfo(t.dtype).min if t.dtype != torch.bool else False)


def poisoned_like(t: torch.Tensor, shape=None, dtype=None) -> torch.Tensor:
    out = torch.empty(t.shape if shape is None else shape, dtype=dtype or t.dtype, device=t.device)
    return poison_(out)


# ---- attention: random paged KV caches (tests and benchmarks) ------------------

def make_cache(num_blocks: int, block_size: int, kv_heads: int, head_dim: int, dtype: torch.dtype, layout: str,
               device, gen: torch.Generator | None = None):
    """Random (key_cache, value_cache) in `layout`."""
    if layout == "vllm":
        x = 16 // torch.empty((), dtype=dtype).element_size()
        kshape = (num_blocks, kv_heads, head_dim // x, block_size, x)
        vshape = (num_blocks, kv_heads, head_dim, block_size)
    else:
        kshape = vshape = (num_blocks, block_size, kv_heads, head_dim)
    k = torch.randn(kshape, generator=gen, device=device, dtype=torch.float32).to(dtype)
    v = torch.randn(vshape, generator=gen, device=device, dtype=torch.float32).to(dtype)
    return k, v


def rope_tables(max_positions: int, head_dim: int, theta: float = 1e6, device=None):
    """Half-split RoPE tables (cos, sin), float32 [max_positions, head_dim // 2], computed in fp64."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(max_positions, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return angles.cos().float().to(device), angles.sin().float().to(device)


def make_block_tables(seq_lens: list[int], block_size: int, max_blocks: int, num_blocks: int, device,
                      gen: torch.Generator | None = None, pad_value: int | None = None) -> torch.Tensor:
    """Shuffled, non-overlapping block tables; unused entries get pad_value (default: random valid ids)."""
    need = [(n + block_size - 1) // block_size for n in seq_lens]
    assert sum(need) <= num_blocks and max(need, default=0) <= max_blocks
    perm = torch.randperm(num_blocks, generator=gen).tolist()
    rows, used = [], 0
    for n in need:
        row = perm[used : used + n]
        used += n
        pad = max_blocks - n
        if pad_value is None:
            row += torch.randint(0, num_blocks, (pad,), generator=gen).tolist()
        else:
            row += [pad_value] * pad
        rows.append(row)
    return torch.tensor(rows, dtype=torch.int32, device=device).reshape(len(seq_lens), max_blocks)


def poison_tails(key_cache: torch.Tensor, value_cache: torch.Tensor, block_tables: torch.Tensor,
                 seq_lens: list[int], layout: str) -> None:
    """NaN into the unused slots of each sequence's last block: a kernel must never let them through."""
    bs = key_cache.shape[3] if layout == "vllm" else key_cache.shape[1]
    for s, n in enumerate(seq_lens):
        if n % bs == 0:
            continue
        blk = int(block_tables[s, n // bs])
        off = n % bs
        if layout == "vllm":
            key_cache[blk, :, :, off:, :] = float("nan")
            value_cache[blk, :, :, off:] = float("nan")
        else:
            key_cache[blk, off:] = float("nan")
            value_cache[blk, off:] = float("nan")


def make_problem(seq_lens: list[int], num_heads: int, kv_heads: int, head_dim: int, block_size: int,
                 dtype: torch.dtype, layout: str, device, seed: int = 0, q_rows: int | None = None,
                 extra_blocks: int = 3, extra_cols: int = 2):
    """(query, key_cache, value_cache, block_tables, seq_lens tensor) with poisoned block tails."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    need = sum((n + block_size - 1) // block_size for n in seq_lens)
    max_blocks = max((n + block_size - 1) // block_size for n in seq_lens) + extra_cols
    num_blocks = need + extra_blocks
    kc, vc = make_cache(num_blocks, block_size, kv_heads, head_dim, dtype, layout, "cpu", gen)
    bt = make_block_tables(seq_lens, block_size, max_blocks, num_blocks, "cpu", gen)
    poison_tails(kc, vc, bt, seq_lens, layout)
    rows = len(seq_lens) if q_rows is None else q_rows
    q = torch.randn(rows, num_heads, head_dim, generator=gen).to(dtype)
    sl = torch.tensor(seq_lens, dtype=torch.int32)
    return tuple(t.to(device) for t in (q, kc, vc, bt, sl))


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical (NaN == NaN with the same payload; torch.equal is False on any NaN)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():
        as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        a, b = a.contiguous().view(as_int), b.contiguous().view(as_int)
    return torch.equal(a, b)


def capture_graph(fn):
    """Runs fn once on a side stream (warm-up: allocator, lazy init), then captures it in a CUDA
    graph. Returns (graph, what fn returned during capture)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        result = fn()
    return graph, result
