"""A fleet of real systemd hosts reached over real ssh, for plays and testinfra suites.

Follows TESTING.md ("A fleet of real hosts over real SSH") and
reference/fleet-ci-recipe.sh. Each host is an :class:`nspawn.Container` in a network
namespace of its own, joined by a veth pair to a bridge in a controller namespace; ansible,
ssh and testinfra run in that controller namespace (:meth:`Fleet.run`). The namespaces are
bind mounts on files in the fleet's work dir (``unshare --net=FILE``), not ``ip netns``
entries, so nothing outlives the fleet. The controller namespace has no link to this
machine's network: nothing a test sends leaves the namespaces it made.

>>> with Fleet(base, ["gpu-a", "gpu-b"], groups={"gpus": ["gpu-a", "gpu-b"]}) as fleet:
...     fleet.run(["ansible", "-m", "ansible.builtin.ping", "all"], check=True)

Every host gets its own ssh host key and machine id before its first boot; the controller
checks host keys strictly. ``ansible.builtin.reboot`` works: the container's launcher
relaunches systemd-nspawn, the namespace (and so the address) outlives the reboot and
:meth:`nspawn.Container.leader` follows the container's cgroup.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sysconfig
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.system import nspawn
from tests.system.nspawn import Container, NspawnError

SUBNET = "10.213.0"  # a private /24 used only inside the namespaces a fleet makes
CONTROLLER_ADDRESS = f"{SUBNET}.1"
FIRST_HOST = 11
_HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
_WORKDIR_RE = re.compile(r"^fleet-(\d+)-[0-9a-f]{4}$")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

SSHD_CONFIG = """\
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
"""


def _sh(argv: Sequence[str], *, timeout: float = 30) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise NspawnError(f"{shlex.join(argv)} failed ({proc.returncode}): {proc.stderr[-2000:]}")


def _keygen(path: Path, comment: str) -> None:
    _sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


def _make_netns(path: Path) -> int:
    """A new network namespace held by a bind mount on ``path``; returns its inode."""
    path.touch()
    _sh(["unshare", f"--net={path}", "true"])
    _sh(["nsenter", f"--net={path}", "ip", "link", "set", "lo", "up"])
    return path.stat().st_ino


def _pids_in_netns(inode: int) -> list[int]:
    link = f"net:[{inode}]"
    pids: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "ns/net") == link:
                    pids.append(int(entry.name))
    return pids


def _kill_netns_processes(inode: int, timeout: float = 5.0) -> None:
    """SIGKILL every process in the namespace (ssh ControlPersist masters, stray commands)
    until none is left: a dying master may still fork."""
    deadline = time.monotonic() + timeout
    while (pids := _pids_in_netns(inode)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def _mounts_under(path: Path) -> list[Path]:
    prefix = f"{path}/"
    with open("/proc/self/mountinfo") as handle:
        points = [line.split()[4] for line in handle]
    return [Path(p) for p in points if p == str(path) or p.startswith(prefix)]


def reap_stale_fleets() -> list[str]:
    """Remove work dirs (namespaces, their processes) of fleets whose process no longer runs.

    Their containers are reaped by :func:`nspawn.reap_stale`."""
    reaped: list[str] = []
    if not nspawn.WORK_ROOT.is_dir():
        return reaped
    for d in nspawn.WORK_ROOT.iterdir():
        m = _WORKDIR_RE.match(d.name)
        if not m or nspawn._pid_alive(int(m.group(1))):
            continue
        for mount in sorted(_mounts_under(d), reverse=True):
            with contextlib.suppress(OSError):
                _kill_netns_processes(mount.stat().st_ino)
            nspawn._umount(mount)
        if not _mounts_under(d):
            shutil.rmtree(d, ignore_errors=True)
            reaped.append(d.name)
    return reaped


class Fleet:
    """Hosts named ``hosts`` (also their hostnames and inventory names) on overlays over
    ``base`` and ``layers``, reachable as root over ssh from the controller namespace.

    ``groups`` maps inventory group names to host names; ``host_vars`` maps host names to
    extra inventory variables. :meth:`start` boots them (``with`` does too); :meth:`close`
    removes everything, and runs at exit if the test does not get to it.
    """

    def __init__(
        self,
        base: Path,
        hosts: Sequence[str],
        *,
        layers: Sequence[Path] = (),
        groups: Mapping[str, Sequence[str]] | None = None,
        host_vars: Mapping[str, Mapping[str, Any]] | None = None,
        extra_args: Sequence[str] = (),
    ):
        names = list(hosts)
        if not names or len(set(names)) != len(names) or len(names) > 254 - FIRST_HOST:
            raise ValueError(f"need distinct host names, at most {254 - FIRST_HOST}: {names}")
        for name in names:
            if not _HOSTNAME_RE.match(name):
                raise ValueError(f"host name {name!r}: lowercase letters, digits and '-'")
        self.groups = {g: list(members) for g, members in (groups or {}).items()}
        self.host_vars = {h: dict(v) for h, v in (host_vars or {}).items()}
        unknown = ({h for m in self.groups.values() for h in m} | set(self.host_vars)) - set(names)
        if unknown:
            raise ValueError(f"groups or host_vars name unknown hosts: {sorted(unknown)}")
        if clash := set(self.groups) & {*names, "all", "ungrouped"}:
            raise ValueError(f"group names clash with host names or built-in groups: {clash}")
        self.base = base
        self.layers = list(layers)
        self.names = names
        self.extra_args = list(extra_args)
        self.workdir = nspawn.WORK_ROOT / f"fleet-{os.getpid()}-{os.urandom(2).hex()}"
        self._hosts: dict[str, Container] = {}
        self._netns: list[Path] = []  # namespace files mounted so far, controller first
        self._ctl_inode: int | None = None
        self._host_inodes: list[int] = []
        self._started = False

    def __repr__(self) -> str:
        return f"<Fleet {self.workdir.name} {self.names}>"

    # -- paths and addresses ---------------------------------------------------------------

    @property
    def controller_netns(self) -> Path:
        return self.workdir / "ctl"

    @property
    def key(self) -> Path:
        """The controller's private key (ed25519), authorized for root on every host."""
        return self.workdir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.workdir / "known_hosts"

    @property
    def inventory(self) -> Path:
        return self.workdir / "inventory.yml"

    def address(self, name: str) -> str:
        return f"{SUBNET}.{FIRST_HOST + self.names.index(name)}"

    def netns(self, name: str) -> Path:
        """The file holding host ``name``'s network namespace (for ``nsenter --net=``)."""
        return self.workdir / f"{name}.net"

    def host(self, name: str) -> Container:
        return self._hosts[name]

    def hosts(self) -> list[Container]:
        return [self._hosts[name] for name in self.names if name in self._hosts]

    def ssh_options(self) -> list[str]:
        """The options (``-o ...``) every ssh to a host gets; Ansible and testinfra get the
        same through the inventory, so they share one ControlMaster per host."""
        options = {
            "IdentitiesOnly": "yes",
            "UserKnownHostsFile": str(self.known_hosts),
            "StrictHostKeyChecking": "yes",
            "BatchMode": "yes",
            "ControlMaster": "auto",
            "ControlPersist": "60s",
            "ControlPath": f"{self.workdir}/cp-%C",
        }
        return [arg for k, v in options.items() for arg in ("-o", f"{k}={v}")]

    def ssh_argv(self, name: str, *command: str, options: Sequence[str] = ()) -> list[str]:
        """``ssh`` to root on host ``name``; ``options`` come first, so they win over ours."""
        return [
            "ssh",
            *options,
            "-i",
            str(self.key),
            *self.ssh_options(),
            f"root@{self.address(name)}",
            *command,
        ]

    def env(self) -> dict[str, str]:
        """The environment for ansible, ssh and testinfra in the controller: nothing of ours
        (no ANSIBLE_* or ansible.cfg of the caller), this interpreter's scripts first."""
        ansible_home = self.workdir / "ansible"
        return {
            "PATH": f"{sysconfig.get_path('scripts')}:{SYSTEM_PATH}",
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",  # Ansible refuses to run without a UTF-8 locale
            "ANSIBLE_HOME": str(ansible_home),
            "ANSIBLE_INVENTORY": str(self.inventory),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_PIPELINING": "1",
            "ANSIBLE_HOST_KEY_CHECKING": "True",
        }

    # -- commands --------------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
        timeout: float = 600,
        check: bool = False,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a host command in the controller namespace (env: :meth:`env` updated with
        ``env``; cwd: the work dir, away from any ansible.cfg). Raises NspawnError on a
        non-zero status when ``check``, with the output in the message."""
        proc = subprocess.run(
            ["nsenter", f"--net={self.controller_netns}", "--", *argv],
            env={**self.env(), **(env or {})},
            cwd=cwd or self.workdir,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        result = subprocess.CompletedProcess(list(argv), proc.returncode, proc.stdout, proc.stderr)
        if check and result.returncode != 0:
            raise NspawnError(
                f"{shlex.join(argv)} exited with status {result.returncode}\n"
                f"--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-4000:]}"
            )
        return result

    def ssh(self, name: str, *command: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run ``command`` (joined by the remote shell) as root on ``name`` over ssh."""
        return self.run(self.ssh_argv(name, *command), **kwargs)

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, timeout: float = 60.0) -> Fleet:
        """Make the namespaces, prepare and boot every host, wait until each one's sshd
        answers with the host key made for it. Cleans up everything on failure."""
        if self._started:
            raise NspawnError(f"{self} was already started")
        self._started = True
        nspawn.register_cleanup(self.close)
        try:
            reap_stale_fleets()
            self.workdir.mkdir(parents=True)
            _keygen(self.key, "fleet")
            self._ctl_inode = self._add_netns(self.controller_netns)
            self._ip_ctl("link", "add", "br0", "type", "bridge")
            self._ip_ctl("addr", "add", f"{CONTROLLER_ADDRESS}/24", "dev", "br0")
            self._ip_ctl("link", "set", "br0", "up")
            known_hosts = [self._prepare(i, name) for i, name in enumerate(self.names)]
            self.known_hosts.write_text("".join(known_hosts))
            self.inventory.write_text(
                yaml.safe_dump(self._inventory(), sort_keys=False, width=1000)
            )
            # in parallel: 1.5 s instead of 3 s for three hosts on two cores
            with ThreadPoolExecutor(len(self.names)) as pool:
                booting = [pool.submit(self._boot, name, timeout) for name in self.names]
            for future in booting:
                future.result()  # the first failure, once every host has finished
        except BaseException:
            self.close()
            raise
        return self

    def _add_netns(self, path: Path) -> int:
        self._netns.append(path)  # before it is made: close() unmounts it if half made
        return _make_netns(path)

    def _ip_ctl(self, *args: str) -> None:
        _sh(["nsenter", f"--net={self.controller_netns}", "ip", *args])

    def _prepare(self, index: int, name: str) -> str:
        """Network and files of one host before its first boot; returns its known_hosts line."""
        address = self.address(name)
        netns = self.netns(name)
        self._host_inodes.append(self._add_netns(netns))
        veth = f"ve{index}"
        self._ip_ctl(
            "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", str(netns)
        )
        self._ip_ctl("link", "set", veth, "master", "br0", "up")
        _sh(["nsenter", f"--net={netns}", "ip", "addr", "add", f"{address}/24", "dev", "eth0"])
        _sh(["nsenter", f"--net={netns}", "ip", "link", "set", "eth0", "up"])

        container = Container(
            self.base,
            layers=self.layers,
            network=str(netns),
            extra_args=[f"--hostname={name}", *self.extra_args],
        )
        self._hosts[name] = container
        container.mount()
        root = container.root
        (root / "etc/hostname").write_text(f"{name}\n")
        (root / "etc/machine-id").write_text(f"{uuid.uuid4().hex}\n")
        ssh_dir = root / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        ssh_dir.chmod(0o700)
        authorized = ssh_dir / "authorized_keys"
        authorized.write_text(self.key.with_suffix(".pub").read_text())
        authorized.chmod(0o600)
        for old in (root / "etc/ssh").glob("ssh_host_*"):  # made at rootfs build: shared
            old.unlink()
        host_key = root / "etc/ssh/ssh_host_ed25519_key"
        _keygen(host_key, f"root@{name}")
        (root / "etc/ssh/sshd_config.d/50-test.conf").write_text(SSHD_CONFIG)
        key_type, key = host_key.with_suffix(".pub").read_text().split()[:2]
        return f"{address} {key_type} {key}\n"

    def _inventory(self) -> dict[str, Any]:
        hosts = {
            n: {"ansible_host": self.address(n), **self.host_vars.get(n, {})} for n in self.names
        }
        inventory: dict[str, Any] = {
            "vars": {
                "ansible_user": "root",
                "ansible_python_interpreter": "/usr/bin/python3",
                "ansible_ssh_private_key_file": str(self.key),
                "ansible_ssh_common_args": shlex.join(self.ssh_options()),
            },
            "hosts": hosts,
        }
        if self.groups:
            inventory["children"] = {
                group: {"hosts": {h: None for h in members}}
                for group, members in self.groups.items()
            }
        return {"all": inventory}

    def _boot(self, name: str, timeout: float) -> None:
        self.host(name).start(timeout)
        self._wait_ssh(name, timeout)

    def _wait_ssh(self, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            probe = self.ssh(name, "true", timeout=30)
            if probe.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise NspawnError(
                    f"timed out after {timeout:.0f}s waiting for sshd on {name} "
                    f"({self.address(name)}): {probe.stderr.strip()[-1000:]}\n"
                    f"--- console of {self.host(name).name} ---\n{self.host(name).console()}"
                )
            time.sleep(0.1)

    def close(self) -> None:
        """Kill what runs in the controller namespace, stop the hosts, unmount the namespaces
        and remove the work dir. Idempotent; raises NspawnError if something is left."""
        nspawn.unregister_cleanup(self.close)
        errors: list[str] = []
        if self._ctl_inode is not None:
            _kill_netns_processes(self._ctl_inode)
        for container in self.hosts():
            try:
                container.stop()
            except NspawnError as exc:
                errors.append(str(exc))
        for path in reversed(self._netns):
            nspawn._umount(path)
        if mounts := _mounts_under(self.workdir):
            errors.append(f"still mounted: {mounts}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if not errors:
            errors = self.leftovers()
        if errors:
            raise NspawnError(f"cleaning up {self}: " + "; ".join(errors))

    def leftovers(self) -> list[str]:
        """What of this fleet still exists (empty after :meth:`close`)."""
        found = [f"mount {m}" for m in _mounts_under(self.workdir)]
        if self.workdir.exists():
            found.append(f"dir {self.workdir}")
        for inode in filter(None, [self._ctl_inode, *self._host_inodes]):
            found += [f"process {pid} in net:[{inode}]" for pid in _pids_in_netns(inode)]
        for container in self.hosts():
            found += [f"cgroup {cg}" for cg in nspawn._cgroup_dirs(container.name) if cg.exists()]
            if container.dir.exists():
                found.append(f"dir {container.dir}")
        return found


@pytest.fixture
def make_fleet(nspawn_base: Path) -> Iterator[Callable[..., Fleet]]:
    """A factory for started fleets on the session base, closed after the test:
    ``make_fleet(["gpu-a", "gpu-b"], layers=[...], groups={...}, host_vars={...})``."""
    fleets: list[Fleet] = []

    def make(hosts: Sequence[str], **kwargs: Any) -> Fleet:
        fleet = Fleet(nspawn_base, hosts, **kwargs)
        fleets.append(fleet)
        return fleet.start()

    yield make
    errors = []
    for fleet in fleets:
        try:
            fleet.close()
        except NspawnError as exc:
            errors.append(str(exc))
    assert not errors, errors
