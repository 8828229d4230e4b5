"""The backups as a history: one summary per backup (`rollback --list`), and pruning.

Retention: a backup is removed only when it is neither among the KEEP_BACKUPS newest nor younger
than KEEP_BACKUP_DAYS (its timestamp is its name), and never when it is the one a plain
`rollback` restores next or the one the current manifest's apply made. Pruning runs after every
completed apply and rollback. Reads through provision.change.observe and backup, removes through
provision.change.host.
"""

from __future__ import annotations

import json
from collections.abc import Sequence, Set
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from provision.change.backup import (
    list_backups,
    next_to_restore,
    rollback_target,
    rolled_back,
    stamp_order,
)
from provision.change.host import Host, remove_tree
from provision.change.observe import read_file, read_manifest
from provision.paths import BACKUPS_DIR, KEEP_BACKUP_DAYS, KEEP_BACKUPS

STAMP_FORMAT = "%Y%m%dT%H%M%SZ"  # backup.py's directory names


@dataclass(frozen=True, kw_only=True)
class BackupSummary:
    stamp: str
    profile: str | None  # None: not recorded (an older backup), or a rollback's
    undoes: str | None  # a rollback's backup: the backup it restored
    files: int | None  # files the change touched; None: the index cannot be read
    units: int | None  # units it restarted, stopped, enabled or disabled
    failed: bool  # the change failed and was undone at once
    next_rollback: bool  # what a plain `provision rollback` restores

    def line(self) -> str:
        if self.undoes is not None:
            what = f"rollback to before {self.undoes}"
        else:
            what = f"apply of {self.profile or '(profile not recorded)'}"
        if self.files is None:
            changed = "index unreadable"
        else:
            changed = f"{self.files} file(s), {self.units} unit(s)"
        line = f"{self.stamp}  {what}: {changed}"
        if self.failed:
            line += (
                f"  ({'apply' if self.undoes is None else 'rollback'} failed and was rolled back)"
            )
        if self.next_rollback:
            line += "  <- next 'provision rollback' restores this"
        return line


def _index(host: Host, stamp: str) -> dict[str, object] | None:
    try:
        data = json.loads(read_file(host, f"{BACKUPS_DIR}/{stamp}/index.json").data)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _count(values: object) -> int | None:
    return len(values) if isinstance(values, list) else None


def summaries(host: Host) -> list[BackupSummary]:
    """Every complete backup, oldest first, with what its change was."""
    stamps = list_backups(host)
    indexes = {s: _index(host, s) or {} for s in stamps}
    failed = {s for s in stamps if rolled_back(host, s)}
    restores = {s: u for s, i in indexes.items() if isinstance(u := i.get("undoes"), str)}
    target = next_to_restore(stamps, failed, restores)
    result = []
    for stamp in stamps:
        index = indexes[stamp]
        units = [index.get(k) for k in ("restarted", "enabled", "disabled")]
        names = {u for group in units if isinstance(group, list) for u in group}
        profile = index.get("profile")
        result.append(
            BackupSummary(
                stamp=stamp,
                profile=profile if isinstance(profile, str) else None,
                undoes=restores.get(stamp),
                files=_count(index.get("files")),
                units=len(names) if _count(index.get("files")) is not None else None,
                failed=stamp in failed,
                next_rollback=stamp == target,
            )
        )
    return result


def backup_time(stamp: str) -> datetime | None:
    try:
        return datetime.strptime(stamp.partition("-")[0], STAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def to_prune(
    stamps: Sequence[str],
    now: datetime,
    protected: Set[str],
    keep: int = KEEP_BACKUPS,
    days: int = KEEP_BACKUP_DAYS,
) -> list[str]:
    """The backups the retention drops (pure): beyond the `keep` newest and older than `days`,
    not protected. A name that is not a timestamp is never old."""
    newest = set(sorted(stamps, key=stamp_order)[-keep:]) if keep > 0 else set()
    cutoff = now - timedelta(days=days)
    old = []
    for stamp in stamps:
        when = backup_time(stamp)
        if stamp in newest or stamp in protected or when is None or when >= cutoff:
            continue
        old.append(stamp)
    return old


def prune(host: Host, now: datetime) -> list[str]:
    """Remove what the retention drops; the stamps removed."""
    protected = {rollback_target(host)}
    last_apply = (read_manifest(host) or {}).get("last_apply")
    if isinstance(last_apply, dict):
        protected.add(last_apply.get("backup"))
    removed = to_prune(list_backups(host), now, {p for p in protected if isinstance(p, str)})
    for stamp in removed:
        remove_tree(host, f"{BACKUPS_DIR}/{stamp}")
    return removed
