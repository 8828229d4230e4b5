"""`provision plan` as an operator runs it: decisions, reasons, bars, files, JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.gguf_factory import write_tiny_gguf
from tests.helpers import install_in_ollama_store, rig_file, run_provision

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
    assert "llama3.1:8b -> llama3.1:8b-provision: single-gpu on GPU" in out
    assert "kept on one GPU because splitting a model that fits only adds" in out
    bars = [line for line in out.splitlines() if line.startswith("  GPU ") and "[" in line]
    assert len(bars) == 2
    assert "/etc/systemd/system/ollama.service.d/50-provision.conf" in out


def test_plan_power_profile_lists_targets() -> None:
    result = run_provision("plan", "--rig", RIG_2X3090, "--profile", "power-capped", "--json")
    document = json.loads(result.stdout)
    assert [p["target_w"] for p in document["power"]] == [300.0, 300.0]
    assert all(p["default_w"] == 350.0 and p["reason"] for p in document["power"])


def test_plan_shows_the_whole_watts_the_power_unit_writes() -> None:
    """850 W PSU - 250 W platform = 600 W shared by default limit 450:350: 337.5 and 262.5 W,
    which `nvidia-smi -pl` (integers) cannot take: the plan shows what the unit sets."""
    rig = str(rig_file("synthetic-4090-3090"))
    result = run_provision("plan", "--rig", rig, "--profile", "power-capped")
    assert result.returncode == 0, result.stderr
    shown = [
        line.split(":")[1].split("(")[0].strip()
        for line in result.stdout.splitlines()
        if line.startswith("  GPU ") and " W (" in line
    ]
    assert shown == ["337 W", "262 W"]
    assert "rounded down from 337.5 W" in result.stdout
    document = json.loads(
        run_provision("plan", "--rig", rig, "--profile", "power-capped", "--json").stdout
    )
    assert [p["target_w"] for p in document["power"]] == [337, 262]


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
        # sha256("llama3.1:8b") mod 1000 = 156
        ("runtime: llama-server\n", "models[0] (llama3.1:8b) would listen on port 65691"),
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


def test_errors_found_while_placing_name_the_profile_line(tmp_path: Path) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text("models:\n- ref: llama3.1:8b\n- ref: llama3.2:3b\n  gpus: [7]\n")
    result = run_provision("plan", "--rig", RIG_2X3090, "--profile", str(profile))
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"error: {profile}:4: field 'models[1].gpus': GPU 7 is not in this rig"
    )
    unknown = tmp_path / "u.yaml"
    unknown.write_text("models:\n- ref: llama3.1:8b\n- ref: no-such-model:1b\n")
    result = run_provision("plan", "--rig", RIG_2X3090, "--profile", str(unknown))
    assert result.returncode == 2
    assert f"error: {unknown}:3: field 'models[1].ref': unknown model 'no-such-model:1b'" in (
        result.stderr
    )


def test_the_ollama_store_is_looked_up_under_the_root(tmp_path: Path) -> None:
    """A model pulled on the target tree is found there, and a miss names the store searched."""
    root = tmp_path / "root"
    store = root / "usr/share/ollama/.ollama/models"
    install_in_ollama_store(store, "tiny", "1b", write_tiny_gguf(tmp_path / "tiny.gguf"))
    fit = run_provision("fit", "tiny:1b", "--rig", RIG_2X3090, "--root", str(root), "--json")
    assert fit.returncode == 0, fit.stderr
    missing = run_provision("fit", "tiny:1b", "--rig", RIG_2X3090, "--root", str(tmp_path))
    assert missing.returncode == 2
    searched = tmp_path / "usr/share/ollama/.ollama/models"
    assert f"not installed in the Ollama store {searched}" in missing.stderr


def _llama_server_profile(tmp_path: Path, path: str) -> Path:
    profile = tmp_path / "ls.yaml"
    profile.write_text(
        "runtime: llama-server\nlisten: {address: 127.0.0.1, port: 8080}\n"
        f"models:\n- ref: llama3.1:8b\n  path: {path}\n"
    )
    return profile


def test_llama_servers_model_file_is_checked_as_its_sandbox_sees_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "srv/models").mkdir(parents=True)
    model = root / "srv/models/m.gguf"
    model.write_bytes(b"GGUF")
    model.chmod(0o644)
    ok = _llama_server_profile(tmp_path, "/srv/models/m.gguf")
    assert run_provision("plan", "--rig", RIG_2X3090, "--profile", str(ok), "--root", str(root)) \
        .returncode == 0  # fmt: skip
    model.chmod(0o600)
    private = run_provision("diff", "--rig", RIG_2X3090, "--profile", str(ok), "--root", str(root))
    assert private.returncode == 2
    assert f"error: {ok}:5: field 'models[0].path': /srv/models/m.gguf is not readable by " \
        "other users" in private.stderr  # fmt: skip
    assert "chmod o+r" in private.stderr
    model.chmod(0o644)
    (root / "srv/models").chmod(0o700)
    closed = run_provision("plan", "--rig", RIG_2X3090, "--profile", str(ok), "--root", str(root))
    assert closed.returncode == 2
    assert "is in /srv/models, which other users cannot enter" in closed.stderr
    (root / "srv/models").chmod(0o755)
    tmp = _llama_server_profile(tmp_path, "/tmp/m.gguf")
    hidden = run_provision("plan", "--rig", RIG_2X3090, "--profile", str(tmp), "--root", str(root))
    assert hidden.returncode == 2
    assert "private /tmp for llama-server's unit" in hidden.stderr
    absent = _llama_server_profile(tmp_path, "/srv/models/absent.gguf")
    planned = run_provision("plan", "--rig", RIG_2X3090, "--profile", str(absent), "--root",
                            str(root))  # fmt: skip
    assert planned.returncode == 0
    assert "models[0].path: /srv/models/absent.gguf not found under" in planned.stdout
    refused = run_provision("diff", "--rig", RIG_2X3090, "--profile", str(absent), "--root",
                            str(root))  # fmt: skip
    assert refused.returncode == 2
    assert "/srv/models/absent.gguf not found under" in refused.stderr


def test_an_mmproj_file_is_loaded_sized_and_checked_in_the_targets_tree(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "srv/models").mkdir(parents=True)
    for name, size in (("g.gguf", 4), ("mmproj.gguf", 8192)):
        (root / "srv/models" / name).write_bytes(b"\0" * size)
        (root / "srv/models" / name).chmod(0o644)
    profile = tmp_path / "vl.yaml"
    profile.write_text(
        "runtime: llama-server\nlisten: {address: 127.0.0.1, port: 8080}\nmodels:\n"
        "- {ref: gemma3:4b, path: /srv/models/g.gguf, mmproj: /srv/models/mmproj.gguf}\n"
    )
    args = ("--rig", RIG_2X3090, "--profile", str(profile), "--root", str(root))
    result = run_provision("plan", *args, "--json")
    assert result.returncode == 0, result.stderr
    (instance,) = json.loads(result.stdout)["instances"]
    args_of_unit = instance["args"]
    assert args_of_unit[args_of_unit.index("--mmproj") + 1] == "/srv/models/mmproj.gguf"
    (root / "srv/models/mmproj.gguf").chmod(0o600)
    private = run_provision("diff", *args)
    assert private.returncode == 2
    assert "field 'models[0].mmproj': /srv/models/mmproj.gguf is not readable" in private.stderr
    relative = tmp_path / "rel.yaml"
    relative.write_text("models: [{ref: gemma3:4b, mmproj: sub dir/x.gguf}]\n")
    spaced = run_provision("plan", "--rig", RIG_2X3090, "--profile", str(relative))
    assert spaced.returncode == 2 and "models[0].mmproj" in spaced.stderr


def test_the_profiles_description_is_shown_on_one_line(tmp_path: Path) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text(
        'description: "chat box\\nwarning: not ours"\nmodels: [{ref: llama3.1:8b}]\n'
    )
    text = run_provision("plan", "--rig", RIG_2X3090, "--profile", str(profile))
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[1] == "  chat box warning: not ours"
    document = json.loads(
        run_provision("plan", "--rig", RIG_2X3090, "--profile", str(profile), "--json").stdout
    )
    assert document["description"] == "chat box\nwarning: not ours"
