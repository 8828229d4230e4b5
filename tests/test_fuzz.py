"""A seeded fuzz run over every input provision reads, with one oracle for all of them.

Inputs (tests/fuzz_inputs.py): mutated rig snapshots (tests/rigs), profiles (profiles/), GGUF
headers (tests/gguf_factory.py), manifests and backup indexes of an applied root, and payloads
in every string field that reaches a rendered file. The oracle, for each case:

- the exit code is one the command's contract allows (0-4, ARCHITECTURE.md §4), never a
  traceback (an exception other than SystemExit inside click's runner), and no case hangs;
- every `error:`/`hint:` line is capped, and nothing printed carries a control character;
- a file that renders passes its target's syntax: no directive, section, specifier, line
  continuation or quote that the templates did not write themselves;
- nothing outside the root is touched.

The seed is fixed (PROVISION_FUZZ_SEED changes it, PROVISION_FUZZ_SCALE multiplies the case
counts) and is part of every test id, so a failure names the seed and the case that found it.
The whole file runs in-process through click's CliRunner, but for a few real-process cases,
in well under a minute.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import struct
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from gguf import GGUFWriter

from provision.cli.main import main
from provision.cli.terminal import MESSAGE_LIMIT
from provision.desired import DesiredState
from provision.errors import InputError
from provision.hardware.rig import load_rig
from provision.models.refs import spec_from_gguf
from provision.paths import BACKUPS_DIR, MANIFEST_PATH
from provision.pipeline import desired_state
from tests.fuzz_inputs import PAYLOADS, mutate_gguf, mutate_plain, mutate_text
from tests.gguf_factory import write_tiny_gguf
from tests.golden_cases import ENVIRON
from tests.helpers import ALL_RIG_FILES, REPO_ROOT, rig_file, run_provision
from tests.test_apply import desired_file, scratch_root, tree
from tests.test_plan import state_a, state_b

SEED = int(os.environ.get("PROVISION_FUZZ_SEED", "20261203"))
SCALE = float(os.environ.get("PROVISION_FUZZ_SCALE", "1"))
CASE_TIMEOUT_S = 20  # a case that runs longer is a hang (the cases take milliseconds)
RIG = rig_file("synthetic-2x3090-x16-x8")
PROFILES = sorted((REPO_ROOT / "profiles").glob("*.yaml"))
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# Where a path read back from recorded state would land if it escaped the root.
TRAVERSALS = ("/../outside/victim", "/etc/../../outside/victim", "../outside/victim", "//x", "")


def _count(n: int) -> int:
    return max(1, int(n * SCALE))


def _seeded(name: str) -> random.Random:
    return random.Random(f"{SEED}:{name}")


@contextmanager
def _bounded(case: str) -> Iterator[None]:
    def hang(signum: int, frame: object) -> None:
        raise TimeoutError(f"seed {SEED}, {case}: still running after {CASE_TIMEOUT_S} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(CASE_TIMEOUT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@dataclass(frozen=True)
class Run:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def _main(args: Sequence[str]) -> Run:
    """provision's main() in this process, as `python -m provision ARGS` runs it (click's usage
    errors included), with click's runner isolating the streams and the environment."""
    argv = sys.argv
    with CliRunner().isolation(env=ENVIRON) as (stdout, stderr, _):
        sys.argv = ["provision", *args]
        try:
            main()
            code: object = 0
        except SystemExit as exc:
            code = exc.code
        finally:
            sys.argv = argv
        out, err = stdout.getvalue().decode(), stderr.getvalue().decode()
    return Run(code if isinstance(code, int) else 1, out, err)


def _invoke(args: Sequence[str], allowed: set[int], case: str, names: Path | None = None) -> Run:
    """Run one command in-process and hold it to the oracle; a refused input file (exit 2)
    must be named in the error."""
    with _bounded(case):
        try:
            result = _main(args)
        except Exception as exc:  # a traceback in a real process
            tb = "".join(traceback.format_exception(exc))
            pytest.fail(f"seed {SEED}, {case}: {' '.join(args)}\n{tb}")
    where = f"seed {SEED}, {case}: {' '.join(args)} -> {result.exit_code}\n{result.output[-2000:]}"
    assert result.exit_code in allowed, where
    assert "Traceback" not in result.output, where
    assert not _CONTROL.search(result.output), where
    for line in result.stderr.splitlines():
        assert len(line) <= MESSAGE_LIMIT + 80, where
    if result.exit_code >= 2:
        assert "error: " in result.stderr, where
    if result.exit_code == 2 and names is not None:
        assert str(names) in result.stderr, where
    return result


def _write_document(path: Path, document: Any) -> Path:
    # JSON is YAML: one writer covers both loaders (by suffix), NaN and deep nesting included.
    path.write_text(json.dumps(document, allow_nan=True))
    return path


