"""The verify suite: one pytest-testinfra test per check, parametrized from the manifest.

`provision verify` runs this module (see runner.py); it also runs on its own under any pytest
with pytest-testinfra: `pytest --hosts=ssh://gpu-box provision/verify/suite.py`. A test fails
with one line that says what differs (`pytest.fail(..., pytrace=False)`); a passing test records
what it saw as the `detail` user property.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shlex
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import pytest

from provision import systemd
from provision.change.manifest import sha256
from provision.change.observe import parse_power_limits
from provision.change.plan_power import POWER_TOLERANCE_W
from provision.ollama import parse_tags
from provision.paths import (
    NGINX_UNIT,
    NVIDIA_SMI_POWER_QUERY,
    UNIT_DIRS,
    UPSTREAM_HEADER,
    template_of,
)
from provision.units import MICROWATTS
from provision.verify import checks as c
from provision.verify.checks import Check, CheckKind
from provision.verify.runner import DETAIL, TARGETS, Target, standalone_targets

Record = Callable[[str, object], None]
SETTLE_S = 10.0  # for a service that is active but not listening yet, e.g. right after a boot


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "check" not in metafunc.fixturenames:
        return
    targets = metafunc.config.stash.get(TARGETS, None)
    if targets is None:
        targets = metafunc.config.stash[TARGETS] = standalone_targets(metafunc.config)
    kind = CheckKind(metafunc.definition.name.removeprefix("test_"))
    several = len(targets) > 1
    params = [
        pytest.param(t, check, id=f"{t.name}|{check.id}" if several else check.id)
        for t in targets
        for check in t.checks
        if check.kind is kind
    ]
    metafunc.parametrize(("target", "check"), params)


def fail(message: str) -> NoReturn:
    pytest.fail(message, pytrace=False)


def _run(target: Target, command: str, *args: str) -> Any:
    return target.host.run(command, *args)


def test_file(target: Target, check: Check, record_property: Record) -> None:
    want = check.expect
    path = target.path(check.target)
    seen = _run(target, "stat -c '%%F|%%a|%%U|%%G' -- %s && sha256sum -- %s", path, path)
    lines = seen.stdout.splitlines()
    if not lines:
        fail("missing" if "No such file" in seen.stderr else f"cannot stat: {seen.stderr.strip()}")
    kind, mode_text, owner, group = lines[0].split("|")
    if kind not in ("regular file", "regular empty file"):
        fail(f"is a {kind}, not a regular file: apply never writes through one")
    if len(lines) < 2:
        fail(f"cannot read: {seen.stderr.strip()}")
    sha256 = lines[1].split()[0]
    mode = int(mode_text, 8)
    problems = []
    if sha256 != want["sha256"]:
        problems.append(f"content changed (sha256 {sha256[:12]}, applied {want['sha256'][:12]})")
    if mode != want["mode"]:
        problems.append(f"mode {mode:04o}, applied {want['mode']:04o}")
    if (owner, group) != (want["owner"], want["group"]):
        problems.append(f"owner {owner}:{group}, applied {want['owner']}:{want['group']}")
    if problems:
        fail("; ".join(problems))
    record_property(DETAIL, f"sha256 {sha256[:12]}, mode {mode:04o}, {owner}:{group}")


def test_unit(target: Target, check: Check, record_property: Record) -> None:
    if not target.live:  # an offline tree: only whether it would start at boot
        seen = _run(target, "systemctl --root=%s is-enabled -- %s", target.root, check.target)
        state = seen.stdout.strip() or "not-found"
        ok, detail = c.enablement_verdict(state, check.expect)
        if not ok:
            fail(detail)
        record_property(DETAIL, f"{detail} (offline root: running state not checked)")
        return
    ok, detail = c.unit_verdict(_show(target, check.target, c.UNIT_PROPERTIES), check.expect)
    if not ok:
        fail(detail)
    record_property(DETAIL, detail)


def _show(target: Target, unit: str, properties: tuple[str, ...]) -> dict[str, str]:
    seen = _run(target, "systemctl show --property=%s -- %s", ",".join(properties), unit)
    if seen.rc != 0:
        fail(f"systemctl show failed: {seen.stderr.strip()}")
    return c.parse_show(seen.stdout)


def _settled(target: Target, unit: str, probe: Callable[[], tuple[bool, str]]) -> str:
    """Run probe until it passes while its unit is still starting (right after a boot a
    service is active before it listens): at most SETTLE_S per unit and run, shared by all
    the checks of that unit; a stopped or crash-looping unit fails at once."""
    ok, detail = probe()
    deadline = target.deadlines.setdefault(unit, time.monotonic() + SETTLE_S)
    while not ok and time.monotonic() < deadline and _starting(target, unit):
        time.sleep(0.25)
        ok, detail = probe()
    if not ok:
        target.deadlines[unit] = 0.0  # it had its chance: the next check does not wait
        fail(detail)
    return detail


def _starting(target: Target, unit: str) -> bool:
    props = _show(target, unit, ("ActiveState", "SubState"))
    state, sub = props.get("ActiveState"), props.get("SubState")
    return state in ("active", "reloading") or (state == "activating" and sub != "auto-restart")


def test_port(target: Target, check: Check, record_property: Record) -> None:
    host, _, port = check.target.rpartition(":")
    unit = check.expect["unit"]

    def probe() -> tuple[bool, str]:
        seen = _run(target, "ss -Hltn")
        if seen.rc != 0:
            return False, f"cannot list listening sockets: ss: {seen.stderr.strip() or seen.rc}"
        ok, detail = c.listen_verdict(seen.stdout, host.strip("[]"), int(port))
        return ok, f"{detail} ({unit})" if ok else f"{detail} (wanted for {unit})"

    record_property(DETAIL, _settled(target, unit, probe))


def _managed_text(target: Target, path: str, managed: dict[str, str]) -> str:
    seen = _run(target, "cat -- %s", target.path(path))
    if seen.rc != 0 or sha256(seen.stdout_bytes) != managed[path]:
        fail(f"cannot tell the expected environment: {path} is not what apply wrote")
    return str(seen.stdout)


def _unit_sources(target: Target, unit: str) -> list[str]:
    """Every unit file and drop-in on the target that could configure the unit (systemd's
    rules in provision.systemd pick and order them); live, also those systemd has loaded."""
    names = dict.fromkeys([unit, template_of(unit)])
    dirs = [target.path(f"{d}/{n}") for d in UNIT_DIRS for n in systemd.dropin_dirs(unit)]
    units = [target.path(f"{d}/{n}") for d in UNIT_DIRS for n in names]
    script = (
        'for f in "$@"; do case "$f" in *.d) for c in "$f"/*.conf; do [ -f "$c" ] && '
        'echo "$c"; done;; *) [ -e "$f" ] && echo "$f";; esac; done; true'
    )
    placeholders = " ".join(["%s"] * (len(units) + len(dirs)))
    seen = _run(target, f"sh -c %s sh {placeholders}", script, *units, *dirs)
    found = [line for line in seen.stdout.splitlines() if line]
    if target.live:
        props = _show(target, unit, ("FragmentPath", "DropInPaths"))
        found += [props.get("FragmentPath", ""), *props.get("DropInPaths", "").split()]
    root = "" if target.live else target.root.rstrip("/")
    return [p.removeprefix(root) for p in dict.fromkeys(found) if p]


def test_override(target: Target, check: Check, record_property: Record) -> None:
    managed: dict[str, str] = check.expect["managed"]
    ours = {p: _managed_text(target, p, managed) for p in check.expect["sources"]}
    for text in list(ours.values()):
        for env_path in systemd.environment_files(check.target, text):
            if env_path in managed:
                ours[env_path] = _managed_text(target, env_path, managed)
    others: dict[str, str | None] = {}
    for path in _unit_sources(target, check.target):
        if path in ours:
            continue
        seen = _run(target, "cat -- %s", target.path(path))
        others[path] = str(seen.stdout) if seen.rc == 0 else None
        for env_path in systemd.environment_files(check.target, others[path] or ""):
            if env_path not in ours:
                env = _run(target, "cat -- %s", target.path(env_path))
                others[env_path] = str(env.stdout) if env.rc == 0 else None
    found = systemd.overrides(check.target, ours, others)
    if found:
        fail("; ".join(o.describe() for o in found))
    mine = ", ".join(sorted(ours))
    record_property(DETAIL, f"no other file overrides what {mine} set")


def test_env(target: Target, check: Check, record_property: Record) -> None:
    managed: dict[str, str] = check.expect["managed"]

    def managed_text(path: str) -> str | None:
        if path not in managed:
            return None  # not ours: nothing is expected of it
        seen = _run(target, "cat -- %s", target.path(path))
        if seen.rc != 0 or sha256(seen.stdout_bytes) != managed[path]:
            fail(f"cannot tell the expected environment: {path} is not what apply wrote")
        return str(seen.stdout)

    texts = [managed_text(p) or "" for p in check.expect["sources"]]
    expected = systemd.expected_environment(check.target, texts, managed_text)
    pid = _show(target, check.target, ("MainPID",)).get("MainPID", "0")
    if pid in ("", "0"):
        fail("no main process: the service is not running")
    environ = target.host.file(f"/proc/{pid}/environ")
    actual = systemd.parse_environ(environ.content)
    problems = systemd.environment_differences(expected, actual)
    if problems:
        fail(f"main process {pid}: " + "; ".join(problems))
    names = ", ".join(expected) or "nothing"
    record_property(DETAIL, f"main process {pid} has {names} as configured")


def _http(
    target: Target, url: str, data: object = None, timeout_s: float = c.HTTP_TIMEOUT_S
) -> tuple[int, str, str]:
    """(HTTP status, body, why it failed) of a GET, or a POST of `data` as JSON; status 0
    when nothing answered. On local:// through urllib (no curl needed), else curl on the host."""
    payload = None if data is None else json.dumps(data)
    if target.local:
        return _local_http(url, payload, timeout_s)
    seen = _run(target, c.curl_argv(url, payload, timeout_s))
    if seen.rc == 127:
        return 0, "", "curl is not installed on the host: HTTP checks need it"
    code, body = c.parse_curl(seen.stdout)
    return code, body, seen.stderr.strip().removeprefix("curl: ") or f"HTTP {code}"


