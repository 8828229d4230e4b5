"""The `provision` command as an operator runs it: output, files, exit codes, messages."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from provision.hardware.rig import load_rig
from tests.helpers import rig_file, run_provision


def test_probe_prints_a_row_per_gpu_and_the_traits(sample_rig_file: Path) -> None:
    result = run_provision("probe", "--rig", str(sample_rig_file))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("#"))
    for column in ("NAME", "VRAM", "CC", "PCIE NOW/MAX", "NVLINK PEERS", "POWER", "DISPLAY"):
        assert column in header
    rows = [line for line in lines if line[:2] in ("0 ", "1 ")]
    assert len(rows) == 2
    assert "RTX 3090" in rows[1] and "24.0 GiB" in rows[1] and "Gen4 x8" in rows[1]
    assert "100-400 W" in rows[0]
    assert "symmetric: all 2 GPUs are RTX 3090" in result.stdout


def test_probe_json_is_the_snapshot_plus_traits(sample_rig_file: Path, tmp_path: Path) -> None:
    result = run_provision("probe", "--rig", str(sample_rig_file), "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["schema"] == 2
    assert [g["index"] for g in document["gpus"]] == [0, 1]
    kinds = {t["kind"] for t in document["traits"]}
    assert kinds == {"gpu_count", "symmetric"}
    assert all(t["severity"] in ("info", "warning") and t["reason"] for t in document["traits"])
    # What --json prints can be fed back with --rig.
    saved = tmp_path / "probe.json"
    saved.write_text(result.stdout)
    assert load_rig(saved) == load_rig(sample_rig_file)


def test_probe_save_writes_a_snapshot(sample_rig_file: Path, tmp_path: Path) -> None:
    for name in ("rig.yaml", "rig.json"):
        out = tmp_path / name
        result = run_provision("probe", "--rig", str(sample_rig_file), "--save", str(out))
        assert result.returncode == 0, result.stderr
        assert load_rig(out) == load_rig(sample_rig_file)


def test_probe_accepts_root(sample_rig_file: Path, tmp_path: Path) -> None:
    result = run_provision("probe", "--rig", str(sample_rig_file), "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr


def test_bad_snapshot_exits_2_with_one_message(sample_rig_file: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(sample_rig_file.read_text())
    data["gpus"][1]["memory_total_bytes"] = -24
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    result = run_provision("probe", "--rig", str(bad))
    assert result.returncode == 2
    assert result.stdout == ""
    error, hint = result.stderr.splitlines()
    assert error.startswith(f"error: {bad}: field 'gpus[1].memory_total_bytes'")
    assert hint.startswith("hint: ")


def test_missing_snapshot_exits_2(tmp_path: Path) -> None:
    result = run_provision("probe", "--rig", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "cannot read snapshot" in result.stderr


def test_unwritable_save_path_is_a_host_error(sample_rig_file: Path, tmp_path: Path) -> None:
    target = tmp_path / "no-such-dir" / "rig.yaml"
    result = run_provision("probe", "--rig", str(sample_rig_file), "--save", str(target))
    assert result.returncode == 3
    assert result.stderr.startswith(f"error: {target}: cannot write snapshot")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = run_provision(
        "--debug", "probe", "--rig", str(tmp_path / "nope.yaml"), check_no_traceback=False
    )
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "InputError" in result.stderr


def test_usage_errors_exit_2() -> None:
    assert run_provision("no-such-command").returncode == 2
    assert run_provision("probe", "--no-such-flag").returncode == 2


def test_usage_errors_speak_like_every_other_error() -> None:
    """`error:` and `hint:` lines, as for bad input of ours, not click's `Usage:` block."""
    for argv, message in [
        (("probe", "--no-such-flag"), "error: No such option '--no-such-flag'."),
        (("fit",), "error: Missing argument 'MODEL'."),
        (("fit", "llama3.1:8b", "--ctx", "many"), "error: Invalid value for '--ctx'"),
    ]:
        result = run_provision(*argv)
        assert result.returncode == 2
        lines = result.stderr.splitlines()
        assert lines[0].startswith(message), result.stderr
        assert lines[1] == f"hint: 'provision {argv[0]} --help' lists the options"
        assert "Usage:" not in result.stderr


def test_warnings_are_marked() -> None:
    calm = run_provision("probe", "--rig", str(rig_file("synthetic-2x3090-x16-x8")))
    assert "warning" not in calm.stdout
    riser = run_provision("probe", "--rig", str(rig_file("synthetic-4x3090-x4-riser")))
    assert "  warning narrow_pcie: narrow PCIe link: GPU 3 (RTX 3090)" in riser.stdout


DROPPING = "models: [{ref: llama3.1:8b}, {ref: mixtral:8x22b@q8_0, ctx: 65536}]\n"


def test_a_model_that_cannot_be_placed_fails_plan_diff_and_apply(tmp_path: Path) -> None:
    profile = tmp_path / "too-big.yaml"
    profile.write_text(DROPPING)
    rig = str(rig_file("synthetic-1x4090"))
    for command in (("plan",), ("diff", "--root", str(tmp_path)), ("apply", "--dry-run")):
        result = run_provision(*command, "--rig", rig, "--profile", str(profile))
        assert result.returncode == 2, (command, result.stderr)
        assert "error: mixtral:8x22b@q8_0 cannot be placed: does not fit" in result.stderr
        assert "what would fit:" in result.stderr and "--allow-partial" in result.stderr


def test_allow_partial_serves_the_others_and_diff_prints_the_warnings(tmp_path: Path) -> None:
    profile = tmp_path / "too-big.yaml"
    profile.write_text(DROPPING)
    rig = str(rig_file("synthetic-1x4090"))
    common = ("--rig", rig, "--profile", str(profile), "--allow-partial")
    plan = run_provision("plan", *common)
    assert plan.returncode == 0 and "warning: mixtral:8x22b@q8_0 left out" in plan.stdout
    diff = run_provision("diff", *common, "--root", str(tmp_path))
    assert "warning: mixtral:8x22b@q8_0 left out" in diff.stderr
    as_json = run_provision("diff", *common, "--root", str(tmp_path), "--json")
    document = json.loads(as_json.stdout)
    assert any(w.startswith("mixtral:8x22b@q8_0 left out") for w in document["warnings"])


def test_errors_never_send_control_characters_and_stay_short(tmp_path: Path) -> None:
    """A value from input is quoted in the error: a terminal escape sequence in it is shown
    escaped, and a huge one is cut, so that the error stays one readable line."""
    sneaky = tmp_path / "rig\x1b[2J\x1b]0;pwned\x07.yaml"
    result = run_provision("probe", "--rig", str(sneaky))
    assert result.returncode == 2
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert "rig\\x1b[2J\\x1b]0;pwned\\x07.yaml" in result.stderr
    profile = tmp_path / "p.yaml"
    profile.write_text("models:\n  - ref: x\n    ctx: " + "y" * 50_000 + "\n")
    long = run_provision(
        "plan", "--rig", str(rig_file("synthetic-2x3090-x16-x8")), "--profile", str(profile)
    )
    assert long.returncode == 2
    (line,) = [line for line in long.stderr.splitlines() if line.startswith("error: ")]
    assert len(line) < 2100 and line.endswith("more characters)")
