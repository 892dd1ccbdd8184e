"""`make bench` works: a tiny sweep through the Procfile's processes prints the table and writes its files.

Numbers are not checked here (a test is no benchmark); that the harness runs and measures is.
"""

import json
import subprocess
import sys
from pathlib import Path

from tests.processes import ROOT


def test_the_benchmark_runs_a_step_and_reports_it(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    command = [sys.executable, "-m", "tests.bench", "--parts", "sweep", "--rates", "5", "--seconds", "2",
               "--out", str(out)]  # fmt: skip
    result = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "| offered/s |" in result.stdout
    [step] = json.loads((out / "result.json").read_text())["steps"]
    assert step["orders"] == step["accepted"] == step["finished"] == 10
    on_the_order_path = {"web", "relay", "billing", "orders", "postgresql", "rabbitmq"}
    assert on_the_order_path <= set(step["cpu_ms_per_order"])
    # beat (periodic jobs) may well spend nothing measurable in a 2 s step.
    assert all(step["cpu_ms_per_order"][kind] > 0 for kind in on_the_order_path)
    assert (out / "bench.png").stat().st_size > 0
    assert (out / "table.md").read_text().startswith("`python -m tests.bench")
