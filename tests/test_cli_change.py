"""`provision diff`, `apply` and `rollback` as an operator runs them, against temp roots (offline
mode): exit codes, output, refusals, backups, rollback, and the real renderer end to end."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from provision.desired import DesiredFile
from provision.paths import MANIFEST_PATH
from provision.placement.profile import load_profile
from tests.helpers import REPO_ROOT, rig_file
from tests.test_apply import NGINX_UNIT, desired_file, enabled, provision, scratch_root, tree
from tests.test_plan import NGINX_CONF, state_a, state_b

RIG_8X = rig_file("synthetic-8xa100-nvlink")
PROFILES = sorted(p.stem for p in (REPO_ROOT / "profiles").glob("*.yaml"))
OLLAMA_UNIT = (
    "[Unit]\nDescription=Ollama\n[Service]\nExecStart=/bin/true\n"
    "[Install]\nWantedBy=multi-user.target\n"
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return scratch_root(tmp_path / "root")


@pytest.fixture
def a_json(tmp_path: Path) -> Path:
    return desired_file(tmp_path, state_a(), "a")


def _apply(root: Path, desired: Path, *extra: str) -> object:
    return provision("apply", "--yes", "--root", str(root), "--desired-json", str(desired), *extra)


def _diff(root: Path, desired: Path, *extra: str) -> object:
    return provision("diff", "--root", str(root), "--desired-json", str(desired), *extra)


def test_apply_then_diff_is_in_sync(root: Path, a_json: Path) -> None:
    first = _diff(root, a_json)
    assert first.returncode == 1, first.stderr
    assert "+++ b/etc/systemd/system/ollama@.service" in first.stdout
    assert first.stdout.rstrip().splitlines()[-1].startswith("11 change(s) pending: 6 write-file")
    assert "[skipped: offline root]" in first.stdout and "\x1b[" not in first.stdout
    applied = _apply(root, a_json)
    assert applied.returncode == 0, applied.stderr
    assert "skipped (offline root): restart ollama@0.service" in applied.stdout
    assert "/etc/systemd/system/ollama@.service (and the check of port 11500)" in applied.stdout
    assert "'provision rollback --to " in applied.stdout
    second = _diff(root, a_json)
    assert second.returncode == 0, second.stdout
    assert second.stdout.startswith("in sync: ")
    assert "not checked offline: 2 power limit(s), 1 Ollama model(s)" in second.stdout
    again = _apply(root, a_json)
    assert again.returncode == 0 and "in sync: nothing to do" in again.stdout


def test_diff_json_and_verbose_noops(root: Path, a_json: Path) -> None:
    result = _diff(root, a_json, "--json")
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert document["mode"] == "offline" and document["in_sync"] is False
    assert [a["index"] for a in document["actions"]] == list(range(len(document["actions"])))
    assert document["actions"][-1]["kind"] == "write-manifest"
    assert {f["path"] for f in document["files"]} >= {NGINX_CONF}
    _apply(root, a_json)
    verbose = _diff(root, a_json, "-v")
    assert "no-ops:" in verbose.stdout and "is enabled, as wanted" in verbose.stdout


def test_a_hand_edited_managed_file_shows_in_the_diff(root: Path, a_json: Path) -> None:
    _apply(root, a_json)
    env = root / "etc/provision/ollama/0.env"
    env.write_text(env.read_text().replace("PARALLEL=1", "PARALLEL=9"))
    result = _diff(root, a_json)
    assert result.returncode == 1
    assert "-OLLAMA_NUM_PARALLEL=9\n+OLLAMA_NUM_PARALLEL=1\n" in result.stdout
    assert "write-file /etc/provision/ollama/0.env: content changed" in result.stdout
    assert "restart ollama@0.service: inputs changed: /etc/provision/ollama/0.env" in result.stdout
    assert "ollama@1.service" not in result.stdout.split("actions:")[1]
    assert _apply(root, a_json).returncode == 0
    assert _diff(root, a_json).returncode == 0


def test_diff_json_carries_each_files_whole_texts(root: Path, a_json: Path) -> None:
    """Ansible's diff mode shows before/after per file: a new file has no before, an edited
    one both texts, byte for byte what is on disk and what apply would write."""
    created = json.loads(_diff(root, a_json, "--json").stdout)["files"]
    new = next(f for f in created if f["path"] == "/etc/provision/ollama/0.env")
    assert new["before"] is None and "OLLAMA_NUM_PARALLEL=1\n" in new["after"]
    _apply(root, a_json)
    env = root / "etc/provision/ollama/0.env"
    wanted = env.read_text()
    env.write_text(wanted.replace("PARALLEL=1", "PARALLEL=9"))
    (edited,) = json.loads(_diff(root, a_json, "--json").stdout)["files"]
    assert edited["path"] == "/etc/provision/ollama/0.env"
    assert edited["before"] == env.read_text() and edited["after"] == wanted
    assert "-OLLAMA_NUM_PARALLEL=9\n+OLLAMA_NUM_PARALLEL=1\n" in edited["diff"]


def test_a_file_that_is_not_ours_needs_force_and_is_backed_up(root: Path, a_json: Path) -> None:
    mine = root / NGINX_CONF.lstrip("/")
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"upstream mine { server 10.0.0.1; }\n\xff\n")
    diff = _diff(root, a_json)
    assert diff.returncode == 1
    assert "refused: /etc/nginx/conf.d/provision-ollama.conf is not managed" in diff.stdout
    refused = _apply(root, a_json)
    assert refused.returncode == 3
    assert "refusing to apply: /etc/nginx/conf.d/provision-ollama.conf is not managed" in (
        refused.stderr
    )
    assert "hint: --force backs such files up and replaces them" in refused.stderr
    assert mine.read_bytes().startswith(b"upstream mine") and len(tree(root)) == 2
    forced = _apply(root, a_json, "--force")
    assert forced.returncode == 0, forced.stderr
    assert mine.read_text().startswith("# Managed by provision.")
    (backup,) = (root / "var/lib/provision/backups").iterdir()
    saved = backup / "files" / NGINX_CONF.lstrip("/")
    assert saved.read_bytes() == b"upstream mine { server 10.0.0.1; }\n\xff\n"
    # And a rollback puts the operator's bytes back exactly.
    assert provision("rollback", "--yes", "--root", str(root)).returncode == 0
    assert mine.read_bytes() == b"upstream mine { server 10.0.0.1; }\n\xff\n"


@pytest.mark.parametrize("where", ["file", "parent"])
def test_a_symlink_at_a_target_path_is_refused(
    root: Path, a_json: Path, tmp_path: Path, where: str
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = root / NGINX_CONF.lstrip("/")
    if where == "parent":
        link = link.parent
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(elsewhere / "x" if where == "file" else elsewhere)
    diff = _diff(root, a_json)
    assert diff.returncode == 3
    assert "error: apply would refuse:" in diff.stderr and "never writes through it" in diff.stderr
    for extra in ((), ("--force",)):
        result = _apply(root, a_json, *extra)
        assert result.returncode == 3, result.stderr
        assert "refusing to apply" in result.stderr and "symlink" in result.stderr
    assert list(elsewhere.iterdir()) == []
    assert not (root / MANIFEST_PATH.lstrip("/")).exists()


def test_apply_without_a_terminal_needs_yes_and_dry_run_changes_nothing(
    root: Path, a_json: Path
) -> None:
    before = tree(root)
    result = provision("apply", "--root", str(root), "--desired-json", str(a_json))
    assert result.returncode == 2
    assert "no terminal to ask on" in result.stderr and "hint: pass --yes" in result.stderr
    dry = provision("apply", "--dry-run", "--root", str(root), "--desired-json", str(a_json))
    assert dry.returncode == 0 and dry.stdout.rstrip().endswith("dry run: nothing was changed")
    assert "write-file /etc/systemd/system/ollama@.service: missing" in dry.stdout
    assert tree(root) == before and not (root / "var").exists()


def test_a_failure_mid_apply_exits_4_and_restores(root: Path, tmp_path: Path) -> None:
    a = desired_file(tmp_path, state_a(), "a")
    _apply(root, a)
    before = tree(root)
    # An account that does not exist fails the last file write, after four others and a disable.
    late = DesiredFile("/etc/zz-provision.conf", "# Managed by provision.\n", owner="nosuchuser")
    broken = replace(state_b(), files=(*state_b().files, late))
    result = _apply(root, desired_file(tmp_path, broken, "broken"))
    assert result.returncode == 4, result.stderr
    assert "error: apply failed at [6/13] write-file /etc/zz-provision.conf" in result.stderr
    assert "user 'nosuchuser' does not exist on the target" in result.stderr
    assert (
        "restored from backup" in result.stderr and "/etc/provision/ollama/0.env" in result.stderr
    )
    assert "hint: install the runtime first" in result.stderr
    assert tree(root) == before
    assert enabled(root, "ollama@1.service") == "enabled"
    assert _diff(root, a).returncode == 0
    # A plain rollback now undoes the last apply that stuck (a), not the one already undone.
    listing = provision("rollback", "--list", "--root", str(root)).stdout.splitlines()
    assert listing[1].endswith("(apply failed and was rolled back)")
    assert "failed" not in listing[0] and listing[0].endswith(
        "<- next 'provision rollback' restores this"
    )
    assert provision("rollback", "--yes", "--root", str(root)).returncode == 0
    assert tree(root) == {"/lib/systemd/system/nginx.service": NGINX_UNIT.encode()}


def test_rollback_restores_the_last_or_a_chosen_backup(root: Path, tmp_path: Path) -> None:
    a, b = desired_file(tmp_path, state_a(), "a"), desired_file(tmp_path, state_b(), "b")
    _apply(root, a)
    after_a = tree(root)
    _apply(root, b)
    listing = provision("rollback", "--list", "--root", str(root))
    first, second = (line.split()[0] for line in listing.stdout.splitlines())
    undo = provision("rollback", "--yes", "--root", str(root))
    assert undo.returncode == 0, undo.stderr
    assert "remove-file /etc/provision/ollama/2.env: absent as before apply" in undo.stdout
    assert tree(root) == after_a and _diff(root, a).returncode == 0
    assert enabled(root, "ollama@2.service") == "disabled"
    to_first = provision("rollback", "--yes", "--to", first, "--root", str(root))
    assert to_first.returncode == 0, to_first.stderr
    assert tree(root) == {"/lib/systemd/system/nginx.service": NGINX_UNIT.encode()}
    unknown = provision("rollback", "--yes", "--to", "19990101T000000Z", "--root", str(root))
    assert unknown.returncode == 2 and f"hint: backups: {first}, {second}" in unknown.stderr
    assert second in unknown.stderr


def test_bad_desired_json_is_exit_2(tmp_path: Path, root: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"files": [{"path": 3}]}')
    result = _diff(root, bad)
    assert result.returncode == 2 and "not a desired state: files[0].path" in result.stderr


@pytest.mark.parametrize("profile", PROFILES)
def test_rendered_profiles_apply_and_then_diff_in_sync(root: Path, profile: str) -> None:
    """The real pipeline: a recorded rig and a bundled profile, as `make demo` runs it."""
    ollama = root / "etc/systemd/system/ollama.service"  # what Ollama's installer writes
    ollama.parent.mkdir(parents=True)
    ollama.write_text(OLLAMA_UNIT)
    for model in load_profile(profile).models:
        if model.path:  # the file llama-server loads: diff and apply check it is there
            (root / model.path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            (root / model.path.lstrip("/")).write_bytes(b"GGUF")
    # The bundled PSU budget is a desktop's: below what eight A100s' minimum limits add up to.
    rig = rig_file("synthetic-2x3090-x16-x8") if profile == "power-capped" else RIG_8X
    args = ("--rig", str(rig), "--profile", profile, "--root", str(root))
    assert provision("diff", *args).returncode == 1
    applied = provision("apply", "--yes", *args)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    result = provision("diff", *args)
    assert result.returncode == 0, result.stdout
    assert json.loads((root / MANIFEST_PATH.lstrip("/")).read_text())["rig_digest"]


def test_an_enabled_stock_ollama_beside_llama_server_is_warned_about(root: Path) -> None:
    ollama = root / "etc/systemd/system/ollama.service"
    ollama.parent.mkdir(parents=True)
    ollama.write_text(OLLAMA_UNIT)
    for model in load_profile("llama-server").models:
        assert model.path  # the file llama-server loads: diff and apply check it is there
        (root / model.path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / model.path.lstrip("/")).write_bytes(b"GGUF")
    args = ("--rig", str(RIG_8X), "--profile", "llama-server", "--root", str(root))
    assert "warning: ollama.service" not in provision("diff", *args).stderr  # disabled
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "ollama.service").symlink_to("/etc/systemd/system/ollama.service")
    result = provision("diff", "--json", *args)
    (warning,) = [w for w in json.loads(result.stdout)["warnings"] if "ollama.service" in w]
    assert warning.startswith("ollama.service is enabled (it starts at boot) and sees every GPU")
    assert "warning: ollama.service is enabled" in provision("apply", "--yes", *args).stderr


HEADER = "# Managed by provision. Do not edit; run 'provision diff'.\n"


def _edit_json(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))


@pytest.mark.parametrize("escape", ["/../outside.conf", "/etc/../../outside.conf", "etc/x"])
def test_a_manifest_path_outside_the_root_is_refused(root: Path, a_json: Path, escape: str) -> None:
    """An edited or corrupt manifest listing a path that climbs out of the root: a stale file
    there would be removed. diff and apply refuse it (exit 3) and the file outside stays."""
    assert _apply(root, a_json).returncode == 0
    outside = root.parent / "outside.conf"
    outside.write_text(HEADER + "mine\n")
    record = {"path": escape, "sha256": "0" * 64, "mode": "0644", "owner": "root"}
    record["group"] = "root"
    manifest = root / "var/lib/provision/manifest.json"
    _edit_json(manifest, lambda m: m["files"].append(record))
    for run in (_diff, _apply):
        result = run(root, a_json)
        assert result.returncode == 3, result.stdout + result.stderr
        assert "manifest.json: files[" in result.stderr and f"].path {escape!r}: " in result.stderr
        assert escape not in result.stdout
    assert outside.read_text() == HEADER + "mine\n"


def test_a_backup_index_path_outside_the_root_is_refused(root: Path, a_json: Path) -> None:
    """Rollback would write the saved bytes and mode back there: refused, untouched."""
    assert _apply(root, a_json).returncode == 0
    outside = root.parent / "outside.conf"
    outside.write_text("mine\n")
    outside.chmod(0o600)
    (index,) = (root / "var/lib/provision/backups").glob("*/index.json")

    def climb(backup: dict[str, Any]) -> None:
        backup["files"][0]["path"] = "/../outside.conf"

    _edit_json(index, climb)
    result = provision("rollback", "--yes", "--root", str(root))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "index.json: files[0].path '/../outside.conf': not a normal path" in result.stderr
    assert outside.read_text() == "mine\n" and outside.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1e9", "soon"])
@pytest.mark.parametrize("option", ["--lock-timeout", "--check-timeout"])
def test_durations_are_finite_seconds(root: Path, a_json: Path, option: str, value: str) -> None:
    """click's FloatRange lets nan through, and a lock wait of nan never ends."""
    result = _apply(root, a_json, option, value)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"Invalid value for '{option}'" in result.stderr and not (root / "var").exists()


def test_a_read_only_state_directory_is_a_host_error(root: Path, a_json: Path) -> None:
    """A read-only tree where provision keeps its state (a real read-only mount): exit 3
    naming the directory, not a traceback; nothing is written."""
    if os.geteuid() != 0:
        pytest.fail("needs root to mount a read-only tmpfs (CI runs as root)")
    state = root / "var/lib"
    state.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(state)], check=True)
    try:
        result = _apply(root, a_json)
    finally:
        subprocess.run(["umount", str(state)], check=True)
    assert result.returncode == 3, result.stdout + result.stderr
    assert f"error: {state}/provision: cannot open or create: Read-only file system" in (
        result.stderr
    )
    assert not (root / "etc/nginx/conf.d/provision-ollama.conf").exists()
