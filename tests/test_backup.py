"""Backups as a history: which one a plain rollback restores (one step back at a time), the
retention that prunes them, `rollback --list` and `rollback --dry-run`, against temp roots."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from provision.change.backup import next_to_restore
from provision.change.history import to_prune
from tests.test_apply import NGINX_UNIT, desired_file, provision, scratch_root, tree
from tests.test_plan import state_a, state_b

BACKUPS = "var/lib/provision/backups"


@pytest.mark.parametrize(
    ("stamps", "failed", "undone_by", "expected"),
    [
        # applies a, b, c: the last one
        (["a1", "b2", "c3"], set(), {}, "c3"),
        # c failed and was undone at once: b
        (["a1", "b2", "c3"], {"c3"}, {}, "b2"),
        # a rollback r restored c: the next step is b, not c again (no ping-pong)
        (["a1", "b2", "c3", "r4"], set(), {"r4": "c3"}, "b2"),
        # a second rollback restored b: then a
        (["a1", "b2", "c3", "r4", "r5"], set(), {"r4": "c3", "r5": "b2"}, "a1"),
        # and after the third nothing is left
        (["a1", "b2", "c3", "r4", "r5", "r6"], set(), {"r4": "c3", "r5": "b2", "r6": "a1"}, None),
        # `--to a` went back past b and c at once: b and c are undone too
        (["a1", "b2", "c3", "r4"], set(), {"r4": "a1"}, None),
        # a new apply d after a rollback: d is the step back
        (["a1", "b2", "r3", "d4"], set(), {"r3": "b2"}, "d4"),
        # a rollback that failed (undone at once) changed nothing: c again
        (["a1", "b2", "c3", "r4"], {"r4"}, {"r4": "c3"}, "c3"),
        # the backup a rollback restored was pruned since: still skipped by time
        (["b2", "c3", "r4"], set(), {"r4": "a1"}, None),
    ],
)
def test_a_plain_rollback_steps_back_one_apply_at_a_time(
    stamps: list[str], failed: set[str], undone_by: dict[str, str], expected: str | None
) -> None:
    # Stamps here sort by name like real ones ("20261203T081500Z", then "-2").
    named = {s: f"2026120{s[1]}T000000Z" for s in stamps + list(undone_by.values())}
    real = [named[s] for s in stamps]
    result = next_to_restore(
        real, {named[s] for s in failed}, {named[r]: named[u] for r, u in undone_by.items()}
    )
    assert result == (named[expected] if expected else None)


def test_the_retention_keeps_the_newest_the_young_and_the_protected() -> None:
    now = datetime(2026, 12, 3, tzinfo=UTC)
    old = [f"202601{d:02d}T000000Z" for d in range(1, 13)]  # 12 backups, all older than 30 days
    young = ["20261125T000000Z", "20261125T000000Z-2"]  # 8 days old
    stamps = [*old, *young]
    # 14 backups: the 10 newest stay (2 young, 8 old), the 4 oldest go unless protected.
    assert to_prune(stamps, now, set()) == old[:4]
    assert to_prune(stamps, now, {old[1]}) == [old[0], old[2], old[3]]
    # Age alone never drops a young one, however many there are.
    many = [f"20261201T0000{n:02d}Z" for n in range(20)]
    assert to_prune(many, now, set()) == []
    # A directory whose name is not a timestamp is never old.
    assert to_prune(["not-a-stamp", *young], now, set(), keep=0) == []


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return scratch_root(tmp_path / "root")


def _apply(root: Path, desired: Path) -> None:
    done = provision("apply", "--yes", "--root", str(root), "--desired-json", str(desired))
    assert done.returncode == 0, done.stderr


def _rollback(root: Path, *extra: str) -> object:
    return provision("rollback", "--root", str(root), *extra)


def test_rollback_steps_back_and_lists_one_line_per_backup(root: Path, tmp_path: Path) -> None:
    a, b = desired_file(tmp_path, state_a(), "a"), desired_file(tmp_path, state_b(), "b")
    empty = tree(root)
    _apply(root, a)
    after_a = tree(root)
    _apply(root, b)
    first = _rollback(root, "--yes")
    assert first.returncode == 0, first.stderr
    assert tree(root) == after_a
    # The second rollback goes one further back, not forth to b again.
    second = _rollback(root, "--yes")
    assert second.returncode == 0, second.stderr
    assert tree(root) == empty == {"/lib/systemd/system/nginx.service": NGINX_UNIT.encode()}
    third = _rollback(root, "--yes")
    assert third.returncode == 3 and "no earlier backup to step back to" in third.stderr
    lines = _rollback(root, "--list").stdout.splitlines()
    assert len(lines) == 4
    stamps = [line.split()[0] for line in lines]
    assert lines[0] == f"{stamps[0]}  apply of {a}: 7 file(s), 4 unit(s)"
    assert lines[1].startswith(f"{stamps[1]}  apply of {b}: ")
    assert lines[2].startswith(f"{stamps[2]}  rollback to before {stamps[1]}: ")
    assert lines[3].startswith(f"{stamps[3]}  rollback to before {stamps[0]}: ")
    assert not any("<- next" in line for line in lines)  # nothing left to step back to
    listing = json.loads(_rollback(root, "--list", "--json").stdout)["backups"]
    assert [e["backup"] for e in listing] == stamps
    assert listing[2]["undoes"] == stamps[1] and listing[0]["profile"] == str(a)
    assert {"rolled_back", "files", "units", "next_rollback"} <= set(listing[0])
    # A new apply is the next step back again.
    _apply(root, b)
    assert (
        _rollback(root, "--list")
        .stdout.splitlines()[-1]
        .endswith("<- next 'provision rollback' restores this")
    )


def test_rollback_dry_run_shows_the_restore_and_changes_nothing(root: Path, tmp_path: Path) -> None:
    _apply(root, desired_file(tmp_path, state_a(), "a"))
    before = tree(root)
    dry = _rollback(root, "--dry-run")
    assert dry.returncode == 1, dry.stderr
    assert "remove-file /etc/provision/ollama/0.env" in dry.stdout
    assert "dry run: nothing was changed (would restore backup" in dry.stdout
    assert tree(root) == before
    document = json.loads(_rollback(root, "--dry-run", "--json").stdout)
    assert document["in_sync"] is False and document["actions"]
    assert _rollback(root, "--yes").returncode == 0
    # Restored already: --to that backup again has nothing to do.
    stamp = _rollback(root, "--list").stdout.split()[0]
    assert _rollback(root, "--dry-run", "--to", stamp).returncode == 0


def test_a_completed_apply_prunes_backups_beyond_the_retention(root: Path, tmp_path: Path) -> None:
    base = root / BACKUPS
    old = [f"202001{d:02d}T000000Z" for d in range(1, 13)]
    for stamp in old:
        (base / stamp / "files").mkdir(parents=True)
        (base / stamp / "index.json").write_text(json.dumps({"files": [], "undoes": None}))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("not a backup")
    (base / old[0] / "files" / "link").symlink_to(outside)  # pruning never follows it
    desired = desired_file(tmp_path, state_a(), "a")
    done = provision("apply", "--yes", "--root", str(root), "--desired-json", str(desired))
    assert done.returncode == 0, done.stderr
    # 13 backups, all but the new one years old: the 10 newest stay.
    assert f"pruned 3 old backup(s): {', '.join(old[:3])}" in done.stdout
    left = sorted(p.name for p in base.iterdir())
    assert len(left) == 10 and left[:9] == old[3:]
    assert (outside / "precious").read_text() == "not a backup"
