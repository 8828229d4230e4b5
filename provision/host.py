"""Observing and changing the host under a root: files, systemd units, power limits, Ollama.

A read is a command (through provision.command.run) plus a pure parser, tested on recorded
outputs. Writes never follow a symlink: each directory on the way is opened with O_NOFOLLOW
relative to its parent, so a symlink swapped in between observing and writing is refused too.
Live mode (`--root /` on a host booted with systemd) reads and changes running services;
any other root is offline: files and unit enablement only (`systemctl --root`).
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from provision.command import run
from provision.desired import DesiredState, DesiredUnit
from provision.errors import HostError
from provision.manifest import MANIFEST_PATH
from provision.plan import normalize_model
from provision.plan_types import Observed, ObservedFile, ObservedUnit

SYSTEMD_RUNNING = Path("/run/systemd/system")  # what sd_booted() checks
OLLAMA_DEFAULT = ("127.0.0.1", 11434)
OLLAMA_TIMEOUT_S = 0.5  # a local API that does not answer this fast is treated as down
SHOW_PROPERTIES = (
    "LoadState",
    "UnitFileState",
    "ActiveState",
    "Result",
    "NeedDaemonReload",
    "InactiveExitTimestampMonotonic",
)
# Where systemd looks for system units (systemd.unit(5)); Debian's /lib is not merged everywhere.
UNIT_DIRS = (
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Host:
    root: Path
    live: bool

    @classmethod
    def at(cls, root: Path) -> Host:
        resolved = root.resolve()  # a symlink *to* the root is fine; inside it, never
        return cls(resolved, resolved == Path("/") and SYSTEMD_RUNNING.is_dir())

    def path(self, target: str) -> Path:
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
            import grp
            import pwd

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


# --- observing -----------------------------------------------------------------------------


def observe(host: Host, desired: DesiredState) -> Observed:
    manifest = read_manifest(host)
    recorded = manifest or {}
    paths = {f.path for f in desired.files}
    paths |= {str(f["path"]) for f in recorded.get("files", ()) if isinstance(f, Mapping)}
    units = [u.name for u in desired.units]
    units += [str(u.get("name")) for u in recorded.get("units", ()) if isinstance(u, Mapping)]
    for f in desired.files:
        units += [*f.restarts, *f.reloads]
    wants_power = bool(desired.power or recorded.get("power"))
    version, models = _first_answering_ollama(desired.units) if host.live else (None, None)
    return Observed(
        live=host.live,
        files={p: read_file(host, p) for p in sorted(paths)},
        units=unit_states(host, list(dict.fromkeys(units))),
        power_w=power_limits() if host.live and wants_power else None,
        ollama_models=models if desired.models else None,
        ollama_version=version,
        manifest=manifest,
    )


def read_file(host: Host, target: str) -> ObservedFile:
    link = _symlink_on_the_way(host, target)
    if link is not None:
        note = "" if link == target else f" (via the symlink {link})"
        return ObservedFile(target, "symlink", note=note)
    path = host.path(target)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return ObservedFile(target, "missing")
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            return ObservedFile(target, "other", note=" (a parent is not a directory)")
        raise HostError(f"{path}: cannot read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return ObservedFile(target, "other")
        data = handle.read()
    owner, group = host.names(info.st_uid, info.st_gid)
    return ObservedFile(target, "file", data, stat.S_IMODE(info.st_mode), owner, group)


def _symlink_on_the_way(host: Host, target: str) -> str | None:
    """The first component of target (itself included) that is a symlink under the root."""
    current = "/"
    for part in Path(target).parts[1:]:
        current = os.path.join(current, part)
        path = host.path(current)
        if path.is_symlink():
            return current
        if not path.is_dir():
            return None
    return None


def read_manifest(host: Host) -> dict[str, Any] | None:
    seen = read_file(host, MANIFEST_PATH)
    if seen.kind == "missing":
        return None
    hint = "move it aside; files it listed are then recognised only by their header"
    if seen.kind != "file":
        raise HostError(f"{host.path(MANIFEST_PATH)} is not a regular file", hint=hint)
    try:
        document = json.loads(seen.data)
    except ValueError as exc:
        raise HostError(f"{host.path(MANIFEST_PATH)}: not valid JSON: {exc}", hint=hint) from None
    if not isinstance(document, dict) or document.get("schema") != 1:
        raise HostError(f"{host.path(MANIFEST_PATH)}: not a schema 1 manifest", hint=hint)
    return document


def unit_states(host: Host, names: list[str]) -> dict[str, ObservedUnit]:
    if not names:
        return {}
    if host.live:
        props = ",".join(SHOW_PROPERTIES)
        result = run(host.systemctl("show", f"--property={props}", "--", *names)).check()
        return parse_systemctl_show(result.stdout, names)
    # One call for the units that have a unit file: systemctl prints nothing at all when any
    # one of them is missing, and each call costs ~100 ms through command.run.
    states = {n: ObservedUnit(n, "not-found") for n in names if not _has_unit_file(host, n)}
    present = [n for n in names if n not in states]
    if present:
        batch = run(host.systemctl("is-enabled", "--", *present))
        words = batch.stdout.split()
        if len(words) == len(present):
            states.update((n, ObservedUnit(n, w)) for n, w in zip(present, words, strict=True))
        else:
            states.update((n, ObservedUnit(n, _is_enabled(host, n))) for n in present)
    return {n: states[n] for n in names}


def _has_unit_file(host: Host, name: str) -> bool:
    """Whether any unit directory under an offline root holds the unit or its template."""
    candidates = [name]
    if "@" in name:
        prefix, _, rest = name.partition("@")
        candidates.append(f"{prefix}@.{rest.rsplit('.', 1)[-1]}")
    return any(
        os.path.lexists(host.path(f"{directory}/{candidate}"))
        for directory in UNIT_DIRS
        for candidate in candidates
    )


def _is_enabled(host: Host, name: str) -> str:
    result = run(host.systemctl("is-enabled", "--", name))
    word = result.stdout.strip()
    if word:
        return word
    if "No such file or directory" in result.stderr:
        return "not-found"
    result.check(hint="systemctl must be able to read the unit files under --root")
    return "unknown"


def parse_systemctl_show(text: str, names: list[str]) -> dict[str, ObservedUnit]:
    """`systemctl show --property=... A B` prints one block per unit, in argument order."""
    blocks = text.strip().split("\n\n") if text.strip() else []
    if len(blocks) != len(names):
        raise HostError(f"systemctl show: {len(blocks)} answers for {len(names)} units")
    states = {}
    for name, block in zip(names, blocks, strict=True):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        states[name] = _unit_from_show(name, props)
    return states


def _unit_from_show(name: str, props: Mapping[str, str]) -> ObservedUnit:
    load = props.get("LoadState", "")
    enabled = props.get("UnitFileState", "")
    if load in ("not-found", "masked"):
        enabled = load
    elif not enabled:
        enabled = "static"  # loaded without an install state: generated or transient
    ran_ok = props.get("Result") == "success" and props.get(
        "InactiveExitTimestampMonotonic", "0"
    ) not in ("", "0")
    return ObservedUnit(
        name=name,
        enabled=enabled,
        active=props.get("ActiveState") or None,
        ran_ok=ran_ok,
        needs_daemon_reload=props.get("NeedDaemonReload") == "yes",
    )


def power_limits() -> dict[str, float]:
    """Current limits by GPU UUID; empty when nvidia-smi cannot tell (the plan refuses then)."""
    query = ["nvidia-smi", "--query-gpu=uuid,power.limit", "--format=csv,noheader,nounits"]
    result = run(query)
    return parse_power_limits(result.stdout) if result.ok else {}


def parse_power_limits(text: str) -> dict[str, float]:
    limits = {}
    for line in text.splitlines():
        uuid, _, value = (part.strip() for part in line.partition(","))
        try:
            limits[uuid] = float(value)
        except ValueError:  # "[N/A]" on boards without power management
            continue
    return limits


def reachable(listen: tuple[str, int]) -> tuple[str, int]:
    """Where to connect to a service listening on `listen` (a wildcard: through loopback)."""
    host, port = listen
    return ("127.0.0.1" if host in ("0.0.0.0", "") else host, port)


def ollama_address(units: Iterable[DesiredUnit]) -> tuple[str, int]:
    for unit in units:
        if unit.name.startswith("ollama") and unit.listen is not None:
            return reachable(unit.listen)
    return OLLAMA_DEFAULT


def _first_answering_ollama(
    units: Iterable[DesiredUnit],
) -> tuple[str | None, frozenset[str] | None]:
    """Models live in one store: ask the planned instances, then the stock port, first to answer.

    Before a switch to replicas only the stock service runs; after it only the replicas do.
    """
    candidates = [
        reachable(u.listen) for u in units if u.name.startswith("ollama") and u.listen is not None
    ]
    for address in dict.fromkeys([*candidates, OLLAMA_DEFAULT]):
        version, models = ollama_state(address)
        if models is not None:
            return version, models
    return None, None


def ollama_state(address: tuple[str, int]) -> tuple[str | None, frozenset[str] | None]:
    """(version, installed models) from Ollama's API; (None, None) when it does not answer."""
    import urllib.request  # ~30 ms: only live runs pay for it

    base = f"http://{address[0]}:{address[1]}"
    try:
        with urllib.request.urlopen(f"{base}/api/version", timeout=OLLAMA_TIMEOUT_S) as reply:
            version = json.loads(reply.read()).get("version")
        with urllib.request.urlopen(f"{base}/api/tags", timeout=OLLAMA_TIMEOUT_S) as reply:
            models = parse_ollama_tags(reply.read())
    except (OSError, ValueError, AttributeError):
        return None, None
    return (version if isinstance(version, str) else None), models


