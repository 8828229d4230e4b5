"""`systemd-analyze verify` on every rendered unit of every golden case; any output fails.

Warnings (unknown keys, bad values) exit 0, so the output is what counts (TESTING.md). The root
each case runs against is described in tests/systemd_root.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from provision.desired import DesiredState
from provision.paths import OLLAMA_UNIT
from tests.golden_cases import CASES, Case, rendered
from tests.systemd_root import make_root, require, units_to_verify, verify

UNIT_CASES = [c for c in CASES if rendered(c).desired is not None]


def test_systemd_analyze_is_installed() -> None:
    require("systemd-analyze")


def _desired(case: Case) -> DesiredState:
    desired = rendered(case).desired
    assert desired is not None
    return desired


@pytest.mark.parametrize("case", UNIT_CASES, ids=lambda c: c.id)
def test_rendered_units_verify_cleanly(case: Case, tmp_path: Path) -> None:
    desired = _desired(case)
    root = make_root(tmp_path, desired)
    units = units_to_verify(desired)
    assert units, "every case renders at least one unit or drop-in"
    result = verify(root, units)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not output, f"{' '.join(units)}:\n{output}"


@pytest.mark.parametrize("case", UNIT_CASES, ids=lambda c: c.id)
def test_every_started_unit_of_ours_is_verified(case: Case) -> None:
    """Nothing we enable escapes verification (nginx.service is Debian's, not ours)."""
    desired = _desired(case)
    ours = {u.name for u in desired.units if u.enabled and u.name != "nginx.service"}
    assert ours <= set(units_to_verify(desired))


@pytest.mark.parametrize("case", UNIT_CASES, ids=lambda c: c.id)
def test_replica_environment_files_exist(case: Case) -> None:
    """verify does not open EnvironmentFile=: check that every replica's file is rendered."""
    desired = _desired(case)
    paths = {f.path for f in desired.files}
    for unit in desired.units:
        if unit.name.startswith("ollama@") and unit.enabled:
            number = unit.name.removeprefix("ollama@").removesuffix(".service")
            assert f"/etc/provision/ollama/{number}.env" in paths


# --- the harness catches what it must: without these, a silent verify proves nothing ---------


def test_verify_reports_a_missing_executable(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / "usr/local/bin/ollama").unlink()
    result = verify(root, [OLLAMA_UNIT])
    assert "/usr/local/bin/ollama is not executable" in result.stdout + result.stderr


def test_verify_reports_a_typo_in_a_drop_in(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    dropin = root / "etc/systemd/system/ollama.service.d/50-provision.conf"
    dropin.parent.mkdir(parents=True)
    dropin.write_text('[Service]\nEnviroment="OLLAMA_HOST=127.0.0.1:11434"\n')
    result = verify(root, [OLLAMA_UNIT])
    assert "Unknown key 'Enviroment'" in result.stdout + result.stderr


def test_verify_reports_an_unescaped_specifier(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    unit = root / "etc/systemd/system/bad.service"
    unit.write_text("[Service]\nExecStart=/usr/local/bin/llama-server -m /srv/models/50%Q.gguf\n")
    result = verify(root, ["bad.service"])
    assert "Failed to resolve unit specifiers" in result.stdout + result.stderr


def test_stock_root_alone_verifies_cleanly(tmp_path: Path) -> None:
    """The stock ollama.service and the targets are clean, so any output is ours."""
    root = make_root(tmp_path)
    result = verify(root, [OLLAMA_UNIT, "nvidia-persistenced.service"])
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip()
