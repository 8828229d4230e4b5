"""One JSON contract (docs/JSON.md): every `--json` document, success or error, validates
against its command's schema in provision/data/json-schema, carries the envelope, and the
examples in docs/JSON.md are valid and still what the CLI prints.

`UPDATE_JSON_DOC=1 pytest tests/test_json_contract.py -k docs` rewrites those examples from the
real CLI; review that diff like a golden.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from jsonschema import Draft202012Validator

from provision.cli import envelope
from provision.cli import main as main_module
from provision.cli.main import cli
from provision.desired import DesiredFile
from provision.errors import ExitCode
from provision.hardware import rig as rig_module
from provision.hardware.classify import Severity
from provision.hardware.rig import Vendor, load_rig
from provision.models.estimate import KvType, Runtime
from provision.placement.fit import Verdict
from provision.placement.profile import bundled_names
from provision.units import gib
from tests.helpers import ALL_RIG_FILES, REPO_ROOT, TESTS_DIR, rig_file, run_provision
from tests.json_contract import (
    COMMANDS,
    JSON_DOC,
    ROOT_PLACEHOLDER,
    SCHEMA_BASE,
    assert_valid,
    example_text,
    examples,
    problems,
    schemas,
    shape,
)
from tests.test_apply import desired_file, scratch_root
from tests.test_plan import state_a, state_b

# Model references resolve from the bundled catalog only, as in the goldens.
ENV = {"OLLAMA_MODELS": "/nonexistent/provision-tests/ollama-models"}
SAMPLE_RIG = str(rig_file("synthetic-2x3090-x16-x8"))
STOCK_ROOT = TESTS_DIR / "data" / "stock-root"


def _invoke(*args: str) -> tuple[int, dict[str, Any]]:
    """The command in this process; its stdout must be exactly one JSON document."""
    result = CliRunner().invoke(cli, list(args), env=ENV)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, json.loads(result.stdout)


def _checked(args: tuple[str, ...], status: int, document: dict[str, Any]) -> None:
    """The envelope's promises, beyond what a schema can say."""
    assert_valid(document, args[0])
    assert list(document)[:4] == ["schema", "command", "warnings", "errors"]
    assert document["command"] == args[0]
    if status in (ExitCode.OK, ExitCode.CHANGES_PENDING):
        assert document["errors"] == [] or args[0] == "verify"
    else:
        assert document["errors"], f"exit {status} without an error in {args}"
        assert document["errors"][-1]["exit_code"] == status or args[0] == "verify"


# --- the schemas -------------------------------------------------------------------------------


def test_the_schemas_are_draft_2020_12_and_one_per_command() -> None:
    assert set(schemas()) == {*COMMANDS, "common"}
    for name, schema in schemas().items():
        Draft202012Validator.check_schema(schema)
        assert schema["$id"] == f"{SCHEMA_BASE}{name}.json"
    for command in COMMANDS:
        props = schemas()[command]["properties"]
        assert props["command"] == {"const": command}
        assert props["schema"] == {"const": envelope.SCHEMA_VERSIONS[command]}


def test_probe_prints_the_snapshot_version() -> None:
    """`probe --json` is the rig snapshot: its `schema` is the snapshot's."""
    assert envelope.SCHEMA_VERSIONS["probe"] == rig_module.SCHEMA_VERSION
    assert set(envelope.SCHEMA_VERSIONS) == set(COMMANDS)


@pytest.mark.parametrize(
    ("definition", "values"),
    [
        ("verdict", Verdict),
        ("runtime", Runtime),
        ("run_settings/properties/kv_type", KvType),
        ("trait/properties/severity", Severity),
        ("gpu/properties/vendor", Vendor),
    ],
)
def test_the_schemas_closed_sets_are_the_codes(definition: str, values: Any) -> None:
    node = schemas()["common"]["$defs"]
    for step in definition.split("/"):
        node = node[step]
    assert node["enum"] == [v.value for v in values], f"update common.json $defs/{definition}"


def test_the_schemas_see_a_broken_document() -> None:
    """A validator that passes everything would pass every test below."""
    _, good = _invoke("plan", "--rig", SAMPLE_RIG, "--json")
    assert problems(good, "plan") == []
    broken = json.loads(json.dumps(good))
    del broken["models"][0]["per_gpu"][0]["kv_bytes"]
    broken["models"][1]["settings"]["kv_type"] = "q3"
    broken["instances"][0]["gpus"][0]["index"] = "0"
    del broken["errors"]
    found = "\n".join(problems(broken, "plan"))
    for part in ("'kv_bytes' is a required property", "'q3' is not one of", "'0' is not of type"):
        assert part in found
    assert "'errors' is a required property" in found
    # A document that stopped with an error needs only the envelope; one that did not, all.
    assert problems({**envelope.envelope("plan", None), "errors": [_an_error()]}, "plan") == []
    assert "'profile' is a required property" in "\n".join(
        problems(envelope.envelope("plan", None), "plan")
    )


