"""End to end on a real systemd: diff, apply, reboot, verify; tamper and repair; a failed start.

Every scenario boots a bookworm container (tests/system/nspawn.py) over two read-only layers:
the tool installed from the project's wheel (``provision_layer``) and an "Ollama box" baked
once per session (``ollama_box_layer``): the stand-in ``ollama`` at /usr/local/bin/ollama with
the stock ollama.service enabled and the ``ollama`` account made as Ollama's install.sh makes
them, and the stand-in ``nvidia-smi`` at /usr/bin/nvidia-smi (both in tests/system/standins).
nginx is Debian's, from the rootfs. A scenario copies its rig snapshot in and describes that
rig's GPUs to the nvidia-smi stand-in, then drives ``provision`` inside the container as an
operator would.

``provision verify`` results are compared as exact sets of check ids: a check that fails (or
passes) for a reason the scenario did not cause shows up by name.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from provision.cli.main import cli
from tests.system.conftest import PROVISION_VENV
from tests.system.nspawn import Container
from tests.system.ollama_box import RIGS, dress
from tests.system.testinfra_nsenter import nsenter_host

RIG_2X3090 = "synthetic-2x3090-x16-x8"
RIG_4090_3090 = "synthetic-4090-3090"
RIG_2X3090_OLLAMA_030 = "synthetic-2x3090-downtrained"  # Ollama 0.30.2: its scheduler modelled
GPU0_3090 = "GPU-3b6f2c1e-8d4a-4f1b-9c2e-5a7d9e1f0a01"
GPU1_3090 = "GPU-7c1d9a4b-2e6f-4a8c-b1d3-9f0e2c4a6b02"

DROPIN = "/etc/systemd/system/ollama.service.d/50-provision.conf"
MODELFILE_8B = "/etc/provision/modelfiles/llama3.1-8b-provision.Modelfile"
MODELFILE_32B = "/etc/provision/modelfiles/qwen2.5-32b-provision.Modelfile"
OVERRIDE_CONF = "/etc/systemd/system/ollama.service.d/override.conf"  # what `systemctl edit` writes
NGINX_SITE = "/etc/nginx/conf.d/provision-ollama.conf"
POWER_UNIT_FILE = "/etc/systemd/system/gpu-power-limits.service"

# The checks verify runs for ollama-auto on either rig: one Ollama service, two models.
AUTO_CHECKS = {
    f"file:{MODELFILE_8B}",
    f"file:{MODELFILE_32B}",
    f"file:{DROPIN}",
    "unit:ollama.service",
    "override:ollama.service",
    "port:127.0.0.1:11434",
    "env:ollama.service",
    "ollama:127.0.0.1:11434",
    "model:qwen2.5:32b-provision",
    "model:llama3.1:8b-provision",
}
REPLICA_CHECKS = {
    f"file:{NGINX_SITE}",
    f"file:{MODELFILE_8B}",
    "file:/etc/provision/ollama/0.env",
    "file:/etc/provision/ollama/1.env",
    "file:/etc/systemd/system/ollama@.service",
    "unit:ollama.service",  # disabled and stopped: the replicas replace it
    "unit:ollama@0.service",
    "unit:ollama@1.service",
    "unit:nginx.service",
    "override:ollama@0.service",
    "override:ollama@1.service",
    "port:127.0.0.1:11435",
    "port:127.0.0.1:11436",
    "port:127.0.0.1:11434",
    "env:ollama@0.service",
    "env:ollama@1.service",
    "nginx:127.0.0.1:11434",
    "ollama:127.0.0.1:11435",
    "ollama:127.0.0.1:11436",
    "model:llama3.1:8b-provision",
}
POWER_CHECKS = AUTO_CHECKS | {
    f"file:{POWER_UNIT_FILE}",
    "unit:gpu-power-limits.service",
    "override:gpu-power-limits.service",
    f"power:{GPU0_3090}",
    f"power:{GPU1_3090}",
}
# Breaks the keep-alive setting for the stand-in (see test_failed_start_rolls_back).
KEEP_ALIVE_PROFILE = """\
description: ollama-auto with a longer keep-alive
runtime: ollama
listen: {address: 127.0.0.1, port: 11434}
models:
  - {ref: "qwen2.5:32b", ctx: 8192, parallel: 1, keep_alive: 20m}
  - {ref: "llama3.1:8b", ctx: 8192, parallel: 1, keep_alive: 20m}
