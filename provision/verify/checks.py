"""The manifest -> the checks `provision verify` runs, and the verdicts on what they see. Pure.

A check is named `KIND:TARGET` (e.g. `unit:ollama.service`, `port:127.0.0.1:11434`); the id is
stable, so a test or a script can say exactly which checks failed. Under an offline root only
files and unit enablement can be checked; on a live host (root /) every kind is.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from provision.ollama import normalize_model
from provision.paths import (
    ENABLED_STATES,
    NGINX_UNIT,
    OLLAMA_UNIT,
    RUNNING_STATES,
    SYSTEMD_DIR,
    UPSTREAM_HEADER,
    WILDCARDS,
    host_port,
    http_url,
    template_of,
)

HTTP_TIMEOUT_S = 5


class CheckKind(StrEnum):
    FILE = "file"  # exists, with the recorded sha256, mode, owner and group
    UNIT = "unit"  # enabled (or not) and active (oneshot: ran this boot and succeeded)
    PORT = "port"  # something listens on exactly this address
    ENV = "env"  # the main process has the environment the managed files give it
    # no file provision does not manage overrides a setting the managed files give the unit
    OVERRIDE = "override"
    NGINX = "nginx"  # the balancer answers /api/version on its public address, from each replica
    OLLAMA = "ollama"  # an Ollama instance answers /api/version directly
    MODEL = "model"  # the public Ollama endpoint lists the model in /api/tags
    POWER = "power"  # nvidia-smi (AMD: hwmon power1_cap) reports the planned power limit
    LOADED = "loaded"  # --loaded: once loaded, the model sits where the plan put it


@dataclass(frozen=True)
class Check:
    kind: CheckKind
    target: str
    expect: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.target}"


class ManifestError(ValueError):
    """The manifest does not have the shape apply writes."""


def checks_for(manifest: Mapping[str, Any], live: bool, loaded: bool = False) -> tuple[Check, ...]:
    """Every check the manifest implies, in a fixed order (files, units, then live checks);
    `loaded` adds one `loaded` check per planned model and service (see loaded_checks)."""
    if manifest.get("schema") != 1:
        raise ManifestError("not a schema 1 manifest")
    files = _records(manifest, "files", ("path", "sha256", "mode", "owner", "group"))
    units = _records(manifest, "units", ("name", "enabled", "active"))
    checks = [_file_check(f) for f in files]
    checks += [
        Check(
            CheckKind.UNIT,
            str(u["name"]),
            {"enabled": bool(u["enabled"]), "active": bool(u["active"]), "oneshot": _oneshot(u)},
        )
        for u in units
    ]
    overrides = (_sources_check(CheckKind.OVERRIDE, str(u["name"]), files) for u in units)
    checks += [c for c in overrides if c is not None]
    if not live:
        return tuple(checks)
    running = [u for u in units if u["active"] and not _oneshot(u)]
    ports = _records(manifest, "ports", ("unit", "host", "port"))
    checks += [
        Check(CheckKind.PORT, host_port((str(p["host"]), int(p["port"]))), {"unit": str(p["unit"])})
        for p in ports
    ]
    environments = (_sources_check(CheckKind.ENV, str(u["name"]), files) for u in running)
    checks += [c for c in environments if c is not None]
    checks += _http_checks(running)
    public_unit, public = _public_address(running)
    for model in _records(manifest, "models", ("name",)):
        name = normalize_model(str(model["name"]))
        checks.append(Check(CheckKind.MODEL, name, {"address": public, "unit": public_unit}))
    for power in _records(manifest, "power", ("uuid", "target_w")):
        expect = {"target_w": power["target_w"], "device": power.get("device")}
        checks.append(Check(CheckKind.POWER, str(power["uuid"]), expect))
    if loaded:
        checks += loaded_checks(manifest, running)
    return tuple(checks)


def _records(manifest: Mapping[str, Any], key: str, fields: Sequence[str]) -> list[Any]:
    records = manifest.get(key, [])
    if not isinstance(records, list):
        raise ManifestError(f"'{key}' is not a list")
    for index, record in enumerate(records):
        if not isinstance(record, dict) or any(f not in record for f in fields):
            raise ManifestError(f"{key}[{index}] lacks one of {', '.join(fields)}")
    return records


def _oneshot(unit: Mapping[str, Any]) -> bool:
    return bool(unit.get("oneshot", False))


def _file_check(record: Mapping[str, Any]) -> Check:
    try:
        mode = int(str(record["mode"]), 8)
    except ValueError:
        raise ManifestError(f"{record['path']}: mode {record['mode']!r} is not octal") from None
    expect = {
        "sha256": str(record["sha256"]),
        "mode": mode,
        "owner": str(record["owner"]),
        "group": str(record["group"]),
    }
    return Check(CheckKind.FILE, str(record["path"]), expect)


def _listen(unit: Mapping[str, Any]) -> tuple[str, int] | None:
    listen = unit.get("listen")
    if not isinstance(listen, str) or ":" not in listen:
        return None
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def _is_ollama(name: str) -> bool:
    return name == OLLAMA_UNIT or (name.startswith("ollama@") and name.endswith(".service"))


def _http_checks(running: Sequence[Mapping[str, Any]]) -> list[Check]:
    checks = []
    upstreams = [
        host_port(listen)
        for u in running
        if u["name"] != NGINX_UNIT and (listen := _listen(u)) is not None
    ]
    for unit in running:
        listen = _listen(unit)
        if listen is None:
            continue
        if unit["name"] == NGINX_UNIT:
            expect = {"url": http_url(*listen), "upstreams": upstreams}
            checks.append(Check(CheckKind.NGINX, host_port(listen), expect))
        elif _is_ollama(str(unit["name"])):
            expect = {"url": http_url(*listen), "unit": unit["name"]}
            checks.append(Check(CheckKind.OLLAMA, host_port(listen), expect))
    return checks


def _public_address(running: Sequence[Mapping[str, Any]]) -> tuple[str, str | None]:
    """(unit, URL) where clients reach Ollama: the balancer when there is one, else the first
    instance; ("", None) when nothing serves it."""
    for wanted in (lambda n: n == NGINX_UNIT, _is_ollama):
        for unit in running:
            listen = _listen(unit)
            if listen is not None and wanted(str(unit["name"])):
                return str(unit["name"]), http_url(*listen)
    return "", None


# --- units ----------------------------------------------------------------------------------

UNIT_PROPERTIES = (
    "LoadState",
    "UnitFileState",
    "ActiveState",
    "SubState",
    "Result",
    "ExecMainStatus",
    "ExecMainExitTimestampMonotonic",
    "RemainAfterExit",
)


def parse_show(text: str) -> dict[str, str]:
    """`systemctl show --property=...` of one unit -> {property: value}."""
    pairs = (line.partition("=") for line in text.splitlines() if "=" in line)
    return {key: value for key, _, value in pairs}


def unit_verdict(props: Mapping[str, str], expect: Mapping[str, Any]) -> tuple[bool, str]:
    """Enabled and active as the manifest says. A oneshot must have run and succeeded in this
    boot: systemd's unit state starts empty at every boot, so an exit timestamp means this one.
    """
    if props.get("LoadState") in ("not-found", "masked"):
        return False, f"{props['LoadState']}, wanted {_on(expect)}"
    enabled_ok, enabled = enablement_verdict(props.get("UnitFileState") or "static", expect)
    active_ok, active = _activity(props, expect)
    if enabled_ok and active_ok:
        return True, f"{enabled}, {active}"
    return False, f"{enabled}{' but' if enabled_ok else ';'} {active}"


def enablement_verdict(state: str, expect: Mapping[str, Any]) -> tuple[bool, str]:
    """`state` is systemctl's UnitFileState (or is-enabled's word)."""
    ok = (state in ENABLED_STATES) == expect["enabled"]
    return ok, state if ok else f"{state}, wanted {_on(expect)}"


def _on(expect: Mapping[str, Any]) -> str:
    return "enabled" if expect["enabled"] else "disabled"


def _activity(props: Mapping[str, str], expect: Mapping[str, Any]) -> tuple[bool, str]:
    active, sub = props.get("ActiveState", "unknown"), props.get("SubState", "?")
    result, status = props.get("Result", "?"), props.get("ExecMainStatus", "?")
    if not expect["active"]:
        running = active in RUNNING_STATES
        return not running, f"{active} ({sub}), wanted stopped" if running else "not active"
    if expect["oneshot"]:
        if props.get("ExecMainExitTimestampMonotonic", "0") in ("", "0"):
            return False, "has not run since boot"
        if result != "success" or status != "0":
            return False, f"ran this boot and failed ({result}, exit status {status})"
        if props.get("RemainAfterExit") == "yes" and active != "active":
            return False, f"ran this boot, then stopped ({active})"  # ExecStop= undid it
        return True, "ran this boot and succeeded"
    if active != "active":
        return False, f"not active ({active}/{sub}, result {result})"
    return True, f"active ({sub})"


# --- addresses and HTTP --------------------------------------------------------------------


def curl_argv(url: str, data: str | None = None, timeout_s: float = HTTP_TIMEOUT_S) -> str:
    """A shell command that prints the body, a newline and the HTTP status (000: no answer);
    with `data`, a POST of that JSON."""
    post = (
        ""
        if data is None
        else f"-H 'Content-Type: application/json' --data-binary {shlex.quote(data)} "
    )
    return f"curl -sS --max-time {timeout_s:g} -w '\\n%{{http_code}}' {post}{shlex.quote(url)}"


def parse_curl(stdout: str) -> tuple[int, str]:
    body, _, code = stdout.rpartition("\n")
    return (int(code) if code.strip().isdigit() else 0), body


def repeated_curl_argv(url: str, times: int, timeout_s: float = HTTP_TIMEOUT_S) -> str:
    """GET `url` `times` times over one connection (curl reuses it for a repeated URL, so one
    nginx worker answers them all, in its balancing order), printing each response's headers."""
    discard = " ".join(["-o /dev/null"] * times)
    urls = " ".join([shlex.quote(url)] * times)
    return f"curl -sS --max-time {timeout_s:g} -D - {discard} {urls}"


