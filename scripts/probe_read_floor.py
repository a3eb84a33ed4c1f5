"""How fast can anything read N bytes under the benchmark protocol (256 MiB written before each run)?

The benchmarks' `floor_us` is torch reading the same bytes (sum / amax). This probe adds plain
Triton streaming reads, with and without the L2 evict-first hint, persistent and one-shot grids, so
the targets at tens of MB can be compared with what a pure read achieves, not only with torch.

    python scripts/probe_read_floor.py [--json PATH]            the streams
    python scripts/probe_read_floor.py --gather [--json PATH]   shuffled vs in-order chunk gathers
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import BenchContext  # noqa: E402

BLOCK = 4096  # fp32 elements per program and step: 16 KB


@triton.jit
def _read_persistent(x_ptr, out_ptr, n, BLOCK: tl.constexpr, EVICT: tl.constexpr):
    pid = tl.program_id(0)
    step = tl.num_programs(0) * BLOCK
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(pid * BLOCK, n, step):
        offs = start + tl.arange(0, BLOCK)
        acc += tl.load(x_ptr + offs, mask=offs < n, other=0.0, eviction_policy=EVICT)
    tl.store(out_ptr + pid, tl.sum(acc))


@triton.jit
def _read_oneshot(x_ptr, out_ptr, n, BLOCK: tl.constexpr, EVICT: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0, eviction_policy=EVICT)
    tl.store(out_ptr + pid, tl.sum(x))


@triton.jit
def _read_chunks(x_ptr, perm_ptr, out_ptr, CHUNK: tl.constexpr, SUB: tl.constexpr):
    # Program p reads chunk perm[p] (CHUNK fp32 elements), SUB at a time: a paged cache's gather.
    pid = tl.program_id(0)
    base = tl.load(perm_ptr + pid).to(tl.int64) * CHUNK
    acc = tl.zeros([SUB], tl.float32)
    for start in range(0, CHUNK, SUB):
        acc += tl.load(x_ptr + base + start + tl.arange(0, SUB))
    tl.store(out_ptr + pid, tl.sum(acc))


def gather_rows(ctx: BenchContext, label: str, nbytes: int) -> list[dict]:
    """The same bytes read as chunks of 4 KiB .. 64 KiB, in order and at shuffled positions."""
    n = nbytes // 4
    x = [torch.randn(n, device="cuda") for _ in range(2)]
    rows = []
    for chunk_bytes in (4096, 16384, 65536):
        chunk = chunk_bytes // 4
        count = n // chunk
        out = torch.empty(count, device="cuda")
        for order in ("in order", "shuffled"):
            perm = torch.arange(count, device="cuda", dtype=torch.int32)
            if order == "shuffled":
                perm = perm[torch.randperm(count, device="cuda")].contiguous()
            t = ctx.time(lambda a: _read_chunks[(count,)](a, perm, out, CHUNK=chunk, SUB=min(chunk, 4096),
                                                          num_warps=8), [(a,) for a in x])
            variant = f"{chunk_bytes // 1024} KiB chunks {order}"
            rows.append({"case": label, "bytes": nbytes, "variant": variant, "us": round(t.median_us, 2),
                         "tbps": round(nbytes / t.median_us / 1e6, 3)})
            print(f"{label:24s} {variant:32s} {t.median_us:8.2f} us {nbytes / t.median_us / 1e6:6.3f} TB/s",
                  flush=True)
    del x
    return rows


def stream_rows(ctx: BenchContext, label: str, nbytes: int) -> list[dict]:
    """torch's same-bytes read and Triton streams: persistent and one-shot, with and without evict-first."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    n = nbytes // 4
    x = [torch.randn(n, device="cuda") for _ in range(2)]
    out = torch.empty(max(n // BLOCK + 1, sms * 16), device="cuda")
    variants = {"torch floor (sum/amax)": ctx.floor_us(nbytes)}
    for evict in ("evict_first", ""):
        name = evict or "default"
        for per_sm in (4, 8, 16):
            grid = (sms * per_sm,)
            t = ctx.time(lambda a: _read_persistent[grid](a, out, n, BLOCK=BLOCK, EVICT=evict, num_warps=8),
                         [(a,) for a in x])
            variants[f"persistent {per_sm}/SM {name}"] = t.median_us
        grid = (triton.cdiv(n, BLOCK),)
        t = ctx.time(lambda a: _read_oneshot[grid](a, out, n, BLOCK=BLOCK, EVICT=evict, num_warps=8),
                     [(a,) for a in x])
        variants[f"one-shot {name}"] = t.median_us
    rows = []
    for variant, us in variants.items():
        rows.append({"case": label, "bytes": nbytes, "variant": variant, "us": round(us, 2),
                     "tbps": round(nbytes / us / 1e6, 3)})
        print(f"{label:24s} {variant:32s} {us:8.2f} us {nbytes / us / 1e6:6.3f} TB/s", flush=True)
    del x, out
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--gather", action="store_true", help="only the chunked-gather reads")
    args = parser.parse_args()
    ctx = BenchContext(iters=50)
    # (label, bytes): the shapes whose targets sit near or below torch's same-bytes read.
    sizes = [("decode B=1 32k 4kv", 67_108_864), ("MoE 30B T=1 weights", 75_497_472),
             ("decode B=8 8k 4kv", 134_217_728), ("argmax fp32 B=256", 155_582_464),
             ("decode B=64 4k 4kv", 536_870_912)]
    if args.gather:
        rows = [r for label, nbytes in (sizes[0], sizes[-1]) for r in gather_rows(ctx, label, nbytes)]
    else:
        rows = [r for label, nbytes in sizes for r in stream_rows(ctx, label, nbytes)]
    if args.json:
        report = {"read_ceiling_gbps": ctx.ceilings.read_gbps, "rows": rows}
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