def _mutated_document(rng: random.Random, source: Path, out: Path) -> Path:
    text = source.read_text()
    if rng.random() < 0.3:
        out.write_bytes(mutate_text(rng, text))
        return out
    return _write_document(out, mutate_plain(rng, yaml.safe_load(text), rounds=rng.randint(1, 3)))


# --- rig snapshots and profiles ----------------------------------------------------------------


def test_mutated_rigs(tmp_path: Path) -> None:
    rng = _seeded("rigs")
    for n in range(_count(160)):
        source = rng.choice(ALL_RIG_FILES)
        rig = _mutated_document(rng, source, tmp_path / f"rig{n}{rng.choice(['.yaml', '.json'])}")
        case = f"rig case {n} (from {source.name})"
        _invoke(["probe", "--rig", str(rig)], {0, 2}, case, names=rig)
        if n % 4 == 0:
            _invoke(["plan", "--rig", str(rig)], {0, 2, 3}, case)


def test_mutated_profiles(tmp_path: Path) -> None:
    rng = _seeded("profiles")
    for n in range(_count(160)):
        source = rng.choice(PROFILES)
        profile = _mutated_document(rng, source, tmp_path / f"p{n}.yaml")
        case = f"profile case {n} (from {source.name})"
        args = ["plan", "--rig", str(RIG), "--profile", str(profile)]
        _invoke(args, {0, 2, 3}, case, names=profile)


# --- GGUF files ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf").read_bytes()


def _spec_or_refusal(path: Path, case: str) -> None:
    with _bounded(case):
        try:
            spec_from_gguf(path)
        except InputError as exc:
            assert str(path) in exc.message, f"seed {SEED}, {case}: {exc.message}"


def test_mutated_gguf_headers(tmp_path: Path, tiny_gguf: bytes) -> None:
    rng = _seeded("gguf")
    for n in range(_count(200)):
        path = tmp_path / f"m{n}.gguf"
        path.write_bytes(mutate_gguf(rng, tiny_gguf))
        _spec_or_refusal(path, f"gguf case {n}")
        if n % 20 == 0:
            _invoke(["fit", "--rig", str(RIG), str(path)], {0, 2, 3}, f"gguf case {n}")


