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
from typing import Any

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


# --- the modules, run by Ansible on this machine against an offline root ---------------------

STOCK_ROOT = REPO / "tests/data/stock-root"
DISPLAY_RIG = REPO / "tests/rigs/synthetic-3090-display-3090.yaml"  # the plan warns about it
DROPIN = "/etc/systemd/system/ollama.service.d/50-provision.conf"
PROFILE = {
    "runtime": "ollama",
    "listen": {"address": "127.0.0.1", "port": 11434},
    "models": [{"ref": "llama3.1:8b", "ctx": 8192, "parallel": 1}],
}


def _module(collection: Path, module: str, args: dict[str, object], *flags: str) -> dict[str, Any]:
    """One task of ``module`` on localhost, as Ansible reports it (``localhost | CHANGED =>``
    and the result as JSON), with the ``[WARNING]:`` lines it printed."""
    argv = [str(BIN / "ansible"), "localhost", "-m", f"gpu_provision.fleet.{module}"]
    argv += [
        "-a",
        json.dumps(args),
        "-e",
        "ansible_python_interpreter={{ ansible_playbook_python }}",
    ]
    env = _env(collection) | {"ANSIBLE_LOCALHOST_WARNING": "0"}
    result = subprocess.run(
        [*argv, *flags], cwd=collection, env=env, capture_output=True, text=True, timeout=120
    )
    _, sep, rest = result.stdout.partition("localhost | ")
    assert sep and " => " in rest, result.stdout + result.stderr
    status, text = rest.split(" => ", 1)
    task: dict[str, Any] = json.JSONDecoder().raw_decode(text)[0]
    task["status"] = status  # SUCCESS, CHANGED or FAILED!: the callback drops "failed"
    output = result.stdout + result.stderr
    task["printed_warnings"] = [w for w in output.splitlines() if w.startswith("[WARNING]: ")]
    task["printed"] = output  # the callback prints a diff instead of returning it
    return task


@pytest.fixture
def offline_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(STOCK_ROOT, root)
    return root


def test_provision_module_check_diff_apply_and_again(collection: Path, offline_root: Path) -> None:
    args = {
        "profile": PROFILE,
        "rig": str(DISPLAY_RIG),
        "root": str(offline_root),
        "executable": str(BIN / "provision"),
    }
    checked = _module(collection, "provision", args, "--check", "--diff")
    assert checked["changed"] is True and checked["pending"] is True, checked
    assert any("drives a display" in w for w in checked["printed_warnings"]), checked
    shown = checked["printed"]
    assert f"--- before: /dev/null\n+++ after: {DROPIN}\n" in shown, shown
    assert checked["plan"]["models"]
    assert not (offline_root / DROPIN.lstrip("/")).exists()  # check mode wrote nothing

    applied = _module(collection, "provision", args)
    assert applied["changed"] is True and applied["done"] and applied["backup"], applied
    written = (offline_root / DROPIN.lstrip("/")).read_text()
    assert "CUDA_VISIBLE_DEVICES=" in written
    assert all(f"\n+{line}\n" in shown for line in written.splitlines()), shown

    again = _module(collection, "provision", args, "--diff")
    assert again["changed"] is False and again["pending"] is False, again
    assert "+++ after" not in again["printed"] and "done" not in again

    planned = _module(
        collection,
        "provision",
        args
        | {
            "state": "planned",
            "profile": PROFILE | {"models": [{"ref": "llama3.1:8b", "ctx": 4096, "parallel": 1}]},
        },
    )
    assert planned["changed"] is False and planned["pending"] is True, planned


def test_provision_module_reports_the_tools_error_and_hint(
    collection: Path, offline_root: Path
) -> None:
    bad = PROFILE | {"models": [{"ref": "llama3.1:8b", "ctx": "a lot"}]}
    args = {"profile": bad, "rig": str(DISPLAY_RIG), "root": str(offline_root)}
    failed = _module(collection, "provision", args | {"executable": str(BIN / "provision")})
    assert failed["status"] == "FAILED!" and failed["rc"] == 2, failed
    assert "ctx" in str(failed["msg"]) and failed["msg"] == failed["error"]
    assert failed["rolled_back"] is False
    assert "profile (inline)" in str(failed["msg"]) and "ansible-moduletmp" not in str(failed)
    missing = _module(collection, "provision", args | {"executable": "/nonexistent/provision"})
    assert missing["status"] == "FAILED!" and "not installed" in str(missing["msg"])
    assert missing["rolled_back"] is False and "host role" in str(missing["hint"])


def test_check_mode_fails_where_apply_would_refuse(collection: Path, offline_root: Path) -> None:
    """A file gpu-provision does not manage at a path it writes: the real run would stop
    (exit 3), so the check says so instead of reporting a change; force: true replaces it."""
    foreign = offline_root / DROPIN.lstrip("/")
    foreign.parent.mkdir(parents=True)
    foreign.write_text("[Service]\nEnvironment=MINE=1\n")
    args = {"profile": PROFILE, "rig": str(DISPLAY_RIG), "root": str(offline_root)}
    args["executable"] = str(BIN / "provision")
    refused = _module(collection, "provision", args, "--check")
    assert refused["status"] == "FAILED!" and refused["rc"] == 3, refused
    assert str(refused["msg"]).startswith("apply would refuse: ") and DROPIN in str(refused["msg"])
    assert refused["hint"] == "force: true replaces it"
    real = _module(collection, "provision", args)
    assert real["status"] == "FAILED!" and real["rc"] == 3 and "force: true" in str(real["hint"])
    forced = _module(collection, "provision", args | {"force": True}, "--check")
    assert forced["changed"] is True and forced["status"] == "CHANGED", forced
    assert foreign.read_text() == "[Service]\nEnvironment=MINE=1\n"


def test_rig_facts(collection: Path) -> None:
    args = {"rig": str(DISPLAY_RIG), "executable": str(BIN / "provision")}
    facts = _module(collection, "rig_facts", args)["ansible_facts"]
    summary = facts["gpu_rig_summary"]
    assert summary["gpu_count"] == 2 and summary["vendors"] == ["nvidia"]
    assert "display_gpu" in summary["traits"]
    assert summary["vram_total_bytes"] == sum(
        g["memory_total_bytes"] for g in facts["gpu_rig"]["gpus"]
    )
