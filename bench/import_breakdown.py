"""Where `provision diff`'s imports go: `python -X importtime`, self times grouped by package.

Runs the in-sync diff of bench/diff_speed.py's bench case (8 GPUs, 6 models) N times under
`-X importtime` and prints the median self time per group: what the bare interpreter imports
anyway, click, yaml, jinja2, provision's own modules, and the rest of the standard library.
`--provision BIN` measures another install (a checkout of an older commit, say) on the same
machine, for a before/after table.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from diff_speed import PROFILE, RIG, scratch_root
from timing import ENV, REPO

LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")
THIRD_PARTY = ("click", "yaml", "_yaml", "jinja2", "markupsafe", "gguf", "numpy", "pynvml")


def group(module: str, at_startup: frozenset[str]) -> str:
    if module in at_startup:
        return "interpreter start-up (python -c pass imports it too)"
    top = module.split(".")[0]
    if top == "provision":
        return "provision (its own modules)"
    if top in THIRD_PARTY:
        return {"_yaml": "yaml", "markupsafe": "jinja2"}.get(top, top)
    if top.startswith("__editable__"):
        return "editable-install finder"
    return "standard library"


def imports(argv: list[str]) -> list[tuple[str, float]]:
    """(module, self ms) for each import the command makes, as -X importtime reports them."""
    result = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=ENV)
    found = (LINE.match(line) for line in result.stderr.splitlines())
    return [(m.group(4), int(m.group(1)) / 1000) for m in found if m]


def self_times(argv: list[str], at_startup: frozenset[str]) -> dict[str, float]:
    groups: dict[str, float] = defaultdict(float)
    for module, ms in imports(argv):
        groups[group(module, at_startup)] += ms
    return groups


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--provision", type=Path, default=Path(sys.executable).parent / "provision")
    args = parser.parse_args()
    python = args.provision.with_name("python")
    # The console script, not `-m provision`: -m would import the checkout in the cwd.
    base = [str(python), "-X", "importtime", str(args.provision)]
    at_startup = frozenset(m for m, _ in imports([str(python), "-X", "importtime", "-c", "pass"]))
    with tempfile.TemporaryDirectory(prefix="import-breakdown-") as tmp:
        profile = Path(tmp) / "six-models.yaml"
        profile.write_text(PROFILE)
        root = scratch_root(Path(tmp) / "root")
        render = ["--rig", str(RIG), "--profile", str(profile), "--root", str(root)]
        subprocess.run([str(args.provision), "apply", "--yes", *render], check=True,
                       cwd=REPO, stdout=subprocess.DEVNULL)  # fmt: skip
        self_times([*base, "diff", *render], at_startup)  # warm the page cache and bytecode
        runs = [self_times([*base, "diff", *render], at_startup) for _ in range(args.runs)]
    names = sorted(
        {g for r in runs for g in r}, key=lambda g: -statistics.median(r.get(g, 0) for r in runs)
    )
    print(f"python -X importtime {args.provision} diff (in sync, {args.runs} runs, median ms)")
    total = 0.0
    for name in names:
        median = statistics.median(r.get(name, 0.0) for r in runs)
        total += median
        print(f"  {median:7.1f}  {name}")
    print(f"  {total:7.1f}  all imports (self times; -X importtime itself adds some)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