def _gguf_with(path: Path, **values: Any) -> Path:
    """A model GGUF whose header holds these (hostile) values, written by the gguf library."""
    writer = GGUFWriter(path, "llama")
    for key, value in {"block_count": 4, "embedding_length": 64, **values}.items():
        name = f"llama.{key.replace('__', '.')}"
        if isinstance(value, str):
            writer.add_string(name, value)
        elif isinstance(value, list):
            writer.add_array(name, value)
        elif isinstance(value, float):
            writer.add_float64(name, value)
        else:
            writer.add_uint64(name, value) if value >= 0 else writer.add_int64(name, value)
    writer.add_tensor(values.pop("tensor", "blk.0.attn_q.weight"), np.zeros((4, 4), np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(
    "values",
    [
        {"block_count": "32"},
        {"block_count": float("nan")},
        {"block_count": float("inf")},
        {"block_count": 10**7},
        {"block_count": -3},
        {"block_count": 2**63},
        {"block_count": 4.5},
        {"embedding_length": 2**40},
        {"attention__head_count_kv": ["a", "b"]},
        {"attention__head_count": [float("nan")]},
        {"context_length": "long"},
        {"tensor": "blk.x.attn_q.weight"},
        {"tensor": "blk.99999999999.attn_q.weight"},
    ],
    ids=lambda v: f"seed{SEED}-" + "-".join(f"{k}={v!r:.20}" for k, v in v.items()),
)
def test_hostile_gguf_values_are_refused_naming_the_file(
    tmp_path: Path, values: dict[str, Any]
) -> None:
    _spec_or_refusal(_gguf_with(tmp_path / "x.gguf", **values), f"gguf values {values}")


@pytest.mark.parametrize(
    "name", ["x-00001-of-00000.gguf", "x-00003-of-00002.gguf", "x-00000-of-00001.gguf"]
)
def test_odd_split_names_are_refused(tmp_path: Path, tiny_gguf: bytes, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(tiny_gguf)
    with pytest.raises(InputError, match="split GGUF"):
        spec_from_gguf(path)


@pytest.mark.parametrize("kind", ["fifo", "directory", "empty"])
def test_a_gguf_path_that_is_no_model_file_is_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "x.gguf"
    {"fifo": os.mkfifo, "directory": os.mkdir, "empty": Path.touch}[kind](path)
    _spec_or_refusal(path, f"gguf {kind}")
    _invoke(["fit", "--rig", str(RIG), str(path)], {2}, f"gguf {kind}")


# --- recorded state: manifests and backup indexes -----------------------------------------------


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A root after apply A then apply B (so it has a manifest and two backups), and A."""
    base = tmp_path_factory.mktemp("applied")
    root = scratch_root(base / "root")
    for name, state in (("b", state_b()), ("a", state_a())):
        desired = desired_file(base, state, name)
        _invoke(["apply", "--yes", "--root", str(root), "--desired-json", str(desired)], {0}, name)
    return root, desired


def _copy(root: Path, to: Path) -> tuple[Path, Path]:
    """A copy of root, and beside it a file that no run may touch."""
    shutil.copytree(root, to / "root", symlinks=True)
    outside = to / "outside"
    outside.mkdir()
    (outside / "victim").write_text("must stay\n")
    return to / "root", outside


def _mutated_record(rng: random.Random, path: Path) -> None:
    if rng.random() < 0.25:
        document = json.loads(path.read_text())
        files = document.get("files") or [{}]
        rng.choice(files)["path"] = rng.choice(TRAVERSALS)
        path.write_text(json.dumps(document))
    else:
        _mutated_document(rng, path, path)


def _untouched(outside: Path, case: str) -> None:
    assert [p.name for p in outside.iterdir()] == ["victim"], f"seed {SEED}, {case}"
    assert (outside / "victim").read_text() == "must stay\n", f"seed {SEED}, {case}"


def test_mutated_manifests(tmp_path: Path, applied: tuple[Path, Path]) -> None:
    rng = _seeded("manifests")
    root, desired = applied
    for n in range(_count(24)):
        case = f"manifest case {n}"
        copy, outside = _copy(root, tmp_path / str(n))
        _mutated_record(rng, copy / MANIFEST_PATH.lstrip("/"))
        _invoke(["diff", "--root", str(copy), "--desired-json", str(desired)], {0, 1, 3}, case)
        if n % 4 == 0:
            args = ["apply", "--yes", "--root", str(copy), "--desired-json", str(desired)]
            _invoke(args, {0, 3, 4}, case)
        if n % 6 == 0:
            _invoke(["verify", "--root", str(copy)], {0, 1, 2, 3}, case)
        _untouched(outside, case)


def test_mutated_backup_indexes(tmp_path: Path, applied: tuple[Path, Path]) -> None:
    rng = _seeded("backups")
    root, _ = applied
    for n in range(_count(20)):
        case = f"backup index case {n}"
        copy, outside = _copy(root, tmp_path / str(n))
        last = sorted((copy / BACKUPS_DIR.lstrip("/")).iterdir())[-1]
        _mutated_record(rng, last / "index.json")
        before = tree(copy)
        result = _invoke(["rollback", "--yes", "--root", str(copy)], {0, 2, 3, 4}, case)
        if result.exit_code in (2, 3):  # refused: it must have changed nothing
            assert tree(copy) == before, f"seed {SEED}, {case}: {result.output}"
        _untouched(outside, case)


# --- payloads in every string that reaches a rendered file --------------------------------------

# (profile or rig, where the value goes, a base document)
_FIELDS = (
    ("profile", ("description",), {"runtime": "ollama", "models": [{"ref": "llama3.1:8b"}]}),
    ("profile", ("models", 0, "ref"), {"models": [{"ref": "llama3.1:8b"}]}),
    ("profile", ("models", 0, "name"), {"models": [{"ref": "llama3.1:8b", "name": "x"}]}),
    ("profile", ("models", 0, "keep_alive"), {"models": [{"ref": "llama3.1:8b"}]}),
    (
        "profile",
        ("listen", "address"),
        {"replicas": 2, "listen": {}, "models": [{"ref": "llama3.1:8b"}]},
    ),
    (
        "profile",
        ("models", 0, "path"),
        {"runtime": "llama-server", "models": [{"ref": "llama3.1:8b", "path": "/m.gguf"}]},
    ),
    ("rig", ("gpus", 0, "uuid"), None),
    ("rig", ("gpus", 0, "name"), None),
)
_POWER_PROFILE = {"models": [{"ref": "llama3.1:8b"}], "power": {"per_gpu_w": 300}}


def _place(document: Any, path: tuple[Any, ...], value: str) -> Any:
    document = json.loads(json.dumps(document))
    node = document
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return document


def _render(tmp_path: Path, where: str, field: tuple[Any, ...], base: Any, value: str) -> Any:
    if where == "profile":
        profile = _write_document(tmp_path / "p.yaml", _place(base, field, value))
        rig_path = RIG
    else:
        plain = _place(yaml.safe_load(RIG.read_text()), field, value)
        rig_path = _write_document(tmp_path / "rig.json", plain)
        profile = _write_document(tmp_path / "p.yaml", _POWER_PROFILE)
    try:
        return desired_state(load_rig(rig_path), str(profile), ENVIRON)[1]
    except InputError as exc:  # refused: fine, if it says what and where
        assert exc.message and "\n" not in exc.message.split(":")[0]
        return None


@pytest.fixture(scope="module")
def template_vocabulary() -> dict[str, set[str]]:
    """Per kind of file, the words that start a line in what the bundled profiles render."""
    words: dict[str, set[str]] = {}
    for profile in [p.stem for p in PROFILES]:
        for rig in (RIG, rig_file("fakesysfs-2x7900xtx")):
            for file in desired_state(load_rig(rig), profile, ENVIRON)[1].files:
                words.setdefault(_kind(file.path), set()).update(_line_words(file.content))
    return words


def _kind(path: str) -> str:
    if path.endswith((".service", ".conf")) and "/systemd/" in path:
        return "systemd"
    return Path(path).suffix or Path(path).name


def _line_words(content: str) -> set[str]:
    words = set()
    for line in content.split("\n"):  # as systemd, nginx and Ollama split lines
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            words.add(re.split(r"[=\s]", stripped, maxsplit=1)[0])
    return words


_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')


def _syntax_problems(path: str, content: str, vocabulary: dict[str, set[str]]) -> list[str]:
    kind = _kind(path)
    problems = [f"new line word {w!r}" for w in _line_words(content) - vocabulary.get(kind, set())]
    for line in content.split("\n"):
        if line.startswith("#"):
            continue
        if kind == "systemd":
            if line.endswith("\\"):
                problems.append(f"line continuation: {line!r}")
            # Specifiers the templates use: %i (the instance); anything else came from a value.
            if re.search(r"%[^%i]", line.replace("%%", "")):
                problems.append(f"specifier: {line!r}")
        if (
            kind == ".env"
            and line
            and not re.fullmatch(r'[A-Z_][A-Z0-9_]*="(?:[^"\\`$]|\\.)*"', line)
        ):
            problems.append(f"environment line: {line!r}")
        if kind == ".Modelfile" and ('"""' in line or line.split(" ", 1)[-1].startswith('"')):
            problems.append(f"Modelfile quote: {line!r}")
    if kind == ".conf":  # nginx: outside quoted strings, braces pair up and `$` never appears
        bare = _QUOTED.sub('""', content)
        bare = re.sub(r"#.*", "", bare)
        if bare.count("{") != bare.count("}") or "$" in bare:
            problems.append("nginx structure")
    return problems


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: f"seed{SEED}-{p[:12]!r}")
def test_payloads_never_escape_the_rendered_file(
    tmp_path: Path, payload: str, template_vocabulary: dict[str, set[str]]
) -> None:
    for where, field, base in _FIELDS:
        case = f"payload {payload[:40]!r} in {where} {field}"
        with _bounded(case):
            desired: DesiredState | None = _render(tmp_path, where, field, base, payload)
        for file in desired.files if desired else ():
            problems = _syntax_problems(file.path, file.content, template_vocabulary)
            assert not problems, f"seed {SEED}, {case}: {file.path}: {problems}"


# --- option values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["0", "-1", str(2**32), "1" + "0" * 400, "nan", "1e9", "x", "9" * 5000]
)
@pytest.mark.parametrize("option", ["--ctx", "--parallel"])
def test_hostile_option_values_are_refused(option: str, value: str) -> None:
    args = ["fit", "--rig", str(RIG), option, value, "llama3.1:8b"]
    _invoke(args, {2}, f"{option} {value[:20]}")


# --- a few cases in a real process --------------------------------------------------------------


def test_hostile_inputs_in_a_real_process(tmp_path: Path, tiny_gguf: bytes) -> None:
    deep_profile = tmp_path / "deep.yaml"
    deep_profile.write_text("models: " + "[" * 3000 + "]" * 3000 + "\n")
    many = tmp_path / "many.gguf"
    many.write_bytes(tiny_gguf[:8] + struct.pack("<Q", 2**40) + tiny_gguf[16:])
    fifo = tmp_path / "rig.yaml"
    os.mkfifo(fifo)
    cases = [
        (["plan", "--rig", str(RIG), "--profile", str(deep_profile)], "nested more than"),
        (["fit", "--rig", str(RIG), str(many)], "tensor_count is 1099511627776"),
        (["probe", "--rig", str(fifo)], "not a regular file"),
        (["apply", "--root", str(tmp_path), "--lock-timeout", "nan"], "Invalid value"),
    ]
    for args, says in cases:
        result = run_provision(*args)
        assert result.returncode == 2, f"seed {SEED}: {args}: {result.stderr}"
        assert says in result.stderr and len(result.stderr) < 4 * MESSAGE_LIMIT
