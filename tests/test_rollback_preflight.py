"""A rollback (and an apply) either completes or leaves the tree as it found it: every path it
would write or remove is checked before the first change, and each one that blocks it is named.

Before this check a rollback whose manifest was a symlink restored some files, failed at the
manifest, and its own undo then stopped at the unreadable manifest too: exit 3 naming only the
manifest, the tree half old and half new.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from provision.paths import MANIFEST_PATH
from tests.test_apply import desired_file, provision, scratch_root, tree
from tests.test_plan import state_a, state_b


@pytest.fixture
def applied_twice(tmp_path: Path) -> Path:
    """A root after apply A then apply B: `rollback` would bring A's files back."""
    root = scratch_root(tmp_path / "root")
    for name, state in (("a", state_a()), ("b", state_b())):
        desired = desired_file(tmp_path, state, name)
        applied = provision("apply", "--yes", "--root", str(root), "--desired-json", str(desired))
        assert applied.returncode == 0, applied.stderr
    return root


def _symlink_aside(root: Path, target: str, elsewhere: Path) -> Path:
    path = root / target.lstrip("/")
    elsewhere.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(elsewhere)
    return path


def test_a_rollback_through_a_symlinked_manifest_changes_nothing(
    applied_twice: Path, tmp_path: Path
) -> None:
    manifest = _symlink_aside(applied_twice, MANIFEST_PATH, tmp_path / "manifest.real")
    before = tree(applied_twice)
    result = provision("rollback", "--yes", "--root", str(applied_twice))
    assert result.returncode == 3, result.stdout + result.stderr
    assert f"{manifest} is a symlink" in result.stderr and "nothing was changed" in result.stderr
    assert tree(applied_twice) == before
    assert manifest.is_symlink()


def test_every_path_that_blocks_a_rollback_is_named(applied_twice: Path, tmp_path: Path) -> None:
    env = _symlink_aside(applied_twice, "/etc/provision/ollama/0.env", tmp_path / "0.env")
    site = applied_twice / "etc/nginx/conf.d/provision-ollama.conf"
    site.unlink()
    site.mkdir()  # a directory where a file is to be restored
    before = tree(applied_twice)
    result = provision("rollback", "--yes", "--root", str(applied_twice))
    assert result.returncode == 3, result.stdout + result.stderr
    assert f"{env} is a symlink" in result.stderr
    assert f"{site} is not a regular file" in result.stderr
    assert tree(applied_twice) == before


def test_a_symlinked_directory_on_the_way_is_named_with_the_link(
    applied_twice: Path, tmp_path: Path
) -> None:
    real = tmp_path / "ollama.real"
    directory = applied_twice / "etc/provision/ollama"
    directory.rename(real)
    directory.symlink_to(real)
    before = tree(real)
    result = provision("rollback", "--yes", "--root", str(applied_twice))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "(via the symlink /etc/provision/ollama)" in result.stderr
    assert tree(real) == before


def test_an_apply_with_a_blocked_path_changes_nothing(applied_twice: Path, tmp_path: Path) -> None:
    """The same check runs before every apply (after the plan's own refusals)."""
    _symlink_aside(applied_twice, MANIFEST_PATH, tmp_path / "manifest.real")
    before = tree(applied_twice)
    desired = desired_file(tmp_path, state_a(), "a2")
    result = provision(
        "apply", "--yes", "--root", str(applied_twice), "--desired-json", str(desired)
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert "manifest.json" in result.stderr
    assert tree(applied_twice) == before