def _local_http(url: str, payload: str | None, timeout_s: float) -> tuple[int, str, str]:
    data = None if payload is None else payload.encode()
    headers = {} if data is None else {"Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            return int(reply.status), reply.read().decode("utf-8", "replace"), ""
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", "replace")
        return exc.code, body, f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return 0, "", str(getattr(exc, "reason", exc))


def _http_probe(
    target: Target, url: str, parse: Callable[[str], tuple[bool, str]]
) -> Callable[[], tuple[bool, str]]:
    def probe() -> tuple[bool, str]:
        code, body, why = _http(target, url)
        if code != 200:
            return False, f"GET {url} failed: {why}"
        return parse(body)

    return probe


def _version_of(url: str, said: str) -> Callable[[str], tuple[bool, str]]:
    """A parser of /api/version replies; `said` is the pass detail, with {version}."""

    def parse(body: str) -> tuple[bool, str]:
        version = c.parse_version(body)
        if version is None:
            return False, f"GET {url}: no Ollama version in the answer: {body[:80]!r}"
        return True, said.format(version=version)

    return parse


def test_nginx(target: Target, check: Check, record_property: Record) -> None:
    url = f"{check.expect['url']}/api/version"
    upstreams = ", ".join(check.expect["upstreams"]) or "no upstream"
    said = f"answers /api/version ({{version}}) in front of {upstreams}"
    probe = _http_probe(target, url, _version_of(url, said))
    detail = _settled(target, NGINX_UNIT, probe)
    replicas = check.expect["upstreams"]
    if replicas:
        ok, reached = c.reached_verdict(_answered_by(target, url, 2 * len(replicas)), replicas)
        if not ok:
            fail(reached)
        detail = f"{detail}; {reached}"
    record_property(DETAIL, detail)


def _answered_by(target: Target, url: str, times: int) -> list[str]:
    """Which replica answered each of `times` requests sent over one connection."""
    if not target.local:
        return c.answered_by(_run(target, c.repeated_curl_argv(url, times)).stdout)
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.netloc, timeout=c.HTTP_TIMEOUT_S)
    answered = []
    try:
        for _ in range(times):
            connection.request("GET", parts.path)
            reply = connection.getresponse()
            reply.read()
            header = reply.getheader(UPSTREAM_HEADER)
            answered += c.answered_by(f"{UPSTREAM_HEADER}: {header}") if header else []
    except OSError:
        pass  # what answered so far is the evidence
    finally:
        connection.close()
    return answered


