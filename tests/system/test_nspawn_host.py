"""The real systemd host fixture works: boot, exec, units, reboot, testinfra, isolation, wheels."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import testinfra.host

from tests.system import nspawn
from tests.system.nspawn import Container
from tests.system.testinfra_nsenter import nsenter_host

MARKER_UNIT = """\
[Unit]
Description=gpu-provision test unit

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'cat /proc/sys/kernel/random/boot_id > /var/lib/gp-marker'

[Install]
WantedBy=multi-user.target
"""


def test_boots_with_systemd_as_pid_1(systemd_host: Container) -> None:
    assert systemd_host.run("cat", "/proc/1/comm").stdout.strip() == "systemd"
    assert systemd_host.system_state() in ("running", "degraded")
    assert systemd_host.run("systemctl", "is-active", "nginx").stdout.strip() == "active"
    # commands run in a clean environment, inside the container's filesystem and network
    assert "VIRTUAL_ENV" not in systemd_host.run("env").stdout
    assert systemd_host.get("/etc/os-release").count("bookworm") >= 1
    links = systemd_host.run("ip", "-o", "link").stdout
    assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]


def test_unit_survives_reboot(systemd_host: Container) -> None:
    systemd_host.put("/etc/systemd/system/gp-marker.service", MARKER_UNIT)
    systemd_host.run("systemctl", "daemon-reload")
    systemd_host.run("systemctl", "enable", "--now", "gp-marker.service")
    first_boot = systemd_host.boot_id()
    assert systemd_host.get("/var/lib/gp-marker").strip() == first_boot
    leader = systemd_host.leader()

    second_boot = systemd_host.reboot()

    assert second_boot != first_boot
    assert systemd_host.leader() != leader
    assert systemd_host.boots == 2
    assert "systemd-nspawn exited with status 133" in systemd_host.console(100_000)
    assert systemd_host.run("systemctl", "is-active", "gp-marker").stdout.strip() == "active"
    assert systemd_host.run("systemctl", "is-enabled", "gp-marker").stdout.strip() == "enabled"
    assert systemd_host.get("/var/lib/gp-marker").strip() == second_boot  # it ran on this boot
    boots = systemd_host.run("journalctl", "--list-boots", "--no-pager").stdout
    assert first_boot.replace("-", "") in boots  # the journal persists across the reboot


def test_testinfra_modules_through_nsenter(systemd_testinfra: testinfra.host.Host) -> None:
    host = systemd_testinfra
    assert host.backend.get_connection_type() == "nsenter"
    nginx = host.service("nginx")
    assert nginx.is_running
    assert nginx.is_enabled
    assert nginx.systemd_properties["Type"] == "forking"
    assert host.socket("tcp://0.0.0.0:80").is_listening
    assert not host.socket("tcp://0.0.0.0:8080").is_listening
    conf = host.file("/etc/nginx/nginx.conf")
    assert conf.exists and conf.user == "root" and conf.mode == 0o644
    assert host.process.get(pid=1).comm == "systemd"
    assert host.check_output("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1/") == "200"


def test_nsenter_host_follows_reboot(systemd_host: Container) -> None:
    host = nsenter_host(systemd_host)
    before = host.file("/proc/sys/kernel/random/boot_id").content_string
    systemd_host.reboot()
    assert host.file("/proc/sys/kernel/random/boot_id").content_string != before
    assert host.service("nginx").is_running


def test_two_containers_are_isolated(
    boot_container: Callable[..., Container], tmp_path: Path
) -> None:
    (tmp_path / "shared").write_text("from the host\n")
    one = boot_container()
    two = boot_container(extra_args=[f"--bind-ro={tmp_path}:/mnt/host"])  # extra nspawn options
    assert two.get("/mnt/host/shared") == "from the host\n"
    assert one.leader() != two.leader()
    assert one.boot_id() != two.boot_id()
    one.put("/etc/only-in-one", "1\n")
    assert two.run("test", "-e", "/etc/only-in-one", check=False).returncode == 1
    assert not (one.base / "etc/only-in-one").exists()  # the shared base stays clean
    assert (one.upper / "etc/only-in-one").exists()
    # each has its own cgroup subtree and both serve nginx on their own port 80
    assert one.run("cat", "/proc/1/cgroup").stdout.splitlines()[-1] == "0::/init.scope"
    for c in (one, two):
        assert c.run("curl", "-sf", "-o", "/dev/null", "http://127.0.0.1/").returncode == 0
    two.stop()
    assert one.system_state() in ("running", "degraded")


def test_stop_leaves_nothing_behind(nspawn_base: Path) -> None:
    container = nspawn.boot(nspawn_base)
    leader, root = container.leader(), container.root
    assert leader is not None
    container.run(
        "sh", "-c", "sleep 1000 >/dev/null 2>&1 & echo started"
    )  # a process outside any unit
    container.stop()
    container.stop()  # idempotent
    assert not Path(f"/proc/{leader}").exists()
    assert not root.exists()
    assert not any(d.exists() for d in nspawn._cgroup_dirs(container.name))
    assert not Path(f"/run/systemd/nspawn/propagate/{container.name}").exists()
    with open("/proc/self/mountinfo") as mounts:
        assert container.name not in mounts.read()


def test_copy_in_and_put_under_tmpfs(systemd_host: Container, tmp_path: Path) -> None:
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "tool").write_text("#!/bin/sh\necho tool-ran\n")
    os.chmod(tmp_path / "tree" / "sub" / "tool", 0o755)
    systemd_host.copy_in(tmp_path / "tree", "/tmp/tree")  # /tmp is a tmpfs inside nspawn
    assert systemd_host.run("/tmp/tree/sub/tool").stdout == "tool-ran\n"
    systemd_host.put("/usr/local/bin/stand-in", "#!/bin/sh\necho stand-in\n", mode=0o755)
    assert systemd_host.run("stand-in").stdout == "stand-in\n"
    (systemd_host.root / "etc" / "written-from-host").write_text("x\n")  # via the merged dir
    assert systemd_host.get("/etc/written-from-host") == "x\n"


@pytest.mark.slow
def test_install_project_wheel_offline(systemd_host: Container, wheelhouse: Path) -> None:
    assert any(w.name.startswith("gpu_provision-") for w in wheelhouse.glob("*.whl"))
    venv = nspawn.install_wheels(systemd_host, wheelhouse, expose=["provision"])
    assert venv == "/opt/provision"
    out = systemd_host.run("provision", "--help").stdout
    assert "Usage:" in out
    systemd_host.reboot()  # the installed tool is on disk, not on a tmpfs
    assert systemd_host.run("/opt/provision/bin/provision", "--help").returncode == 0


@pytest.mark.slow
def test_provision_layer_is_shared_and_clean(
    provisioned_host: Container, boot_container: Callable[..., Container], provision_layer: Path
) -> None:
    assert "Usage:" in provisioned_host.run("provision", "--help").stdout
    version = provisioned_host.run("/opt/provision/bin/pip", "show", "gpu-provision").stdout
    assert "Version: 0.1.0" in version
    assert sorted(p.name for p in provision_layer.iterdir()) == ["opt", "usr"]  # nothing else
    assert oct(provisioned_host.root.joinpath("usr/local/bin").stat().st_mode & 0o777) == "0o755"
    other = boot_container(layers=[provision_layer])
    assert other.run("cat", "/etc/machine-id").stdout != provisioned_host.get("/etc/machine-id")
    provisioned_host.put("/opt/provision/changed", "x")  # copy-up: the layer is not written
    assert not (provision_layer / "opt/provision/changed").exists()
