"""Real systemd hosts for tests: Debian bookworm booted by systemd-nspawn on a per-test overlay.

Follows the team's TESTING.md notes ("A real systemd host: systemd-nspawn"). The pieces:

- :func:`rootfs_tarball` builds the rootfs with mmdebstrap once and caches it outside the repo,
  keyed by a hash of everything that goes into it (suite, variant, package list, mirrors).
- :func:`session_base` unpacks it once per test session into a tmpfs; containers never write
  to it (each gets an overlay whose upper dir is on its own tmpfs).
- :class:`Container` mounts an overlayfs over the base, boots it with systemd as PID 1, runs
  commands inside through ``nsenter``, copies files in, reboots it and tears it down.

Works without a host systemd (our CI's PID 1 is not systemd) and needs root. Every container is
registered for cleanup at exit and on SIGTERM/SIGHUP; :func:`reap_stale` removes what a killed
session left behind (cgroups, overlay mounts, work dirs of owners that no longer run).

Command line (used by ``make rootfs``): ``python3 -m tests.system.nspawn rootfs``.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import hashlib
import io
import itertools
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

SUITE = "bookworm"
VARIANT = "minbase"
PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "python3-venv",
    "iproute2",
    "nginx",
    "curl",
    "procps",
    "openssh-server",  # for fleets over real ssh (tests/system/fleet.py)
)
MIRRORS: tuple[str, ...] = (
    f"deb http://deb.debian.org/debian {SUITE} main",
    f"deb http://deb.debian.org/debian {SUITE}-updates main",
    f"deb http://deb.debian.org/debian-security {SUITE}-security main",
)
# Bump when the way the rootfs is built changes in a way the key would not see.
ROOTFS_FORMAT = 1

# The environment commands get inside the container (nsenter would pass ours through).
CONTAINER_ENV: Mapping[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}
READY_STATES = ("running", "degraded")

WORK_ROOT = Path(tempfile.gettempdir()) / "gpu-provision-nspawn"
CGROUP_PARENT = "gpu-provision"
_NAME_RE = re.compile(r"^gp(\d+)-")
_SESSION_DIR_RE = re.compile(r"^(?:base|layer)-.*-(\d+)-[0-9a-f]{4}$")

# Runs systemd-nspawn from its own cgroup (so that two containers do not share one) and
# relaunches it while the container asks for a reboot, like systemd-nspawn@.service does.
_LAUNCHER = r"""
for procs in $GP_CGROUP_PROCS; do echo $$ > "$procs" || exit 97; done
while :; do
    systemd-nspawn -D "$GP_ROOT" -b -M "$GP_NAME" --register=no --keep-unit \
        --console=passive "$GP_NETWORK" "$@"
    rc=$?
    echo "gpu-provision: systemd-nspawn exited with status $rc"
    [ "$rc" -eq 133 ] || exit "$rc"
