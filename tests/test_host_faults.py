"""Faults of the host under `apply`: a full disk (bytes or inodes), directories provision may
not write, a lock file that is no file. Each is exit 3 naming the path (or 4, rolled back,
when it strikes after the first change), never a traceback, and leaves no temporary file.

The disks are real: a tiny tmpfs mounted under the root (CI runs as root). The refused
directories are real too: the command runs without CAP_DAC_OVERRIDE (setpriv), so 0555 means
what it means to a non-root operator.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from provision.change import host as host_module
from provision.change.host import Host, write_atomic
from provision.errors import HostError
from tests.helpers import REPO_ROOT
from tests.test_apply import desired_file, scratch_root
from tests.test_plan import state_a

# Without these a root process ignores file modes (capabilities(7)).
_NO_OVERRIDE = "-dac_override,-dac_read_search,-fowner"


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("needs root to mount a tmpfs (CI runs as root)")


@pytest.fixture
def a_json(tmp_path: Path) -> Path:
    return desired_file(tmp_path, state_a(), "a")


@pytest.fixture
def small_disk(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A root on a tmpfs mounted with the options the test is parametrized with."""
    _needs_root()
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", request.param, "tmpfs", str(mount)], check=True)
    try:
        yield scratch_root(mount / "root")
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def _apply(root: Path, desired: Path, *prefix: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "provision", "apply", "--yes", "--root", str(root)]
    result = subprocess.run(
        [*prefix, *argv, "--desired-json", str(desired)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _leftovers(root: Path) -> list[Path]:
    return sorted(root.rglob("*.provision-tmp"))


@pytest.mark.parametrize(
    ("small_disk", "where"),
    [
        ("size=8k", "index.json: cannot write: No space left on device"),  # bytes, in the backup
        ("size=1m,nr_inodes=8", "provision.lock: cannot open the lock: No space left"),  # inodes
        ("size=1m,nr_inodes=14", "cannot write: No space left on device"),
    ],
    indirect=["small_disk"],
)
def test_a_full_disk_is_a_host_error_and_leaves_no_temporary_file(
    small_disk: Path, a_json: Path, where: str
) -> None:
    result = _apply(small_disk, a_json)
    assert result.returncode == 3, result.stdout + result.stderr
    assert f"error: {small_disk}/" in result.stderr and where in result.stderr
    assert _leftovers(small_disk) == []


@pytest.mark.parametrize("small_disk", ["size=1m,nr_inodes=20"], indirect=True)
def test_a_disk_full_after_the_first_change_rolls_back(small_disk: Path, a_json: Path) -> None:
    result = _apply(small_disk, a_json)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "No space left on device" in result.stderr and "restored from backup" in result.stderr
    assert _leftovers(small_disk) == []
    assert not (small_disk / "etc/nginx/conf.d/provision-ollama.conf").exists()


def test_write_atomic_removes_its_temporary_file_when_a_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(host_module.os, "write", full)
    with pytest.raises(HostError, match=r"x\.conf: cannot write: No space left on device"):
        write_atomic(Host(tmp_path, live=False), "/etc/x.conf", b"data\n", 0o644, 0, 0)
    assert os.listdir(tmp_path / "etc") == []


@pytest.mark.parametrize(
    ("read_only", "message"),
    [
        ("run/lock", "run/lock/provision.lock: cannot open the lock: Permission denied"),
        ("var/lib/provision/backups", "/var/lib/provision/backups/"),
        ("var/lib/provision", "var/lib/provision/backups: cannot open or create"),
    ],
)
def test_a_directory_provision_may_not_write_is_a_host_error(
    tmp_path: Path, a_json: Path, read_only: str, message: str
) -> None:
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.fail("needs root and setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
    root = scratch_root(tmp_path / "root")
    (root / read_only).mkdir(parents=True)
    (root / read_only).chmod(0o555)
    drop = ["setpriv", f"--inh-caps={_NO_OVERRIDE}", f"--bounding-set={_NO_OVERRIDE}"]
    result = _apply(root, a_json, *drop)
    assert result.returncode == 3, result.stdout + result.stderr
    assert message in result.stderr, result.stderr
    assert not (root / "etc/nginx").exists()


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_lock_file_that_is_no_regular_file_is_refused(
    tmp_path: Path, a_json: Path, kind: str
) -> None:
    root = scratch_root(tmp_path / "root")
    lock = root / "run/lock/provision.lock"
    lock.parent.mkdir(parents=True)
    os.mkfifo(lock) if kind == "fifo" else lock.mkdir()
    result = _apply(root, a_json)
    assert result.returncode == 3, result.stdout + result.stderr
    assert f"error: {lock}" in result.stderr
    assert not (root / "var").exists()


@pytest.mark.parametrize(
    "special",
    ["etc/systemd/system/ollama.service.d/99-local.conf", "etc/systemd/system/x.service"],
)
def test_a_fifo_in_a_unit_directory_is_named_not_waited_on(
    tmp_path: Path, a_json: Path, special: str
) -> None:
    """systemctl --root would block opening it (until our 10 s timeout, naming no file)."""
    root = scratch_root(tmp_path / "root")
    (root / special).parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(root / special)
    argv = ["diff", "--root", str(root), "--desired-json", str(a_json)]
    result = subprocess.run(
        [sys.executable, "-m", "provision", *argv],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert f"error: not a regular file in a unit directory: {root / special}" in result.stderr