def answered_by(headers: str) -> list[str]:
    """The replica that answered each response, from the site's UPSTREAM_HEADER: nginx's
    $upstream_addr lists every upstream tried, comma-separated; the last one answered."""
    found = []
    for line in headers.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() == UPSTREAM_HEADER.lower():
            found.append(value.split(",")[-1].strip())
    return found


def reached_verdict(answered: Sequence[str], upstreams: Sequence[str]) -> tuple[bool, str]:
    """Every replica answered at least one of the requests sent through the balancer."""
    if not answered:
        return False, f"no {UPSTREAM_HEADER} header in the answers: not the planned site?"
    counts = {u: answered.count(u) for u in dict.fromkeys([*upstreams, *answered])}
    seen = ", ".join(f"{u} x{n}" for u, n in counts.items() if n)
    missing = [u for u in upstreams if not counts[u]]
    if missing:
        return False, f"{', '.join(missing)} answered none of {len(answered)} requests ({seen})"
    return True, f"each replica answered through it ({seen})"


def parse_version(body: str) -> str | None:
    try:
        version = json.loads(body).get("version")
    except (ValueError, AttributeError):
        return None
    return version if isinstance(version, str) else None


# --- listening sockets ---------------------------------------------------------------------


def listeners(ss_output: str, port: int) -> list[str]:
    """Local addresses of listening TCP sockets on `port`, from `ss -Hltn`."""
    found = []
    for line in ss_output.splitlines():
        words = line.split()
        if len(words) < 4:
            continue
        local = words[3] if not words[0].isdigit() else words[2]  # with or without State
        host, _, text = local.rpartition(":")
        if text == str(port):
            found.append(host_port((host.strip("[]").split("%", 1)[0], port)))
    return found


