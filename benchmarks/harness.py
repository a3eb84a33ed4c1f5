"""Timing and roofline helpers shared by every bench_<family>.py.

Method (DESIGN.md §5): CUDA events around each run, the L2 flushed before every
timed run by writing a 256 MiB buffer, warm-up first, median and spread of
>= 50 runs, input sets rotated so a run never finds its inputs cached. Rates
count the bytes that must move (or the FLOPs that must be done) and are
compared with ceilings measured in the same process.
"""

from __future__ import annotations

import os
import statistics
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import torch

GB = 1e9
TFLOP = 1e12


@dataclass(frozen=True)
class Timing:
    median_us: float
    p10_us: float
    p90_us: float
    runs: int


@dataclass(frozen=True)
class Ceilings:
    read_gbps: float  # streaming read of >= 1 GiB
    copy_gbps: float  # device-to-device copy, bytes read + written
    bf16_tflops: float  # dense bf16 matmul


class BenchContext:
    """Holds the L2-flush buffer, timing settings and the measured ceilings."""

    def __init__(self, iters: int = 50, warmup: int = 10, flush_mib: int = 256, device: str = "cuda"):
        self.device = torch.device(device)
        self.iters, self.warmup = iters, warmup
        self._flush = torch.empty(flush_mib << 20, dtype=torch.uint8, device=self.device)
        self._ceilings: Ceilings | None = None
        self._floors: dict[tuple[str, int], float] = {}

    # -- timing -----------------------------------------------------------------

    def time(self, fn: Callable, arg_sets: Sequence[tuple] = ((),), iters: int | None = None) -> Timing:
        """Times fn(*arg_sets[i % len]) with a cold L2 before each run; returns median and spread in us."""
        iters = iters or self.iters
        for i in range(self.warmup):
            fn(*arg_sets[i % len(arg_sets)])
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        for i in range(iters):
            self._flush.zero_()
            starts[i].record()
            fn(*arg_sets[i % len(arg_sets)])
            ends[i].record()
        torch.cuda.synchronize()
        us = sorted(s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends))
        q = statistics.quantiles(us, n=10)
        return Timing(statistics.median(us), q[0], q[-1], iters)

    # -- ceilings ---------------------------------------------------------------

    @property
    def ceilings(self) -> Ceilings:
        if self._ceilings is None:
            self._ceilings = self._measure_ceilings()
        return self._ceilings

    def _measure_ceilings(self) -> Ceilings:
        n = (1 << 30) // 4  # 1 GiB of fp32
        src = torch.randn(n, device=self.device)
        dst = torch.empty_like(src)
        read_bytes = src.numel() * 4
        # A reduction reads everything once and writes nothing; take the best of two.
        t_read = min(self.time(lambda: src.sum(), iters=20).median_us,
                     self.time(lambda: src.amax(), iters=20).median_us)
        t_copy = self.time(lambda: dst.copy_(src), iters=20).median_us
        del src, dst
        m = 8192
        a = torch.randn(m, m, device=self.device, dtype=torch.bfloat16)
        b = torch.randn(m, m, device=self.device, dtype=torch.bfloat16)
        t_mm = self.time(lambda: a @ b, iters=20).median_us
        return Ceilings(
            read_gbps=read_bytes / t_read / 1e3,
            copy_gbps=2 * read_bytes / t_copy / 1e3,
            bf16_tflops=2 * m**3 / t_mm / 1e6,
        )

    def floor_us(self, nbytes: float, kind: str = "read") -> float:
        """Median time torch takes to read (or copy) the same number of bytes under the same
        protocol: the size-matched floor. At tens of MB the flush buffer's dirty L2 lines, written
        back while the kernel reads, are a large share of any kernel's time; this shows it."""
        key = (kind, int(nbytes))
        if key not in self._floors:
            n = max(int(nbytes) // 4 // (2 if kind == "copy" else 1), 1)
            src = torch.randn(n, device=self.device)
            if kind == "copy":
                dst = torch.empty_like(src)
                t = self.time(lambda: dst.copy_(src), iters=20).median_us
                del dst
            else:
                t = min(self.time(lambda: src.sum(), iters=20).median_us,
                        self.time(lambda: src.amax(), iters=20).median_us)
            del src
            self._floors[key] = t
        return self._floors[key]

    # -- rows -------------------------------------------------------------------

    def row(self, bench: str, case: str, dtype: torch.dtype | str, timing: Timing, *,
            bytes_moved: float | None = None, flops: float | None = None, ceiling: str = "read",
            baseline: Timing | None = None, baseline_name: str = "", variant: str = "") -> dict:
        """One result row: time, rate, % of the named ceiling, speedup over the baseline."""
        if (bytes_moved is None) == (flops is None):
            raise ValueError("give exactly one of bytes_moved and flops")
        c = self.ceilings
        if flops is not None:
            metric, value = "TFLOP/s", flops / timing.median_us / 1e6
            ceiling, peak = "bf16_mm", c.bf16_tflops
        else:
            metric, value = "GB/s", bytes_moved / timing.median_us / 1e3
            peak = {"read": c.read_gbps, "copy": c.copy_gbps}[ceiling]
        row = {
            "bench": bench, "case": case, "variant": variant,
            "dtype": str(dtype).removeprefix("torch."),
            "us": round(timing.median_us, 2), "p10_us": round(timing.p10_us, 2),
            "p90_us": round(timing.p90_us, 2), "metric": metric, "value": round(value, 1),
            "ceiling": ceiling, "pct_ceiling": round(100 * value / peak, 1),
            "baseline": baseline_name, "baseline_us": None, "speedup": None,
        }
        if bytes_moved is not None:
            row["floor_us"] = round(self.floor_us(bytes_moved, ceiling), 2)
            row["pct_floor"] = round(100 * row["floor_us"] / timing.median_us, 1)
        if baseline is not None:
            row["baseline_us"] = round(baseline.median_us, 2)
            row["speedup"] = round(baseline.median_us / timing.median_us, 2)
        return row


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def environment() -> dict:
    """GPU name and versions, printed with every report."""
    props = torch.cuda.get_device_properties(0)
    # BENCH_COMMIT: set by callers that run a copy of the tree without .git.
    commit = os.environ.get("BENCH_COMMIT") or _git_commit()
    return {
        "gpu": props.name, "sms": props.multi_processor_count,
        "capability": f"{props.major}.{props.minor}", "torch": torch.__version__,
        "cuda": torch.version.cuda, "commit": commit or "unknown",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
    }
