"""What `render` decides beyond file contents: unit actions, restarts, power, models, digests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from provision.desired import DesiredState
from provision.errors import InputError
from provision.hardware.rig import load_rig
from provision.paths import OLLAMA_DROPIN, OLLAMA_TEMPLATE_UNIT
from provision.pipeline import desired_state, profile_digest, rig_digest
from provision.placement.profile import load_profile
from provision.render.files import render
from tests.golden_cases import ENVIRON
from tests.helpers import REPO_ROOT, rig_file

TWO_3090 = load_rig(rig_file("synthetic-2x3090-x16-x8"))


def _desired(profile: str, rig: str = "synthetic-2x3090-x16-x8") -> DesiredState:
    return desired_state(load_rig(rig_file(rig)), profile, ENVIRON)[1]


def _file(desired: DesiredState, path: str) -> str:
    (content,) = [f.content for f in desired.files if f.path == path]
    return content


def test_importing_render_does_not_import_jinja2() -> None:
    code = "import sys, provision.render.files; print('jinja2' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert out.stdout.strip() == "False", out.stderr


def test_render_is_deterministic() -> None:
    placement, first = desired_state(TWO_3090, "power-capped", ENVIRON)
    assert render(placement) == render(placement)
    assert first == desired_state(TWO_3090, "power-capped", ENVIRON)[1]


def test_every_file_we_write_carries_the_managed_header() -> None:
    for profile in ("ollama-auto", "ollama-replicas", "llama-server", "power-capped"):
        for file in _desired(profile).files:
            assert file.content.startswith("# Managed by provision."), file.path
            assert (file.mode, file.owner, file.group) == (0o644, "root", "root")


def test_single_ollama_drop_in_restarts_ollama() -> None:
    desired = _desired("ollama-auto")
    (dropin,) = [f for f in desired.files if f.path == OLLAMA_DROPIN]
    assert dropin.restarts == ("ollama.service",) and dropin.is_systemd_unit
    assert [(u.name, u.enabled, u.listen) for u in desired.units] == [
        ("ollama.service", True, ("127.0.0.1", 11434))
    ]
    assert 'Environment="OLLAMA_CONTEXT_LENGTH=8192"' in dropin.content


def test_replicas_disable_the_stock_unit_and_put_nginx_in_front() -> None:
    desired = _desired("ollama-replicas")
    actions = [(u.name, u.enabled, u.active) for u in desired.units]
    assert actions == [
        ("ollama.service", False, False),
        ("ollama@0.service", True, True),
        ("ollama@1.service", True, True),
        ("nginx.service", True, True),
    ]
    by_path = {f.path: f for f in desired.files}
    assert OLLAMA_DROPIN not in by_path
    assert by_path[OLLAMA_TEMPLATE_UNIT].restarts == ("ollama@0.service", "ollama@1.service")
    assert by_path["/etc/provision/ollama/1.env"].restarts == ("ollama@1.service",)
    site = by_path["/etc/nginx/conf.d/provision-ollama.conf"]
    assert site.reloads == ("nginx.service",) and not site.restarts
    assert "least_conn;" in site.content and "listen 127.0.0.1:11434;" in site.content
    for upstream in ("server 127.0.0.1:11435;", "server 127.0.0.1:11436;"):
        assert upstream in site.content


def test_power_unit_orders_before_every_inference_unit() -> None:
    desired = _desired("power-capped", "synthetic-4x3090-x4-riser")
    unit = _file(desired, "/etc/systemd/system/gpu-power-limits.service")
    assert "Before=ollama.service\n" in unit and "After=nvidia-persistenced.service\n" in unit
    assert unit.count("ExecStart=/usr/bin/nvidia-smi -i GPU-") == 4
    assert unit.count("ExecStop=/usr/bin/nvidia-smi -i GPU-") == 4
    assert "After=gpu-power-limits.service\n" in _file(desired, OLLAMA_DROPIN)
    assert [p.target_w for p in desired.power] == [150.0] * 4
    assert desired.units[0].name == "gpu-power-limits.service" and desired.units[0].oneshot


def test_power_unit_orders_before_replicas(tmp_path: Path) -> None:
    profile = tmp_path / "replicas-capped.yaml"
    profile.write_text("extends: ollama-replicas\npower: {per_gpu_w: 250}\n")
    desired = desired_state(TWO_3090, str(profile), ENVIRON)[1]
    unit = _file(desired, "/etc/systemd/system/gpu-power-limits.service")
    assert "Before=ollama@0.service ollama@1.service\n" in unit
    template = _file(desired, OLLAMA_TEMPLATE_UNIT)
    assert "After=network-online.target gpu-power-limits.service\n" in template


def test_the_power_unit_sets_the_watts_the_plan_decided() -> None:
    desired = _desired("power-capped", "synthetic-4090-3090")  # a 337.5:262.5 W share
    unit = _file(desired, "/etc/systemd/system/gpu-power-limits.service")
    written = [
        line.rsplit(" ", 1)[1]
        for line in unit.splitlines()
        if line.startswith("ExecStart=") and " -pl " in line
    ]
    assert written == [str(p.target_w) for p in desired.power] == ["337", "262"]


def test_a_disabled_power_unit_is_not_pulled_in_by_the_inference_units(tmp_path: Path) -> None:
    """Wants= would start it at boot even when disabled (systemd.unit(5): a Wants= dependency
    is enqueued with the unit); After= only orders it, so `systemctl disable` keeps it off."""
    profile = tmp_path / "replicas-capped.yaml"
    profile.write_text("extends: ollama-replicas\npower: {per_gpu_w: 250}\n")
    replicas = desired_state(TWO_3090, str(profile), ENVIRON)[1]
    units = [
        _file(replicas, OLLAMA_TEMPLATE_UNIT),
        _file(_desired("power-capped"), OLLAMA_DROPIN),
        *(f.content for f in _desired("llama-server").files if f.path.endswith(".service")),
    ]
    for text in units:
        assert "Wants=gpu-power-limits.service" not in text
    power = _file(replicas, "/etc/systemd/system/gpu-power-limits.service")
    assert "\n[Install]\nWantedBy=multi-user.target\n" in power


def test_models_are_created_from_their_modelfiles() -> None:
    desired = _desired("ollama-auto")
    assert [(m.name, m.base) for m in desired.models] == [
        ("qwen2.5:32b-provision", "qwen2.5:32b"),
        ("llama3.1:8b-provision", "llama3.1:8b"),
    ]
    for model in desired.models:
        text = _file(desired, model.modelfile_path)
        assert f"\nFROM {model.base}\nPARAMETER num_ctx 8192\n" in text


def test_the_name_clients_call_survives_a_ctx_or_parallel_change(tmp_path: Path) -> None:
    """ctx and parallel live in the Modelfile and the unit, never in the model's name."""
    names = []
    for ctx, parallel in ((8192, 1), (16384, 1), (8192, 4)):
        profile = tmp_path / f"p-{ctx}-{parallel}.yaml"
        profile.write_text(f"models: [{{ref: llama3.1:8b, ctx: {ctx}, parallel: {parallel}}}]\n")
        desired = desired_state(TWO_3090, str(profile), ENVIRON)[1]
        (model,) = desired.models
        names.append((model.name, model.modelfile_path))
        assert f"\nPARAMETER num_ctx {ctx}\n" in _file(desired, model.modelfile_path)
    assert set(names) == {
        ("llama3.1:8b-provision", "/etc/provision/modelfiles/llama3.1-8b-provision.Modelfile")
    }