def test_ollama(target: Target, check: Check, record_property: Record) -> None:
    url = f"{check.expect['url']}/api/version"
    unit = check.expect["unit"]
    probe = _http_probe(target, url, _version_of(url, f"{unit} answers /api/version ({{version}})"))
    record_property(DETAIL, _settled(target, unit, probe))


def test_model(target: Target, check: Check, record_property: Record) -> None:
    base, unit = check.expect["address"], check.expect["unit"]
    if base is None:
        fail("no running Ollama service in the manifest to ask")
    url = f"{base}/api/tags"

    def listed(body: str) -> tuple[bool, str]:
        try:
            models = parse_tags(body)
        except (ValueError, AttributeError, KeyError, TypeError):
            return False, f"GET {url}: not a model list: {body[:80]!r}"
        if check.target not in models:
            return False, f"not listed by {url} (has {', '.join(sorted(models)) or 'none'})"
        return True, f"listed by {url}"

    record_property(DETAIL, _settled(target, unit, _http_probe(target, url, listed)))


def test_power(target: Target, check: Check, record_property: Record) -> None:
    want = float(check.expect["target_w"])
    device = check.expect.get("device")
    if isinstance(device, str):
        _amd_power(target, device, want, record_property)
        return
    if _run(target, "command -v nvidia-smi").rc != 0:
        pytest.skip("nvidia-smi is not installed: power limits not checked")
    query = " ".join(("nvidia-smi", *NVIDIA_SMI_POWER_QUERY))
    seen = _run(target, query)
    if seen.rc != 0:
        fail(f"{query} failed: {seen.stderr.strip() or seen.stdout.strip()}")
    limits = parse_power_limits(seen.stdout)
    if check.target not in limits:
        fail(f"nvidia-smi reports no power limit for this GPU (GPUs: {', '.join(limits)})")
    if abs(limits[check.target] - want) > POWER_TOLERANCE_W:
        fail(f"power limit {limits[check.target]:g} W, planned {want:g} W")
    record_property(DETAIL, f"power limit {limits[check.target]:g} W, as planned")