"""


# --- the box ---------------------------------------------------------------------------------


@dataclass
class Box:
    """A booted GPU box (without GPUs) and the `provision` command inside it."""

    container: Container
    profile: str

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return self.container.run(*argv, check=False)

    def provision(self, *argv: str) -> subprocess.CompletedProcess[str]:
        result = self.run("provision", *argv)
        assert "Traceback" not in result.stderr, result.stderr
        return result

    def diff(self, profile: str | None = None) -> int:
        result = self.provision(
            "diff", "--rig", "/root/rig.yaml", "--profile", profile or self.profile
        )
        return result.returncode

    def apply(self, *extra: str, profile: str | None = None) -> subprocess.CompletedProcess[str]:
        rig = ("--rig", "/root/rig.yaml", "--profile", profile or self.profile)
        return self.provision("apply", "--yes", *rig, *extra)

    def verify(self, *extra: str) -> tuple[int, dict[str, Any]]:
        result = self.provision("verify", "--json", *extra)
        assert result.returncode in (0, 1), result.stdout + result.stderr
        return result.returncode, json.loads(result.stdout)

    def restart_ollama(self, timeout: float = 30.0) -> None:
        """Restart the stock service and wait until it answers, as an operator would: the unit
        is Type=simple (Ollama's install.sh), so systemctl returns before the port is bound."""
        assert self.run("systemctl", "restart", "ollama.service").returncode == 0
        deadline = time.monotonic() + timeout
        while self.run("ollama", "list").returncode != 0:
            assert time.monotonic() < deadline, self.run("journalctl", "-u", "ollama").stdout
            time.sleep(0.2)

    def converge(self) -> None:
        """diff shows changes, apply makes them, diff is clean, and all holds after a reboot."""
        assert self.diff() == 1
        applied = self.apply()
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert self.diff() == 0
        self.container.reboot()
        assert_verified(self)
        assert self.diff() == 0  # the oneshot re-applied the power limits, models persisted


def assert_verified(box: Box) -> dict[str, Any]:
    code, report = box.verify()
    assert code == 0 and report["failed"] == 0, failures(report)
    return report


def failures(report: dict[str, Any]) -> dict[str, str]:
    return {c["id"]: c["detail"] for c in report["checks"] if c["status"] == "fail"}


def ids(report: dict[str, Any]) -> set[str]:
    return {c["id"] for c in report["checks"]}


@pytest.fixture
def make_box(
    boot_container: Callable[..., Container], ollama_box_layer: Path, provision_layer: Path
) -> Callable[[str, str], Box]:
    def make(rig_name: str, profile: str) -> Box:
        container = boot_container(layers=[ollama_box_layer, provision_layer])
        container.copy_in(RIGS / f"{rig_name}.yaml", "/root/rig.yaml")
        dress(container, rig_name)
        return Box(container, profile)

    return make


def env_of(box: Box, port: int) -> dict[str, str]:
    """The environment the Ollama stand-in on `port` was last started with."""
    record = json.loads(box.container.get(f"/var/lib/ollama-standin/env-{port}.json"))
    return record["environ"]


# --- scenarios -------------------------------------------------------------------------------


def test_default_profile_on_2x3090(make_box: Callable[[str, str], Box]) -> None:
    box = make_box(RIG_2X3090, "ollama-auto")
    missing = box.provision("verify")
    assert missing.returncode == 2 and "no manifest" in missing.stderr  # nothing applied yet

    box.converge()
    env = env_of(box, 11434)
    assert env["CUDA_VISIBLE_DEVICES"] == f"{GPU0_3090},{GPU1_3090}"
    assert env["OLLAMA_CONTEXT_LENGTH"] == "8192"
    report = assert_verified(box)
    assert ids(report) == AUTO_CHECKS

    box.run("sh", "-c", f"echo '# tuned by hand' >> {MODELFILE_8B}")
    box.run("systemctl", "disable", "ollama.service")
    code, report = box.verify()
    assert code == 1
    assert set(failures(report)) == {f"file:{MODELFILE_8B}", "unit:ollama.service"}
    assert failures(report)[f"file:{MODELFILE_8B}"].startswith("content changed (sha256 ")
    plain = box.provision("verify")
    assert plain.returncode == 1
    assert plain.stdout.splitlines()[-1] == f"{len(AUTO_CHECKS) - 2} passed, 2 failed"
    assert "FAIL unit ollama.service: disabled, wanted enabled; active (running)" in plain.stdout

    repaired = box.apply()
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert_verified(box)


def test_replicas_behind_nginx_on_2x3090(make_box: Callable[[str, str], Box]) -> None:
    box = make_box(RIG_2X3090, "ollama-replicas")
    box.converge()
    assert env_of(box, 11435)["CUDA_VISIBLE_DEVICES"] == GPU0_3090
    assert env_of(box, 11436)["CUDA_VISIBLE_DEVICES"] == GPU1_3090
    report = assert_verified(box)
    assert ids(report) == REPLICA_CHECKS
    nginx = next(c["detail"] for c in report["checks"] if c["id"] == "nginx:127.0.0.1:11434")
    assert nginx.endswith(
        "each replica answered through it (127.0.0.1:11435 x2, 127.0.0.1:11436 x2)"
    )

    box.run("sh", "-c", f"echo '# tuned by hand' >> {NGINX_SITE}")
    box.run("systemctl", "disable", "ollama@0.service")
    box.run("systemctl", "stop", "ollama@1.service")
    code, report = box.verify()
    assert code == 1
    # nginx retries the stopped replica's requests on the other one: the balancer still
    # answers, but its header shows that ollama@1 answered none of them
    assert set(failures(report)) == {
        "nginx:127.0.0.1:11434",
        f"file:{NGINX_SITE}",
        "unit:ollama@0.service",
        "unit:ollama@1.service",
        "port:127.0.0.1:11436",
        "env:ollama@1.service",
        "ollama:127.0.0.1:11436",
    }
    assert failures(report)["unit:ollama@1.service"].startswith("enabled but not active")
    assert failures(report)["nginx:127.0.0.1:11434"].startswith(
        "127.0.0.1:11436 answered none of 4 requests (127.0.0.1:11435 x4)"
    )

    repaired = box.apply()
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    local = assert_verified(box)

    # The same suite from outside, through a testinfra backend (nsenter here, ssh in a fleet).
    outside = verify_from_host(f"nsenter://{box.container.name}")
    assert outside.exit_code == 0, outside.output
    assert ids(json.loads(outside.stdout)) == ids(local)
    unreachable = verify_from_host("nsenter://gp0-no-such-container")
    assert unreachable.exit_code == 3, unreachable.output


def verify_from_host(url: str) -> Any:
    assert nsenter_host  # importing it registers the nsenter:// backend with testinfra
    return CliRunner().invoke(cli, ["verify", "--hosts", url, "--json"])


def test_default_profile_on_4090_3090(make_box: Callable[[str, str], Box]) -> None:
    box = make_box(RIG_4090_3090, "ollama-auto")
    box.converge()
    report = assert_verified(box)
    assert ids(report) == AUTO_CHECKS
    assert box.run("provision", "verify").stdout.count("PASS ") == len(AUTO_CHECKS)

    # An edited drop-in has not reached the running service yet; verify cannot tell what the
    # plan wanted for its environment any more, so that check fails too.
    box.run("sed", "-i", "s/OLLAMA_KEEP_ALIVE=10m/OLLAMA_KEEP_ALIVE=1h/", DROPIN)
    box.run("chmod", "600", MODELFILE_32B)
    code, report = box.verify()
    assert code == 1
    assert set(failures(report)) == {
        f"file:{DROPIN}",
        "env:ollama.service",
        "override:ollama.service",
        f"file:{MODELFILE_32B}",
    }
    assert failures(report)[f"file:{MODELFILE_32B}"] == "mode 0600, applied 0644"

    repaired = box.apply()
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert_verified(box)
    assert env_of(box, 11434)["OLLAMA_KEEP_ALIVE"] == "10m"


def test_power_capped_on_2x3090(make_box: Callable[[str, str], Box]) -> None:
    box = make_box(RIG_2X3090, "power-capped")
    box.converge()  # the limits reset at the reboot; the oneshot set them again
    report = assert_verified(box)
    assert ids(report) == POWER_CHECKS
    boot = box.container.boot_id()
    assert f"{boot} -pl 300" in box.container.get(f"/var/lib/nvidia-smi-standin/{GPU0_3090}.log")

    box.run("nvidia-smi", "-i", GPU0_3090, "-pl", "350")
    box.run("systemctl", "disable", "gpu-power-limits.service")
    box.run("systemctl", "stop", "ollama.service")
    code, report = box.verify()
    assert code == 1
    assert set(failures(report)) == {
        f"power:{GPU0_3090}",
        "unit:gpu-power-limits.service",
        "unit:ollama.service",
        "port:127.0.0.1:11434",
        "env:ollama.service",
        "ollama:127.0.0.1:11434",
        "model:qwen2.5:32b-provision",
        "model:llama3.1:8b-provision",
    }
    assert failures(report)[f"power:{GPU0_3090}"] == "power limit 350 W, planned 300 W"

    repaired = box.apply()
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert_verified(box)

    # GPU 1 leaves the power plan (its driver reports no range now): it gets its recorded
    # default back, GPU 0 keeps its limit (300 W per GPU, as the budget gave before), and the
    # power unit runs on for GPU 0 alone.
    rig = yaml.safe_load((RIGS / f"{RIG_2X3090}.yaml").read_text())
    rig["gpus"][1]["power"].update(min_w=None, max_w=None)
    box.container.put("/root/rig-one.yaml", yaml.safe_dump(rig))
    box.container.put("/root/capped.yaml", "extends: ollama-auto\npower: {per_gpu_w: 300}\n")
    one = ("--rig", "/root/rig-one.yaml", "--profile", "/root/capped.yaml")
    left = box.provision("apply", "--yes", *one)
    assert left.returncode == 0, left.stdout + left.stderr
    assert "stop gpu-power-limits.service" in left.stdout
    limits = box.run("nvidia-smi", "--query-gpu=uuid,power.limit", "--format=csv,noheader,nounits")
    assert limits.stdout.splitlines() == [f"{GPU0_3090}, 300.00", f"{GPU1_3090}, 350.00"]
    assert box.provision("diff", *one).returncode == 0
    report = assert_verified(box)
    assert ids(report) == POWER_CHECKS - {f"power:{GPU1_3090}"}

    # Disabled, the oneshot stays off at boot (the inference units only order after it): verify
    # reports it and the limit the boot reset.
    box.run("systemctl", "disable", "gpu-power-limits.service")
    box.container.reboot()
    code, report = box.verify()
    assert failures(report) == {
        "unit:gpu-power-limits.service": "disabled, wanted enabled; has not run since boot",
        f"power:{GPU0_3090}": "power limit 350 W, planned 300 W",
    }


def test_a_users_override_conf_is_refused_forced_and_failed_by_verify(
    make_box: Callable[[str, str], Box],
) -> None:
    """The operator tuned Ollama with `systemctl edit ollama` before provision came: an
    override.conf sorts after our 50-provision.conf and wins. diff lists the setting, apply
    refuses (3: a refused target, nothing changed), apply --force proceeds and lists it, and
    verify fails on the environment systemd really gives the service."""
    box = make_box(RIG_2X3090, "ollama-auto")
    box.container.put(OVERRIDE_CONF, "[Service]\nEnvironment=OLLAMA_CONTEXT_LENGTH=2048\n")
    box.run("systemctl", "daemon-reload")
    box.restart_ollama()
    said = f"ollama.service: OLLAMA_CONTEXT_LENGTH sets '2048' in {OVERRIDE_CONF}"

    diff = box.provision("diff", "--rig", "/root/rig.yaml", "--profile", "ollama-auto")
    assert diff.returncode == 1, diff.stdout + diff.stderr
    assert f"{said} (provision sets '8192')" in diff.stdout
    refused = box.apply()
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert f"error: refusing to apply: {said}" in refused.stderr
    assert box.run("test", "-e", DROPIN).returncode == 1  # nothing was changed

    forced = box.apply("--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert said in forced.stdout
    assert env_of(box, 11434)["OLLAMA_CONTEXT_LENGTH"] == "2048"  # the override still wins
    code, report = box.verify()
    assert code == 1
    assert set(failures(report)) == {"override:ollama.service", "env:ollama.service"}
    assert failures(report)["override:ollama.service"].startswith(said)
    assert "OLLAMA_CONTEXT_LENGTH='2048', want '8192'" in failures(report)["env:ollama.service"]

    box.run("rm", OVERRIDE_CONF)
    box.run("systemctl", "daemon-reload")
    box.restart_ollama()
    assert ids(assert_verified(box)) == AUTO_CHECKS


def test_nginx_running_before_is_given_back_and_replicas_share_the_stock_store(
    make_box: Callable[[str, str], Box],
) -> None:
    """Before provision: nginx enabled and serving its own site, and the stock Ollama keeping
    its models in /srv/models (an override.conf) with one pulled. Replicas use that store;
    back on the default profile nginx is still enabled and running, after a reboot too."""
    box = make_box(RIG_2X3090, "ollama-replicas")
    box.run("install", "-d", "-o", "ollama", "-g", "ollama", "/srv/models")
    box.container.put(OVERRIDE_CONF, "[Service]\nEnvironment=OLLAMA_MODELS=/srv/models\n")
    box.run("systemctl", "daemon-reload")
    box.restart_ollama()
    assert box.run("ollama", "pull", "llama3.1:8b").returncode == 0
    assert box.run("systemctl", "enable", "--now", "nginx.service").returncode == 0
    assert nginx_state(box) == ("enabled", "active")

    box.converge()
    assert env_of(box, 11435)["OLLAMA_MODELS"] == "/srv/models"
    assert env_of(box, 11436)["OLLAMA_MODELS"] == "/srv/models"
    assert ids(assert_verified(box)) == REPLICA_CHECKS

    back = box.apply(profile="ollama-auto")
    assert back.returncode == 0, back.stdout + back.stderr
    assert "stop nginx.service" not in back.stdout and "disable nginx.service" not in back.stdout
    assert nginx_state(box) == ("enabled", "active")
    assert box.run("test", "-e", NGINX_SITE).returncode == 1
    assert env_of(box, 11434)["OLLAMA_MODELS"] == "/srv/models"
    assert ids(assert_verified(box)) == AUTO_CHECKS
    box.container.reboot()
    assert nginx_state(box) == ("enabled", "active")
    assert_verified(box)


def nginx_state(box: Box) -> tuple[str, str]:
    enabled = box.run("systemctl", "is-enabled", "nginx.service").stdout.strip()
    return enabled, box.run("systemctl", "is-active", "nginx.service").stdout.strip()


def test_failed_start_rolls_back(make_box: Callable[[str, str], Box]) -> None:
    """A new setting the service cannot start with: apply restores the old files, restarts the
    service on them and exits 4; verify passes on the state before that apply.

    The stand-in is told to fail only with the *new* setting (OLLAMA_KEEP_ALIVE=20m), as a
    real bad value would: the rollback's own restart (old drop-in, 10m) must start, so the flag
    stays in place through the whole apply and nobody removes it behind the tool's back."""
    box = make_box(RIG_2X3090, "ollama-auto")
    applied = box.apply()
    assert applied.returncode == 0, applied.stdout + applied.stderr
    before = assert_verified(box)
    box.container.put("/etc/ollama-standin/fail-start", "OLLAMA_KEEP_ALIVE=20m\n")
    box.container.put("/root/keep-alive.yaml", KEEP_ALIVE_PROFILE)
    assert box.diff("/root/keep-alive.yaml") == 1

    failed = box.apply("--check-timeout", "5", profile="/root/keep-alive.yaml")

    assert failed.returncode == 4, failed.stdout + failed.stderr
    assert "restored from backup" in failed.stderr and DROPIN in failed.stderr
    journal = box.run("journalctl", "-b", "-u", "ollama.service", "--no-pager").stdout
    assert "told to fail at start" in journal  # the new setting really was started, and failed
    after = assert_verified(box)
    assert ids(after) == ids(before)
    assert env_of(box, 11434)["OLLAMA_KEEP_ALIVE"] == "10m"  # restarted on the old drop-in
    assert box.diff() == 0  # the previous state stands
    assert box.diff("/root/keep-alive.yaml") == 1  # and the change is still pending


def test_failed_rollback_is_caught_by_verify(make_box: Callable[[str, str], Box]) -> None:
    """A service that cannot start at all (an empty flag): the rollback's own restart of the
    old settings fails too. The files are restored; verify names exactly the service's checks,
    whatever apply said; once the cause is gone, verify passes again."""
    box = make_box(RIG_2X3090, "ollama-auto")
    applied = box.apply()
    assert applied.returncode == 0, applied.stdout + applied.stderr
    box.container.put("/etc/ollama-standin/fail-start", "")
    box.container.put("/root/keep-alive.yaml", KEEP_ALIVE_PROFILE)

    failed = box.apply("--check-timeout", "3", profile="/root/keep-alive.yaml")

    # The rollback's own restart cannot bring the service back: apply says so (3), not "rolled
    # back" (4).
    assert failed.returncode == 3, failed.stdout + failed.stderr
    assert "but the rollback did not complete" in failed.stderr
    code, report = box.verify()
    assert code == 1
    assert set(failures(report)) == {
        "unit:ollama.service",
        "port:127.0.0.1:11434",
        "env:ollama.service",
        "ollama:127.0.0.1:11434",
        "model:qwen2.5:32b-provision",
        "model:llama3.1:8b-provision",
    }  # every file was restored: only the service is down
    assert "auto-restart" in failures(report)["unit:ollama.service"]

    box.run("rm", "/etc/ollama-standin/fail-start")
    box.restart_ollama()
    assert_verified(box)


def test_tool_and_standins_are_in_place(make_box: Callable[[str, str], Box]) -> None:
    """The box as the scenarios start from it: the stock service runs the stand-in."""
    box = make_box(RIG_4090_3090, "ollama-auto")
    host = nsenter_host(box.container)
    assert host.file(f"{PROVISION_VENV}/bin/provision").exists
    assert host.service("ollama.service").is_running
    assert host.user("ollama").home == "/usr/share/ollama"
    version = box.run("ollama", "--version").stdout
    assert version.strip() == "ollama version is 0.12.6"
    limits = box.run("nvidia-smi", "--query-gpu=uuid,power.limit", "--format=csv,noheader,nounits")
    assert limits.stdout.splitlines() == [
        "GPU-d96df921-288a-f247-4698-5ddc943c5f8e, 450.00",
        "GPU-dca10dac-12d8-d0ac-e261-9e2395570940, 350.00",
    ]
    refused = box.run("nvidia-smi", "-i", "0", "-pl", "900")
    assert refused.returncode == 2


# --- an AMD box ------------------------------------------------------------------------------

FAKE_SYS = "/srv/fake-sys"  # the fake sysfs tree, playing /sys for the probe and the power unit
AMD_GPUS = {  # tests/fakesysfs.py RIGS["2x7900xtx"]: PCI address -> (UUID, hwmon)
    "0000:03:00.0": ("GPU-9f781dc6258d77a7", "hwmon2"),
    "0000:0c:00.0": ("GPU-4a2b1c3d5e6f7081", "hwmon3"),
}


def _cap_file(bdf: str) -> str:
    return f"{FAKE_SYS}/bus/pci/devices/{bdf}/hwmon/{AMD_GPUS[bdf][1]}/power1_cap"


def test_power_capped_on_2x7900xtx_from_sysfs(
    make_box: Callable[[str, str], Box], tmp_path: Path
) -> None:
    """The whole AMD path on real systemd: probe from a sysfs tree (no --rig), render ROCm
    units, apply, the power unit writes microwatts to the hwmon files, verify reads them back,
    a cap reset (as after a resume) is found and repaired, stopping restores the default."""
    from tests.fakesysfs import RIGS as FAKE_RIGS
    from tests.fakesysfs import build

    box = make_box(RIG_2X3090, "power-capped")  # its recorded rig is not used: no --rig below
    box.container.put("/etc/nvidia-smi-standin/gpus.json", "[]")
    box.container.copy_in(build(tmp_path / "sys", FAKE_RIGS["2x7900xtx"]), FAKE_SYS)
    live = ("--sysfs", FAKE_SYS, "--profile", "power-capped")

    assert box.provision("diff", *live).returncode == 1
    applied = box.provision("apply", "--yes", *live)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    for bdf in AMD_GPUS:
        assert box.container.get(_cap_file(bdf)).strip() == "300000000"  # 300 W in microwatts
    dropin = box.container.get(DROPIN)
    assert "ROCR_VISIBLE_DEVICES=GPU-9f781dc6258d77a7,GPU-4a2b1c3d5e6f7081" in dropin
    assert "CUDA_VISIBLE_DEVICES" not in dropin
    seen = env_of(box, 11434)  # what the Ollama stand-in was started with
    assert seen["ROCR_VISIBLE_DEVICES"] == "GPU-9f781dc6258d77a7,GPU-4a2b1c3d5e6f7081"
    again = box.provision("diff", *live)
    assert again.returncode == 0, again.stdout

    box.container.reboot()
    report = assert_verified(box)
    assert {f"power:{uuid}" for uuid, _ in AMD_GPUS.values()} <= ids(report)
    assert box.provision("diff", *live).returncode == 0

    # amdgpu forgets the cap on suspend/resume: the stock value is back in power1_cap.
    box.container.put(_cap_file("0000:0c:00.0"), "327000000\n")
    code, report = box.verify()
    assert code == 1
    assert failures(report) == {
        "power:GPU-4a2b1c3d5e6f7081": "power cap 327 W, planned 300 W",
    }
    repaired = box.provision("apply", "--yes", *live)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert box.container.get(_cap_file("0000:0c:00.0")).strip() == "300000000"
    assert_verified(box)
    # The resume unit is enabled for the sleep targets.
    wanted = box.run("systemctl", "show", "-p", "WantedBy", "gpu-power-limits-resume.service")
    assert "suspend.target" in wanted.stdout

    # Stopping the power unit restores power1_cap_default on every card.
    assert box.run("systemctl", "stop", "gpu-power-limits.service").returncode == 0
    for bdf in AMD_GPUS:
        assert box.container.get(_cap_file(bdf)).strip() == "327000000"


STABLE_PROFILE = """\
description: one model whose context changes
runtime: ollama
listen: {{address: 127.0.0.1, port: 11434}}
models:
  - {{ref: "llama3.1:8b", ctx: {ctx}, parallel: 1{name}}}
"""


def show(box: Box, name: str) -> dict[str, Any] | None:
    """What the running Ollama answers for `name` (POST /api/show), None when it has no such
    model."""
    script = (
        "import json,sys,urllib.request as u\n"
        "r=u.Request('http://127.0.0.1:11434/api/show',json.dumps({'model':sys.argv[1]}).encode())\n"
        "try: print(u.urlopen(r).read().decode())\n"
        "except u.HTTPError: print('null')\n"
    )
    result = box.run("python3", "-c", script, name)
    assert result.returncode == 0, result.stderr
    found: dict[str, Any] | None = json.loads(result.stdout)
    return found


def test_the_model_name_stays_when_ctx_changes(make_box: Callable[[str, str], Box]) -> None:
    """Clients keep calling one name across a ctx change; a model provision created and no
    longer wants is removed, one the user made never is."""
    box = make_box(RIG_2X3090, "/root/stable.yaml")
    box.container.put("/root/mine.Modelfile", "FROM llama3.1:8b\nPARAMETER num_ctx 2048\n")
    made = box.run("ollama", "create", "mine", "-f", "/root/mine.Modelfile")
    assert made.returncode == 0, made.stderr
    for ctx in (8192, 16384):
        box.container.put("/root/stable.yaml", STABLE_PROFILE.format(ctx=ctx, name=""))
        applied = box.apply()
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert box.diff() == 0
        model = show(box, "llama3.1:8b-provision")
        assert model is not None and model["parameters"]["num_ctx"] == ctx
    assert ids(assert_verified(box)) >= {"model:llama3.1:8b-provision"}

    # Renamed in the profile: the new name is created, the one provision made is removed.
    box.container.put("/root/stable.yaml", STABLE_PROFILE.format(ctx=16384, name=", name: chat"))
    applied = box.apply()
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "remove-model llama3.1:8b-provision" in applied.stdout
    assert show(box, "llama3.1:8b-provision") is None and show(box, "chat") is not None
    assert box.diff() == 0
    assert show(box, "mine") is not None  # the user's own model: never removed
    assert show(box, "llama3.1:8b") is not None  # the base it pulled stays too


# --- the plan against the loaded models (verify --loaded) ------------------------------------

LOADED_32B = "loaded:ollama.service/qwen2.5:32b-provision"
LOADED_8B = "loaded:ollama.service/llama3.1:8b-provision"
PS_URL = "http://127.0.0.1:11434/api/ps"


def test_loaded_models_sit_where_planned_and_not_without_the_lever(
    make_box: Callable[[str, str], Box],
) -> None:
    """qwen2.5:32b fits one 3090 by the plan but not by Ollama's 80% rule, so Ollama alone would
    spread it over both cards: the plan pins it with PARAMETER main_gpu 0. The stand-in loads by
    its own reading of Ollama's scheduler; verify --loaded measures where each model sits."""
    box = make_box(RIG_2X3090_OLLAMA_030, "ollama-auto")
    box.converge()
    assert "PARAMETER main_gpu 0" in box.container.get(MODELFILE_32B)
    code, report = box.verify("--loaded")
    assert code == 0, failures(report)
    assert ids(report) == AUTO_CHECKS | {LOADED_32B, LOADED_8B}
    details = {c["id"]: c["detail"] for c in report["checks"]}
    assert details[LOADED_32B].startswith("on GPU 0 as planned: GPU 0 "), details[LOADED_32B]
    assert details[LOADED_8B].startswith("on GPU 1 as planned: GPU 1 "), details[LOADED_8B]
    ps = box.run(
        "python3", "-c", f"import urllib.request as u; print(u.urlopen('{PS_URL}').read())"
    )
    assert (
        "qwen2.5:32b-provision" in ps.stdout and "llama3.1:8b-provision" in ps.stdout
    )  # kept alive

    # The lever removed: the same model created from a Modelfile without main_gpu.
    unpinned = box.container.get(MODELFILE_32B).replace("PARAMETER main_gpu 0\n", "")
    box.container.put("/root/unpinned.Modelfile", unpinned)
    created = box.run("ollama", "create", "qwen2.5:32b-provision", "-f", "/root/unpinned.Modelfile")
    assert created.returncode == 0, created.stderr
    code, report = box.verify("--loaded")
    assert code == 1
    failed = failures(report)
    assert set(failed) == {LOADED_32B}, failed
    assert failed[LOADED_32B].startswith("on GPU 0, GPU 1, planned GPU 0: "), failed[LOADED_32B]
    # the 8B stayed loaded on GPU 1, so the spread 32B left GPU 1 less room: reloaded, the 8B
    # goes back to GPU 1, where it was planned
    plain = box.provision("verify", "--loaded")
    assert "FAIL loaded ollama.service/qwen2.5:32b-provision: on GPU 0, GPU 1" in plain.stdout
