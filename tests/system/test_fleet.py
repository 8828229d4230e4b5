"""A fleet of three GPU boxes provisioned through the Ansible collection, over real SSH.

Three systemd hosts in systemd-nspawn, each in its own network namespace, bridged to a
controller namespace where ansible-playbook and `provision verify` run (tests/system/fleet.py).
Each host is an "Ollama box" (stand-ins for ollama and nvidia-smi, tests/system/ollama_box.py)
without gpu-provision: the collection's role installs it from the wheel the controller ships.
Each host gets a recorded rig of a different shape, and the play is the shipped example
ansible/examples/site.yml, with the collection built by `ansible-galaxy collection build` and
installed on the controller.

One scenario, in the order an operator meets it: `--check` before anything is installed,
onboard (install, plan only), `--check --diff`,
apply with a reboot of one host, a second run that changes nothing, verify over ansible://,
a setting one host's service cannot start with (rolled back there, applied on the others), and
a serial rollout that max_fail_percentage stops after its first batch.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.system.fleet import Fleet
from tests.system.fleet_play import BIN, PROFILE, Play, build_collection, output, recap
from tests.system.ollama_box import RIGS, dress

RIG_OF = {  # three shapes: a symmetric pair, a mixed pair, one card
    "gpu-a": "synthetic-2x3090-x16-x8",
    "gpu-b": "synthetic-4090-3090",
    "gpu-c": "synthetic-1x4090",
}
DROPIN = "/etc/systemd/system/ollama.service.d/50-provision.conf"


def keep_alive(value: str) -> dict[str, Any]:
    models = [{**m, "keep_alive": value} for m in PROFILE["models"]]
    return {**PROFILE, "description": f"keep-alive {value}", "models": models}


@pytest.fixture(scope="session")
def collections(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_collection(tmp_path_factory.mktemp("collection"))


def test_fleet_rollout(
    make_fleet: Callable[..., Fleet],
    ollama_box_layer: Path,
    wheelhouse: Path,
    collections: Path,
) -> None:
    fleet = make_fleet(
        list(RIG_OF),
        layers=[ollama_box_layer],
        groups={"gpu_boxes": list(RIG_OF)},
        host_vars={
            name: {"provision_rig": str(RIGS / f"{rig}.yaml")}
            | {"provision_reboot": name == "gpu-b"}
            for name, rig in RIG_OF.items()
        },
    )
    for name, rig in RIG_OF.items():
        dress(fleet.host(name), rig)
    play = Play(fleet, collections, wheelhouse)

    def on(name: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return fleet.host(name).run(*argv, check=False)

    # --check on hosts that have never seen the tool: nothing installed, nothing written, and
    # each host says what a real run would do first.
    fresh = play("--check", "--diff", provision_serial=3)
    assert fresh.returncode == 0, output(fresh)
    assert fresh.stdout.count("a run without --check installs it, then plans") == 3
    for name in RIG_OF:
        assert on(name, "test", "-e", "/opt/provision").returncode == 1

    # Onboarding: the tool is installed on every host, the plan computed, nothing applied.
    onboard = play(provision_state="planned", provision_serial=3)
    assert onboard.returncode == 0, output(onboard)
    assert all(r["failed"] == 0 for r in recap(onboard).values())
    for name in RIG_OF:
        assert on(name, "provision", "--version").returncode == 0
        assert on(name, "test", "-e", DROPIN).returncode == 1

    # --check --diff: each host's own diff, one change per host, nothing written.
    checked = play("--check", "--diff", provision_serial=3)
    assert checked.returncode == 0, output(checked)
    assert {h: r["changed"] for h, r in recap(checked).items()} == dict.fromkeys(RIG_OF, 1)
    assert checked.stdout.count(f"+++ after: {DROPIN}") == 3, output(checked)
    assert "CUDA_VISIBLE_DEVICES=GPU-3b6f2c1e" in checked.stdout  # gpu-a's first 3090
    for name in RIG_OF:
        assert on(name, "test", "-e", DROPIN).returncode == 1
        assert on(name, "test", "-e", "/var/lib/provision/manifest.json").returncode == 1

    # Apply; gpu-b reboots (its host vars ask for it) and every host verifies in the role.
    boot_ids = {n: fleet.host(n).boot_id() for n in RIG_OF}
    applied = play(provision_serial=3)
    assert applied.returncode == 0, output(applied)
    assert all(r["changed"] >= 1 and r["failed"] == 0 for r in recap(applied).values())
    rebooted = {n for n in RIG_OF if fleet.host(n).boot_id() != boot_ids[n]}
    assert rebooted == {"gpu-b"}
    boot_ids = {n: fleet.host(n).boot_id() for n in RIG_OF}

    # A second run changes nothing (no reboot either: the handler runs on change only).
    again = play(provision_serial=3)
    assert again.returncode == 0, output(again)
    assert {h: r["changed"] for h, r in recap(again).items()} == dict.fromkeys(RIG_OF, 0)
    assert {n: fleet.host(n).boot_id() for n in RIG_OF} == boot_ids

    # Verify from the controller over the same inventory.
    verify = [str(BIN / "provision"), "verify", "--hosts", "ansible://gpu_boxes"]
    verify += ["--inventory", str(fleet.inventory)]
    proven = fleet.run(verify, env=play.env, check=False, timeout=300)
    assert proven.returncode == 0, output(proven)
    summaries = [line for line in proven.stdout.splitlines() if line.endswith(" 0 failed")]
    assert [s.rsplit(": ", 1)[0] for s in summaries[:-1]] == [f"ansible://{n}" for n in RIG_OF]
    report = json.loads(fleet.run([*verify, "--json"], env=play.env, timeout=300).stdout)
    assert {(h["host"], h["verified"], h["failed"]) for h in report["hosts"]} == {
        (f"ansible://{n}", True, 0) for n in RIG_OF
    }

    # A setting gpu-c's service cannot start with: rolled back there, applied on the others.
    fleet.host("gpu-c").put("/etc/ollama-standin/fail-start", "OLLAMA_KEEP_ALIVE=20m\n")
    # All three in one batch; a third failing is within the threshold, so the others go on.
    broken = play(
        provision_serial=3,
        provision_max_fail_percentage=50,
        provision_profile=keep_alive("20m"),
        provision_check_timeout=5,
    )
    assert broken.returncode != 0
    states = recap(broken)
    assert states["gpu-c"]["failed"] == 1, output(broken)
    assert states["gpu-a"]["failed"] == states["gpu-b"]["failed"] == 0
    assert '"rolled_back": true' in broken.stdout and "apply failed and was rolled back" in (
        broken.stdout
    )
    assert "OLLAMA_KEEP_ALIVE=10m" in on("gpu-c", "cat", DROPIN).stdout  # the old state stands
    assert on("gpu-c", "provision", "verify").returncode == 0
    for name in ("gpu-a", "gpu-b"):
        assert "OLLAMA_KEEP_ALIVE=20m" in on(name, "cat", DROPIN).stdout

    # A serial rollout, two hosts a batch, no failure allowed: gpu-a fails in the first batch
    # and the second batch, gpu-c, never starts. gpu-b, beside gpu-a, had applied in the same
    # task; it is stopped after it (no verify). Half of a batch failing is what
    # max_fail_percentage stops: a batch that fails whole stops any play.
    fleet.host("gpu-a").put("/etc/ollama-standin/fail-start", "OLLAMA_KEEP_ALIVE=30m\n")
    fleet.host("gpu-c").run("rm", "/etc/ollama-standin/fail-start")
    stopped = play(
        provision_serial=2,
        provision_max_fail_percentage=0,
        provision_profile=keep_alive("30m"),
        provision_check_timeout=5,
    )
    assert stopped.returncode != 0
    assert set(recap(stopped)) == {"gpu-a", "gpu-b"}, output(stopped)
    assert recap(stopped)["gpu-a"]["failed"] == 1
    assert "OLLAMA_KEEP_ALIVE=20m" in on("gpu-a", "cat", DROPIN).stdout  # rolled back
    assert "OLLAMA_KEEP_ALIVE=30m" in on("gpu-b", "cat", DROPIN).stdout
    assert "OLLAMA_KEEP_ALIVE=10m" in on("gpu-c", "cat", DROPIN).stdout  # never reached
