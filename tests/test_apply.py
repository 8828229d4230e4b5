"""provision.change (host, observe, apply, backup) against real files under temp roots (offline
mode) and the real `systemctl --root`: atomic writes, symlink refusal, the lock, backups,
rollback on failure, SIGKILL at every step, concurrent runs, and the parsers of live readings on
recorded outputs."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from provision.change import apply as apply_module
from provision.change.actions import Action, ActionKind, Plan
from provision.change.apply import Settings, execute, locked
from provision.change.backup import list_backups, load_backup, rollback_plan
from provision.change.host import Host, write_atomic
from provision.change.manifest import build_manifest, comparable, encode
from provision.change.observe import (
    observe,
    parse_power_limits,
    parse_systemctl_show,
    parse_visible_devices,
    read_file,
    unit_states,
)
from provision.change.plan import make_plan
from provision.change.prior import PRIOR_KEY
from provision.command import CompletedCommand, run
from provision.desired import DesiredState
from provision.errors import HostError, RolledBack
from provision.ollama import parse_tags as parse_ollama_tags
from provision.paths import AMDGPU_POWER_SCRIPT, MANIFEST_PATH, unsafe_target
from tests.helpers import REPO_ROOT
from tests.test_plan import state_a, state_b

NGINX_UNIT = (
    "[Unit]\nDescription=nginx\n[Service]\nExecStart=/bin/true\n"
    "[Install]\nWantedBy=multi-user.target\n"
)


def scratch_root(path: Path) -> Path:
    """An empty host tree where the nginx package is installed (its unit is not ours)."""
    unit = path / "lib/systemd/system/nginx.service"
    unit.parent.mkdir(parents=True)
    unit.write_text(NGINX_UNIT)
    return path


def desired_file(tmp_path: Path, desired: DesiredState, name: str) -> Path:
    from provision.cli.options import desired_to_json

    path = tmp_path / f"{name}.json"
    path.write_text(desired_to_json(desired))
    return path


def provision(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh interpreter with no terminal on stdin."""
    result = subprocess.run(
        [sys.executable, "-m", "provision", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def apply_in_process(root: Path, desired: DesiredState, force: bool = False) -> str | None:
    host = Host.at(root)
    with locked(host, 5, print):
        plan = make_plan(desired, observe(host, desired))
        units = {u.name: u for u in desired.units}
        return execute(host, plan, units, Settings(force=force), print).backup


def tree(root: Path) -> dict[str, bytes]:
    """Every regular file under the managed part of root, by target path."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and "backups" not in path.parts:
            files["/" + str(path.relative_to(root))] = path.read_bytes()
    files.pop("/run/lock/provision.lock", None)
    return files


def enabled(root: Path, unit: str) -> str:
    return run(["systemctl", f"--root={root}", "is-enabled", unit]).stdout.strip() or "not-found"


# --- atomic writes and symlinks ------------------------------------------------------------


def test_write_atomic_replaces_the_file_with_its_mode_and_leaves_no_temp(tmp_path: Path) -> None:
    host = Host.at(tmp_path)
    write_atomic(host, "/etc/a/b.conf", b"one\n", 0o640, os.getuid(), os.getgid())
    target = tmp_path / "etc/a/b.conf"
    inode = target.stat().st_ino
    write_atomic(host, "/etc/a/b.conf", b"two\n", 0o600, os.getuid(), os.getgid())
    assert target.read_bytes() == b"two\n" and target.stat().st_mode & 0o777 == 0o600
    assert target.stat().st_ino != inode  # a rename, not an in-place rewrite
    assert sorted(p.name for p in target.parent.iterdir()) == ["b.conf"]


def test_write_atomic_never_writes_through_a_symlink(tmp_path: Path) -> None:
    host = Host.at(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/link.conf").symlink_to(outside / "victim")
    with pytest.raises(HostError, match="is a symlink"):
        write_atomic(host, "/etc/link.conf", b"x", 0o644, 0, 0)
    (tmp_path / "etc/dir").symlink_to(outside)
    with pytest.raises(HostError, match="symlink or not a directory"):
        write_atomic(host, "/etc/dir/file.conf", b"x", 0o644, 0, 0)
    assert list(outside.iterdir()) == []
    assert read_file(host, "/etc/dir/file.conf").kind == "symlink"
    assert read_file(host, "/etc/dir/file.conf").note == " (via the symlink /etc/dir)"


# --- systemctl --root and the parsers of live readings --------------------------------------


def test_unit_states_offline_use_the_real_systemctl(tmp_path: Path) -> None:
    root = scratch_root(tmp_path)
    apply_in_process(root, state_a())
    states = unit_states(Host.at(root), ["ollama@0.service", "ollama@7.service", "nope.service"])
    assert [s.enabled for s in states.values()] == ["enabled", "disabled", "not-found"]
    assert all(s.active is None for s in states.values())  # offline: never read


SHOW = """LoadState=loaded
UnitFileState=enabled
ActiveState=active
Result=success
NeedDaemonReload=no
InactiveExitTimestampMonotonic=5051234

LoadState=not-found
UnitFileState=
ActiveState=inactive
Result=success
NeedDaemonReload=no
InactiveExitTimestampMonotonic=0

LoadState=loaded
UnitFileState=enabled
ActiveState=inactive
Result=success
NeedDaemonReload=yes
InactiveExitTimestampMonotonic=6051234
"""


def test_parse_systemctl_show_recorded() -> None:
    names = ["ollama.service", "nope.service", "gpu-power-limits.service"]
    ollama, nope, power = parse_systemctl_show(SHOW, names).values()
    assert (ollama.enabled, ollama.active) == ("enabled", "active")
    assert (nope.enabled, nope.ran_ok) == ("not-found", False)
    assert power.ran_ok and power.needs_daemon_reload
    with pytest.raises(HostError, match="2 answers for 3 units"):
        parse_systemctl_show(SHOW.split("\n\n", 1)[1], names)


def test_parse_power_limits_and_ollama_tags_recorded() -> None:
    smi = "GPU-aaaa, 300.00\nGPU-bbbb, 350.00\nGPU-cccc, [N/A]\n"
    assert parse_power_limits(smi) == {"GPU-aaaa": 300.0, "GPU-bbbb": 350.0}
    tags = b'{"models":[{"name":"llama3.1:8b","size":1},{"name":"mine"}]}'
    assert parse_ollama_tags(tags) == frozenset({"llama3.1:8b", "mine:latest"})


# --- the lock ------------------------------------------------------------------------------


def _hold_lock(root: Path) -> int:
    lock = root / "run/lock/provision.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, b"424242\n")
    return fd


def test_the_lock_names_its_holder_after_the_timeout(tmp_path: Path) -> None:
    fd = _hold_lock(tmp_path)
    try:
        start = time.monotonic()
        with pytest.raises(HostError, match=r"PID 424242"), locked(Host.at(tmp_path), 0.3, print):
            pass
        assert time.monotonic() - start >= 0.3
    finally:
        os.close(fd)


def test_a_second_run_waits_for_the_lock(tmp_path: Path) -> None:
    fd = _hold_lock(tmp_path)
    threading.Timer(0.5, os.close, (fd,)).start()
    start = time.monotonic()
    with locked(Host.at(tmp_path), 10, print):
        assert time.monotonic() - start >= 0.4
        assert (tmp_path / "run/lock/provision.lock").read_text() == f"{os.getpid()}\n"


def test_a_held_lock_makes_apply_exit_3_naming_the_pid(tmp_path: Path) -> None:
    root = scratch_root(tmp_path / "root")
    fd = _hold_lock(root)
    try:
        a = desired_file(tmp_path, state_a(), "a")
        args = ("apply", "--yes", "--root", str(root), "--desired-json", str(a))
        result = provision(*args, "--lock-timeout", "0.5")
    finally:
        os.close(fd)
    assert result.returncode == 3, result.stderr
    assert "another provision run (PID 424242) holds" in result.stderr
    assert "hint: wait for it to finish, or allow longer with --lock-timeout" in result.stderr
    assert tree(root) == {"/lib/systemd/system/nginx.service": NGINX_UNIT.encode()}


def test_two_concurrent_applies_never_interleave(tmp_path: Path) -> None:
    root = scratch_root(tmp_path / "root")
    files = {n: desired_file(tmp_path, s, n) for n, s in (("a", state_a()), ("b", state_b()))}
    command = [sys.executable, "-m", "provision", "apply", "--yes", "--root", str(root)]
    runs = [
        subprocess.Popen(
            [*command, "--desired-json", str(path)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for path in files.values()
    ]
    outputs = [r.communicate(timeout=120) for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outputs
    first, second = (load_backup(Host.at(root), s) for s in list_backups(Host.at(root)))
    manifest = json.loads((root / MANIFEST_PATH.lstrip("/")).read_text())
    assert manifest["last_apply"]["backup"] == second.stamp
    states = {"a": state_a(), "b": state_b()}
    recorded = {k: v for k, v in (comparable(manifest) or {}).items() if k != PRIOR_KEY}
    (winner,) = [n for n, s in states.items() if recorded == build_manifest(s)]
    (loser,) = set(states) - {winner}
    # The second planned after the first had finished: its backup holds the first's result.
    assert all(not f.existed for f in first.files)
    after_first = {f.path for f in states[loser].files} | {MANIFEST_PATH}
    assert {f.path for f in second.files if f.existed} == after_first & {
        f.path for f in second.files
    }
    result = provision("diff", "--root", str(root), "--desired-json", str(files[winner]))
    assert result.returncode == 0, result.stdout


# --- failure and rollback ------------------------------------------------------------------


def test_a_failed_step_restores_files_and_unit_enablement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = scratch_root(tmp_path)
    apply_in_process(root, state_a())
    before = tree(root)

    def failing_run(argv: list[str], timeout_s: float = 10) -> CompletedCommand:
        if argv[-1] == "ollama@2.service" and "enable" in argv:
            return CompletedCommand(tuple(argv), 1, "", "Failed to enable unit: boom")
        return run(argv, timeout_s)

    monkeypatch.setattr(apply_module, "run", failing_run)
    with pytest.raises(RolledBack) as caught:
        apply_in_process(root, state_b())
    message = caught.value.message
    assert (
        "apply failed at [7/12] enable ollama@2.service: command failed (exit status 1)" in message
    )
    assert "Failed to enable unit: boom" in message
    assert "restored from backup" in message and "/etc/provision/ollama/1.env" in message
    assert "then: disable ollama@2.service; enable ollama@1.service" in message
    assert tree(root) == before
    assert enabled(root, "ollama@1.service") == "enabled"
    assert enabled(root, "ollama@2.service") == "disabled"


def test_rollback_plan_restores_an_earlier_backup(tmp_path: Path) -> None:
    root = scratch_root(tmp_path)
    first = apply_in_process(root, state_a())
    after_a = tree(root)
    apply_in_process(root, state_b())
    host = Host.at(root)
    plan = rollback_plan(host, load_backup(host, None))  # the last: a -> b
    execute(host, plan, {}, Settings(force=True), print)
    assert tree(root) == after_a
    assert enabled(root, "ollama@1.service") == "enabled"
    assert enabled(root, "ollama@2.service") == "disabled"
    # Back to before the first apply: nothing of ours is left, nginx is disabled again.
    plan = rollback_plan(host, load_backup(host, first))
    execute(host, plan, {}, Settings(force=True), print)
    assert tree(root) == {"/lib/systemd/system/nginx.service": NGINX_UNIT.encode()}
    assert enabled(root, "nginx.service") == "disabled"
    assert not rollback_plan(host, load_backup(host, first)).actions


def test_backups_are_listed_in_order_and_incomplete_ones_ignored(tmp_path: Path) -> None:
    host = Host.at(tmp_path)
    base = tmp_path / "var/lib/provision/backups"
    for stamp in ("20261122T000000Z-10", "20261122T000000Z", "20261122T000000Z-2", "partial"):
        (base / stamp).mkdir(parents=True)
        if stamp != "partial":
            (base / stamp / "index.json").write_text("{}")
    assert list_backups(host) == ["20261122T000000Z", "20261122T000000Z-2", "20261122T000000Z-10"]


# --- SIGKILL at every step -----------------------------------------------------------------


def _versions(a: DesiredState, b: DesiredState) -> dict[str, set[bytes | None]]:
    """Per target path, the contents it may hold: before (a) or after (b); None: absent."""
    old = {f.path: encode(f.content) for f in a.files}
    new = {f.path: encode(f.content) for f in b.files}
    return {p: {old.get(p), new.get(p)} for p in old.keys() | new.keys()}


@pytest.mark.slow
def test_a_kill_at_any_step_leaves_old_or_new_bytes_and_a_rerun_converges(tmp_path: Path) -> None:
    base = scratch_root(tmp_path / "base")
    apply_in_process(base, state_a())
    b = desired_file(tmp_path, state_b(), "b")
    listing = provision("diff", "--json", "--root", str(base), "--desired-json", str(b))
    actions = json.loads(listing.stdout)["actions"]
    assert len(actions) >= 10 and actions[-1]["kind"] == "write-manifest"
    allowed = _versions(state_a(), state_b())
    old_manifest = (base / MANIFEST_PATH.lstrip("/")).read_bytes()
    for k in range(len(actions)):
        root = tmp_path / f"k{k}"
        subprocess.run(["cp", "-a", str(base), str(root)], check=True)
        args = ("apply", "--yes", "--root", str(root), "--desired-json", str(b))
        killed = provision(*args, env={"PROVISION_TEST_KILL_AT_STEP": str(k)})
        assert killed.returncode == -9, (k, killed.stdout, killed.stderr)
        files = tree(root)
        for path, versions in allowed.items():
            assert files.get(path) in versions, (k, path)
        assert files[MANIFEST_PATH] == old_manifest  # written last, so never before step k
        assert not [p for p in files if ".provision-tmp" in p], k
        rerun = provision(*args)
        assert rerun.returncode == 0, (k, rerun.stdout, rerun.stderr)
        again = provision("diff", "--root", str(root), "--desired-json", str(b))
        assert again.returncode == 0, (k, again.stdout)
        assert enabled(root, "ollama@1.service") == "disabled"
        assert enabled(root, "ollama@2.service") == "enabled"


def test_the_kill_hook_is_inert_unless_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROVISION_TEST_KILL_AT_STEP", raising=False)
    assert apply_module._kill_step() is None
    monkeypatch.setenv("PROVISION_TEST_KILL_AT_STEP", "not-a-number")
    assert apply_module._kill_step() is None


def test_set_power_passes_whole_watts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """nvidia-smi -pl and the AMD script get the integer the unit writes, never '262.5'."""
    seen: list[tuple[str, ...]] = []

    def fake_run(argv: list[str], timeout_s: float = 0) -> CompletedCommand:
        seen.append(tuple(argv))
        return CompletedCommand(tuple(argv), 0, "", "")

    monkeypatch.setattr(apply_module, "run", fake_run)
    host = Host.at(tmp_path)
    for source in ("", "/sys/bus/pci/devices/0000:03:00.0"):
        action = Action(ActionKind.SET_POWER, "GPU-x", "test", watts=262.5, source=source)
        apply_module._perform(host, Plan.empty(), action, {}, Settings(), "stamp")
    assert seen == [
        ("nvidia-smi", "-i", "GPU-x", "-pl", "262"),
        ("/bin/sh", AMDGPU_POWER_SCRIPT, "/sys/bus/pci/devices/0000:03:00.0", "262"),
    ]


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("/etc/provision/x.env", None),
        ("/", None),
        ("etc/x", "not an absolute path"),
        ("/../x", "not a normal path"),
        ("/etc/../../x", "not a normal path"),
        ("/etc/./x", "not a normal path"),
        ("/etc//x", "not a normal path"),
        ("/etc/x/", "not a normal path"),
        ("/etc/x\0y", "contains a NUL byte"),
    ],
)
def test_only_normal_absolute_paths_are_touched(
    tmp_path: Path, target: str, why: str | None
) -> None:
    assert (unsafe_target(target) or "").startswith(why or "")
    assert (unsafe_target(target) is None) == (why is None)
    host = Host.at(tmp_path)
    if why is None:
        assert host.path(target) == tmp_path / target.lstrip("/")
    else:
        with pytest.raises(HostError, match="refusing the path"):
            write_atomic(host, target, b"x", 0o644, os.geteuid(), os.getegid())
        assert list(tmp_path.parent.glob("x*")) == []


def test_parse_visible_devices_recorded() -> None:
    shown = (
        'Environment="OLLAMA_HOST=127.0.0.1:11434" '
        "CUDA_VISIBLE_DEVICES=GPU-aaaaaaaa-0000-0000-0000-000000000000,1 PATH=/usr/bin\n"
    )
    assert parse_visible_devices(shown) == ("GPU-aaaaaaaa-0000-0000-0000-000000000000", "1")
    assert parse_visible_devices("Environment=\n") == ()