def _an_error() -> dict[str, Any]:
    return envelope.error_to_plain("x: cannot read", "check the path", 2)


def test_an_added_field_breaks_nothing() -> None:
    """Others add fields (docs/JSON.md 'Extending'): objects accept properties they do not name."""
    _, document = _invoke("plan", "--rig", SAMPLE_RIG, "--json")
    document["new"] = 1
    document["models"][0]["new"] = {"x": 1}
    document["models"][0]["per_gpu"][0]["new"] = []
    document["errors"] = [{**_an_error(), "new": True}]
    assert problems(document, "plan") == []


# --- every command's real output ---------------------------------------------------------------


@pytest.mark.parametrize("rig", ALL_RIG_FILES, ids=lambda p: p.stem)
def test_probe_and_plan_documents_on_every_rig(rig: Path) -> None:
    """probe, and plan with every bundled profile (an error document where one cannot place)."""
    status, document = _invoke("probe", "--rig", str(rig), "--json")
    _checked(("probe",), status, document)
    assert [g["index"] for g in document["gpus"]] == [g.index for g in load_rig(rig).gpus]
    for profile in bundled_names():
        args = ("plan", "--rig", str(rig), "--profile", profile, "--json")
        status, document = _invoke(*args)
        _checked(args, status, document)


@pytest.mark.parametrize(
    "args",
    [
        ("llama3.1:8b",),  # one GPU
        ("llama3.3:70b",),  # a split
        ("llama3.3:70b", "--ctx", "131072", "--parallel", "4"),  # partial offload or no fit
        ("qwen2.5:32b", "--kv-type", "q8_0", "--runtime", "llama-server"),
    ],
)
def test_fit_documents(args: tuple[str, ...]) -> None:
    for rig in ("synthetic-2x3090-x16-x8", "synthetic-1x4090", "fakesysfs-3090-7900xtx"):
        status, document = _invoke("fit", *args, "--rig", str(rig_file(rig)), "--json")
        _checked(("fit",), status, document)


def test_models_document_is_the_catalog() -> None:
    status, document = _invoke("models", "--json")
    _checked(("models",), status, document)
    text = CliRunner().invoke(cli, ["models"]).stdout.splitlines()
    assert [m["name"] for m in document["models"]] == [line.split()[0] for line in text]


def test_change_and_verify_documents(tmp_path: Path) -> None:
    """diff, apply (dry run and real), verify, rollback --list, --dry-run and rollback on one
    tree."""
    root = tmp_path / "root"
    shutil.copytree(STOCK_ROOT, root)
    common = ("--rig", SAMPLE_RIG, "--root", str(root), "--json")
    runs = [
        ("diff", *common),
        ("apply", "--dry-run", *common),
        ("apply", "--yes", *common),
        ("diff", *common),
        ("apply", "--yes", *common),  # in sync: nothing done
        ("verify", "--root", str(root), "--json"),
        ("rollback", "--list", "--root", str(root), "--json"),
        ("rollback", "--dry-run", "--root", str(root), "--json"),
        ("rollback", "--yes", "--root", str(root), "--json"),
    ]
    statuses, documents = [], []
    for args in runs:
        status, document = _invoke(*args)
        _checked(args, status, document)
        statuses.append(status)
        documents.append(document)
    assert statuses == [1, 0, 0, 0, 0, 0, 0, 1, 0]
    (listed,) = documents[6]["backups"]  # the one apply that changed something
    assert listed["next_rollback"] and listed["files"] and listed["undoes"] is None
    assert documents[7]["actions"] and not documents[7]["in_sync"]  # what it would restore


