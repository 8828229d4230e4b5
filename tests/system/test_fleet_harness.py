"""The fleet harness works: three hosts in their own namespaces, strict ssh, Ansible, testinfra,
a reboot from a play, and a teardown that leaves nothing behind."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.system import nspawn
from tests.system.fleet import Fleet
from tests.system.nspawn import NspawnError

HOSTS = ["gpu-a", "gpu-b", "gpu-c"]
GROUPS = {"gpus": ["gpu-a", "gpu-b"], "edge": ["gpu-c"]}
HOST_VARS = {"gpu-a": {"gpu_count": 2}}


def netns_of(pid: int | str) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def processes_in(netns: str) -> list[int]:
    pids: list[int] = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.readlink(entry / "ns/net") == netns:
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def mounts() -> str:
    return Path("/proc/self/mountinfo").read_text()


@pytest.fixture(scope="module")
def fleet(nspawn_base: Path) -> Iterator[Fleet]:
    with Fleet(nspawn_base, HOSTS, groups=GROUPS, host_vars=HOST_VARS) as started:
        yield started


def test_hosts_boot_each_in_its_own_namespace(fleet: Fleet) -> None:
    seen = {netns_of("self"), f"net:[{fleet.controller_netns.stat().st_ino}]"}
    for name in HOSTS:
        host = fleet.host(name)
        assert host.system_state() in nspawn.READY_STATES
        assert host.run("systemctl", "is-active", "ssh").stdout.strip() == "active"
        leader = host.leader()
        assert leader is not None
        netns = netns_of(leader)
        assert netns == f"net:[{fleet.netns(name).stat().st_ino}]"
        assert netns not in seen
        seen.add(netns)
        addresses = host.run("ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout
        assert f"inet {fleet.address(name)}/24" in addresses


def test_ssh_with_strict_host_keys_reaches_every_host(fleet: Fleet) -> None:
    for name in HOSTS:
        assert fleet.ssh(name, "hostname", check=True).stdout.strip() == name
    # the check is real: without our known_hosts the same key is refused
    unknown = ["-o", "UserKnownHostsFile=/dev/null", "-o", "ControlPath=none"]
    refused = fleet.run(fleet.ssh_argv("gpu-a", "true", options=unknown))
    assert refused.returncode == 255
    assert "Host key verification failed" in refused.stderr


def test_every_host_has_its_own_host_key(fleet: Fleet) -> None:
    keys = {}
    for name in HOSTS:
        etc_ssh = fleet.host(name).root / "etc/ssh"
        assert sorted(p.name for p in etc_ssh.glob("ssh_host_*")) == [
            "ssh_host_ed25519_key",
            "ssh_host_ed25519_key.pub",
        ]
        keys[name] = (etc_ssh / "ssh_host_ed25519_key.pub").read_text().split()[1]
    assert len(set(keys.values())) == len(HOSTS)
    built = {p.read_text().split()[1] for p in fleet.base.glob("etc/ssh/ssh_host_*.pub")}
    assert not built & set(keys.values())  # none of the rootfs build's keys
    known = fleet.known_hosts.read_text().splitlines()
    assert sorted(known) == sorted(f"{fleet.address(n)} ssh-ed25519 {keys[n]}" for n in HOSTS)


def test_root_password_login_is_refused(fleet: Fleet) -> None:
    password_only = [
        "-o",
        "ControlPath=none",  # not through a master that has already logged in with the key
        "-o",
        "PreferredAuthentications=password",
        "-o",
        "PubkeyAuthentication=no",
    ]
    for name in HOSTS:
        result = fleet.run(fleet.ssh_argv(name, "true", options=password_only))
        assert result.returncode == 255
        assert "Permission denied (publickey)" in result.stderr


def test_inventory_has_groups_and_host_vars(fleet: Fleet) -> None:
    listed = json.loads(fleet.run(["ansible-inventory", "--list"], check=True).stdout)
    assert sorted(listed["gpus"]["hosts"]) == ["gpu-a", "gpu-b"]
    assert listed["edge"]["hosts"] == ["gpu-c"]
    assert listed["_meta"]["hostvars"]["gpu-a"]["gpu_count"] == 2
    assert listed["_meta"]["hostvars"]["gpu-c"]["ansible_host"] == fleet.address("gpu-c")


def test_ansible_ping_reaches_all_hosts(fleet: Fleet) -> None:
    argv = ["ansible", "-i", str(fleet.inventory), "-m", "ansible.builtin.ping", "all"]
    result = fleet.run(argv, check=True)
    assert (
        sorted(line.split()[0] for line in result.stdout.splitlines() if "SUCCESS" in line) == HOSTS
    )


def test_testinfra_over_ansible_in_the_controller(fleet: Fleet, tmp_path: Path) -> None:
    (tmp_path / "test_remote.py").write_text(
        "def test_host(host):\n"
        "    assert host.backend.get_hostname() in ('gpu-a', 'gpu-b')\n"
        "    assert host.check_output('hostname') == host.backend.get_hostname()\n"
        "    assert host.service('ssh').is_running\n"
    )
    argv = ["pytest", "-q", "-p", "no:cacheprovider", "--hosts=ansible://gpus", "test_remote.py"]
    result = fleet.run(argv, cwd=tmp_path, check=True)
    assert "2 passed" in result.stdout


REBOOT_PLAY = """\
- hosts: gpu-b
  gather_facts: false
  tasks:
    - ansible.builtin.reboot:
        reboot_timeout: 120
