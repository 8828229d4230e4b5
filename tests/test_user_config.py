"""The user's own configuration, offline (temp roots): other drop-ins that override settings of
ours, settings a forced replacement drops, services given back as they were before provision
managed them, and the stock service's model store carried over to replicas. The same cases
on a real systemd are in tests/system/test_e2e.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from provision import systemd
from provision.change.actions import ActionKind, ObservedUnit
from provision.change.manifest import build_manifest
from provision.change.plan import make_plan
from provision.desired import DesiredState, DesiredUnit
from provision.paths import MANIFEST_PATH
from tests.helpers import REPO_ROOT, rig_file
from tests.test_apply import enabled, provision, scratch_root
from tests.test_plan import applied

RIG = rig_file("synthetic-2x3090-x16-x8")
STOCK_UNIT = REPO_ROOT / "tests/data/stock-root/etc/systemd/system/ollama.service"
UNITS = "/etc/systemd/system"
DROPIN = f"{UNITS}/ollama.service.d/50-provision.conf"
OVERRIDE = f"{UNITS}/ollama.service.d/override.conf"  # what `systemctl edit ollama` writes


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A host with Ollama installed (its stock unit, enabled) and the nginx package."""
    root = scratch_root(tmp_path / "root")
    unit = root / UNITS.lstrip("/") / "ollama.service"
    unit.parent.mkdir(parents=True)
    shutil.copy(STOCK_UNIT, unit)
    return root


def put(root: Path, path: str, text: str) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def cli(command: str, root: Path, profile: str, *extra: str) -> object:
    args = ["--rig", str(RIG), "--profile", profile, "--root", str(root), *extra]
    if command == "apply":
        args.insert(0, "--yes")
    return provision(command, *args)


# --- systemd's drop-in rules (src/shared/dropin.c, systemd.unit(5)) --------------------------


@pytest.mark.parametrize(
    ("unit", "dirs"),
    [
        ("ollama.service", ("ollama.service.d", "service.d")),
        ("ollama@0.service", ("ollama@0.service.d", "ollama@.service.d", "service.d")),
        # the example in unit_file_find_dirs' comment: each dash prefix, most specific first
        (
            "foo-bar-waldo.service",
            ("foo-bar-waldo.service.d", "foo-bar-.service.d", "foo-.service.d", "service.d"),
        ),
    ],
)
def test_dropin_dirs(unit: str, dirs: tuple[str, ...]) -> None:
    assert systemd.dropin_dirs(unit) == dirs


def test_dropins_apply_by_file_name_across_directories_and_etc_hides_usr_lib() -> None:
    paths = [
        f"{UNITS}/ollama.service.d/override.conf",
        "/usr/lib/systemd/system/ollama.service.d/override.conf",  # hidden: same name
        "/usr/lib/systemd/system/ollama.service.d/60-vendor.conf",
        "/run/systemd/system/ollama.service.d/10-early.conf",
        DROPIN,
        f"{UNITS}/other.service.d/zz.conf",  # another unit's
        f"{UNITS}/ollama.service.d/notes.txt",  # not a .conf
    ]
    assert systemd.dropin_order("ollama.service", paths) == [
        "/run/systemd/system/ollama.service.d/10-early.conf",
        DROPIN,
        "/usr/lib/systemd/system/ollama.service.d/60-vendor.conf",
        f"{UNITS}/ollama.service.d/override.conf",
    ]


OURS = {DROPIN: "[Service]\nEnvironment=OLLAMA_HOST=127.0.0.1:11434 OLLAMA_KEEP_ALIVE=10m\n"}


@pytest.mark.parametrize(
    ("others", "found"),
    [
        # systemctl edit: override.conf sorts after 50-provision.conf and wins
        (
            {OVERRIDE: "[Service]\nEnvironment=OLLAMA_HOST=0.0.0.0:11434\n"},
            [("OLLAMA_HOST", "0.0.0.0:11434", OVERRIDE)],
        ),
        # a drop-in that sorts before ours loses to it
        ({f"{UNITS}/ollama.service.d/10-mine.conf": "[Service]\nEnvironment=OLLAMA_HOST=x\n"}, []),
        # the same value is no override
        ({OVERRIDE: "[Service]\nEnvironment=OLLAMA_KEEP_ALIVE=10m\n"}, []),
        # an empty Environment= resets every variable set before it
        (
            {OVERRIDE: "[Service]\nEnvironment=\nEnvironment=OLLAMA_DEBUG=1\n"},
            [("OLLAMA_HOST", None, OVERRIDE), ("OLLAMA_KEEP_ALIVE", None, OVERRIDE)],
        ),
        # environment files come last, even one the stock unit file names
        (
            {
                f"{UNITS}/ollama.service": "[Service]\nEnvironmentFile=-/etc/default/ollama\n",
                "/etc/default/ollama": "OLLAMA_KEEP_ALIVE=1h\n",
            },
            [("OLLAMA_KEEP_ALIVE", "1h", "/etc/default/ollama")],
        ),
    ],
)
def test_overrides_of_the_ollama_dropin(
    others: dict[str, str], found: list[tuple[str, str | None, str]]
) -> None:
    seen = systemd.overrides("ollama.service", OURS, others)
    assert [(o.key, o.theirs, o.path) for o in seen] == found


