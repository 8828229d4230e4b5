"""The target host under a root, and changing it: atomic writes, removals, directories, a lock.

Writes never follow a symlink: each directory on the way is opened with O_NOFOLLOW relative to
its parent, so a symlink swapped in between observing and writing is refused too. Live mode
(`--root /` on a host booted with systemd) changes running services; any other root is
offline: files and unit enablement only (`systemctl --root`).
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import shutil
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from provision.errors import HostError
from provision.paths import SYSTEMD_RUNNING, unsafe_target

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Host:
    root: Path
    live: bool

    @classmethod
    def at(cls, root: Path) -> Host:
        resolved = root.resolve()  # a symlink *to* the root is fine; inside it, never
        return cls(resolved, resolved == Path("/") and Path(SYSTEMD_RUNNING).is_dir())

    def path(self, target: str) -> Path:
        confine(target)
        return self.root / target.lstrip("/")

    def systemctl(self, *args: str) -> list[str]:
        if self.live:
            return ["systemctl", *args]
        return ["systemctl", f"--root={self.root}", *args]

    @cached_property
    def accounts(self) -> tuple[dict[str, int], dict[str, int]]:
        """user -> uid and group -> gid, as the target host sees them."""
        users = _parse_id_file(self.path("/etc/passwd"))
        groups = _parse_id_file(self.path("/etc/group"))
        if self.live or not users:  # a bare scratch root has no account files: use this host's
            users = users or {p.pw_name: p.pw_uid for p in pwd.getpwall()}
            groups = groups or {g.gr_name: g.gr_gid for g in grp.getgrall()}
        return users, groups

    def ids(self, owner: str, group: str) -> tuple[int, int]:
        users, groups = self.accounts
        if owner not in users or group not in groups:
            missing = f"user '{owner}'" if owner not in users else f"group '{group}'"
            raise HostError(
                f"{missing} does not exist on the target ({self.path('/etc/passwd').parent})",
                hint="install the runtime first (its package creates the account)",
            )
        return users[owner], groups[group]

    def names(self, uid: int, gid: int) -> tuple[str, str]:
        users, groups = self.accounts
        user = next((n for n, i in users.items() if i == uid), str(uid))
        return user, next((n for n, i in groups.items() if i == gid), str(gid))


def _parse_id_file(path: Path) -> dict[str, int]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {}
    ids: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[2].isdigit():
            ids.setdefault(fields[0], int(fields[2]))
    return ids


def confine(target: str) -> str:
    """``target`` when provision may touch it (paths.unsafe_target), else a host error: the
    one check every path read or written here passes, recorded ones included."""
    why = unsafe_target(target)
    if why is not None:
        raise HostError(
            f"refusing the path {target!r}: {why}; provision only touches paths under its root",
            hint="a manifest or backup index naming it was edited or is corrupt: move "
            "/var/lib/provision aside (files are then recognised by their header)",
        )
    return target


def _open_dir(host: Host, target_dir: str, create: bool) -> int:
    """An fd of target_dir under the root, reached without following any symlink."""
    confine(target_dir)
    fd = os.open(host.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    walked = ""
    try:
        for part in Path(target_dir).parts[1:]:
            walked += "/" + part
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):  # a concurrent run made it first
                    os.mkdir(part, 0o755, dir_fd=fd)
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise HostError(
                f"{host.path(walked)} is a symlink or not a directory: provision never "
                "writes through one",
                hint="replace it with a real directory, or point --root elsewhere",
            ) from None
        if isinstance(exc, FileNotFoundError) and not create:
            raise  # the callers' "nothing there"
        # a read-only tree, a full disk, no permission: a host error that names the directory
        raise HostError(f"{host.path(walked)}: cannot open or create: {exc.strerror}") from None
    return fd


def write_atomic(host: Host, target: str, data: bytes, mode: int, uid: int, gid: int) -> None:
    """Old bytes or new bytes, never a mix: temp file in the same directory, fsync, rename."""
    directory, name = os.path.split(confine(target))
    temp = f".{name}.provision-tmp"  # fixed name: a copy left by a crash is simply reused
    try:
        dir_fd = _open_dir(host, directory, create=True)
        try:
            _refuse_symlink(host, target, dir_fd, name)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(temp, flags, 0o600, dir_fd=dir_fd)
            try:
                try:
                    _write_all(fd, data)
                    os.fchown(fd, uid, gid)  # before chmod: chown clears set-id bits
                    os.fchmod(fd, mode)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                # A full disk or an interrupt: leave no half-written copy behind (only a
                # SIGKILL can, and the next run reuses it).
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=dir_fd)
                raise
            os.fsync(dir_fd)  # the rename itself must survive a power cut
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise HostError(f"{host.path(target)}: cannot write: {exc.strerror}") from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _refuse_symlink(host: Host, target: str, dir_fd: int, name: str) -> None:
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise HostError(
            f"{host.path(target)} is a symlink: provision never writes through one",
            hint="remove the symlink (or put the real file there) and run apply again",
        )


def remove_file(host: Host, target: str) -> None:
    _remove(host, target, os.unlink)


def remove_tree(host: Host, target_dir: str) -> None:
    """Remove target_dir and everything in it (a pruned backup); absent already is fine.

    rmtree relative to the parent's fd, which it walks without following symlinks
    (shutil.rmtree.avoids_symlink_attacks on Linux): a link inside never leads out of it.
    """
    _remove(host, target_dir, shutil.rmtree)


def _remove(host: Host, target: str, remover: Callable[..., object]) -> None:
    """`remover(name, dir_fd=...)` in target's parent, opened without following a symlink on
    the way; a target (or parent) already absent is fine."""
    parent, name = os.path.split(confine(target))
    try:
        dir_fd = _open_dir(host, parent, create=False)
    except FileNotFoundError:
        return
    try:
        remover(name, dir_fd=dir_fd)
        os.fsync(dir_fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise HostError(f"{host.path(target)}: cannot remove: {exc.strerror}") from None
    finally:
        os.close(dir_fd)


def list_dir(host: Host, target_dir: str) -> Iterable[str]:
    try:
        dir_fd = _open_dir(host, target_dir, create=False)
    except FileNotFoundError:
        return []
    try:
        return sorted(os.listdir(dir_fd))
    finally:
        os.close(dir_fd)


def make_dir(host: Host, target_dir: str, mode: int = 0o700) -> bool:
    """Create target_dir (its parents as needed); False when it exists already."""
    parent, name = os.path.split(confine(target_dir))
    dir_fd = _open_dir(host, parent, create=True)
    try:
        os.mkdir(name, mode, dir_fd=dir_fd)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        raise HostError(f"{host.path(target_dir)}: cannot create: {exc.strerror}") from None
    finally:
        os.close(dir_fd)


def open_lock_file(host: Host, target: str) -> int:
    """The lock file, opened read-write: a regular file (a FIFO or device there is refused,
    as a symlink is, before anything writes the holder's PID into it)."""
    directory, name = os.path.split(confine(target))
    dir_fd = _open_dir(host, directory, create=True)
    try:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        fd = os.open(name, flags, 0o644, dir_fd=dir_fd)
    except OSError as exc:
        raise HostError(f"{host.path(target)}: cannot open the lock: {exc.strerror}") from None
    finally:
        os.close(dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise HostError(
            f"{host.path(target)} is not a regular file: provision cannot lock with it",
            hint="remove it; provision creates the lock file itself",
        )
    return fd
