"""Fixtures for tests on a real systemd host (systemd-nspawn); see tests/system/nspawn.py.

- ``nspawn_base``      (session)  the extracted bookworm rootfs, built and cached when missing
- ``systemd_host``     (function) a booted container on its own overlay, removed afterwards
- ``boot_container``   (function) a factory for more containers in one test
- ``systemd_testinfra``(function) a testinfra Host for ``systemd_host``
- ``wheelhouse``       (session)  the project's wheel plus all runtime dependency wheels
- ``provision_layer``  (session)  a layer with the project installed offline in /opt/provision
                                  (``provision`` on PATH), baked once from ``wheelhouse``
- ``provisioned_host`` (function) ``systemd_host`` with that layer: the tool is installed
- ``make_fleet``       (function) a factory for fleets of ssh hosts in network namespaces
                                  (tests/system/fleet.py)
- ``ollama_box_layer`` (session)  what an Ollama install leaves, with stand-ins for ollama and
                                  nvidia-smi (tests/system/ollama_box.py)

Every test in this directory gets the ``system`` marker. Without root or the host tools the
tests are skipped, unless GPU_PROVISION_SYSTEM_TESTS=require (then they fail).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import testinfra.host

from tests.system import nspawn, ollama_box
from tests.system.fleet import make_fleet  # noqa: F401  (a fixture: fleets of ssh hosts)
from tests.system.testinfra_nsenter import nsenter_host

HERE = Path(__file__).parent
REPO_ROOT = HERE.parent.parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.system)


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn, overlayfs, cgroups)"
    if missing := nspawn.missing_tools():
        return f"missing host tools {', '.join(missing)}: run `make system-deps`"
    return None


@pytest.fixture(scope="session")
def nspawn_base() -> Path:
    if reason := _unavailable():
        if os.environ.get("GPU_PROVISION_SYSTEM_TESTS") == "require":
            pytest.fail(reason)
        pytest.skip(reason)
    return nspawn.session_base()  # removed at exit


@pytest.fixture
def boot_container(nspawn_base: Path) -> Iterator[Callable[..., nspawn.Container]]:
    started: list[nspawn.Container] = []

    def boot(**kwargs: Any) -> nspawn.Container:
        container = nspawn.Container(nspawn_base, **kwargs)
        started.append(container)
        container.start()
        return container

    yield boot
    errors = []
    for container in started:
        try:
            container.stop()
        except nspawn.NspawnError as exc:
            errors.append(str(exc))
    assert not errors, errors


@pytest.fixture
def systemd_host(boot_container: Callable[..., nspawn.Container]) -> nspawn.Container:
    return boot_container()


@pytest.fixture
def systemd_testinfra(systemd_host: nspawn.Container) -> testinfra.host.Host:
    return nsenter_host(systemd_host)


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project (built from the working tree) and its runtime dependencies as wheels."""
    dest = tmp_path_factory.mktemp("wheelhouse")
    nspawn.build_wheelhouse(REPO_ROOT, dest)
    return dest


PROVISION_VENV = "/opt/provision"


@pytest.fixture(scope="session")
def provision_layer(nspawn_base: Path, wheelhouse: Path) -> Path:
    def install(container: nspawn.Container) -> None:
        nspawn.install_wheels(container, wheelhouse, venv=PROVISION_VENV, expose=["provision"])

    dest = nspawn.session_dir("layer", "provision")
    keep = [PROVISION_VENV, "/usr/local/bin/provision"]
    return nspawn.bake_layer(nspawn_base, dest, install, keep)


@pytest.fixture
def provisioned_host(
    boot_container: Callable[..., nspawn.Container], provision_layer: Path
) -> nspawn.Container:
    return boot_container(layers=[provision_layer])


@pytest.fixture(scope="session")
def ollama_box_layer(nspawn_base: Path) -> Path:
    dest = nspawn.session_dir("layer", "ollama-box")
    return nspawn.bake_layer(nspawn_base, dest, ollama_box.prepare, ollama_box.KEEP)