def listen_verdict(ss_output: str, host: str, port: int) -> tuple[bool, str]:
    """Exactly the expected address: a wildcard where loopback was planned exposes the port."""
    found = listeners(ss_output, port)
    wildcards = [a for a in found if a.rpartition(":")[0].strip("[]") in WILDCARDS]
    expected = host_port((host, port))
    if not found:
        return False, f"nothing listens on port {port}"
    if host in WILDCARDS:
        return bool(wildcards), ", ".join(found)
    if wildcards:
        return False, f"listens on {', '.join(wildcards)}, not only on {expected}"
    if expected not in found:
        return False, f"port {port} is open on {', '.join(found)}, not on {expected}"
    return True, f"listening on {expected}"


# --- environments ----------------------------------------------------------------------------


def env_sources(unit: str, files: Sequence[Mapping[str, Any]]) -> list[str]:
    """Managed unit files that configure `unit`: its unit file (or template), then drop-ins
    ordered by file name, as systemd applies them."""
    names = {unit, template_of(unit)}
    main, dropins = [], []
    for record in files:
        path = str(record["path"])
        if not path.startswith(SYSTEMD_DIR + "/"):
            continue
        head, _, tail = path[len(SYSTEMD_DIR) + 1 :].partition("/")
        if not tail and head in names:
            main.append(path)
        elif tail.endswith(".conf") and "/" not in tail and head.removesuffix(".d") in names:
            dropins.append(path)
    return sorted(main) + sorted(dropins, key=lambda p: p.rsplit("/", 1)[-1])