def _amd_power(target: Target, device: str, want: float, record_property: Record) -> None:
    """amdgpu keeps the cap in power1_cap, microwatts, below the card's PCI directory."""
    # Every hwmon of the card that has a power1_cap (amdgpu registers one per card).
    seen = _run(target, f"cat {shlex.quote(device)}/hwmon/hwmon*/power1_cap 2>/dev/null")
    if not seen.stdout.split():
        fail(f"no power1_cap under {device}/hwmon: {seen.stderr.strip()}")
    first = seen.stdout.split()[0]
    if not first.isdigit():
        fail(f"{device}: power1_cap reads {first!r}")
    watts = int(first) / MICROWATTS
    if abs(watts - want) > POWER_TOLERANCE_W:
        fail(f"power cap {watts:g} W, planned {want:g} W")
    record_property(DETAIL, f"power cap {watts:g} W (hwmon power1_cap), as planned")


# --- --loaded: the plan against the running host ---------------------------------------------

LOAD_TIMEOUT_S = 300  # loading tens of GiB from disk onto the GPUs takes a while
UNLOAD_WAIT_S = 10.0


def test_loaded(target: Target, check: Check, record_property: Record) -> None:
    want = check.expect
    if want["address"] is None:
        fail(f"{want['unit']} does not run or listen in the manifest: nothing to load on")
    if want["runtime"] == "ollama":
        sizes, measured = _load_ollama(target, want)
    else:
        sizes, measured = _load_llama_server(target, want)
    ok, detail = c.placement_verdict(want, sizes, measured)
    if not ok:
        fail(detail)
    record_property(DETAIL, detail)


