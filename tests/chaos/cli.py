"""The chaos CLI run from a test: as a subprocess, its ledger read back, stopped cleanly when it overruns."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import ROOT


def run_chaos(arguments: list[str], out: Path, *, timeout: float) -> tuple[str, dict]:
    """`python -m tests.chaos.run ARGUMENTS` with its logs under `out`; its output and JSON ledger.

    Fails the test if it overruns `timeout` (after SIGTERM, on which the run brings back what it
    stopped and cleans up) or exits non-zero (a violation, or a run that could not be done).
    """
    ledger_path = out / "ledger.json"
    command = [
        sys.executable,
        "-m",
        "tests.chaos.run",
        *arguments,
        "--out",
        str(out / "run"),
        "--json",
        str(ledger_path),
    ]
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ)
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=170)
        pytest.fail(f"chaos run did not finish in {timeout}s:\n{output[-6000:]}")
    assert process.returncode == 0, f"chaos run exited {process.returncode}:\n{output[-8000:]}"
    return output, json.loads(ledger_path.read_text())