def _sources_check(kind: CheckKind, unit: str, files: Sequence[Mapping[str, Any]]) -> Check | None:
    """A check over the files systemd merges for the unit (its environment, or the managed
    settings an override would take away); None when the manifest has none for it."""
    sources = env_sources(unit, files)
    if not sources:
        return None
    managed = {str(f["path"]): str(f["sha256"]) for f in files}
    return Check(kind, unit, {"sources": sources, "managed": managed})


# --- placement once loaded (--loaded) ---------------------------------------------------------

# How far a GPU's measured use may be from the plan: 10% of the planned bytes or 512 MiB,
# whichever is larger (CUDA's context and the runtime's own buffers are not in the plan).
LOADED_TOLERANCE_FRACTION = 0.10
LOADED_TOLERANCE_FLOOR_BYTES = 512 * 2**20
LOAD_FIELDS = ("model", "unit", "runtime", "keep_alive", "gpus", "cpu_layers", "cpu_bytes")


def loaded_checks(manifest: Mapping[str, Any], running: Sequence[Mapping[str, Any]]) -> list[Check]:
    """One check per planned load (a model on a service), named `loaded:UNIT/MODEL`. Each
    carries the other loads too: what they hold on a GPU is not this model's."""
    if "loads" not in manifest:
        raise ManifestError("records no planned placement (written before --loaded existed)")
    address = {str(u["name"]): http_url(*listen) for u in running if (listen := _listen(u))}
    loads = []
    for load in _records(manifest, "loads", LOAD_FIELDS):
        gpus = [
            {"uuid": str(g["uuid"]), "index": int(g["index"]), "bytes": int(g["footprint_bytes"])}
            for g in load["gpus"]
        ]
        loads.append(
            {
                "model": normalize_model(str(load["model"])),
                "unit": str(load["unit"]),
                "address": address.get(str(load["unit"])),
                "runtime": str(load["runtime"]),
                "keep_alive": load["keep_alive"],
                "gpus": gpus,
                "cpu_bytes": int(load["cpu_bytes"]),
            }
        )
    return [
        Check(
            CheckKind.LOADED,
            f"{load['unit']}/{load['model']}",
            load | {"others": [o for o in loads if o is not load]},
        )
        for load in loads
    ]


