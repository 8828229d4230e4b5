"""Observing the host under a root: files, systemd units, power limits, Ollama -> Observed.

A read is a command (through provision.command.run) plus a pure parser, tested on recorded
outputs. A file is read without following a symlink on the way. Live mode (`--root /` on a
host booted with systemd) reads running services; any other root is offline: files and unit
enablement only (`systemctl --root`).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from provision import ollama
from provision.change.actions import Observed, ObservedFile, ObservedUnit
from provision.change.host import Host
from provision.command import run
from provision.desired import DesiredState, DesiredUnit
from provision.errors import HostError
from provision.paths import (
    MANIFEST_PATH,
    NVIDIA_SMI_POWER_QUERY,
    UNIT_DIRS,
    reachable,
    template_of,
    unsafe_target,
)
from provision.units import MICROWATTS

OLLAMA_TIMEOUT_S = 0.5  # a local API that does not answer this fast is treated as down
OLLAMA_SETTLE_S = 10.0  # how long a running Ollama unit may take to listen (right after a boot)
OLLAMA_RETRY_S = 0.25
STARTING_STATES = ("active", "reloading")  # forked, maybe not listening yet (not a crash loop)
SHOW_PROPERTIES = (
    "LoadState",
    "UnitFileState",
    "ActiveState",
    "Result",
    "NeedDaemonReload",
    "InactiveExitTimestampMonotonic",
)


def observe(host: Host, desired: DesiredState) -> Observed:
    manifest = read_manifest(host)
    recorded = manifest or {}
    paths = {f.path for f in desired.files}
    paths |= {str(f["path"]) for f in recorded.get("files", ()) if isinstance(f, Mapping)}
    units = [u.name for u in desired.units]
    units += [str(u.get("name")) for u in recorded.get("units", ()) if isinstance(u, Mapping)]
    for f in desired.files:
        units += [*f.restarts, *f.reloads]
    wanted_power = [(p.uuid, p.device) for p in desired.power] + [
        (str(p.get("uuid")), p.get("device"))
        for p in recorded.get("power", ())
        if isinstance(p, Mapping)
    ]
    states = unit_states(host, list(dict.fromkeys(units)))
    version, models = None, None
    if host.live:
        starting = any(
            s.active in STARTING_STATES for n, s in states.items() if n.startswith("ollama")
        )
        settle_s = OLLAMA_SETTLE_S if starting and desired.models else 0.0
        version, models = first_answering_ollama(desired.units, settle_s)
    return Observed(
        live=host.live,
        files={p: read_file(host, p) for p in sorted(paths)},
        units=states,
        power_w=power_limits(wanted_power) if host.live and wanted_power else None,
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
    recorded_paths(document.get("files"), f"{host.path(MANIFEST_PATH)}: files", hint)
    return document


def recorded_paths(entries: object, where: str, hint: str) -> None:
    """Refuse a record whose files are not a list of objects with a safe path: the paths are
    removed, restored and chmod-ed later, and must stay under the root."""
    if entries is None:
        return
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise HostError(f"{where}: not a list of objects", hint=hint)
    for n, entry in enumerate(entries):
        path = entry.get("path")
        why = unsafe_target(path) if isinstance(path, str) else "not a string"
        if why is not None:
            raise HostError(f"{where}[{n}].path {path!r}: {why}", hint=hint)


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
    candidates = list(dict.fromkeys([name, template_of(name)]))
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


def power_limits(gpus: Iterable[tuple[str, object]]) -> dict[str, float]:
    """Current limits by GPU UUID, for (uuid, AMD device directory or None) pairs; a GPU whose
    limit cannot be read is absent (the plan refuses to set it then)."""
    limits: dict[str, float] = {}
    amd = {uuid: device for uuid, device in gpus if isinstance(device, str)}
    if any(not isinstance(device, str) for _, device in gpus):
        result = run(["nvidia-smi", *NVIDIA_SMI_POWER_QUERY])
        limits.update(parse_power_limits(result.stdout) if result.ok else {})
    for uuid, device in amd.items():
        cap = amd_power_cap(device)
        if cap is not None:
            limits[uuid] = cap
    return limits


def amd_power_cap(device: str) -> float | None:
    """An AMD card's cap in watts, from power1_cap (microwatts) of the hwmon below its PCI
    directory (amdgpu pm/amdgpu_pm.c); None when it cannot be read."""
    for hwmon in sorted(Path(device, "hwmon").glob("hwmon*")):
        try:
            text = (hwmon / "power1_cap").read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            return int(text) / MICROWATTS
    return None


def parse_power_limits(text: str) -> dict[str, float]:
    limits = {}
    for line in text.splitlines():
        uuid, _, value = (part.strip() for part in line.partition(","))
        try:
            limits[uuid] = float(value)
        except ValueError:  # "[N/A]" on boards without power management
            continue
    return limits


def ollama_address(units: Iterable[DesiredUnit]) -> tuple[str, int]:
    for unit in units:
        if unit.name.startswith("ollama") and unit.listen is not None:
            return reachable(unit.listen)
    return ollama.DEFAULT_ADDRESS


def first_answering_ollama(
    units: Iterable[DesiredUnit],
    settle_s: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[str | None, frozenset[str] | None]:
    """Models live in one store: ask the planned instances, then the stock port, first to answer.

    Before a switch to replicas only the stock service runs; after it only the replicas do.
    Right after a boot a service is active before it listens: with `settle_s` (an Ollama unit
    is running) the round is repeated until one answers or that time is up, so a model is not
    reported missing only because the API was not up yet.
    """
    candidates = [
        reachable(u.listen) for u in units if u.name.startswith("ollama") and u.listen is not None
    ]
    addresses = list(dict.fromkeys([*candidates, ollama.DEFAULT_ADDRESS]))
    deadline = clock() + settle_s
    while True:
        for address in addresses:
            version, models = ollama_state(address)
            if models is not None:
                return version, models
        if clock() + OLLAMA_RETRY_S > deadline:
            return None, None
        sleep(OLLAMA_RETRY_S)


def ollama_state(address: tuple[str, int]) -> tuple[str | None, frozenset[str] | None]:
    """(version, installed models) from Ollama's API; (None, None) when it does not answer."""
    import urllib.request  # ~30 ms: only live runs pay for it

    base = f"http://{address[0]}:{address[1]}"
    try:
        with urllib.request.urlopen(f"{base}/api/version", timeout=OLLAMA_TIMEOUT_S) as reply:
            version = json.loads(reply.read()).get("version")
        with urllib.request.urlopen(f"{base}/api/tags", timeout=OLLAMA_TIMEOUT_S) as reply:
            models = ollama.parse_tags(reply.read())
    except (OSError, ValueError, AttributeError):
        return None, None
    return (version if isinstance(version, str) else None), models
