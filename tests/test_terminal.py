"""Nothing from input reaches the terminal as a control character: the probe table, a plan, a
fit and a diff of a hand-edited file show escape sequences, carriage returns and bidi overrides
escaped (cli/terminal.py), and a diff's own colours still work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from provision.cli.main import cli
from provision.cli.terminal import printable
from tests.test_apply import desired_file, provision, scratch_root
from tests.test_plan import state_a

HOSTILE = "\x1b]0;owned\x07\x1b[2J\r\u202eRTX\x9b"
RAW = ("\x1b", "\x07", "\r", "\u202e", "\x9b")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text\twith a tab\nand lines", "plain text\twith a tab\nand lines"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("over\rwrite", "over\\rwrite"),
        ("a\u202eb\u2066c", "a\\u202eb\\u2066c"),
        ("c1 \x9b and del \x7f", "c1 \\x9b and del \\x7f"),
        ("ünïcödé and 模型", "ünïcödé and 模型"),
    ],
)
def test_printable(text: str, shown: str) -> None:
    assert printable(text) == shown


@pytest.fixture
def hostile_rig(tmp_path: Path) -> Path:
    plain = yaml.safe_load(Path("tests/rigs/synthetic-2x3090-x16-x8.yaml").read_text())
    plain["gpus"][0]["name"] = f"NVIDIA {HOSTILE}"
    plain["host"]["hostname"] = f"box{HOSTILE}"
    path = tmp_path / "rig.json"
    path.write_text(json.dumps(plain))
    return path


@pytest.mark.parametrize(
    "command",
    [["probe"], ["plan"], ["fit", "llama3.1:8b"], ["probe", "--json"], ["plan", "--json"]],
)
def test_values_from_a_snapshot_are_shown_escaped(hostile_rig: Path, command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--rig", str(hostile_rig)])
    assert result.exit_code == 0, result.output
    assert not any(c in result.output for c in RAW), repr(result.output)
    if "--json" not in command:
        assert "\\x1b]0;owned\\x07" in result.output


def test_a_hand_edited_file_in_a_diff_is_shown_escaped(tmp_path: Path) -> None:
    root = scratch_root(tmp_path / "root")
    desired = desired_file(tmp_path, state_a(), "a")
    assert (
        provision("apply", "--yes", "--root", str(root), "--desired-json", str(desired)).returncode
        == 0
    )
    env = root / "etc/provision/ollama/0.env"
    env.write_text(env.read_text() + f"# {HOSTILE}\n")
    result = provision("diff", "--root", str(root), "--desired-json", str(desired))
    assert result.returncode == 1, result.stderr
    assert not any(c in result.stdout for c in RAW), repr(result.stdout)
    # The diff splits the file's lines at the carriage return, as Python's splitlines does.
    assert "-# \\x1b]0;owned\\x07\\x1b[2J\n-\\u202eRTX\\x9b\n" in result.stdout