def test_an_explicit_name_is_kept(tmp_path: Path) -> None:
    profile = tmp_path / "named.yaml"
    profile.write_text("models: [{ref: llama3.1:8b, ctx: 4096, name: chat}]\n")
    (model,) = desired_state(TWO_3090, str(profile), ENVIRON)[1].models
    assert (model.name, model.base) == ("chat", "llama3.1:8b")


def test_partial_offload_sets_num_gpu() -> None:
    # The nulls rig reports no compute capability, so Ollama runs without flash attention there
    # and the larger compute buffer leaves room for 31 layers (33 when FA was assumed).
    desired = _desired("ollama-auto", "synthetic-nulls")
    text = _file(desired, "/etc/provision/modelfiles/qwen2.5-32b-provision.Modelfile")
    assert "\nPARAMETER num_gpu 31\n" in text


def test_llama_server_unit() -> None:
    desired = _desired("llama-server")
    (unit,) = desired.units
    content = _file(desired, f"/etc/systemd/system/{unit.name}")
    assert "\nExecStart=/usr/local/bin/llama-server -m /srv/models/" in content
    assert "\nDynamicUser=yes\n" in content and "\nRestart=on-failure\n" in content
    assert unit.listen == ("127.0.0.1", 8080)


def test_profile_digest_follows_content_not_location(tmp_path: Path) -> None:
    bundled = load_profile("ollama-auto")
    copy = tmp_path / "mine.yaml"
    shutil.copyfile(REPO_ROOT / "profiles/ollama-auto.yaml", copy)
    assert profile_digest(load_profile(str(copy))) == profile_digest(bundled)
    copy.write_text(copy.read_text().replace("keep_alive: 10m", "keep_alive: 11m", 1))
    assert profile_digest(load_profile(str(copy))) != profile_digest(bundled)


