"""`provision plan` as an operator runs it: decisions, reasons, bars, files, JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.helpers import rig_file, run_provision

RIG_2X3090 = str(rig_file("synthetic-2x3090-x16-x8"))


def test_plan_json_has_the_documented_keys() -> None:
    result = run_provision("plan", "--rig", RIG_2X3090, "--profile", "ollama-replicas", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    for key in ("instances", "models", "power", "warnings", "files"):
        assert key in document
    instance = document["instances"][0]
    assert {"runtime", "unit", "port", "gpu_uuids", "env"} <= set(instance)
    model = document["models"][0]
    assert {"name", "ref", "verdict", "gpus", "layers_per_gpu", "reason"} <= set(model)
    assert [i["unit"] for i in document["instances"]] == ["ollama@0.service", "ollama@1.service"]
    assert "/etc/nginx/conf.d/provision-ollama.conf" in document["files"]


def test_plan_human_output_shows_decisions_bars_and_files() -> None:
    result = run_provision("plan", "--rig", RIG_2X3090)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "profile ollama-auto" in out and "traits:" in out
    assert "llama3.1:8b -> llama3.1:8b-ctx8192: single-gpu on GPU" in out
    assert "kept on one GPU because splitting a model that fits only adds" in out
    bars = [line for line in out.splitlines() if line.startswith("  GPU ") and "[" in line]
    assert len(bars) == 2
    assert "/etc/systemd/system/ollama.service.d/50-provision.conf" in out


def test_plan_power_profile_lists_targets() -> None:
    result = run_provision("plan", "--rig", RIG_2X3090, "--profile", "power-capped", "--json")
    document = json.loads(result.stdout)
    assert [p["target_w"] for p in document["power"]] == [300.0, 300.0]
    assert all(p["default_w"] == 350.0 and p["reason"] for p in document["power"])


def test_plan_bad_profile_exits_2_naming_file_line_field(tmp_path: Path) -> None:
    profile = tmp_path / "bad.yaml"
    profile.write_text("models:\n  - ref: llama3.1:8b\n    parallel: -2\n")
    result = run_provision("plan", "--rig", RIG_2X3090, "--profile", str(profile))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {profile}:3: field 'models[0].parallel'")


def test_plan_warns_about_narrow_links() -> None:
    rig = str(rig_file("synthetic-4x3090-x4-riser"))
    result = run_provision("plan", "--rig", rig)
    assert "  warning: narrow PCIe link: GPU 3 (RTX 3090) at most PCIe 3.0 x4" in result.stdout


@pytest.mark.parametrize(
    ("extra", "what"),
    [
        ("runtime: ollama\nreplicas: 2\n", "replica 0 (GPU 0) would listen on port 65536"),
        ("runtime: llama-server\n", "models[1] (qwen2.5:32b) would listen on port 65536"),
    ],
)
def test_derived_ports_stay_tcp_ports(tmp_path: Path, extra: str, what: str) -> None:
    profile = tmp_path / "p.yaml"
    models = "models:\n  - {ref: llama3.1:8b, ctx: 8192, path: /srv/a.gguf}\n"
    models += "  - {ref: qwen2.5:32b, ctx: 8192, path: /srv/b.gguf}\n"
    profile.write_text(extra + "listen: {address: 127.0.0.1, port: 65535}\n" + models)
    result = run_provision(
        "plan", "--rig", str(rig_file("synthetic-2x3090-x16-x8")), "--profile", str(profile)
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"error: listen.port: {what}, past 65535" in result.stderr


def test_a_rig_without_gpus_is_refused(tmp_path: Path) -> None:
    """Nothing to plan for: every model would run on the CPU. Said once, with the fix, rather
    than as "needs 0.0 GiB, 0.0 GiB usable" for each model."""
    rig = yaml.safe_load(rig_file("synthetic-1x4090").read_text())
    rig["gpus"] = []
    empty = tmp_path / "no-gpu.yaml"
    empty.write_text(yaml.safe_dump(rig))
    for command in ("plan", "diff"):
        result = run_provision(command, "--rig", str(empty), "--root", str(tmp_path))
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.startswith("error: no GPU on this rig: ")
        assert "0.0 GiB" not in result.stderr and "check the driver" in result.stderr
