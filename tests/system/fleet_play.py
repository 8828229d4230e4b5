"""Plays of the collection's example site.yml against a test fleet (tests/system/fleet.py).

Shared by the fleet scenario (test_fleet.py) and its timing (bench/fleet_scale.py): the
collection built and installed as a user gets it, the role's variables as group vars beside
the fleet's inventory, and the PLAY RECAP read back per host.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

import yaml

from tests.system.fleet import Fleet

REPO = Path(__file__).resolve().parents[2]
COLLECTION = REPO / "ansible"
SITE = COLLECTION / "examples" / "site.yml"
BIN = Path(sysconfig.get_path("scripts"))  # ansible-core and provision of this venv

PROFILE: dict[str, Any] = {
    "description": "Ollama on localhost, models placed automatically",
    "runtime": "ollama",
    "listen": {"address": "127.0.0.1", "port": 11434},
    "models": [
        {"ref": "qwen2.5:32b", "ctx": 8192, "parallel": 1, "keep_alive": "10m"},
        {"ref": "llama3.1:8b", "ctx": 8192, "parallel": 1, "keep_alive": "10m"},
    ],
}
RECAP = re.compile(
    r"^(?P<host>\S+)\s+: ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)


def build_collection(work: Path) -> Path:
    """Build the collection into a tarball and install it from there; returns the
    ANSIBLE_COLLECTIONS_PATH to use."""
    build = [str(BIN / "ansible-galaxy"), "collection", "build", str(COLLECTION)]
    subprocess.run([*build, "--output-path", str(work)], check=True, capture_output=True)
    (tarball,) = work.glob("gpu_provision-fleet-*.tar.gz")
    install = [str(BIN / "ansible-galaxy"), "collection", "install", "-p", str(work / "c")]
    subprocess.run([*install, str(tarball)], check=True, capture_output=True)
    return work / "c"


class Play:
    """ansible-playbook runs of the example site.yml against one fleet, from its controller."""

    def __init__(self, fleet: Fleet, collections: Path, wheelhouse: Path) -> None:
        self.fleet = fleet
        work = fleet.workdir
        shutil.copy(SITE, work / "site.yml")  # not beside examples/group_vars: ours apply
        (wheel,) = wheelhouse.glob("gpu_provision-*.whl")
        group_vars = {
            "provision_wheel": str(wheel),
            "provision_wheelhouse": str(wheelhouse),
            "provision_profile": PROFILE,
            "provision_state": "applied",
        }
        (work / "group_vars").mkdir(exist_ok=True)
        (work / "group_vars" / "gpu_boxes.yml").write_text(yaml.safe_dump(group_vars))
        self.env = {**fleet.env(), "ANSIBLE_COLLECTIONS_PATH": str(collections)}

    def __call__(self, *args: str, **extra_vars: Any) -> subprocess.CompletedProcess[str]:
        argv = [str(BIN / "ansible-playbook"), "-i", str(self.fleet.inventory), "site.yml"]
        if extra_vars:
            argv += ["-e", json.dumps(extra_vars)]
        return self.fleet.run(
            [*argv, *args], env=self.env, cwd=self.fleet.workdir, timeout=600, check=False
        )


def recap(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, int]]:
    """PLAY RECAP: host -> ok, changed, unreachable, failed."""
    found = {
        m["host"]: {k: int(v) for k, v in m.groupdict().items() if k != "host"}
        for m in RECAP.finditer(result.stdout)
    }
    assert found, output(result)
    return found


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-3000:]}"
