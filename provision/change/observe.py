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
import shlex
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from provision import ollama
from provision.change.actions import Observed, ObservedFile, ObservedUnit
from provision.change.foreign import configured_units
from provision.change.host import Host, list_dir
from provision.change.manifest import shape_problem
from provision.command import run
from provision.desired import DesiredState, DesiredUnit
from provision.documents import load_json
from provision.errors import HostError
from provision.paths import (
    MANIFEST_PATH,
    NVIDIA_SMI_POWER_QUERY,
    OLLAMA_UNIT,
    UNIT_DIRS,
    reachable,
    stock_ollama_beside,
    template_of,
    unsafe_target,
)
from provision.systemd import (
    dropin_dirs,
    environment_files,
    merge_order,
    sourced_environment,
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
    beside = stock_ollama_beside(u.name for u in desired.units)
    if beside:
        units.append(OLLAMA_UNIT)
    states = unit_states(host, list(dict.fromkeys(units)))
    version, models = None, None
    if host.live:
        starting = any(
            s.active in STARTING_STATES for n, s in states.items() if n.startswith("ollama")
        )
        settle_s = OLLAMA_SETTLE_S if starting and desired.models else 0.0
        version, models = first_answering_ollama(desired.units, settle_s)
    files = {p: read_file(host, p) for p in sorted(paths)}
    sources = unit_sources(host, configured_units(desired))
    files.update(_source_files(host, sources, files))
    return Observed(
        live=host.live,
        files=files,
        unit_sources=sources,
        units=states,
        power_w=power_limits(wanted_power) if host.live and wanted_power else None,
        ollama_models=models if desired.models else None,
        ollama_version=version,
        manifest=manifest,
        stock_ollama_devices=_stock_ollama_devices(host) if beside and host.live else None,
    )


def _stock_ollama_devices(host: Host) -> tuple[str, ...] | None:
    result = run(host.systemctl("show", "--property=Environment", "--", OLLAMA_UNIT))
    return parse_visible_devices(result.stdout) if result.ok else None


# The variables that restrict which GPUs a CUDA or ROCm process sees (placement/visibility.py).
VISIBILITY_VARIABLES = (
    "CUDA_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "GPU_DEVICE_ORDINAL",
)


def parse_visible_devices(text: str) -> tuple[str, ...]:
    """The devices `systemctl show --property=Environment` names in the visibility variables
    (space-separated assignments, quoted as systemd.exec(5) allows); empty when none is set."""
    line = next((x for x in text.splitlines() if x.startswith("Environment=")), "")
    try:
        words = shlex.split(line.removeprefix("Environment="))
    except ValueError:
        words = line.removeprefix("Environment=").split()
    devices: list[str] = []
    for word in words:
        key, _, value = word.partition("=")
        if key in VISIBILITY_VARIABLES:
            devices += [d.strip() for d in value.split(",") if d.strip()]
    return tuple(devices)


def unit_sources(host: Host, units: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Every unit file and drop-in on the host that could configure each unit (systemd picks
    and orders them: provision.systemd.fragment_of and dropin_order)."""
    found = {}
    for unit in units:
        names = dict.fromkeys([unit, template_of(unit)])
        paths = [f"{d}/{name}" for d in UNIT_DIRS for name in names if _exists(host, f"{d}/{name}")]
        for directory in UNIT_DIRS:
            for name in dropin_dirs(unit):
                where = f"{directory}/{name}"
                paths += [f"{where}/{f}" for f in _listing(host, where) if f.endswith(".conf")]
        found[unit] = tuple(paths)
    return found


def stock_ollama_store(host: Host) -> str | None:
    """OLLAMA_MODELS as the host's own ollama.service (its unit file and every drop-in, ours
    too) sets it; None when it does not (Ollama then uses its user's ~/.ollama/models)."""
    paths = unit_sources(host, [OLLAMA_UNIT])[OLLAMA_UNIT]
    files = _source_files(host, {OLLAMA_UNIT: paths}, {})
    texts = {p: f.data.decode("utf-8", "replace") for p, f in files.items() if f.kind == "file"}
    sources = [(p, texts.get(p, "")) for p in merge_order(OLLAMA_UNIT, paths)]
    env = sourced_environment(OLLAMA_UNIT, sources, texts.get)
    store = env.get("OLLAMA_MODELS")
    return store.value if store is not None and store.value else None


def _exists(host: Host, target: str) -> bool:
    return os.path.lexists(host.path(target))


def _listing(host: Host, target_dir: str) -> Iterable[str]:
    try:
        return list_dir(host, target_dir)
    except HostError:  # reached through a symlink (merged /usr: /lib -> usr/lib): seen there
        return []


def _source_files(
    host: Host, sources: Mapping[str, tuple[str, ...]], known: Mapping[str, ObservedFile]
) -> dict[str, ObservedFile]:
    """The unit files and drop-ins not read yet, and the environment files they name."""
    files: dict[str, ObservedFile] = {}
    for unit, paths in sources.items():
        for path in paths:
            seen = known.get(path) or files.get(path) or read_file(host, path)
            files[path] = seen
            text = seen.data.decode("utf-8", "replace")
            for env_path in environment_files(unit, text):
                if env_path not in known and unsafe_target(env_path) is None:
                    files[env_path] = read_file(host, env_path)
    return {p: f for p, f in files.items() if p not in known}


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
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # a directory, FIFO, socket or device: never read
        os.close(fd)
        return ObservedFile(target, "other")
    with os.fdopen(fd, "rb") as handle:
        data = handle.read()
    owner, group = host.names(info.st_uid, info.st_gid)
    return ObservedFile(target, "file", data, stat.S_IMODE(info.st_mode), owner, group)


def _symlink_on_the_way(host: Host, target: str) -> str | None:
    """The first component of target (itself included) that is a symlink under the root."""
    current = "/"
    for part in Path(target).parts[1:]:
        current = os.path.join(current, part)
        try:
            mode = os.lstat(host.path(current)).st_mode
        except OSError:  # missing, or a name too long to look up: read_file says which
            return None
        if stat.S_ISLNK(mode):
            return current
        if not stat.S_ISDIR(mode):
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
        document = load_json(seen.data)
    except ValueError as exc:  # a DocumentError too: too large, too deep, a 5,000-digit number
        raise HostError(f"{host.path(MANIFEST_PATH)}: not valid JSON: {exc}", hint=hint) from None
    if not isinstance(document, dict) or document.get("schema") != 1:
        raise HostError(f"{host.path(MANIFEST_PATH)}: not a schema 1 manifest", hint=hint)
    recorded_paths(document.get("files"), f"{host.path(MANIFEST_PATH)}: files", hint)
    problem = shape_problem(document)
    if problem is not None:
        raise HostError(f"{host.path(MANIFEST_PATH)}: {problem}", hint=hint)
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
    _refuse_special_unit_files(host)
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


def _refuse_special_unit_files(host: Host) -> None:
    """`systemctl --root` opens what the unit directories hold, and a FIFO there blocks it
    until our timeout, with an error that names no file: name each FIFO, socket or device in
    a unit directory or one of its `.d`/`.wants`/`.requires` folders first. (A symlink, such
    as a masked unit's to /dev/null, is systemctl's to follow.)"""
    special = []
    for directory in UNIT_DIRS:
        folders = [host.path(directory)]
        for folder in folders:
            try:
                entries = list(os.scandir(folder))
            except OSError:  # missing, or not a directory: systemctl reports that itself
                continue
            for entry in entries:
                if entry.is_symlink():
                    continue
                if entry.is_dir() and folder == folders[0]:
                    folders.append(Path(entry.path))
                elif not entry.is_dir() and not entry.is_file():
                    special.append(entry.path)
    if special:
        raise HostError(
            "not a regular file in a unit directory: " + ", ".join(sorted(special)),
            hint="remove it (a FIFO, socket or device): systemctl would block reading it",
        )


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
