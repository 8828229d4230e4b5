"""Wall time of `provision probe --rig <8-GPU rig> --json`, as an operator's shell sees it.

Prints median / min / max over N runs. Target (issue 2): median below 200 ms on the CI machine.
`--bound-ms` makes it exit 1 when the median is above a bound; CI passes a generous one so that
only a real regression (say, an eager import of a heavy module) fails the build.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from timing import REPO, python_startup_ms, samples_ms

RIG = REPO / "tests" / "rigs" / "synthetic-8xa100-nvlink.yaml"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--bound-ms", type=float, default=None)
    args = parser.parse_args()
    provision = Path(sys.executable).with_name("provision")
    command = [str(provision), "probe", "--rig", str(RIG), "--json"]
    samples = samples_ms(command, args.runs)
    median = statistics.median(samples)
    print(f"provision probe --rig {RIG.name} --json  ({args.runs} runs)")
    print(f"  median {median:.1f} ms   min {min(samples):.1f} ms   max {max(samples):.1f} ms")
    print(f"  (bare python startup: median {python_startup_ms():.1f} ms; target < 200 ms)")
    if args.bound_ms is not None and median > args.bound_ms:
        print(f"FAIL: median {median:.1f} ms is above the bound {args.bound_ms:.0f} ms")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
