"""The estimator against the committed real llama.cpp measurements: a regression fails CI."""

from __future__ import annotations

from tests.helpers import accuracy_check


def test_estimate_meets_its_targets_on_every_measured_run() -> None:
    stdout = accuracy_check()
    assert "252 runs" in stdout  # every measurement was compared, none skipped
