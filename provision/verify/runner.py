"""Run the verify suite with pytest, in-process, against testinfra hosts; one result per check.

The hosts are connected and their manifests read *before* pytest starts: an unreachable host is
a host error (exit 3) and a missing or malformed manifest bad input (exit 2), never a failed
check. pytest then runs `suite.py` with only its built-in plugins (no third-party plugin, no
ini file, no cache written into the installed package); its own output is kept for `--debug`.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import testinfra
import testinfra.backend

from provision.change.manifest import shape_problem
from provision.documents import DocumentError, load_json, read_document
from provision.errors import HostError, InputError, ProvisionError
from provision.paths import MANIFEST_PATH
from provision.verify.checks import Check, ManifestError, checks_for

SUITE = Path(__file__).with_name("suite.py")
DETAIL = "detail"  # the user property a passing check records its detail under


@dataclass(frozen=True)
class Target:
    """One host to verify, with the checks its manifest implies."""

    name: str  # testinfra's id of the host, e.g. "local", "ssh://gpu-box-1"
    host: Any  # testinfra.host.Host
    root: str  # "/" or the tree the manifest was applied under
    checks: tuple[Check, ...]
    # unit -> until when its checks may wait for it to answer (see suite._settled)
    deadlines: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def live(self) -> bool:
        return self.root == "/"

    @property
    def local(self) -> bool:
        """This very machine (local://): HTTP goes through Python, not a curl on the host."""
        return bool(self.host.backend.get_connection_type() == "local")

    def path(self, target: str) -> str:
        return target if self.live else posixpath.join(self.root, target.lstrip("/"))


@dataclass(frozen=True)
class Result:
    host: str
    check: Check
    status: str  # "pass", "fail" or "skip"
    detail: str


TARGETS = pytest.StashKey[list[Target]]()


# --- hosts and manifests -------------------------------------------------------------------


@dataclass(frozen=True)
class Unverified:
    """A host of several that could not be verified at all: unreachable, or no manifest."""

    host: str
    error: ProvisionError


def load_targets(
    urls: Sequence[str],
    root: str,
    manifest_file: Path | None,
    inventory: Path | None = None,
    loaded: bool = False,
) -> tuple[list[Target], list[Unverified]]:
    """Each host's checks (`loaded`: the `loaded` checks too). One host that cannot be verified
    stops everything (its error is raised); among several, it is returned in the second list
    and the others go on."""
    root = posixpath.normpath(root) if root else "/"
    local_manifest = _read_local_manifest(manifest_file) if manifest_file else None
    hosts = connect(urls, inventory)
    targets: list[Target] = []
    unverified: list[Unverified] = []
    for host in hosts:
        name = _name(host)
        try:
            manifest = local_manifest or _read_host_manifest(host, name, root)
            checks = _checks(manifest, root, manifest_file, name, loaded)
            targets.append(Target(name, host, root, checks))
        except ProvisionError as exc:
            if len(hosts) == 1:
                raise
            unverified.append(Unverified(name, exc))
    return targets, unverified


def _checks(
    manifest: dict[str, Any], root: str, manifest_file: Path | None, name: str, loaded: bool
) -> tuple[Check, ...]:
    try:
        return checks_for(manifest, live=root == "/", loaded=loaded)
    except (ManifestError, ValueError, TypeError) as exc:  # a field of the wrong type
        where = manifest_file or f"{name}:{posixpath.join(root, MANIFEST_PATH.lstrip('/'))}"
        raise InputError(f"{where}: {exc}", hint="run 'provision apply' again") from None


def connect(urls: Sequence[str], inventory: Path | None = None) -> list[Any]:
    """testinfra hosts for the URLs (an `ansible://` group may stand for several hosts)."""
    ansible = [u for u in urls if u.startswith("ansible://")]
    if inventory is not None and not ansible:
        raise InputError(
            "--inventory is read for ansible:// hosts only", hint="--hosts ansible://GROUP"
        )
    if ansible and shutil.which("ansible-inventory") is None:
        # testinfra lists an inventory with ansible-core's own command, found on PATH
        raise HostError(
            "ansible:// hosts need ansible-core: no ansible-inventory on PATH",
            hint="pip install ansible-core next to provision, or put its bin/ on PATH",
        )
    options = {"ansible_inventory": str(inventory)} if inventory is not None else {}
    hosts: list[Any] = []
    for url in urls:
        scheme, sep, _ = url.partition("://")
        if not sep or scheme not in testinfra.backend.BACKENDS:
            known = ", ".join(f"{b}://" for b in testinfra.backend.BACKENDS)
            raise InputError(f"--hosts: '{url}' is not BACKEND://HOST", hint=f"backends: {known}")
        try:
            found = testinfra.get_hosts([url], **options)
        except Exception as exc:  # a backend reports a missing client or library its own way
            raise HostError(f"cannot connect to {url}: {_reason(exc)}") from None
        if not found:
            where = f" in {inventory}" if inventory is not None else ""
            raise InputError(f"--hosts: {url} names no host{where}", hint="check the group name")
        hosts += [h for h in found if _name(h) not in {_name(k) for k in hosts}]
    return hosts


def _name(host: Any) -> str:
    backend = host.backend
    return "local" if backend.get_connection_type() == "local" else backend.get_pytest_id()


def _read_local_manifest(path: Path) -> dict[str, Any]:
    try:
        text = read_document(path).decode("utf-8", "replace")
    except (OSError, DocumentError) as exc:
        why = exc.problem if isinstance(exc, DocumentError) else exc.strerror
        raise InputError(f"--manifest {path}: cannot read: {why}") from None
    return _parse_manifest(text, str(path))


def _read_host_manifest(host: Any, name: str, root: str) -> dict[str, Any]:
    path = posixpath.join(root, MANIFEST_PATH.lstrip("/"))
    try:
        result = host.run("cat -- %s", path)
    except Exception as exc:  # ssh exit 255, a container that is gone, a refused connection
        raise HostError(f"cannot reach {name}: {_reason(exc)}") from None
    if result.rc != 0 and "No such file" in result.stderr:
        raise InputError(
            f"{name}: no manifest at {path}",
            hint="run 'provision apply' first (verify checks what it recorded), "
            "or pass --manifest FILE",
        )
    if result.rc != 0:
        raise HostError(f"{name}: cannot read {path}: {result.stderr.strip() or result.rc}")
    return _parse_manifest(result.stdout, f"{name}:{path}")


def _reason(exc: Exception) -> str:
    """testinfra's ssh backend raises RuntimeError(CommandResult): say what ssh said."""
    cause = exc.args[0] if exc.args else None
    stderr = getattr(cause, "stderr", None)
    return stderr.strip() if isinstance(stderr, str) and stderr.strip() else str(exc)


def _parse_manifest(text: str, where: str) -> dict[str, Any]:
    try:
        document = load_json(text)
    except ValueError as exc:  # a DocumentError too: too large, too deep, a 5,000-digit number
        raise InputError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InputError(f"{where}: not a manifest (a JSON object)")
    problem = shape_problem(document)
    if problem is not None:
        raise InputError(f"{where}: not a manifest as apply writes it: {problem}")
    return document


def standalone_targets(config: pytest.Config) -> list[Target]:
    """For `pytest --hosts=... provision/verify/suite.py` without `provision verify`."""
    hosts = getattr(config.option, "hosts", None)
    targets, unverified = load_targets(hosts.split(",") if hosts else ["local://"], "/", None)
    if unverified:  # no command here to print them: stop as a single host would
        raise unverified[0].error
    return targets


# --- running the suite ---------------------------------------------------------------------


def run_suite(targets: Sequence[Target]) -> tuple[list[Result], str]:
    """Every check of every target, in order, and pytest's own output."""
    collector = _Collector(targets)
    args = ["-c", os.devnull, "--rootdir", str(SUITE.parent), "-p", "no:cacheprovider"]
    args += ["--assert=plain", "--capture=no", "-q", "-o", "console_output_style=classic"]
    output = io.StringIO()
    with _plain_pytest(), contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        code = pytest.main([*args, str(SUITE)], plugins=[collector])
    ran = (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED, pytest.ExitCode.NO_TESTS_COLLECTED)
    if code not in ran:
        raise RuntimeError(
            f"the verify suite did not run (pytest exit {code}):\n{output.getvalue()}"
        )
    return collector.ordered(), output.getvalue()


@contextlib.contextmanager
def _plain_pytest() -> Iterator[None]:
    """No third-party plugins or options from the environment: the suite runs the same
    everywhere."""
    saved = {k: os.environ.get(k) for k in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
    autoload = os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD")
    for key in saved:
        os.environ.pop(key, None)
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    try:
        yield
    finally:
        for key, value in [*saved.items(), ("PYTEST_DISABLE_PLUGIN_AUTOLOAD", autoload)]:
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _Collector:
    """A pytest plugin: hands the targets to the suite and records each check's outcome."""

    def __init__(self, targets: Sequence[Target]) -> None:
        self.targets = list(targets)
        self.results: dict[tuple[str, str], Result] = {}

    def pytest_configure(self, config: pytest.Config) -> None:
        config.stash[TARGETS] = self.targets

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Iterator[Any]:
        report = yield
        params: Mapping[str, Any] = getattr(getattr(item, "callspec", None), "params", {})
        target, check = params.get("target"), params.get("check")
        if isinstance(target, Target) and isinstance(check, Check) and call.when != "teardown":
            result = _result(target, check, item, call, report)
            if result is not None:
                self.results[(target.name, check.id)] = result
        return report

    def ordered(self) -> list[Result]:
        missing = "did not run (see 'provision --debug verify')"
        return [
            self.results.get((t.name, c.id)) or Result(t.name, c, "fail", missing)
            for t in self.targets
            for c in t.checks
        ]


def _result(
    target: Target, check: Check, item: pytest.Item, call: pytest.CallInfo[None], report: Any
) -> Result | None:
    if report.passed:
        if call.when != "call":
            return None  # setup passed: the call decides
        detail = dict(item.user_properties).get(DETAIL, "")
        return Result(target.name, check, "pass", str(detail))
    status = "skip" if report.skipped else "fail"
    exc = call.excinfo.value if call.excinfo is not None else None
    if isinstance(exc, pytest.fail.Exception | pytest.skip.Exception):
        detail = exc.msg or ""
    else:  # the check itself could not run, e.g. the connection broke
        detail = f"could not check: {type(exc).__name__}: {exc}"
    return Result(target.name, check, status, detail)


def summary(results: Sequence[Result]) -> dict[str, int]:
    return {s: sum(r.status == s for r in results) for s in ("pass", "fail", "skip")}


def per_host(results: Sequence[Result], names: Sequence[str]) -> dict[str, dict[str, int]]:
    """Each host's counts, in the order of ``names`` (a host without checks counts zeros)."""
    hosts: dict[str, list[Result]] = {name: [] for name in names}
    for result in results:
        hosts.setdefault(result.host, []).append(result)
    return {host: summary(mine) for host, mine in hosts.items()}
