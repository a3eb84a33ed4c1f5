"""docs/benchmarks.md is generated from the committed JSON reports: the generator must keep working
on them and check every target it knows (CPU only, no GPU needed)."""

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "benchmarks.md").read_text()
# The reports docs/benchmarks.md was generated from, in its order (later ones replace rows).
RAW_LINE = next(line for line in DOC.splitlines() if line.startswith("Raw numbers:"))
REPORTS = [ROOT / "docs" / "results" / name for name in re.findall(r"\(results/([^)]+)\)", RAW_LINE)]


def _render():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmarks_doc.py"), *map(str, REPORTS)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_generator_renders_every_target_row():
    assert REPORTS and all(p.exists() for p in REPORTS), REPORTS
    targets = _render().split("## Against the targets")[1].split("## All rows")[0]
    rows = [line for line in targets.splitlines() if line.startswith("| ") and not line.startswith("| kernel")]
    assert len(rows) == 30  # 4 layer rows, 10 decode (2 layouts), 4 varlen, 4 argmax, 8 MoE
    assert all(line.rstrip(" |").endswith(("yes", "no")) for line in rows)


def test_reports_carry_the_floor_of_every_bandwidth_row():
    rows = [r for p in REPORTS for r in json.loads(p.read_text())["rows"]]
    bandwidth = [r for r in rows if r["metric"] == "GB/s"]
    assert bandwidth and all(r.get("floor_us", 0) > 0 for r in bandwidth)


def test_doc_tables_match_their_reports():
    """The committed tables are the generator's output (hand-written notes follow them)."""
    rendered = _render()
    assert DOC.startswith(rendered.rstrip("\n")), "docs/benchmarks.md is stale: regenerate it from its JSON"