# --- errors are documents too ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "status"),
    [
        (("probe", "--rig", "/nonexistent/rig.yaml"), 2),
        (("fit", "nosuchmodel:1b", "--rig", SAMPLE_RIG), 2),
        (("fit", "llama3.1:8b", "--ctx", "0", "--rig", SAMPLE_RIG), 2),
        (("plan", "--rig", SAMPLE_RIG, "--profile", "/nonexistent/profile.yaml"), 2),
        (("diff", "--rig", SAMPLE_RIG, "--root", "/nonexistent/root"), 3),  # a plan, refused
        (("apply", "--rig", SAMPLE_RIG, "--root", "/nonexistent/root"), 2),  # no --yes, no tty
        (("apply", "--yes", "--rig", SAMPLE_RIG, "--root", "/nonexistent/root"), 3),
        (("rollback", "--yes", "--root", "/nonexistent/root"), 3),
        (("verify", "--root", "/nonexistent/root"), 2),
        (("verify", "--hosts", "gpu-box-1"), 2),
    ],
)
def test_an_error_under_json_is_one_document_with_the_same_exit(
    args: tuple[str, ...], status: int
) -> None:
    result = run_provision(*args, "--json", env=ENV)
    assert result.returncode == status, result.stderr
    document = json.loads(result.stdout)  # exactly one document: json.loads refuses a second
    _checked(args, status, document)
    if status > 1:
        (error,) = document["errors"]
        # The collection reads the error: and hint: lines on stderr: they stay.
        assert f"error: {error['message']}" in result.stderr
        assert error["hint"] is None or f"hint: {error['hint']}" in result.stderr


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (("plan", "--bogus"), "plan"),
        (("fit", "llama3.1:8b", "--ctx", "many"), "fit"),
        (("nope",), None),
    ],
)
def test_a_usage_error_under_json_is_a_document(args: tuple[str, ...], command: str) -> None:
    result = run_provision(*args, "--json")
    assert result.returncode == 2
    document = json.loads(result.stdout)
    assert_valid(document, command)
    assert document["command"] == command and document["errors"][0]["exit_code"] == 2
    assert "hint: '" in result.stderr and "--help' lists the options" in result.stderr


