"""`provision verify` without a systemd host: the checks a manifest implies, the verdicts and
parsers on recorded outputs, and the command against offline roots. The live checks run on a
real systemd in tests/system/test_e2e.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from provision.change.manifest import build_manifest
from provision.cli.main import cli
from provision.pipeline import desired_state
from provision.render.filters import env_file_value, systemd_env
from provision.systemd import (
    expand_specifiers,
    expected_environment,
    parse_env_file,
    parse_environ,
    split_words,
)
from provision.verify.checks import checks_for, listen_verdict, parse_curl, unit_verdict
from tests.helpers import REPO_ROOT, load_named_rig, rig_file, run_provision

STOCK_ROOT = REPO_ROOT / "tests/data/stock-root"
MODELFILE_8B = "/etc/provision/modelfiles/llama3.1-8b-provision.Modelfile"
DROPIN = "/etc/systemd/system/ollama.service.d/50-provision.conf"


def manifest_for(rig: str, profile: str) -> dict[str, object]:
    _, desired = desired_state(load_named_rig(rig), profile, {})
    return build_manifest(desired)


def test_replica_checks_from_the_manifest() -> None:
    checks = checks_for(manifest_for("synthetic-2x3090-x16-x8", "ollama-replicas"), live=True)
    assert [c.id for c in checks] == [
        "file:/etc/nginx/conf.d/provision-ollama.conf",
        f"file:{MODELFILE_8B}",
        "file:/etc/provision/ollama/0.env",
        "file:/etc/provision/ollama/1.env",
        "file:/etc/systemd/system/ollama@.service",
        "unit:ollama.service",
        "unit:ollama@0.service",
        "unit:ollama@1.service",
        "unit:nginx.service",
        "override:ollama@0.service",
        "override:ollama@1.service",
        "port:127.0.0.1:11435",
        "port:127.0.0.1:11436",
        "port:127.0.0.1:11434",
        "env:ollama@0.service",
        "env:ollama@1.service",
        "ollama:127.0.0.1:11435",
        "ollama:127.0.0.1:11436",
        "nginx:127.0.0.1:11434",
        "model:llama3.1:8b-provision",
    ]
    by_id = {c.id: c for c in checks}
    assert by_id["unit:ollama.service"].expect == {
        "enabled": False,
        "active": False,
        "oneshot": False,
    }
    assert by_id["env:ollama@1.service"].expect["sources"] == [
        "/etc/systemd/system/ollama@.service"
    ]
    assert by_id["model:llama3.1:8b-provision"].expect["address"] == "http://127.0.0.1:11434"
    assert by_id["nginx:127.0.0.1:11434"].expect["upstreams"] == [
        "127.0.0.1:11435",
        "127.0.0.1:11436",
    ]


def test_offline_root_checks_files_enablement_and_overrides() -> None:
    manifest = manifest_for("synthetic-2x3090-x16-x8", "power-capped")
    kinds = {c.kind for c in checks_for(manifest, live=False)}
    assert kinds == {"file", "unit", "override"}
    live = {c.id for c in checks_for(manifest, live=True) if c.kind == "power"}
    assert live == {
        "power:GPU-3b6f2c1e-8d4a-4f1b-9c2e-5a7d9e1f0a01",
        "power:GPU-7c1d9a4b-2e6f-4a8c-b1d3-9f0e2c4a6b02",
    }


RUNNING = {"LoadState": "loaded", "UnitFileState": "enabled", "ActiveState": "active"}
SERVICE = {"enabled": True, "active": True, "oneshot": False}
ONESHOT = {"enabled": True, "active": True, "oneshot": True}


@pytest.mark.parametrize(
    ("props", "expect", "verdict"),
    [
        ({**RUNNING, "SubState": "running"}, SERVICE, (True, "enabled, active (running)")),
        (
            {**RUNNING, "ActiveState": "inactive", "SubState": "dead", "Result": "success"},
            SERVICE,
            (False, "enabled but not active (inactive/dead, result success)"),
        ),
        (
            {**RUNNING, "UnitFileState": "disabled", "SubState": "running"},
            SERVICE,
            (False, "disabled, wanted enabled; active (running)"),
        ),
        ({"LoadState": "not-found"}, SERVICE, (False, "not-found, wanted enabled")),
        (
            {"UnitFileState": "disabled", "ActiveState": "inactive"},
            {**SERVICE, "enabled": False, "active": False},
            (True, "disabled, not active"),
        ),
        (
            {**RUNNING, "Result": "success", "ExecMainStatus": "0"},
            ONESHOT,
            (False, "enabled but has not run since boot"),
        ),
        (
            {
                **RUNNING,
                "ActiveState": "failed",
                "Result": "exit-code",
                "ExecMainStatus": "2",
                "ExecMainExitTimestampMonotonic": "123",
            },
            ONESHOT,
            (False, "enabled but ran this boot and failed (exit-code, exit status 2)"),
        ),
        (
            {
                **RUNNING,
                "Result": "success",
                "ExecMainStatus": "0",
                "ExecMainExitTimestampMonotonic": "123",
                "RemainAfterExit": "yes",
            },
            ONESHOT,
            (True, "enabled, ran this boot and succeeded"),
        ),
        (
            {
                **RUNNING,
                "ActiveState": "inactive",
                "Result": "success",
                "ExecMainStatus": "0",
                "ExecMainExitTimestampMonotonic": "123",
                "RemainAfterExit": "yes",
            },
            ONESHOT,
            (False, "enabled but ran this boot, then stopped (inactive)"),
        ),
    ],
)
def test_unit_verdicts(
    props: dict[str, str], expect: dict[str, bool], verdict: tuple[bool, str]
) -> None:
    assert unit_verdict(props, expect) == verdict


SS = """\
LISTEN 0      4096       127.0.0.1:11434      0.0.0.0:*
LISTEN 0      511          0.0.0.0:80         0.0.0.0:*
LISTEN 0      511             [::]:80            [::]:*
LISTEN 0      4096   127.0.0.53%lo:53         0.0.0.0:*
"""


def test_listen_verdicts_want_exactly_the_planned_address() -> None:
    assert listen_verdict(SS, "127.0.0.1", 11434) == (True, "listening on 127.0.0.1:11434")
    assert listen_verdict(SS, "0.0.0.0", 80)[0]
    assert listen_verdict(SS, "127.0.0.1", 80) == (
        False,
        "listens on 0.0.0.0:80, [::]:80, not only on 127.0.0.1:80",
    )
    assert listen_verdict(SS, "127.0.0.53", 53)[0]
    assert listen_verdict(SS, "127.0.0.1", 11435) == (False, "nothing listens on port 11435")


def test_curl_output() -> None:
    assert parse_curl('{"version":"0.12.6"}\n200') == (200, '{"version":"0.12.6"}')
    assert parse_curl("\n000") == (0, "")


@pytest.mark.parametrize("value", ["plain", "a b", 'q"uote', "back\\slash", "50%", "$HOME", "é"])
def test_rendered_values_read_back(value: str) -> None:
    line = systemd_env(("K", value))
    words = split_words(expand_specifiers(line, "ollama.service"))
    assert dict(w.split("=", 1) for w in words) == {"K": value}
    assert parse_env_file(f"# comment\nK={env_file_value(value)}\n") == {"K": value}


def test_expected_environment_of_a_template_instance() -> None:
    template = (
        "[Unit]\nDescription=x %i\n[Service]\nEnvironment=A=1 'B=two words'\n"
        "Environment=C=%i\nEnvironmentFile=-/etc/provision/ollama/%i.env\n"
    )
    files = {"/etc/provision/ollama/1.env": 'A="from file"\nD=4\n'}
    env = expected_environment("ollama@1.service", [template], files.get)
    assert env == {"A": "from file", "B": "two words", "C": "1", "D": "4"}
    assert (
        expected_environment("x.service", ["[Service]\nEnvironment=A=1\nEnvironment=\n"], {}.get)
        == {}
    )


def test_environ() -> None:
    assert parse_environ(b"A=1\0B=x=y\0\0") == {"A": "1", "B": "x=y"}


# --- the command, against offline roots ------------------------------------------------------


@pytest.fixture
def applied_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(STOCK_ROOT, root)
    rig = str(rig_file("synthetic-2x3090-x16-x8"))
    applied = run_provision(
        "apply", "--yes", "--rig", rig, "--profile", "power-capped", "--root", str(root)
    )
    assert applied.returncode == 0, applied.stderr
    return root


def test_verify_an_offline_root(applied_root: Path) -> None:
    result = run_provision("verify", "--root", str(applied_root))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "8 passed, 0 failed"
    assert f"PASS file {DROPIN}: sha256 " in result.stdout
    assert "PASS unit gpu-power-limits.service: enabled (offline root: " in result.stdout

    (applied_root / MODELFILE_8B.lstrip("/")).chmod(0o600)
    (applied_root / "etc/systemd/system/multi-user.target.wants/gpu-power-limits.service").unlink()
    with (applied_root / DROPIN.lstrip("/")).open("a") as dropin:
        dropin.write("Environment=EXTRA=1\n")
    modelfile_32b = applied_root / "etc/provision/modelfiles/qwen2.5-32b-provision.Modelfile"
    modelfile_32b.unlink()
    modelfile_32b.symlink_to(applied_root / MODELFILE_8B.lstrip("/"))
    result = run_provision("verify", "--root", str(applied_root), "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    failed = {c["id"]: c["detail"] for c in report["checks"] if not c["ok"]}
    assert failed.keys() == {
        f"file:{MODELFILE_8B}",
        "file:/etc/provision/modelfiles/qwen2.5-32b-provision.Modelfile",
        f"file:{DROPIN}",
        "unit:gpu-power-limits.service",
        "override:ollama.service",  # what it must check against is no longer what apply wrote
    }
    assert failed[f"file:{MODELFILE_8B}"] == "mode 0600, applied 0644"
    assert failed["file:/etc/provision/modelfiles/qwen2.5-32b-provision.Modelfile"] == (
        "is a symbolic link, not a regular file: apply never writes through one"
    )
    assert failed["unit:gpu-power-limits.service"] == "disabled, wanted enabled"
    assert (report["passed"], report["failed"]) == (3, 5)
    assert set(report["checks"][0]) == {"id", "kind", "target", "host", "ok", "status", "detail"}


def test_verify_in_process_twice(applied_root: Path) -> None:
    """The suite runs inside the caller's process (and inside this pytest run) every time."""
    for _ in range(2):
        result = CliRunner().invoke(cli, ["verify", "--root", str(applied_root), "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["passed"] == 8


def test_verify_bad_input_and_unreachable_hosts(tmp_path: Path) -> None:
    missing = run_provision("verify", "--root", str(tmp_path))
    assert missing.returncode == 2
    assert "no manifest at" in missing.stderr and "provision apply" in missing.stderr
    bad_url = run_provision("verify", "--hosts", "gpu-box-1")
    assert bad_url.returncode == 2 and "is not BACKEND://HOST" in bad_url.stderr
    (tmp_path / "manifest.json").write_text('{"schema": 1, "files": [{"path": "/x"}]}')
    malformed = run_provision("verify", "--manifest", str(tmp_path / "manifest.json"))
    assert malformed.returncode == 2 and "files[0].sha256 is missing" in malformed.stderr
    gone = run_provision("verify", "--hosts", "ssh://gpu-box.invalid", "--root", str(tmp_path))
    assert gone.returncode == 3 and "ssh://gpu-box.invalid" in gone.stderr  # or no ssh at all


def test_several_hosts_one_unreachable(applied_root: Path) -> None:
    """A fleet: the host that answers is verified in full, the one that does not gets one FAIL
    line, each host its own summary, and the exit status says a host was unreachable."""
    hosts = "local://,ssh://gpu-box.invalid"
    result = run_provision("verify", "--hosts", hosts, "--root", str(applied_root))
    assert result.returncode == 3, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert sum(line.startswith("local: PASS ") for line in lines) == 8
    (gone,) = [line for line in lines if "FAIL host" in line]
    assert gone.startswith("ssh://gpu-box.invalid: FAIL host: cannot reach ssh://gpu-box.invalid")
    assert lines[-3:] == [
        "local: 8 passed, 0 failed",
        "ssh://gpu-box.invalid: not verified",
        "8 passed, 1 failed",
    ]
    report = json.loads(
        run_provision("verify", "--hosts", hosts, "--root", str(applied_root), "--json").stdout
    )
    assert [(h["host"], h["verified"], h["passed"], h["failed"]) for h in report["hosts"]] == [
        ("local", True, 8, 0),
        ("ssh://gpu-box.invalid", False, 0, 1),
    ]
    assert "cannot reach ssh://gpu-box.invalid" in report["hosts"][1]["error"]


def test_inventory_goes_with_ansible_hosts(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yml"
    inventory.write_text("all:\n  hosts:\n    gpu-a: {ansible_host: 127.0.0.1}\n")
    alone = run_provision("verify", "--inventory", str(inventory))
    assert alone.returncode == 2 and "--inventory is read for ansible:// hosts only" in alone.stderr
    no_ansible = run_provision(
        "verify",
        "--hosts",
        "ansible://all",
        "--inventory",
        str(inventory),
        env={"PATH": "/nonexistent"},
    )
    assert no_ansible.returncode == 3, no_ansible.stderr
    assert "no ansible-inventory on PATH" in no_ansible.stderr


def test_the_standalone_suite_stops_on_a_host_it_cannot_verify() -> None:
    """`pytest --hosts=A,B provision/verify/suite.py` has no summary to print an unverified
    host in: it stops with that host's error, as for a single host, never drops it."""
    from types import SimpleNamespace

    from provision.errors import ProvisionError
    from provision.verify.runner import standalone_targets

    config = SimpleNamespace(option=SimpleNamespace(hosts="local://,ssh://gpu-box.invalid"))
    with pytest.raises(ProvisionError):
        standalone_targets(config)  # type: ignore[arg-type]
