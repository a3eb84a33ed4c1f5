"""Runs the microbenchmarks and prints one table.

    python -m benchmarks.run [--only NAME ...] [--json PATH] [--markdown PATH] [--iters N]

Every bench_<family>.py module exposes `run(ctx) -> list[dict]` (rows made by
BenchContext.row). The report starts with the GPU, versions and the ceilings
measured in this process.
"""

import argparse
import importlib
import json
import pkgutil
import sys
from pathlib import Path

import torch

from benchmarks.harness import BenchContext, environment

COLUMNS = ("bench", "case", "variant", "dtype", "us", "metric", "value", "pct_ceiling", "floor_us", "baseline_us", "speedup")


def discover() -> list[str]:
    here = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))


def format_table(rows: list[dict]) -> str:
    header = "| " + " | ".join(COLUMNS) + " |"
    lines = [header, "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=None, help="substrings of bench module names to run")
    parser.add_argument("--json", type=Path, help="write the environment, ceilings and rows here")
    parser.add_argument("--markdown", type=Path, help="write the table as markdown here")
    parser.add_argument("--iters", type=int, default=50, help="timed runs per case (>= 50 for reported numbers)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks need a CUDA device; none is visible", file=sys.stderr)
        return 2

    ctx = BenchContext(iters=args.iters)
    env = environment()
    c = ctx.ceilings
    print(f"# {env['gpu']} ({env['sms']} SMs, sm_{env['capability'].replace('.', '')}), torch {env['torch']}, "
          f"CUDA {env['cuda']}, commit {env['commit']}")
    print(f"# ceilings: read {c.read_gbps:.0f} GB/s, copy {c.copy_gbps:.0f} GB/s, bf16 matmul {c.bf16_tflops:.0f} TFLOP/s")
    rows, failures = [], []
    for name in discover():
        if args.only and not any(s in name for s in args.only):
            continue
        print(f"## {name}", flush=True)
        try:
            module_rows = importlib.import_module(f"benchmarks.{name}").run(ctx)
        except Exception as exc:  # one broken bench must not hide the others' numbers
            failures.append(name)
            print(f"   FAILED: {type(exc).__name__}: {exc}", flush=True)
            continue
        for r in module_rows:
            print(f"   {r['bench']:<22} {r['case']:<26} {r['variant']:<8} {r['dtype']:<9} {r['us']:>10.2f} us "
                  f"{r['value']:>9.1f} {r['metric']:<7} {r['pct_ceiling']:>5.1f}% of {r['ceiling']}"
                  + (f"  (floor {r['floor_us']:.1f} us)" if r.get("floor_us") else "")
                  + (f"  x{r['speedup']:.2f} vs {r['baseline']}" if r["speedup"] else ""), flush=True)
        rows += module_rows
    table = format_table(rows)
    print(table)
    report = {"environment": env, "ceilings": vars(c), "rows": rows, "failed": failures}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