def parse_ollama_tags(body: bytes) -> frozenset[str]:
    entries = json.loads(body).get("models") or []
    return frozenset(normalize_model(str(e["name"])) for e in entries if "name" in e)


# --- changing ------------------------------------------------------------------------------


def _open_dir(host: Host, target_dir: str, create: bool) -> int:
    """An fd of target_dir under the root, reached without following any symlink."""
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
        raise
    return fd


def write_atomic(host: Host, target: str, data: bytes, mode: int, uid: int, gid: int) -> None:
    """Old bytes or new bytes, never a mix: temp file in the same directory, fsync, rename."""
    directory, name = os.path.split(target)
    temp = f".{name}.provision-tmp"  # fixed name: a copy left by a crash is simply reused
    try:
        dir_fd = _open_dir(host, directory, create=True)
        try:
            _refuse_symlink(host, target, dir_fd, name)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(temp, flags, 0o600, dir_fd=dir_fd)
            try:
                _write_all(fd, data)
                os.fchown(fd, uid, gid)  # before chmod: chown clears set-id bits
                os.fchmod(fd, mode)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
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
    directory, name = os.path.split(target)
    try:
        dir_fd = _open_dir(host, directory, create=False)
    except FileNotFoundError:
        return
    try:
        os.unlink(name, dir_fd=dir_fd)
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
    parent, name = os.path.split(target_dir)
    dir_fd = _open_dir(host, parent, create=True)
    try:
        os.mkdir(name, mode, dir_fd=dir_fd)
        return True
    except FileExistsError:
        return False
    finally:
        os.close(dir_fd)


def open_lock_file(host: Host, target: str) -> int:
    directory, name = os.path.split(target)
    dir_fd = _open_dir(host, directory, create=True)
    try:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.open(name, flags, 0o644, dir_fd=dir_fd)
    except OSError as exc:
        raise HostError(f"{host.path(target)}: cannot open the lock: {exc.strerror}") from None
    finally:
        os.close(dir_fd)