def test_digests_are_stamped() -> None:
    desired = _desired("ollama-auto")
    assert desired.rig_digest == rig_digest(TWO_3090)
    assert len(desired.rig_digest) == 64
    assert len(desired.profile_digest) == 64


def test_rig_digest_ignores_readings_that_move_at_run_time() -> None:
    gpu = TWO_3090.gpus[0]
    moved = replace(
        gpu,
        memory_used_bytes=(gpu.memory_used_bytes or 0) + 2**30,
        power=replace(gpu.power, limit_w=123.0),
        pcie=replace(gpu.pcie, gen_current=1),
    )
    assert rig_digest(replace(TWO_3090, gpus=(moved, *TWO_3090.gpus[1:]))) == rig_digest(TWO_3090)
    other_card = replace(gpu, memory_total_bytes=gpu.memory_total_bytes // 2)
    assert rig_digest(replace(TWO_3090, gpus=(other_card, *TWO_3090.gpus[1:]))) != rig_digest(
        TWO_3090
    )


LLAMA_MODELS = {
    "a": "{ref: llama3.1:8b, ctx: 4096, path: /srv/a.gguf}",
    "b": "{ref: qwen2.5:32b, ctx: 4096, path: /srv/b.gguf}",
    "c": "{ref: llama3.2:3b, ctx: 4096, path: /srv/c.gguf, name: small}",
}


def _llama_ports(tmp_path: Path, keys: str, listen: str = "") -> dict[str, int]:
    profile = tmp_path / f"llama-{keys}.yaml"
    models = "".join(f"  - {LLAMA_MODELS[k]}\n" for k in keys)
    profile.write_text(f"runtime: llama-server\n{listen}models:\n{models}")
    desired = desired_state(TWO_3090, str(profile), ENVIRON)[1]
    return {u.name: u.listen[1] for u in desired.units if u.listen}


def test_a_llama_server_model_keeps_its_port_when_others_come_and_go(tmp_path: Path) -> None:
    alone = _llama_ports(tmp_path, "b")
    both = _llama_ports(tmp_path, "ab")
    reordered = _llama_ports(tmp_path, "ba")
    three = _llama_ports(tmp_path, "cab")
    assert both == reordered and three.items() >= both.items() >= alone.items()
    assert len(set(three.values())) == 3


def test_a_llama_server_profile_defaults_to_llama_cpps_port_not_ollamas(tmp_path: Path) -> None:
    ports = _llama_ports(tmp_path, "ab")
    # listen.port 8080 (llama.cpp's default) + sha256(name) mod 1000: 156 and 710.
    assert sorted(ports.values()) == [8080 + 156, 8080 + 710]
    assert 11434 not in ports.values()


def test_an_explicit_port_wins_and_two_models_on_one_port_are_refused(tmp_path: Path) -> None:
    LLAMA_MODELS["p"] = "{ref: qwen2.5:32b, ctx: 4096, path: /srv/b.gguf, port: 9999}"
    assert 9999 in _llama_ports(tmp_path, "ap").values()
    LLAMA_MODELS["q"] = "{ref: qwen2.5:32b, ctx: 4096, path: /srv/b.gguf, port: 8236}"
    with pytest.raises(InputError, match=r"models\[1\] .* and models\[0\] .* port 8236"):
        _llama_ports(tmp_path, "aq")
