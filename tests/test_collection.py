"""The Ansible collection in ansible/ passes the ecosystem's own checks.

- `ansible-galaxy collection build` makes the tarball users install;
- `ansible-test sanity` (every test that runs without containers: validate-modules, pylint,
  pep8, import, compile, yamllint, ansible-doc, ...) on a copy laid out as
  ansible_collections/gpu_provision/fleet, as ansible-test requires;
- `ansible-lint` with the production profile (ansible/.ansible-lint: offline, two documented
  skips);
- `ansible-doc` renders each module's DOCUMENTATION, EXAMPLES and RETURN and the role's
  argument spec (it exits 0 for a plugin it cannot find, so the JSON is read too).

ansible-test builds one virtual environment per sanity test from the package index on its
first run (about 1.5 min on 2 cores) and keeps them under a HOME of its own in the user's cache
directory; later runs take about 15 s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COLLECTION = REPO / "ansible"
BIN = Path(sysconfig.get_path("scripts"))  # ansible-core and ansible-lint of this venv
GET_PIP = REPO / "tests/data/ansible-test-get-pip.py"
MODULES = ("provision", "rig_facts")

pytestmark = pytest.mark.slow


def _cache_home() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gpu-provision" / "ansible-test-home"


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ansible/ at .../ansible_collections/gpu_provision/fleet (a real path: a
    symbolic link is refused by ansible-test)."""
    dest = tmp_path_factory.mktemp("c") / "ansible_collections" / "gpu_provision" / "fleet"
    ignore = shutil.ignore_patterns(".ansible", "output", "__pycache__", "*.tar.gz")
    shutil.copytree(COLLECTION, dest, ignore=ignore)
    return dest


def _env(collection: Path, home: Path | None = None) -> dict[str, str]:
    return {
        "PATH": f"{BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(home or collection.parents[2]),
        "LANG": "C.UTF-8",
        "ANSIBLE_COLLECTIONS_PATH": str(collection.parents[2]),
        "ANSIBLE_NOCOLOR": "1",
        "NO_COLOR": "1",
    }


def _run(argv: list[str], collection: Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = _env(collection, kwargs.pop("home", None))  # type: ignore[arg-type]
    return subprocess.run(
        argv, cwd=collection, env=env, capture_output=True, text=True, timeout=900, check=False
    )


def _get_pip_version() -> str:
    """The pip version ansible-test bootstraps (python_requirements.get_venv_packages)."""
    import ansible_test

    source = Path(ansible_test.__file__).parent / "_internal/python_requirements.py"
    found = re.search(r"pip='([0-9.]+)'", source.read_text())
    assert found, f"no pip version in {source}: has ansible-test changed how it bootstraps pip?"
    return found.group(1)


def test_builds(collection: Path, tmp_path: Path) -> None:
    built = _run(
        [str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(tmp_path)],
        collection,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (tarball,) = tmp_path.glob("gpu_provision-fleet-*.tar.gz")
    listing = subprocess.run(["tar", "-tzf", str(tarball)], capture_output=True, text=True)
    names = set(listing.stdout.split())
    assert {"MANIFEST.json", "plugins/modules/provision.py", "roles/host/tasks/main.yml"} <= names
    assert "examples/site.yml" in names and ".ansible-lint" not in names


def test_sanity(collection: Path) -> None:
    home = _cache_home()
    cache = home / ".ansible/test/cache"
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copy(GET_PIP, cache / f"get_pip_{_get_pip_version().replace('.', '_')}.py")
    argv = [str(BIN / "ansible-test"), "sanity", "--python", "3.11", "--color", "no"]
    result = _run(argv, collection, home=home)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-4000:]
    ran = set(re.findall(r"^Running sanity test [\"']([\w-]+)", result.stdout, re.MULTILINE))
    assert {"validate-modules", "pylint", "pep8", "import", "ansible-doc", "yamllint"} <= ran


def test_lint_production_profile(collection: Path) -> None:
    result = _run([str(BIN / "ansible-lint"), "--nocolor"], collection)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-4000:]
    assert "Profile 'production' was required, and it passed" in result.stderr, result.stderr


@pytest.mark.parametrize("module", MODULES)
def test_module_documentation_renders(collection: Path, module: str) -> None:
    name = f"gpu_provision.fleet.{module}"
    text = _run(
        [
            str(
                BIN / "ansible-doc",
            ),
            name,
        ],
        collection,
    )
    assert text.returncode == 0 and "EXAMPLES:" in text.stdout, text.stdout + text.stderr
    assert "RETURN VALUES:" in text.stdout
    document = json.loads(_run([str(BIN / "ansible-doc"), "--json", name], collection).stdout)
    doc = document[name]
    assert doc["doc"]["short_description"] and doc["examples"] and doc["return"]


def test_role_argument_spec_renders(collection: Path) -> None:
    result = _run([str(BIN / "ansible-doc"), "-t", "role", "gpu_provision.fleet.host"], collection)
    assert result.returncode == 0, result.stdout + result.stderr
    for variable in ("provision_wheel", "provision_profile", "provision_rig", "provision_state"):
        assert variable in result.stdout