@pytest.mark.parametrize(
    ("raised", "message", "status"),
    [
        (click.Abort(), "aborted: nothing was changed", 1),  # a declined confirmation
        (KeyboardInterrupt(), "interrupted", 3),
    ],
)
def test_a_run_stopped_by_the_operator_is_a_document(
    raised: BaseException,
    message: str,
    status: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def stop(*args: object, **kwargs: object) -> None:
        raise raised

    monkeypatch.setattr(main_module.cli, "main", stop)
    monkeypatch.setattr("sys.argv", ["provision", "apply", "--rig", SAMPLE_RIG, "--json"])
    with pytest.raises(SystemExit) as exited:
        main_module.main()
    assert exited.value.code == status
    out, err = capsys.readouterr()
    document = json.loads(out)
    assert_valid(document, "apply")
    assert document["command"] == "apply"
    assert document["errors"] == [envelope.error_to_plain(message, None, status)]
    assert message in err


def test_only_the_envelope_prints_documents() -> None:
    """A command that printed its own json.dumps would bypass the envelope, and print a second
    document after an error."""
    for path in sorted((REPO_ROOT / "provision" / "cli").glob("*.py")):
        if path.name in ("envelope.py", "options.py"):  # options: desired_to_json, a file
            continue
        assert "json.dumps" not in path.read_text(), f"{path.name}: use envelope.emit"


def test_a_command_that_prints_then_fails_prints_one_document(tmp_path: Path) -> None:
    """diff refusing a target (exit 3) still prints its plan, with the error in the same
    document; without --json nothing changes on stdout."""
    root = scratch_root(tmp_path / "root")
    (root / "etc/systemd").mkdir(parents=True)
    (root / "etc/systemd/system").symlink_to(tmp_path)  # apply never writes through a symlink
    desired = desired_file(tmp_path, state_a(), "a")
    args = ("diff", "--root", str(root), "--desired-json", str(desired))
    result = run_provision(*args, "--json")
    assert result.returncode == 3, result.stderr
    document = json.loads(result.stdout)
    _checked(("diff",), 3, document)
    assert document["actions"] and "symlink" in document["errors"][0]["message"]
    assert not run_provision(*args).stdout.lstrip().startswith("{")


def test_a_rolled_back_apply_is_an_error_document_with_exit_4(tmp_path: Path) -> None:
    root = scratch_root(tmp_path / "root")
    late = DesiredFile("/etc/zz-provision.conf", "# Managed by provision.\n", owner="nosuchuser")
    broken = replace(state_b(), files=(*state_b().files, late))
    desired = desired_file(tmp_path, broken, "broken")
    args = ("apply", "--yes", "--root", str(root), "--desired-json", str(desired), "--json")
    result = run_provision(*args)
    assert result.returncode == 4, result.stderr
    document = json.loads(result.stdout)
    _checked(("apply",), 4, document)
    assert "restored from backup" in document["errors"][0]["message"]


def test_verify_reports_a_host_it_cannot_reach_as_an_error(tmp_path: Path) -> None:
    root = scratch_root(tmp_path / "root")
    desired = desired_file(tmp_path, state_a(), "a")
    applied = run_provision("apply", "--yes", "--root", str(root), "--desired-json", str(desired))
    assert applied.returncode == 0, applied.stderr
    hosts = "local://,ssh://gpu-box.invalid"
    result = run_provision("verify", "--hosts", hosts, "--root", str(root), "--json")
    assert result.returncode == 3
    document = json.loads(result.stdout)
    _checked(("verify",), 3, document)
    (error,) = document["errors"]
    assert error["host"] == "ssh://gpu-box.invalid" and error["exit_code"] == 3
    assert [h["verified"] for h in document["hosts"]] == [True, False]


def test_probe_json_reads_back_with_rig(tmp_path: Path) -> None:
    """The envelope does not stop `--rig` from reading what `probe --json` printed."""
    rig = rig_file("fakesysfs-3090-7900xtx")
    saved = tmp_path / "probe.json"
    saved.write_text(run_provision("probe", "--rig", str(rig), "--json").stdout)
    assert load_rig(saved) == load_rig(rig)


# --- plan JSON carries every number the text shows ---------------------------------------------

_BAR = re.compile(r"^  GPU (\d+) .*\] (\S+ GiB) / (\S+ GiB)$")
_NEEDS = re.compile(r"needs (\S+ GiB) of (\S+ GiB) usable")


@pytest.mark.parametrize(
    ("rig", "profile"),
    [
        ("synthetic-2x3090-x16-x8", "ollama-auto"),
        ("synthetic-2x3090-x16-x8", "ollama-replicas"),
        ("synthetic-4090-3090", "power-capped"),
        ("synthetic-8xa100-nvlink", "llama-server"),
        ("fakesysfs-3090-7900xtx", "ollama-auto"),
    ],
)
def test_plan_json_has_every_number_the_text_shows(rig: str, profile: str) -> None:
    args = ["plan", "--rig", str(rig_file(rig)), "--profile", profile]
    text = CliRunner().invoke(cli, args, env=ENV).stdout
    status, document = _invoke(*args, "--json")
    assert status == 0
    bars = [m.groups() for line in text.splitlines() if (m := _BAR.match(line))]
    memory = [
        (str(g["index"]), gib(g["total_bytes"]), gib(g["free_bytes"])) for g in document["memory"]
    ]
    assert bars == memory
    for model in document["models"]:
        settings = model["settings"]
        assert {"ctx", "parallel", "kv_type"} <= settings.keys()
        shares = model["per_gpu"]
        assert [s["index"] for s in shares] == model["gpus"]
        assert [s["layers"] for s in shares] == model["layers_per_gpu"]
        needs = _NEEDS.search(model["reason"])
        if needs and len(shares) == 1:  # "needs X of Y usable" on one GPU
            assert needs.groups() == (gib(shares[0]["total_bytes"]), gib(shares[0]["free_bytes"]))
    watts = re.findall(r"^  GPU (\d+): (\S+) W", text, re.MULTILINE)
    assert watts == [(str(p["index"]), f"{p['target_w']:g}") for p in document["power"]]
    files = re.search(r"^files \((\d+)\):", text, re.MULTILINE)
    assert files and int(files[1]) == len(document["files"])


# --- docs/JSON.md ------------------------------------------------------------------------------


def _with_placeholder(value: Any, real: str) -> Any:
    if isinstance(value, dict):
        return {k: _with_placeholder(v, real) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_placeholder(v, real) for v in value]
    return value.replace(real, ROOT_PLACEHOLDER) if isinstance(value, str) else value


def test_docs_examples_are_valid_and_what_the_cli_prints(tmp_path: Path) -> None:
    """Each example in docs/JSON.md validates, and its command, run now in the same order,
    exits the same and prints a document of which the example's shape is a part."""
    text = JSON_DOC.read_text()
    found = examples(text)
    assert {e.command for e in found} >= set(COMMANDS), "one example per command"
    root = tmp_path / "root"
    shutil.copytree(STOCK_ROOT, root)
    regenerated = []
    updating = bool(os.environ.get("UPDATE_JSON_DOC"))
    for example in found:
        assert example.document is not None or updating, f"{example.args}: no ```json block"
        if example.document is not None:
            assert_valid(example.document, example.command)
        args = [a.replace(ROOT_PLACEHOLDER, str(root)) for a in example.args]
        result = run_provision(*args, env=ENV)
        real = _with_placeholder(json.loads(result.stdout), str(root))
        assert_valid(real, example.command)
        regenerated.append(example_text(example.args, result.returncode, real))
        if updating:
            continue
        assert result.returncode == example.exit_code, (example.args, result.stderr)
        stale = sorted(shape(example.document) - shape(real))
        assert not stale, f"docs/JSON.md 'provision {' '.join(example.args)}' shows {stale}"
    if updating:
        for example, new in reversed(list(zip(found, regenerated, strict=True))):
            start, end = example.span
            text = text[:start] + new + text[end:]
        JSON_DOC.write_text(text)