def _load_ollama(
    target: Target, want: Mapping[str, Any]
) -> tuple[tuple[int, int], dict[str, tuple[int, int]] | None]:
    """Unload the model, read the GPUs, load it with the planned keep_alive, read them again:
    the difference is this model's, whatever else runs there. An empty prompt loads without
    generating; keep_alive 0 unloads (server/routes.go GenerateHandler)."""
    base, model = want["address"], want["model"]
    _post(target, f"{base}/api/generate", {"model": model, "keep_alive": 0})
    deadline = time.monotonic() + UNLOAD_WAIT_S
    while _ps(target, base, model) is not None and time.monotonic() < deadline:
        time.sleep(0.25)
    before = _gpu_memory(target)
    load = {"model": model, "prompt": "", "keep_alive": want["keep_alive"], "stream": False}
    _post(target, f"{base}/api/generate", load, LOAD_TIMEOUT_S)
    sizes = _ps(target, base, model)
    if sizes is None:
        fail(f"loaded, but {base}/api/ps does not list {model}")
    after = _gpu_memory(target)
    if before is None or after is None:
        return sizes, None
    measured = {
        uuid: (index, used - before.get(uuid, (index, 0))[1])
        for uuid, (index, used) in after.items()
    }
    return sizes, measured


def _load_llama_server(
    target: Target, want: Mapping[str, Any]
) -> tuple[tuple[int, int], dict[str, tuple[int, int]] | None]:
    """llama-server loads its model at start and says so on /health; what the other planned
    loads hold is taken off each GPU's use."""
    url = f"{want['address']}/health"
    code, body, why = _http(target, url)
    if code != 200:
        fail(f"GET {url}: not loaded ({why}: {body.strip()[:80]})")
    used = _gpu_memory(target)
    if used is None:
        return (0, 0), None
    others: dict[str, int] = {}
    for other in want["others"]:
        for gpu in other["gpus"]:
            others[gpu["uuid"]] = others.get(gpu["uuid"], 0) + gpu["bytes"]
    return (0, 0), {u: (i, b - others.get(u, 0)) for u, (i, b) in used.items()}


def _post(target: Target, url: str, document: dict[str, Any], timeout_s: float = 30) -> None:
    code, body, why = _http(target, url, document, timeout_s)
    if code != 200:
        with contextlib.suppress(ValueError, AttributeError):
            why = str(json.loads(body).get("error") or why)
        fail(f"POST {url} ({document['model']}) failed: {why}")


def _ps(target: Target, base: str, model: str) -> tuple[int, int] | None:
    code, body, why = _http(target, f"{base}/api/ps")
    if code != 200:
        fail(f"GET {base}/api/ps failed: {why}")
    try:
        return c.parse_ps(body, model)
    except (ValueError, AttributeError, TypeError):
        fail(f"GET {base}/api/ps: not a list of loaded models: {body[:80]!r}")


def _gpu_memory(target: Target) -> dict[str, tuple[int, int]] | None:
    if _run(target, "command -v nvidia-smi").rc != 0:
        return None
    query = "nvidia-smi --query-gpu=index,uuid,memory.used --format=csv,noheader,nounits"
    seen = _run(target, query)
    if seen.rc != 0:
        fail(f"{query} failed: {seen.stderr.strip() or seen.stdout.strip()}")
    return c.parse_memory_used(seen.stdout)