"""


def test_reboot_from_a_play(fleet: Fleet, tmp_path: Path) -> None:
    before = {name: fleet.host(name).boot_id() for name in HOSTS}
    leader = fleet.host("gpu-b").leader()
    (tmp_path / "reboot.yml").write_text(REBOOT_PLAY)

    result = fleet.run(["ansible-playbook", str(tmp_path / "reboot.yml")], check=True)

    assert "changed=1" in result.stdout
    after = {name: fleet.host(name).boot_id() for name in HOSTS}
    assert after["gpu-b"] != before["gpu-b"]
    assert {n: after[n] for n in ("gpu-a", "gpu-c")} == {n: before[n] for n in ("gpu-a", "gpu-c")}
    assert fleet.host("gpu-b").leader() != leader
    assert fleet.host("gpu-b").system_state() in nspawn.READY_STATES
    assert fleet.ssh("gpu-b", "hostname", check=True).stdout.strip() == "gpu-b"
    assert "systemd-nspawn exited with status 133" in fleet.host("gpu-b").console(100_000)


def test_close_leaves_nothing_behind(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet(["one", "two"])
    fleet.ssh("one", "true", check=True)  # leaves a ControlPersist master in the controller
    controller = f"net:[{fleet.controller_netns.stat().st_ino}]"
    assert processes_in(controller)
    hosts = fleet.hosts()
    leaders = [host.leader() for host in hosts]

    fleet.close()
    fleet.close()  # idempotent

    assert not fleet.workdir.exists()
    assert fleet.leftovers() == []
    assert not processes_in(controller)
    assert not any(Path(f"/proc/{pid}").exists() for pid in leaders)
    assert str(fleet.workdir) not in mounts()
    for host in hosts:
        assert host.name not in mounts()
        assert not any(cg.exists() for cg in nspawn._cgroup_dirs(host.name))


def test_failed_boot_cleans_up_the_hosts_already_booted(
    nspawn_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_start = nspawn.Container.start
    started: list[nspawn.Container] = []

    def start(self: nspawn.Container, timeout: float = 60.0) -> None:
        if "--hostname=two" in self.extra_args:
            raise NspawnError("host 2 does not boot")
        started.append(self)
        real_start(self, timeout)

    monkeypatch.setattr(nspawn.Container, "start", start)
    fleet = Fleet(nspawn_base, ["one", "two"])
    with pytest.raises(NspawnError, match="host 2 does not boot"):
        fleet.start()
    assert len(started) == 1 and started[0].leader() is None
    assert fleet.leftovers() == []
    assert str(fleet.workdir) not in mounts()
