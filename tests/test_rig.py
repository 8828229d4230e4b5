"""Snapshot model: round trips through YAML and JSON, and bad snapshots named by field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from provision.errors import ExitCode, InputError
from provision.hardware.rig import dump_rig, load_rig, parse_rig, rig_to_plain, save_rig
from tests.helpers import ALL_RIG_FILES


@pytest.mark.parametrize("path", ALL_RIG_FILES, ids=lambda p: p.stem)
@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_every_recorded_rig_round_trips(path: Path, suffix: str, tmp_path: Path) -> None:
    rig = load_rig(path)
    out = tmp_path / f"again{suffix}"
    save_rig(rig, out)
    assert load_rig(out) == rig
    # The file on disk keeps every field of the schema, nulls included.
    assert yaml.safe_load(out.read_text()) == rig_to_plain(rig)


def _plain(sample_rig_file: Path) -> dict:
    return yaml.safe_load(sample_rig_file.read_text())


def _error_for(data: dict, name: str = "bad.yaml") -> InputError:
    with pytest.raises(InputError) as info:
        parse_rig(yaml.safe_dump(data), name)
    assert info.value.exit_code == ExitCode.BAD_INPUT
    return info.value


def test_unknown_schema_is_refused(sample_rig_file: Path) -> None:
    data = _plain(sample_rig_file)
    data["schema"] = 3
    error = _error_for(data)
    assert "bad.yaml" in error.message and "'schema'" in error.message


@pytest.mark.parametrize(
    ("mutate", "field", "problem"),
    [
        (lambda d: d["gpus"][1].pop("uuid"), "gpus[1].uuid", "missing"),
        (lambda d: d["host"].pop("hostname"), "host.hostname", "missing"),
        (
            lambda d: d["gpus"][0].update(memory_total_bytes="24GB"),
            "gpus[0].memory_total_bytes",
            "expected an integer, got the string '24GB'",
        ),
        (
            lambda d: d["gpus"][0]["pcie"].update(width_max=True),
            "gpus[0].pcie.width_max",
            "expected an integer or null, got a boolean",
        ),
        (
            lambda d: d["gpus"][0].update(memory_total_bytes=-1),
            "gpus[0].memory_total_bytes",
            "must be positive",
        ),
        (
            lambda d: d["gpus"][1].update(memory_used_bytes=-5),
            "gpus[1].memory_used_bytes",
            "between 0 and memory_total_bytes",
        ),
        (lambda d: d["gpus"][0].update(vendor="intel"), "gpus[0].vendor", "one of 'nvidia'"),
        (lambda d: d["gpus"][0].update(colour="red"), "gpus[0].colour", "unknown field"),
        (lambda d: d["gpus"][1].update(index=0), "gpus[1].index", "duplicate GPU index 0"),
        (
            lambda d: d["gpus"][0].update(compute_capability="sm_86"),
            "gpus[0].compute_capability",
            'like "8.6"',
        ),
        (
            lambda d: d["gpus"][0]["power"].update(min_w=500.0),
            "gpus[0].power.min_w",
            "above max_w",
        ),
        (
            lambda d: d["gpus"][0].update(nvlink=[{"link": 0, "peer_pci_bus_id": "gpu1"}]),
            "gpus[0].nvlink[0].peer_pci_bus_id",
            "expected a PCI bus id",
        ),
        (lambda d: d.update(gpus={"0": {}}), "gpus", "expected a list, got a mapping"),
    ],
)
def test_bad_field_is_named(sample_rig_file: Path, mutate, field: str, problem: str) -> None:
    data = _plain(sample_rig_file)
    mutate(data)
    error = _error_for(data)
    assert f"field '{field}'" in error.message
    assert problem in error.message
    assert error.hint


def test_malformed_yaml_names_the_file() -> None:
    with pytest.raises(InputError) as info:
        parse_rig("schema: 1\ngpus: [\n", "broken.yaml")
    assert info.value.message.startswith("broken.yaml: not a valid snapshot file")


def test_json_document_from_probe_reads_back(sample_rig_file: Path) -> None:
    rig = load_rig(sample_rig_file)
    document = rig_to_plain(rig)
    document["traits"] = [{"kind": "symmetric"}]
    assert parse_rig(yaml.safe_dump(document), "probe.json.yaml") == rig


def test_null_readings_stay_null(sample_rig_file: Path) -> None:
    data = _plain(sample_rig_file)
    data["gpus"][0]["pcie"] = dict.fromkeys(data["gpus"][0]["pcie"])
    data["gpus"][0]["memory_used_bytes"] = None
    rig = parse_rig(yaml.safe_dump(data), "x.yaml")
    assert rig.gpus[0].pcie.width_max is None
    assert "width_max: null" in dump_rig(rig)
