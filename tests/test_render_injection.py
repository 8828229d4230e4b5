"""A profile value can never add a line or a directive to a rendered file.

First line of defence: the profile loader refuses control characters (exit 2 through the CLI).
Second: the quoting filters refuse them too, for values that reach `render` any other way, and
`render` reports them as InputError naming the value. Allowed special characters (`%`, `$`)
are escaped so that systemd reads back exactly the value given.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from provision.errors import ExitCode, InputError
from provision.hardware.rig import load_rig
from provision.pipeline import desired_state
from provision.placement.decisions import Placement
from provision.render.files import render
from tests.gguf_factory import write_tiny_gguf
from tests.golden_cases import ENVIRON
from tests.helpers import rig_file, run_provision
from tests.systemd_root import argv, make_root, parsed_unit, units_to_verify, verify

RIG = rig_file("synthetic-2x3090-x16-x8")


def _profile(tmp_path: Path, data: dict[str, object]) -> Path:
    path = tmp_path / "evil.yaml"
    path.write_text(json.dumps(data), encoding="utf-8")  # JSON is YAML, and escapes \n
    return path


@pytest.mark.parametrize(
    ("model", "field"),
    [
        ({"ref": "llama3.1:8b", "keep_alive": "5m\nExecStartPre=/bin/rm -rf /"}, "keep_alive"),
        ({"ref": "llama3.1:8b", "name": "x\n[Service]\nUser=root"}, "name"),
        ({"ref": "llama3.1:8b\nPARAMETER num_gpu 999"}, "ref"),
        ({"ref": "llama3.1:8b", "path": "/srv/m.gguf\rExecStart=/bin/sh"}, "path"),
    ],
)
def test_cli_refuses_a_value_that_would_add_a_line(
    tmp_path: Path, model: dict[str, str], field: str
) -> None:
    runtime = "llama-server" if "path" in model else "ollama"
    profile = _profile(tmp_path, {"runtime": runtime, "models": [model]})
    result = run_provision("plan", "--rig", str(RIG), "--profile", str(profile))
    assert result.returncode == ExitCode.BAD_INPUT, result.stderr
    assert result.stderr.startswith("error: ")
    assert field in result.stderr
    assert "newline or control character" in result.stderr


# --- defence in depth: values that bypass the profile loader ---------------------------------


@pytest.fixture(scope="module")
def single() -> Placement:
    placement, _ = desired_state(load_rig(RIG), "ollama-auto", ENVIRON)
    return placement


@pytest.fixture(scope="module")
def replicas() -> Placement:
    placement, _ = desired_state(load_rig(RIG), "ollama-replicas", ENVIRON)
    return placement


def _with_env(placement: Placement, key: str, value: str) -> Placement:
    first = placement.instances[0]
    changed = replace(first, env=(*first.env, (key, value)))
    return replace(placement, instances=(changed, *placement.instances[1:]))


def test_render_refuses_a_newline_in_a_drop_in_value(single: Placement) -> None:
    evil = _with_env(single, "OLLAMA_ORIGINS", "*\nExecStartPre=/bin/rm")
    with pytest.raises(InputError) as caught:
        render(evil)
    message = caught.value.message
    assert "50-provision.conf" in message and "'*\\nExecStartPre=/bin/rm'" in message


def test_render_refuses_a_newline_in_a_replica_env_file(replicas: Placement) -> None:
    evil = _with_env(replicas, "OLLAMA_ORIGINS", "*\nOLLAMA_HOST=0.0.0.0")
    with pytest.raises(InputError, match=r"/etc/provision/ollama/0\.env"):
        render(evil)


def test_render_refuses_a_bad_environment_name(single: Placement) -> None:
    with pytest.raises(InputError, match="not a valid name"):
        render(_with_env(single, "A=B", "x"))


def test_render_refuses_a_newline_in_a_modelfile(single: Placement) -> None:
    model = single.models[0]
    evil_entry = replace(model.entry, ref="qwen2.5:32b\nPARAMETER num_gpu 999")
    evil = replace(single, models=(replace(model, entry=evil_entry), *single.models[1:]))
    with pytest.raises(InputError, match=r"\.Modelfile.*PARAMETER num_gpu 999"):
        render(evil)


def test_render_refuses_a_newline_in_the_nginx_site(replicas: Placement) -> None:
    assert replicas.balancer is not None
    balancer = replace(replicas.balancer, address="127.0.0.1;\nlocation /admin")
    with pytest.raises(InputError, match=r"provision-ollama\.conf"):
        render(replace(replicas, balancer=balancer))


def test_render_refuses_a_newline_in_a_command_line_argument(tmp_path: Path) -> None:
    placement, _ = desired_state(load_rig(RIG), "llama-server", ENVIRON)
    server = placement.instances[0]
    evil = replace(server, args=(*server.args, "--api-key\nExecStartPre=/bin/sh"))
    with pytest.raises(InputError, match="command-line argument"):
        render(replace(placement, instances=(evil,)))


# --- allowed special characters are escaped, and systemd reads back the value -----------------

ODD_PATH = "/srv/models/100%_$HOME_q4.gguf"


def _llama_server_with_odd_path(tmp_path: Path) -> tuple[str, str]:
    profile = _profile(
        tmp_path,
        {
            "runtime": "llama-server",
            "listen": {"address": "127.0.0.1", "port": 8080},
            "models": [{"ref": "llama3.1:8b", "path": ODD_PATH}],
        },
    )
    _, desired = desired_state(load_rig(RIG), str(profile), ENVIRON)
    (unit,) = [f for f in desired.files if f.path.endswith(".service")]
    return unit.path.rsplit("/", 1)[1], unit.content


def test_percent_and_dollar_in_a_model_path_are_escaped(tmp_path: Path) -> None:
    _, content = _llama_server_with_odd_path(tmp_path)
    assert " -m /srv/models/100%%_$$HOME_q4.gguf " in content


def test_systemd_reads_back_the_odd_model_path(tmp_path: Path) -> None:
    name, content = _llama_server_with_odd_path(tmp_path)
    (command_line,) = parsed_unit({name: content}, name)["ExecStart"]
    words = argv(command_line)
    # `$$` becomes `$` when systemd executes the command: the server gets ODD_PATH exactly.
    assert words[words.index("-m") + 1].replace("$$", "$") == ODD_PATH


def test_unit_with_odd_model_path_verifies(tmp_path: Path) -> None:
    profile = _profile(
        tmp_path,
        {"runtime": "llama-server", "models": [{"ref": "llama3.1:8b", "path": ODD_PATH}]},
    )
    _, desired = desired_state(load_rig(RIG), str(profile), ENVIRON)
    root = make_root(tmp_path / "root", desired)
    result = verify(root, units_to_verify(desired))
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip()


def test_gguf_path_with_percent_stays_literal_in_the_modelfile(tmp_path: Path) -> None:
    """Modelfiles have no specifiers: a GGUF path with % and $ is written as is."""
    gguf = write_tiny_gguf(tmp_path / "tiny 100%_$x.gguf".replace(" ", "-"))
    profile = _profile(tmp_path, {"models": [{"ref": str(gguf)}]})
    _, desired = desired_state(load_rig(RIG), str(profile), ENVIRON)
    (modelfile,) = [f for f in desired.files if f.path.endswith(".Modelfile")]
    assert f"\nFROM {gguf}\n" in modelfile.content
    (model,) = desired.models
    assert model.base == str(gguf)
