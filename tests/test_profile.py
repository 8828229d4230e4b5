"""Workload profiles: bundled ones load, `extends` merges, bad values name file, line, field."""

from __future__ import annotations

from pathlib import Path

import pytest

from provision.errors import ExitCode, InputError
from provision.models.estimate import KvType, Runtime
from provision.placement.profile import bundled_names, load_profile


def test_bundled_profiles_load() -> None:
    assert bundled_names() == ["llama-server", "ollama-auto", "ollama-replicas", "power-capped"]
    default = load_profile(None)
    assert default.name == "ollama-auto" and default.runtime == Runtime.OLLAMA
    assert (default.listen.address, default.listen.port) == ("127.0.0.1", 11434)
    assert load_profile("ollama-replicas").replicas == "auto"
    assert load_profile("llama-server").runtime == Runtime.LLAMA_SERVER


def test_extends_merges_over_the_parent() -> None:
    capped = load_profile("power-capped")
    assert capped.models == load_profile("ollama-auto").models
    assert capped.power is not None and capped.power.psu_w == 850


def _write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_extends_a_file_beside_it(tmp_path: Path) -> None:
    _write(tmp_path, "models: [{ref: llama3.1:8b, ctx: 4096}]\n", "base.yaml")
    child = _write(tmp_path, "extends: base.yaml\nlisten: {port: 9000}\n")
    profile = load_profile(str(child))
    assert profile.models[0].ctx == 4096 and profile.listen.port == 9000
    assert profile.listen.address == "127.0.0.1"


def test_circular_extends_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, "extends: b.yaml\n", "a.yaml")
    _write(tmp_path, "extends: a.yaml\n", "b.yaml")
    with pytest.raises(InputError, match="circular"):
        load_profile(str(tmp_path / "a.yaml"))


@pytest.mark.parametrize(
    ("text", "line", "field", "problem"),
    [
        ("models:\n  - ref: x\n    ctx: big\n", 3, "models[0].ctx", "expected an integer"),
        ("models:\n  - ref: x\n    kv_type: q5_0\n", 3, "models[0].kv_type", "one of 'f16'"),
        ("runtime: vllm\nmodels: [{ref: x}]\n", 1, "runtime", "one of 'ollama'"),
        ("models: [{ref: x}]\nlisten:\n  port: 70000\n", 3, "listen.port", "1-65535"),
        ("models: [{ref: x}]\nlisten:\n  address: 0.0.0.0\n", 3, "listen.address",
         "not a loopback address"),
        ("models:\n- ref: x\n  keep_alive: \"5m\\nExecStartPre=/bin/rm -rf /\"\n", 3,
         "models[0].keep_alive", "newline or control character"),
        ("models:\n- ref: x\n  colour: red\n", 3, "models[0].colour", "unknown field"),
        ("models: []\n", 1, "models", "at least one model"),
        ("models: [{ref: x}]\npower: {psu_w: 1000}\n", 2, "power.platform_w", "needed with psu_w"),
        ("models: [{ref: x}]\npower: {per_gpu_w: 300, psu_w: 900, platform_w: 100}\n", 2,
         "power", "not both"),
        ("models:\n- ref: x\n  ctx: 0\n", 3, "models[0].ctx", "must be positive"),
        ("models:\n- ref: x\n  path: /has space.gguf\n", 3, "models[0].path", "absolute"),
        ("replicas: many\nmodels: [{ref: x}]\n", 1, "replicas", "'auto'"),
        ("models: [{ref: x}]\npower:\n  per_gpu_w: .nan\n", 3, "power.per_gpu_w",
         "expected a finite number, got nan"),
        ("models: [{ref: x}]\npower:\n  per_gpu_w: .inf\n", 3, "power.per_gpu_w",
         "expected a finite number, got inf"),
        ("models:\n- ref: x\n  ctx: 123456789012345678901234\n", 3, "models[0].ctx",
         "below 2**63, got a 24-digit number"),
        ("runtime: llama-server\nmodels:\n- ref: x\n  port: 0\n", 4, "models[0].port",
         "1-65535"),
        ("models:\n- ref: x\n  port: 8081\n", 3, "models[0].port",
         "only a llama-server model listens on a port of its own"),
    ],
)  # fmt: skip
def test_bad_values_name_file_line_and_field(
    tmp_path: Path, text: str, line: int, field: str, problem: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_profile(str(path))
    assert info.value.exit_code == ExitCode.BAD_INPUT
    assert info.value.message.startswith(f"{path}:{line}: field '{field}'"), info.value.message
    assert problem in info.value.message
    assert info.value.hint


def test_exposed_address_is_allowed_with_expose(tmp_path: Path) -> None:
    path = _write(tmp_path, "expose: true\nlisten: {address: 0.0.0.0}\nmodels: [{ref: x}]\n")
    profile = load_profile(str(path))
    assert not profile.is_loopback


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "models:\n  - ref: x\n   ctx: 1\n")
    with pytest.raises(InputError, match=rf"^{path}:3: not valid YAML"):
        load_profile(str(path))


