"""The estimator against the committed real llama.cpp measurements: a regression fails CI."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO_ROOT


def test_estimate_meets_its_targets_on_every_measured_run() -> None:
    result = subprocess.run(
        [sys.executable, "bench/estimate_accuracy.py", "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "CI check: passed" in result.stdout
    assert "252 runs" in result.stdout  # every measurement was compared, none skipped