def test_a_unit_file_of_the_instance_hides_our_template() -> None:
    ours = {f"{UNITS}/ollama@.service": "[Service]\nUser=ollama\nExecStart=/usr/bin/ollama serve\n"}
    hiding = f"{UNITS}/ollama@0.service"
    others = {hiding: "[Service]\nUser=root\nExecStart=/opt/ollama serve\n"}
    seen = systemd.overrides("ollama@0.service", ours, others)
    assert {(o.key, o.theirs, o.path) for o in seen} == {
        ("User=", "root", hiding),
        ("ExecStart=", "/opt/ollama serve", hiding),
    }
    assert systemd.overrides("ollama@1.service", ours, others) == []


# --- diff, apply, verify with a user's override.conf -----------------------------------------


def test_a_systemctl_edit_override_is_listed_refused_forced_and_failed_by_verify(
    root: Path,
) -> None:
    put(root, OVERRIDE, "[Service]\nEnvironment=OLLAMA_CONTEXT_LENGTH=2048 OLLAMA_DEBUG=1\n")
    diff = cli("diff", root, "ollama-auto")
    assert diff.returncode == 1, diff.stderr
    line = (
        f"ollama.service: OLLAMA_CONTEXT_LENGTH sets '2048' in {OVERRIDE} (provision sets '8192')"
    )
    assert "overridden by files provision does not manage:" in diff.stdout
    assert line in diff.stdout
    document = json.loads(cli("diff", root, "ollama-auto", "--json").stdout)
    assert document["overrides"] == [
        {
            "unit": "ollama.service",
            "key": "OLLAMA_CONTEXT_LENGTH",
            "ours": "8192",
            "theirs": "2048",
            "path": OVERRIDE,
        }
    ]

    refused = cli("apply", root, "ollama-auto")
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert f"error: refusing to apply: {line}; nothing was changed" in refused.stderr
    assert "--force" in refused.stderr
    assert not (root / DROPIN.lstrip("/")).exists()

    forced = cli("apply", root, "ollama-auto", "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert line in forced.stdout
    assert (root / OVERRIDE.lstrip("/")).read_text().startswith("[Service]")  # left alone

    verified = provision("verify", "--root", str(root), "--json")
    assert verified.returncode == 1, verified.stdout + verified.stderr
    failed = {c["id"]: c["detail"] for c in json.loads(verified.stdout)["checks"] if not c["ok"]}
    assert failed == {"override:ollama.service": line}

    (root / OVERRIDE.lstrip("/")).unlink()
    assert provision("verify", "--root", str(root)).returncode == 0


def test_a_forced_replacement_lists_the_settings_the_old_file_had(root: Path) -> None:
    put(
        root,
        f"{UNITS}/ollama@.service",
        "[Service]\nExecStart=/opt/ollama serve\nLimitNOFILE=65535\nEnvironment=OLLAMA_DEBUG=1\n",
    )
    diff = cli("diff", root, "ollama-replicas", "--json")
    (action,) = [
        a for a in json.loads(diff.stdout)["actions"] if a["target"] == f"{UNITS}/ollama@.service"
    ]
    assert action["drops"] == ["[Service] LimitNOFILE=65535", "OLLAMA_DEBUG=1"]
    forced = cli("apply", root, "ollama-replicas", "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert (
        "drops what the old file set: [Service] LimitNOFILE=65535, OLLAMA_DEBUG=1" in forced.stdout
    )


# --- services given back as they were --------------------------------------------------------


def test_nginx_enabled_before_stays_enabled_after_replicas_and_back(root: Path) -> None:
    assert enabled(root, "nginx.service") == "disabled"
    (root / "etc/systemd/system/multi-user.target.wants").mkdir(parents=True)
    (root / "etc/systemd/system/multi-user.target.wants/nginx.service").symlink_to(
        "/lib/systemd/system/nginx.service"
    )
    assert enabled(root, "nginx.service") == "enabled"
    assert cli("apply", root, "ollama-replicas").returncode == 0
    manifest = json.loads((root / MANIFEST_PATH.lstrip("/")).read_text())
    back = cli("apply", root, "ollama-auto")
    assert back.returncode == 0, back.stdout + back.stderr
    assert "disable nginx.service" not in back.stdout
    assert "reload nginx.service: inputs changed: /etc/nginx/conf.d/provision-ollama.conf" in (
        back.stdout
    )
    # nginx lets go of 11434 before the stock Ollama, restarted, binds it.
    assert back.stdout.index("reload nginx.service") < back.stdout.index("restart ollama.service")
    assert enabled(root, "nginx.service") == "enabled"
    assert cli("diff", root, "ollama-auto").returncode == 0
    # The first plan that managed nginx recorded its state, and the backup keeps a copy.
    assert {"name": "nginx.service", "enabled": "enabled", "active": None} in manifest[
        "prior_units"
    ]
    first = sorted((root / "var/lib/provision/backups").glob("*/index.json"))[0]
    index = json.loads(first.read_text())
    assert index["prior_units"] == manifest["prior_units"]
    # Back on replicas, the way back again lists nginx's reload once, as an action (-v).
    assert cli("apply", root, "ollama-replicas").returncode == 0
    listed = cli("diff", root, "ollama-auto", "-v").stdout
    assert "reload not needed: restarted anyway" not in listed
    assert listed.count("nginx.service: inputs changed") == 1


def test_nginx_that_was_disabled_is_disabled_again(root: Path) -> None:
    assert cli("apply", root, "ollama-replicas").returncode == 0
    assert enabled(root, "nginx.service") == "enabled"
    back = cli("apply", root, "ollama-auto")
    assert "disable nginx.service: no longer wanted; not enabled before provision" in back.stdout
    assert enabled(root, "nginx.service") == "disabled"


def _given_back_plan(prior: dict[str, str], seen: ObservedUnit) -> list[tuple[str, str]]:
    """The plan for a host whose last apply managed nginx (recorded `prior`), now dropped."""
    before = DesiredState(units=(DesiredUnit("nginx.service"),))
    manifest = {**build_manifest(before), "prior_units": [{"name": "nginx.service", **prior}]}
    observed = applied(DesiredState(), live=True, manifest=manifest, units={"nginx.service": seen})
    plan = make_plan(DesiredState(), observed)
    return [(str(a.kind), a.target) for a in plan.actions if a.kind != ActionKind.WRITE_MANIFEST]


@pytest.mark.parametrize(
    ("prior", "seen", "actions"),
    [
        # running and enabled before: left so
        (
            {"enabled": "enabled", "active": "active"},
            ObservedUnit("nginx.service", "enabled", "active"),
            [],
        ),
        # stopped by hand since: started again; disabled since: enabled again
        (
            {"enabled": "enabled", "active": "active"},
            ObservedUnit("nginx.service", "disabled", "inactive"),
            [("enable", "nginx.service"), ("restart", "nginx.service")],
        ),
        # neither before: stopped and disabled, as without a record
        (
            {"enabled": "disabled", "active": "inactive"},
            ObservedUnit("nginx.service", "enabled", "active"),
            [("stop", "nginx.service"), ("disable", "nginx.service")],
        ),
    ],
)
def test_a_unit_no_longer_wanted_is_given_back_as_it_was(
    prior: dict[str, str], seen: ObservedUnit, actions: list[tuple[str, str]]
) -> None:
    assert _given_back_plan(prior, seen) == actions


# --- the model store -------------------------------------------------------------------------


def test_replicas_share_the_store_the_stock_service_names(root: Path) -> None:
    env = root / "etc/provision/ollama/0.env"
    assert cli("apply", root, "ollama-replicas").returncode == 0
    assert 'OLLAMA_MODELS="/usr/share/ollama/.ollama/models"' in env.read_text()
    put(root, OVERRIDE, '[Service]\nEnvironment="OLLAMA_MODELS=/srv/ollama models"\n')
    diff = cli("diff", root, "ollama-replicas")
    assert diff.returncode == 1
    assert '+OLLAMA_MODELS="/srv/ollama models"' in diff.stdout
    assert cli("apply", root, "ollama-replicas").returncode == 0
    assert 'OLLAMA_MODELS="/srv/ollama models"' in env.read_text()
    assert cli("diff", root, "ollama-replicas").returncode == 0