def test_unknown_profile_lists_the_bundled_ones() -> None:
    with pytest.raises(InputError) as info:
        load_profile("no-such-profile")
    assert "ollama-auto" in (info.value.hint or "")


def test_kv_type_parses_to_the_enum(tmp_path: Path) -> None:
    path = _write(tmp_path, "models: [{ref: x, kv_type: q8_0}]\n")
    assert load_profile(str(path)).models[0].kv_type == KvType.Q8_0


def test_a_profile_that_is_not_utf8_is_an_error_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"models: [{ref: llama3.1:8b}]\ndescription: caf\xe9\n")
    with pytest.raises(InputError, match=r"latin1.yaml:2: not UTF-8 text \(byte 0xe9\)"):
        load_profile(str(path))


def test_duplicate_keys_are_refused_at_their_line(tmp_path: Path) -> None:
    text = "models:\n  - ref: llama3.1:8b\n    ctx: 4096\n    ctx: 8192\n"
    with pytest.raises(InputError, match=r"p.yaml:4: not valid YAML: duplicate key 'ctx'"):
        load_profile(str(_write(tmp_path, text)))


@pytest.mark.parametrize(
    "models",
    [
        "[{ref: llama3.1:8b}, {ref: llama3.1:8b}]",
        "[{ref: llama3.1:8b}, {ref: llama3.1}]",  # the catalog's alias of the same tag
        "[{ref: llama3.1:8b, name: a}, {ref: llama3.1:8b}]",
        "[{ref: /srv/m.gguf}, {ref: /srv/./m.gguf}]",
    ],
)
def test_the_same_model_twice_is_refused(tmp_path: Path, models: str) -> None:
    with pytest.raises(InputError, match=r"models\[1\].ref'.* is the same model as models\[0\]"):
        load_profile(str(_write(tmp_path, f"models: {models}\n")))


def test_the_same_model_under_two_names_or_two_quants_is_allowed(tmp_path: Path) -> None:
    named = "models: [{ref: llama3.1:8b, name: 'a:short'}, {ref: llama3.1, name: 'a:long'}]\n"
    assert len(load_profile(str(_write(tmp_path, named))).models) == 2
    quants = "models: [{ref: llama3.1:8b}, {ref: llama3.1:8b@q8_0}]\n"
    assert len(load_profile(str(_write(tmp_path, quants, "q.yaml"))).models) == 2


def test_a_type_error_names_the_leaf_field(tmp_path: Path) -> None:
    text = "power: {per_gpu_w: lots}\nmodels: [{ref: llama3.1:8b}]\n"
    with pytest.raises(InputError, match=r"field 'power.per_gpu_w': expected a number"):
        load_profile(str(_write(tmp_path, text)))


def test_a_complex_key_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    text = "? [a, b]\n: 1\nmodels: [{ref: llama3.1:8b}]\n"
    with pytest.raises(InputError, match="not valid YAML"):
        load_profile(str(_write(tmp_path, text)))


def test_relative_model_files_are_relative_to_the_profile(tmp_path: Path) -> None:
    """Not to wherever the command runs: the unit must name the file the plan measured."""
    folder = tmp_path / "profiles"
    folder.mkdir()
    _write(
        folder,
        "models:\n- {ref: ../models/a.gguf, path: ../models/b.gguf}\n- ref: c.gguf\n",
        "profile.yaml",
    )
    profile = load_profile(str(folder / "profile.yaml"))
    assert profile.models[0].ref == str(tmp_path / "models" / "a.gguf")
    assert profile.models[0].path == str(tmp_path / "models" / "b.gguf")
    assert profile.models[1].ref == str(folder / "c.gguf")
    # A parent's files stay relative to the parent, wherever the child is.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "child.yaml").write_text(f"extends: {folder / 'profile.yaml'}\n")
    inherited = load_profile(str(elsewhere / "child.yaml"))
    assert inherited.models[1].ref == str(folder / "c.gguf")


def test_a_field_knows_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "description: x\nmodels:\n- ref: a\n- ref: b\n  gpus: [7]\n")
    profile = load_profile(str(path))
    assert profile.where("models[1].gpus") == f"{path}:5"
    assert profile.where("models[1].ctx") == f"{path}:4"  # not set: the entry's line
    assert profile.where("power.psu_w") == str(path)  # nothing there
