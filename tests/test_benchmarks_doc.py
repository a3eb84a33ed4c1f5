"""docs/benchmarks.md is generated from the committed JSON reports: the generator must keep working
on them and check every target it knows (CPU only, no GPU needed)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORTS = sorted((ROOT / "docs" / "results").glob("h100_bench_s14*.json"))


def test_generator_renders_every_target_row():
    assert REPORTS, "no committed benchmark reports"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmarks_doc.py"), *map(str, REPORTS)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    targets = result.stdout.split("## Against the targets")[1].split("## All rows")[0]
    rows = [line for line in targets.splitlines() if line.startswith("| ") and not line.startswith("| kernel")]
    assert len(rows) == 30  # 4 layer rows, 10 decode (2 layouts), 4 varlen, 4 argmax, 8 MoE
    assert all(line.rstrip(" |").endswith(("yes", "no")) for line in rows)


def test_reports_carry_the_floor_of_every_bandwidth_row():
    rows = [r for p in REPORTS for r in json.loads(p.read_text())["rows"]]
    bandwidth = [r for r in rows if r["metric"] == "GB/s"]
    assert bandwidth and all(r.get("floor_us", 0) > 0 for r in bandwidth)
