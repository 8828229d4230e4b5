"""Wall-time helpers shared by the benchmarks: run a command as a shell would, take medians."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# An installed package has its bytecode compiled at install time; a checkout whose environment
# sets PYTHONDONTWRITEBYTECODE would recompile every module on every run and time the compiler.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def time_once(command: list[str], ok: tuple[int, ...] = (0,)) -> float:
    start = time.perf_counter()
    result = subprocess.run(
        command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    elapsed = (time.perf_counter() - start) * 1000
    if result.returncode not in ok:
        sys.exit(f"{' '.join(command)} exited {result.returncode}: {result.stderr.decode()}")
    return elapsed


def samples_ms(command: list[str], runs: int, ok: tuple[int, ...] = (0,)) -> list[float]:
    time_once(command, ok)  # warm the page cache and write the bytecode
    return [time_once(command, ok) for _ in range(runs)]


def report(label: str, samples: list[float]) -> float:
    median = statistics.median(samples)
    print(f"  {label}")
    print(f"    median {median:.1f} ms   min {min(samples):.1f} ms   max {max(samples):.1f} ms")
    return median


BARE = [sys.executable, "-c", "pass"]  # the interpreter's own start-up, site and venv included


def python_startup_ms() -> float:
    return statistics.median(time_once(BARE) for _ in range(5))


def paired_ms(
    command: list[str], runs: int, ok: tuple[int, ...] = (0,)
) -> tuple[list[float], list[float]]:
    """(command samples, bare start-up samples), taken in turn so both see the same machine:
    a ratio of the two medians is steady where each median alone drifts with the load."""
    time_once(command, ok)
    time_once(BARE)
    pairs = [(time_once(command, ok), time_once(BARE)) for _ in range(runs)]
    return [p[0] for p in pairs], [p[1] for p in pairs]