def tolerance_bytes(planned_bytes: int) -> int:
    return max(int(planned_bytes * LOADED_TOLERANCE_FRACTION), LOADED_TOLERANCE_FLOOR_BYTES)


def parse_ps(body: str, model: str) -> tuple[int, int] | None:
    """(size, size_vram) of `model` in Ollama's GET /api/ps answer (api.ProcessModelResponse,
    server/routes.go PsHandler); None when it is not loaded."""
    for entry in json.loads(body).get("models") or []:
        if normalize_model(str(entry.get("model") or entry.get("name"))) == model:
            return int(entry.get("size") or 0), int(entry.get("size_vram") or 0)
    return None


def parse_memory_used(text: str) -> dict[str, tuple[int, int]]:
    """`nvidia-smi --query-gpu=index,uuid,memory.used --format=csv,noheader,nounits` ->
    {uuid: (index, used bytes)}; a GPU without a reading ([N/A]) is left out."""
    found = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[0].isdigit() and parts[2].isdigit():
            found[parts[1]] = (int(parts[0]), int(parts[2]) * 2**20)
    return found


def _gib(value: int) -> str:
    return f"{value / 2**30:.1f} GiB"


def _gpu_list(indices: Sequence[int]) -> str:
    return ", ".join(f"GPU {i}" for i in sorted(indices)) or "no GPU"


def placement_verdict(
    expect: Mapping[str, Any],
    sizes: tuple[int, int],
    measured: Mapping[str, tuple[int, int]] | None,
) -> tuple[bool, str]:
    """Where a loaded model sits against the plan.

    `sizes`: (size, size_vram) as the runtime reports them; `measured`: {uuid: (index, bytes
    this model holds there)} from the GPUs' own readings, None when they cannot be read. The
    model must sit on exactly the planned GPUs (a GPU holds it when it gained more than the
    tolerance floor), spill nothing to the CPU unless planned, and use each planned GPU within
    tolerance_bytes of the plan."""
    size, vram = sizes
    planned = {g["uuid"]: (g["index"], g["bytes"]) for g in expect["gpus"]}
    problems = []
    spill = size - vram
    if spill > 0 and not expect["cpu_bytes"]:
        problems.append(f"{_gib(spill)} of {_gib(size)} on the CPU, planned all on GPU")
    unread = [index for uuid, (index, _) in planned.items() if uuid not in (measured or {})]
    if measured is None or unread:
        if problems:
            return False, "; ".join(problems)
        why = "no nvidia-smi" if measured is None else f"nvidia-smi lacks {_gpu_list(unread)}"
        return True, f"loaded, {_gib(vram)} in VRAM (per-GPU use not read: {why})"
    on = {u for u, (_, used) in measured.items() if used > LOADED_TOLERANCE_FLOOR_BYTES}
    label = {u: index for u, (index, _) in [*measured.items(), *planned.items()]}
    if on != set(planned):
        problems.append(
            f"on {_gpu_list([label[u] for u in on])}, planned "
            f"{_gpu_list([label[u] for u in planned])}"
        )
    readings = []
    for uuid in sorted(set(planned) | on, key=lambda u: label[u]):
        want = planned.get(uuid, (label[uuid], 0))[1]
        used = measured.get(uuid, (label[uuid], 0))[1]
        readings.append(f"GPU {label[uuid]} {_gib(used)} (planned {_gib(want)})")
        if uuid in planned and abs(used - want) > tolerance_bytes(want) and on == set(planned):
            problems.append(
                f"GPU {label[uuid]} holds {_gib(used)}, planned {_gib(want)} "
                f"(tolerance {_gib(tolerance_bytes(want))})"
            )
    if problems:
        return False, "; ".join(problems) + ": " + ", ".join(readings)
    return True, f"on {_gpu_list([label[u] for u in planned])} as planned: " + ", ".join(readings)
