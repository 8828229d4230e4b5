"""What a fleet play costs per host: the collection's site.yml on 1, 2 and 3 real ssh hosts.

Boots the system tests' fleet (tests/system/fleet.py: systemd-nspawn hosts in their own
network namespaces, sshd, the Ollama box stand-ins), installs gpu-provision on each with the
role and applies once; then times, for the first 1, 2 and 3 hosts (`--limit`):

- the steady-state play (in sync: install checks, profile, the module's plan + diff, verify),
- the same play with `--check --diff`,
- `provision verify --hosts ansible://gpu_boxes` from the controller,

as wall time (median of N) and the controller's CPU time (ansible-playbook and its forks,
from getrusage). On one host it times each command the module and the role run there
(`provision plan --json`, `provision diff --json`, `provision verify`), as the target's cost.
docs/FLEET.md turns these figures into an estimate for 100 and 1,000 hosts.

Needs root, systemd-nspawn and PyPI (the wheelhouse), like the system tests; about 10 minutes
on 2 cores. Run: `.venv/bin/python bench/fleet_scale.py [--runs 3]`.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.system import nspawn, ollama_box
from tests.system.fleet import Fleet
from tests.system.fleet_play import BIN, REPO, Play, build_collection, output, recap

RIG_OF = {
    "gpu-a": "synthetic-2x3090-x16-x8",
    "gpu-b": "synthetic-4090-3090",
    "gpu-c": "synthetic-1x4090",
}


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(run: Callable[[], Any], runs: int) -> tuple[list[float], list[float]]:
    """Wall and child-CPU seconds of ``run``, once per run."""
    walls, cpus = [], []
    for _ in range(runs):
        cpu, started = children_cpu_s(), time.monotonic()
        run()
        walls.append(time.monotonic() - started)
        cpus.append(children_cpu_s() - cpu)
    return walls, cpus


def play_ok(play: Play, *args: str, **extra: Any) -> None:
    result = play(*args, **extra)
    if result.returncode != 0:
        raise SystemExit(f"the play failed:\n{output(result)}")


def target_costs(fleet: Fleet, runs: int) -> dict[str, list[float]]:
    host = fleet.host("gpu-a")
    inputs = ["--rig", "/etc/provision/rig.yaml", "--profile", "/etc/provision/profile.yaml"]
    commands: dict[str, Sequence[str]] = {
        "provision plan --json": ["provision", "plan", "--json", *inputs],
        "provision diff --json": ["provision", "diff", "--json", *inputs],
        "provision verify": ["provision", "verify"],
    }
    costs = {}
    for label, argv in commands.items():
        walls = []
        for _ in range(runs):
            started = time.monotonic()
            host.run(*argv, check=False)
            walls.append(time.monotonic() - started)
        costs[label] = walls
    return costs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    started = time.monotonic()
    base = nspawn.session_base()
    layer = nspawn.bake_layer(
        base, nspawn.session_dir("layer", "ollama-box"), ollama_box.prepare, ollama_box.KEEP
    )
    with tempfile.TemporaryDirectory(prefix="gp-fleet-bench-") as tmp:
        wheelhouse = Path(tmp) / "wheels"
        nspawn.build_wheelhouse(REPO, wheelhouse)
        collections = build_collection(Path(tmp))
        host_vars = {
            n: {"provision_rig": str(ollama_box.RIGS / f"{r}.yaml")} for n, r in RIG_OF.items()
        }
        with Fleet(
            base,
            list(RIG_OF),
            layers=[layer],
            groups={"gpu_boxes": list(RIG_OF)},
            host_vars=host_vars,
        ) as fleet:
            for name, rig in RIG_OF.items():
                ollama_box.dress(fleet.host(name), rig)
            play = Play(fleet, collections, wheelhouse)
            setup_s = time.monotonic() - started
            (install_s,), _ = timed(lambda: play_ok(play, provision_serial=3), 1)
            print(f"setup (rootfs, layer, wheels, 3 hosts booted): {setup_s:.0f} s")
            print(f"first play on 3 hosts (install from wheels, apply, verify): {install_s:.1f} s")
            print(f"\nplays, median of {args.runs} (wall s; controller CPU s, per host):")
            for kind, extra in (("in sync", ()), ("--check --diff", ("--check", "--diff"))):
                for n in (1, 2, 3):
                    limit = ",".join(list(RIG_OF)[:n])
                    walls, cpus = timed(
                        lambda e=extra, h=limit: play_ok(
                            play, *e, "--limit", h, provision_serial=3
                        ),
                        args.runs,
                    )
                    wall, cpu = statistics.median(walls), statistics.median(cpus)
                    print(
                        f"  {kind:<15} {n} host(s): {wall:5.1f} s wall   "
                        f"controller CPU {cpu:5.1f} s ({cpu / n:.1f} s/host)"
                    )
            check = play("--check", "--diff", "--limit", "gpu-a", provision_serial=3)
            assert recap(check)["gpu-a"]["failed"] == 0, output(check)
            verify = [str(BIN / "provision"), "verify", "--hosts", "ansible://gpu_boxes"]
            verify += ["--inventory", str(fleet.inventory)]
            walls, cpus = timed(lambda: fleet.run(verify, env=play.env, check=True), args.runs)
            print(
                f"\nprovision verify --hosts ansible://gpu_boxes (3 hosts, from the controller): "
                f"{statistics.median(walls):.1f} s wall, {statistics.median(cpus):.1f} s CPU"
            )
            print(f"\non the target (gpu-a), median of {args.runs} (wall s):")
            for label, walls in target_costs(fleet, args.runs).items():
                print(f"  {label:<24} {statistics.median(walls):.2f} s")
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
