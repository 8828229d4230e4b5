"""A pytest-testinfra backend that runs commands inside an nspawn container through nsenter.

    host = nsenter_host(container)          # or testinfra.get_host(f"nsenter://{container.name}")
    assert host.service("nginx").is_running

The backend is named by the machine name only and looks up the container's PID 1 for every
command, so a Host stays valid across reboots.
"""

from __future__ import annotations

from typing import Any

import testinfra.backend
import testinfra.host
from testinfra.backend import base

from tests.system.nspawn import CONTAINER_ENV, Container, leader_pid


class NsenterBackend(base.BaseBackend):
    NAME = "nsenter"

    def run(self, command: str, *args: str, **kwargs: Any) -> base.CommandResult:
        cmd = self.get_command(command, *args)
        leader = leader_pid(self.hostname)
        if leader is None:
            raise RuntimeError(f"container {self.hostname} is not running")
        env = " ".join(self.quote("%s", f"{k}={v}") for k, v in CONTAINER_ENV.items())
        out = self.run_local(f"nsenter -t %s -a env -i {env} /bin/sh -c %s", str(leader), cmd)
        out.command = self.encode(cmd)
        return out


testinfra.backend.BACKENDS.setdefault("nsenter", f"{__name__}.NsenterBackend")


def nsenter_host(container: Container | str) -> testinfra.host.Host:
    """A testinfra Host for a container (or a machine name)."""
    name = container if isinstance(container, str) else container.name
    return testinfra.host.Host.get_host(f"nsenter://{name}")