done
"""


class NspawnError(RuntimeError):
    """A container could not be built, booted, reached or rebooted."""


# ---------------------------------------------------------------------------------------------
# Rootfs: build once, cache outside the repo, extract once per session


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gpu-provision" / "rootfs"


def rootfs_key(packages: Iterable[str] = PACKAGES) -> str:
    spec = "\n".join([f"format={ROOTFS_FORMAT}", SUITE, VARIANT, *sorted(set(packages)), *MIRRORS])
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def missing_tools() -> list[str]:
    """Host executables the system tests need and this host lacks."""
    tools = ("systemd-nspawn", "mmdebstrap", "nsenter", "tar", "zstd", "mount", "umount")
    return [tool for tool in tools if shutil.which(tool) is None]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def rootfs_tarball(
    packages: Sequence[str] = PACKAGES,
    *,
    cache: Path | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """The cached rootfs tarball for ``packages``, built with mmdebstrap when missing.

    Safe to call from concurrent sessions (a file lock makes the second one wait and reuse).
    Tarballs built for another package list are removed when a new one is built.
    """
    cache = cache or cache_dir()
    tarball = cache / f"{SUITE}-{rootfs_key(packages)}.tar.zst"
    if tarball.is_file():
        return tarball
    with _locked(cache / ".lock"):
        if tarball.is_file():
            return tarball
        partial = tarball.with_name(
            f".partial-{os.getpid()}.tar.zst"
        )  # mmdebstrap reads the suffix
        argv = [
            "mmdebstrap",
            f"--variant={VARIANT}",
            f"--include={','.join(packages)}",
            "--aptopt=Acquire::Retries 3",
            SUITE,
            str(partial),
            *MIRRORS,
        ]
        log(f"building the {SUITE} rootfs (cached as {tarball}): {shlex.join(argv)}")
        started = time.monotonic()
        try:
            # mmdebstrap reads a sources.list from stdin when stdin is not a terminal
            proc = subprocess.run(
                argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
            )
            if proc.returncode != 0:
                raise NspawnError(
                    f"mmdebstrap failed with status {proc.returncode}:\n{proc.stderr[-4000:]}"
                )
            os.replace(partial, tarball)
        finally:
            partial.unlink(missing_ok=True)
        for old in cache.glob(f"{SUITE}-*.tar.zst"):
            if old != tarball:
                old.unlink(missing_ok=True)
        log(f"built {tarball} in {time.monotonic() - started:.1f}s")
    return tarball


def extract_base(tarball: Path, dest: Path) -> Path:
    """Unpack ``tarball`` into the empty or new directory ``dest``: the lower layer of
    overlays."""
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise NspawnError(f"{dest} is not empty")
    cmd = ["tar", "--zstd", "-xpf", str(tarball), "-C", str(dest), "--numeric-owner"]
    cmd += ["--xattrs", "--xattrs-include=*"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise NspawnError(f"extracting {tarball} failed: {proc.stderr[-2000:]}")
    return dest


def _mount_tmpfs(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", str(path)],
        check=True,
        capture_output=True,
    )


def _remove_dir(path: Path) -> None:
    """Unmount (when a mount point) and remove a directory tree."""
    _umount(path)
    shutil.rmtree(path, ignore_errors=True)


def session_dir(kind: str, label: str) -> Path:
    """A new empty tmpfs under WORK_ROOT for this process (``kind``: base or layer), removed at
    exit and reaped by a later session if this one is killed. tmpfs: a 270 MB tree is written
    in 1 s instead of 5 s and removed at once instead of in 8-14 s on our CI disks."""
    if kind not in ("base", "layer"):
        raise ValueError(kind)
    _install_cleanup_hooks()
    path = WORK_ROOT / f"{kind}-{label}-{os.getpid()}-{os.urandom(2).hex()}"
    _SESSION_DIRS.add(path)
    _mount_tmpfs(path)
    return path


def session_base(packages: Sequence[str] = PACKAGES) -> Path:
    """Build (if needed) and extract the rootfs for this process, once; removed at exit."""
    key = rootfs_key(packages)
    if key not in _SESSION_BASES:
        tarball = rootfs_tarball(packages)
        reap_stale()
        _SESSION_BASES[key] = extract_base(tarball, session_dir("base", key))
    return _SESSION_BASES[key]


# ---------------------------------------------------------------------------------------------
# cgroups and processes


def _cgroup_roots() -> list[Path]:
    """The cgroup hierarchies nspawn uses: unified (v2) first, then the v1 name=systemd one."""
    fs = Path("/sys/fs/cgroup")
    if (fs / "cgroup.controllers").exists():  # pure cgroup v2
        return [fs]
    roots = [fs / "unified"] if (fs / "unified" / "cgroup.procs").exists() else []
    if (fs / "systemd" / "cgroup.procs").exists():
        roots.append(fs / "systemd")
    if not roots:
        raise NspawnError("no cgroup hierarchy for systemd found under /sys/fs/cgroup")
    return roots


def _cgroup_dirs(name: str) -> list[Path]:
    return [root / CGROUP_PARENT / name for root in _cgroup_roots()]


def _cgroup_pids(directory: Path) -> list[int]:
    pids: list[int] = []
    for dirpath, _, _ in os.walk(directory):  # cgroups come and go while we walk: no errors
        with contextlib.suppress(OSError):
            pids += [int(line) for line in Path(dirpath, "cgroup.procs").read_text().split()]
    return pids


def _kill_cgroup(directory: Path) -> None:
    if not directory.exists():
        return
    kill = directory / "cgroup.kill"
    if kill.exists():
        with contextlib.suppress(OSError):
            kill.write_text("1")
    for pid in _cgroup_pids(directory):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _remove_cgroup(directory: Path, timeout: float = 10.0) -> None:
    """Kill everything in a cgroup tree and remove it, deepest first."""
    if not directory.exists():
        return
    deadline = time.monotonic() + timeout
    while True:
        _kill_cgroup(directory)
        dirs = [Path(dirpath) for dirpath, _, _ in os.walk(directory, topdown=False)]
        try:
            for d in dirs:
                with contextlib.suppress(FileNotFoundError):
                    d.rmdir()
            return
        except OSError as exc:
            if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY) or time.monotonic() > deadline:
                raise NspawnError(f"cannot remove cgroup {directory}: {exc}") from exc
            time.sleep(0.05)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def leader_pid(name: str) -> int | None:
    """PID (host view) of the container's PID 1 once it runs systemd, else None.

    Found from the container's cgroup, so it needs only the machine name and follows reboots.
    """
    payload = _cgroup_dirs(name)[0] / "payload"
    for pid in _cgroup_pids(payload):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        # After a reboot the old PID 1 can linger as a zombie (this host's PID 1 reaps orphans
        # late): it still says "systemd" and NSpid 1, but nothing can enter its namespaces.
        if fields.get("State", "").strip()[:1] in ("Z", "X"):
            continue
        nspid = fields.get("NSpid", "").split()
        if len(nspid) > 1 and nspid[-1] == "1" and comm == "systemd":
            return pid
    return None


# A process that ignores SIGTERM holds a reboot in systemd-shutdown for DefaultTimeoutStopSec
# (90 s) before SIGKILL, past the reboot wait; seen as "no leader" timeouts in full runs. A test
# host has nothing worth waiting 90 s for.
_MANAGER_CONFIG = "[Manager]\nDefaultTimeoutStopSec=10s\n"


def _write_test_manager_config(root: Path) -> None:
    conf = root / "etc/systemd/system.conf.d/50-gpu-provision-tests.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(_MANAGER_CONFIG)


def _mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo") as handle:
        return any(line.split()[4] == target for line in handle)


def _umount(path: Path) -> None:
    for _ in range(50):
        if not _mounted(path):
            return
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "--lazy", str(path)], capture_output=True, check=False)


def _remove_nspawn_state(name: str, root_stat: os.stat_result | None) -> None:
    """What systemd-nspawn leaves under /run without a host systemd to clean up after it."""
    shutil.rmtree(f"/run/systemd/nspawn/propagate/{name}", ignore_errors=True)
    if root_stat is not None:
        lock = Path(f"/run/systemd/nspawn/locks/inode-{root_stat.st_dev}:{root_stat.st_ino}")
        lock.unlink(missing_ok=True)


def reap_stale() -> list[str]:
    """Remove containers, overlays and bases left by sessions whose process no longer runs."""
    reaped: list[str] = []
    owners: dict[str, int] = {}
    with contextlib.suppress(NspawnError):
        for root in _cgroup_roots():
            for d in (root / CGROUP_PARENT).glob("gp*"):
                if (m := _NAME_RE.match(d.name)) and d.is_dir():
                    owners[d.name] = int(m.group(1))
    if WORK_ROOT.is_dir():
        for d in WORK_ROOT.iterdir():
            if m := _NAME_RE.match(d.name):
                owners[d.name] = int(m.group(1))
            elif (m := _SESSION_DIR_RE.match(d.name)) and not _pid_alive(int(m.group(1))):
                _remove_dir(d)
                reaped.append(d.name)
    for name, owner in owners.items():
        if owner == os.getpid() or _pid_alive(owner):
            continue
        if (leader := leader_pid(name)) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(leader, signal.SIGKILL)
        for cg in _cgroup_dirs(name):
            _remove_cgroup(cg)
        root = WORK_ROOT / name / "root"
        root_stat = os.stat(root) if _mounted(root) else None
        _umount(root)
        _remove_nspawn_state(name, root_stat)
        _remove_dir(WORK_ROOT / name)
        reaped.append(name)
    return reaped


# ---------------------------------------------------------------------------------------------
# Containers

_T = TypeVar("_T")
_counter = itertools.count(1)
_LIVE: set[Container] = set()
_SESSION_DIRS: set[Path] = set()
_SESSION_BASES: dict[str, Path] = {}
_CLEANUPS: list[Callable[[], object]] = []  # run before the containers are stopped
_LOCK = threading.Lock()
_HOOKS_INSTALLED = False


def _wait_for(
    what: str,
    probe: Callable[[], _T | None],
    timeout: float,
    *,
    on_fail: Callable[[], str] = str,
) -> _T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise NspawnError(f"timed out after {timeout:.0f}s waiting for {what}{on_fail()}")
        time.sleep(0.05)


class Container:
    """One booted systemd host on an overlay over ``base``.

    >>> with Container(base) as c:            # boots on enter, cleans up on exit
    ...     c.run("systemctl", "is-active", "nginx").stdout
    """

    def __init__(
        self,
        base: Path,
        *,
        layers: Sequence[Path] = (),
        name: str | None = None,
        extra_args: Sequence[str] = (),
        network: str | None = None,
    ):
        self.base = base
        self.layers = list(layers)  # read-only layers over the base, top-most first
        self.name = name or f"gp{os.getpid()}-{next(_counter)}-{os.urandom(2).hex()}"
        if not _NAME_RE.match(self.name) or len(self.name) > 60:
            raise ValueError(f"container name {self.name!r} must look like gp<owner-pid>-...")
        self.dir = WORK_ROOT / self.name
        self.extra_args = list(extra_args)
        # None: a network namespace of its own with only lo. A path: join that namespace (a
        # bind-mounted netns file), which outlives the container's reboots.
        self.network = network
        self.proc: subprocess.Popen[bytes] | None = None
        self._root_stat: os.stat_result | None = None
        self.boots = 0

    def __repr__(self) -> str:
        return f"<Container {self.name} leader={self.leader()}>"

    # -- paths -----------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        """The merged overlay: the container's / seen from the host. Writes here are visible
        inside, except under the tmpfs mounts nspawn adds (/tmp, /run, /dev/shm): use put()."""
        return self.dir / "root"

    @property
    def upper(self) -> Path:
        """Everything the container changed compared with the base."""
        return self.dir / "upper"

    @property
    def log_path(self) -> Path:
        """systemd-nspawn's output: the container's console (the boot log) and launcher notes."""
        return self.dir / "console.log"

    def console(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Container:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def mount(self) -> None:
        """Create the overlay without booting (to prepare files before the first boot)."""
        if _mounted(self.root):
            return
        _install_cleanup_hooks()
        with _LOCK:
            _LIVE.add(self)
        if not _mounted(self.dir):  # upper and work on a tmpfs: removed at once on stop
            _mount_tmpfs(self.dir)
        for d in (self.root, self.upper, self.dir / "work"):
            d.mkdir(parents=True, exist_ok=True)
        self.upper.chmod(0o755)  # the upper dir's mode is the mode of / inside
        lower = ":".join(str(p) for p in [*self.layers, self.base])
        opts = f"lowerdir={lower},upperdir={self.upper},workdir={self.dir / 'work'}"
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", opts, str(self.root)],
            check=True,
            capture_output=True,
        )
        self._root_stat = os.stat(self.root)

    def start(self, timeout: float = 60.0) -> None:
        """Mount, launch systemd-nspawn and wait until systemd reports running or degraded."""
        if self.proc is not None:
            raise NspawnError(f"{self.name} was already started")
        self.mount()
        _write_test_manager_config(self.root)
        cgroups = _cgroup_dirs(self.name)
        for cg in cgroups:
            cg.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1",
            GP_CGROUP_PROCS=" ".join(str(cg / "cgroup.procs") for cg in cgroups),
            GP_ROOT=str(self.root),
            GP_NAME=self.name,
            GP_NETWORK=(
                "--private-network"
                if self.network is None
                else f"--network-namespace-path={self.network}"
            ),
        )
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                ["/bin/sh", "-c", _LAUNCHER, "gp-launcher", *self.extra_args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as one on teardown
            )
        self._wait_booted(None, timeout)

    def _wait_booted(self, previous_boot: str | None, timeout: float) -> None:
        def probe() -> str | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise NspawnError(
                    f"{self.name}: systemd-nspawn exited with status {self.proc.returncode}\n"
                    f"--- console ---\n{self.console()}"
                )
            if self.leader() is None:
                return None
            try:  # the leader may go away between the lookup and the command (reboot)
                state = self.run("systemctl", "is-system-running", check=False, timeout=10)
                if state.stdout.strip() not in READY_STATES:
                    return None
                boot = self.run("cat", "/proc/sys/kernel/random/boot_id", timeout=10)
            except (NspawnError, subprocess.TimeoutExpired):
                return None
            return boot.stdout.strip() if boot.stdout.strip() != previous_boot else None

        def failed() -> str:  # read at the time of failure, not before the wait
            state = "no leader" if self.leader() is None else f"leader {self.leader()}"
            return f" ({state})\n--- console ---\n{self.console()}"

        _wait_for(f"{self.name} to boot", probe, timeout, on_fail=failed)
        self.boots += 1

    def leader(self) -> int | None:
        """Host PID of the container's PID 1 (systemd); changes with every boot."""
        return leader_pid(self.name)

    def boot_id(self) -> str:
        return self.run("cat", "/proc/sys/kernel/random/boot_id").stdout.strip()

    def system_state(self) -> str:
        return self.run("systemctl", "is-system-running", check=False).stdout.strip()

    def reboot(self, timeout: float = 60.0) -> str:
        """``systemctl reboot`` inside; nspawn exits 133, the launcher boots the same overlay
        again. Returns the new boot id once systemd is up again."""
        before = self.boot_id()
        # The command's own process dies with the old PID namespace: its status means nothing.
        with contextlib.suppress(NspawnError, subprocess.TimeoutExpired):
            self.run("systemctl", "reboot", check=False, timeout=30)
        self._wait_booted(before, timeout)
        return self.boot_id()

    def stop(self) -> None:
        """Kill the container and its launcher, remove its cgroups, overlay and files.
        Idempotent; never raises for a container that is already gone."""
        leader = self.leader() if self.proc is not None else None
        if leader is not None:  # PID 1 of the namespace: takes every process inside with it
            with contextlib.suppress(ProcessLookupError):
                os.kill(leader, signal.SIGKILL)
        if self.proc is not None:
            # systemd-nspawn reaps its child and exits (not 133: the launcher does not loop),
            # so no zombie is left to a PID 1 that may not reap; then kill whatever remains.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5 if leader is not None else 0.1)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        errors: list[str] = []
        with contextlib.suppress(NspawnError):
            for cg in _cgroup_dirs(self.name):
                try:
                    _remove_cgroup(cg)
                except NspawnError as exc:
                    errors.append(str(exc))
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        _umount(self.root)
        _remove_nspawn_state(self.name, self._root_stat)
        if _mounted(self.root):
            errors.append(f"{self.root} is still mounted")
        else:
            _remove_dir(self.dir)
        with _LOCK:
            _LIVE.discard(self)
        if errors:
            raise NspawnError(f"cleaning up {self.name}: " + "; ".join(errors))

    # -- commands --------------------------------------------------------------------------

    def command(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
        """The host command line that runs ``argv`` inside the container, in a clean env."""
        leader = self.leader()
        if leader is None:
            raise NspawnError(f"{self.name} is not running")
        full_env = {**CONTAINER_ENV, **(env or {})}
        return [
            "nsenter",
            "-t",
            str(leader),
            "-a",
            "env",
            "-i",
            *(f"{k}={v}" for k, v in full_env.items()),
            *argv,
        ]

    def run(
        self,
        *argv: str,
        input: str | bytes | None = None,
        check: bool = True,
        timeout: float = 300,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside (as root, cwd /); text output. Raises NspawnError on a non-zero
        status when ``check``, with the command's output in the message.

        The command enters the container's namespaces, not its cgroup, and is no systemd unit:
        start long-running things with systemctl. A background process it leaves keeps the
        output pipes open (redirect its output) and dies with the container."""
        data = input.encode() if isinstance(input, str) else input
        proc = subprocess.run(
            self.command(argv, env),
            input=data,
            stdin=None if data is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        result = subprocess.CompletedProcess(
            argv,
            proc.returncode,
            proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace"),
        )
        if check and result.returncode != 0:
            raise NspawnError(
                f"{self.name}: {shlex.join(argv)} exited with status {result.returncode}\n"
                f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}"
            )
        return result

    def sh(self, script: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run a shell script inside (``set -e``)."""
        return self.run("/bin/sh", "-ec", script, **kwargs)

    # -- files -----------------------------------------------------------------------------

    def put(self, path: str, data: str | bytes, mode: int = 0o644) -> None:
        """Write a file inside (parents created), through the container's own view of its
        filesystem, so it also works under /tmp and /run."""
        self.run(
            "/bin/sh",
            "-ec",
            'mkdir -p "$(dirname "$1")"; cat > "$1.gp-new"; chmod "$2" "$1.gp-new"; '
            'mv -f "$1.gp-new" "$1"',
            "put",
            path,
            f"{mode:o}",
            input=data,
        )

    def get(self, path: str) -> str:
        return self.run("cat", path).stdout

    def copy_in(self, src: Path, dest: str) -> None:
        """Copy a host file or directory tree to ``dest`` inside (a directory's contents go
        into ``dest``; a file becomes ``dest``). Owner root, modes kept."""
        buf = io.BytesIO()

        def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            return info

        with tarfile.open(fileobj=buf, mode="w") as tar:
            if src.is_dir():
                tar.add(src, arcname=".", filter=as_root)
                target = dest
            else:
                tar.add(src, arcname=Path(dest).name, filter=as_root)
                target = str(Path(dest).parent)
        self.run(
            "/bin/sh",
            "-ec",
            'mkdir -p "$1"; tar -C "$1" -xf -',
            "copy_in",
            target,
            input=buf.getvalue(),
        )


def boot(base: Path, **kwargs: Any) -> Container:
    container = Container(base, **kwargs)
    try:
        container.start()
    except BaseException:
        container.stop()
        raise
    return container


def bake_layer(
    base: Path,
    dest: Path,
    prepare: Callable[[Container], object],
    keep: Iterable[str],
    *,
    layers: Sequence[Path] = (),
) -> Path:
    """Boot a container, run ``prepare`` in it and keep the paths in ``keep`` (absolute paths
    inside) it created as a read-only layer at ``dest``: ``Container(base, layers=[dest])``
    then starts with them in place. Only ``keep`` is kept, so no runtime state (machine id,
    journal, random seed) leaks into later containers. ``dest`` must be new or empty
    (``session_dir("layer", ...)`` gives one that is removed at exit).
    """
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise NspawnError(f"{dest} is not empty")
    with Container(base, layers=layers) as container:
        prepare(container)
        container.run("sync")
        for path in keep:
            rel = path.strip("/")
            src = container.upper / rel
            if not src.exists() and not src.is_symlink():
                raise NspawnError(f"bake_layer: prepare did not create {path}")
            for parent in reversed(Path(rel).parents[:-1]):  # same modes as inside
                (dest / parent).mkdir(exist_ok=True)
                shutil.copystat(container.root / parent, dest / parent)
            subprocess.run(["cp", "-a", str(src), str(dest / rel)], check=True)
    return dest


# ---------------------------------------------------------------------------------------------
# Cleanup at exit and on SIGTERM / SIGHUP


def register_cleanup(func: Callable[[], object]) -> None:
    """Also run ``func`` at exit and on SIGTERM/SIGHUP, before the containers are stopped
    (e.g. a fleet's network namespaces); undo with :func:`unregister_cleanup`."""
    _install_cleanup_hooks()
    with _LOCK:
        _CLEANUPS.append(func)


def unregister_cleanup(func: Callable[[], object]) -> None:
    with _LOCK, contextlib.suppress(ValueError):
        _CLEANUPS.remove(func)


def cleanup_all() -> None:
    """Run the registered cleanups, stop every container this process started and remove its
    extracted bases."""
    with _LOCK:
        cleanups = list(reversed(_CLEANUPS))
    for func in cleanups:
        with contextlib.suppress(Exception):
            func()
    with _LOCK:
        live = list(_LIVE)
    for container in live:
        with contextlib.suppress(Exception):
            container.stop()
    for path in list(_SESSION_DIRS):
        _remove_dir(path)
        _SESSION_DIRS.discard(path)
    _SESSION_BASES.clear()


def _on_signal(signum: int, frame: object) -> None:
    cleanup_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_cleanup_hooks() -> None:
    global _HOOKS_INSTALLED
    if _HOOKS_INSTALLED:
        return
    _HOOKS_INSTALLED = True
    atexit.register(cleanup_all)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) is signal.SIG_DFL:
                signal.signal(sig, _on_signal)


# ---------------------------------------------------------------------------------------------
# Wheels: the project and its runtime dependencies, installed offline inside a container


def build_wheelhouse(project: Path, dest: Path, *, python: str = sys.executable) -> list[Path]:
    """``pip wheel`` the project and all its runtime dependencies into ``dest`` (needs PyPI).

    Builds from a copy of the working tree (tracked and untracked, not ignored files), so the
    checkout gets no build/ or egg-info writes while other processes use it.
    """
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gp-wheel-src-") as tmp:
        src = Path(tmp) / project.name
        listed = subprocess.run(
            [
                "git",
                "-C",
                str(project),
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ],
            capture_output=True,
            check=False,
        )
        if listed.returncode == 0:
            for rel in filter(None, listed.stdout.decode().split("\0")):
                if (project / rel).is_file():
                    (src / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(project / rel, src / rel)
        else:
            ignore = shutil.ignore_patterns(".git", ".venv", "*.egg-info", "build", "__pycache__")
            shutil.copytree(project, src, ignore=ignore)
        cmd = [python, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check"]
        proc = subprocess.run(
            [*cmd, "--wheel-dir", str(dest), str(src)], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise NspawnError(f"pip wheel failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return sorted(dest.glob("*.whl"))


def install_wheels(
    container: Container,
    wheel_dir: Path,
    *,
    venv: str = "/opt/provision",
    dest: str = "/var/tmp/wheels",
    expose: Iterable[str] = (),
) -> str:
    """Copy every wheel in ``wheel_dir`` into the container and install them offline into a
    new venv at ``venv``; link the named console scripts into /usr/local/bin. Returns ``venv``.

    ``dest`` is on disk (not /tmp, a tmpfs inside nspawn) so the wheels survive a reboot.
    """
    wheels = sorted(wheel_dir.glob("*.whl"))
    if not wheels:
        raise NspawnError(f"no wheels in {wheel_dir}")
    container.copy_in(wheel_dir, dest)
    links = "".join(
        f'ln -sf "$1/bin/{shlex.quote(n)}" /usr/local/bin/{shlex.quote(n)}\n' for n in expose
    )
    container.run(
        "/bin/sh",
        "-ec",
        'python3 -m venv "$1"\n'
        '"$1/bin/pip" install --quiet --disable-pip-version-check --no-index '
        '--find-links "$2" "$2"/*.whl\n' + links,
        "install_wheels",
        venv,
        dest,
    )
    return venv


# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str]) -> int:
    if list(argv) not in (["rootfs"], ["reap"]):
        print("usage: python3 -m tests.system.nspawn rootfs|reap", file=sys.stderr)
        return 2
    if argv[0] == "reap":
        for name in reap_stale():
            print(f"reaped {name}")
        return 0
    if missing := missing_tools():
        print(f"missing host tools: {' '.join(missing)} (run: make system-deps)", file=sys.stderr)
        return 1
    started = time.monotonic()
    tarball = rootfs_tarball()
    print(
        f"{tarball} ({tarball.stat().st_size / 2**20:.0f} MiB, {time.monotonic() - started:.1f}s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
