"""The live probe, run for real against a fake libnvidia-ml.so.1 built from tests/fake_nvml.

pynvml loads "libnvidia-ml.so.1" with CDLL, so the fake is chosen by LD_LIBRARY_PATH, which the
dynamic loader reads once at process start: every probe here runs in a fresh interpreter.
Each recorded rig goes snapshot -> fake library -> probe and must come back the same: every GPU
field and the NVML host facts (OS facts and runtimes are this machine's and naturally differ).
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from provision.hardware.nvml import format_cuda_version
from provision.hardware.rig import Gpu, NvLink, PcieLink, PowerLimits, Rig, load_rig, parse_rig
from tests.fake_nvml.snapshot_to_fake import (
    LIBRARY_NAME,
    compile_fake_nvml,
    fake_env,
    fake_rig_text,
    write_fake_rig,
)
from tests.helpers import NVML_RIG_FILES, REPO_ROOT, load_named_rig, run_provision

# probe_rig() itself, without the CLI around it.
_PROBE_SCRIPT = (
    "from provision.hardware.nvml import probe_rig\n"
    "from provision.hardware.rig import dump_rig\n"
    "print(dump_rig(probe_rig(), 'json'), end='')\n"
)


@pytest.fixture(scope="session")
def fake_nvml_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake library, compiled once per session. No gcc is a failure, never a skip."""
    return compile_fake_nvml(tmp_path_factory.mktemp("fake-nvml"))


def _probe_in_process(env: dict[str, str]) -> Rig:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return parse_rig(result.stdout, "probe.json")


def _probe_through_cli(env: dict[str, str], out: Path) -> Rig:
    result = run_provision("probe", "--save", str(out), env=env)
    assert result.returncode == 0, result.stderr
    return load_rig(out)


def _assert_same_nvml_facts(probed: Rig, snapshot: Rig) -> None:
    assert [gpu.index for gpu in probed.gpus] == [gpu.index for gpu in snapshot.gpus]
    for got, want in zip(probed.gpus, snapshot.gpus, strict=True):
        assert got == want
    for name in ("driver_version", "cuda_driver_version", "nvml_version"):
        assert getattr(probed.host, name) == getattr(snapshot.host, name), name


def _round_trip(snapshot: Rig, fake_nvml_dir: Path, tmp_path: Path) -> None:
    env = fake_env(fake_nvml_dir, write_fake_rig(snapshot, tmp_path / "fake-rig.txt"))
    _assert_same_nvml_facts(_probe_in_process(env), snapshot)
    _assert_same_nvml_facts(_probe_through_cli(env, tmp_path / "probed.yaml"), snapshot)


@pytest.mark.parametrize("rig_path", NVML_RIG_FILES, ids=lambda path: path.stem)
def test_every_recorded_rig_survives_the_probe(
    rig_path: Path, fake_nvml_dir: Path, tmp_path: Path
) -> None:
    _round_trip(load_rig(rig_path), fake_nvml_dir, tmp_path)


def _sparse_rig() -> Rig:
    """Two GPUs NVML says little about, one with NVLink, MIG on and a display: every branch."""
    base = load_named_rig("synthetic-2x3090-x16-x8")
    first, second = base.gpus
    unknown_power = PowerLimits(limit_w=None, default_w=None, min_w=None, max_w=None)
    first = dataclasses.replace(
        first,
        compute_capability=None,
        architecture=None,
        pcie=PcieLink(gen_max=None, width_max=None, gen_current=None, width_current=None),
        power=unknown_power,
        display_active=None,
        persistence_mode=None,
        mig_enabled=None,
        nvlink=(NvLink(0, second.pci_bus_id), NvLink(3, second.pci_bus_id)),
    )
    second = dataclasses.replace(
        second,
        architecture="kepler",
        compute_capability="3.7",
        power=PowerLimits(limit_w=112.5, default_w=None, min_w=None, max_w=None),
        display_active=True,
        persistence_mode=False,
        mig_enabled=True,
        nvlink=(NvLink(35, first.pci_bus_id),),
    )
    host = dataclasses.replace(
        base.host, driver_version=None, cuda_driver_version=None, nvml_version=None
    )
    return Rig(host=host, gpus=(first, second))


def test_null_readings_come_back_as_none(fake_nvml_dir: Path, tmp_path: Path) -> None:
    _round_trip(_sparse_rig(), fake_nvml_dir, tmp_path)


def test_an_unknown_architecture_number_is_none(fake_nvml_dir: Path, tmp_path: Path) -> None:
    snapshot = load_named_rig("synthetic-2x3090-x16-x8")
    text = fake_rig_text(snapshot).replace("architecture 7", "architecture 13")  # rubin
    rig_file = tmp_path / "fake-rig.txt"
    rig_file.write_text(text)
    probed = _probe_in_process(fake_env(fake_nvml_dir, rig_file))
    assert [gpu.architecture for gpu in probed.gpus] == [None, None]
    assert [gpu.name for gpu in probed.gpus] == [gpu.name for gpu in snapshot.gpus]


def _assert_one_error(result: subprocess.CompletedProcess[str]) -> tuple[str, str]:
    """Exit 3 with exactly one `error:` and one `hint:` line; returns both."""
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    hints = [line for line in lines if line.startswith("hint: ")]
    assert len(errors) == 1 and len(hints) == 1, result.stderr
    return errors[0], hints[0]


def _system_has_nvml() -> bool:
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    listing = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, check=False)
    return LIBRARY_NAME in listing.stdout


@pytest.fixture
def no_library_dir(tmp_path: Path) -> Path:
    """A LD_LIBRARY_PATH under which no usable libnvidia-ml.so.1 exists.

    Empty, unless the machine has a real driver: then a file that is not a library shadows it
    (LD_LIBRARY_PATH is searched before the loader cache), so the outcome is the same anywhere.
    """
    if _system_has_nvml():
        (tmp_path / LIBRARY_NAME).write_text("not a shared object\n")
    return tmp_path


def test_no_library_is_exit_3_with_a_hint(no_library_dir: Path) -> None:
    result = run_provision("probe", env={"LD_LIBRARY_PATH": str(no_library_dir)})
    error, hint = _assert_one_error(result)
    assert "libnvidia-ml.so.1 not found" in error
    assert "--rig FILE" in hint


def test_an_unloadable_library_is_reported_like_a_missing_one(tmp_path: Path) -> None:
    (tmp_path / LIBRARY_NAME).write_bytes(b"\x7fELF truncated")
    result = run_provision("probe", env={"LD_LIBRARY_PATH": str(tmp_path)})
    error, _ = _assert_one_error(result)
    assert "libnvidia-ml.so.1 not found" in error


@pytest.mark.parametrize(
    ("code", "in_error", "in_hint"),
    [
        (9, "driver not loaded", "lsmod | grep nvidia"),
        (18, "version mismatch", "reboot"),
        (4, "no permission", "/dev/nvidia*"),
        (999, "NVML failed to start: Unknown Error", "nvidia-smi"),
    ],
    ids=["driver-not-loaded", "version-mismatch", "no-permission", "other"],
)
def test_init_failures_are_exit_3_with_a_hint(
    code: int, in_error: str, in_hint: str, fake_nvml_dir: Path, tmp_path: Path
) -> None:
    rig_file = write_fake_rig(load_named_rig("synthetic-1x4090"), tmp_path / "fake-rig.txt")
    env = fake_env(fake_nvml_dir, rig_file, FAKE_NVML_INIT_ERROR=str(code))
    error, hint = _assert_one_error(run_provision("probe", env=env))
    assert in_error.lower() in error.lower()
    assert in_hint in hint


def test_nvml_is_shut_down_after_a_probe(fake_nvml_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    rig_file = write_fake_rig(load_named_rig("synthetic-1x4090"), tmp_path / "fake-rig.txt")
    _probe_in_process(fake_env(fake_nvml_dir, rig_file, FAKE_NVML_LOG=str(log)))
    assert log.read_text().splitlines() == ["init", "shutdown"]


def test_a_gpu_without_its_identity_fails_the_probe_and_shuts_nvml_down(
    fake_nvml_dir: Path, tmp_path: Path
) -> None:
    # NVML reports total and used memory in one call; without it there is no valid snapshot.
    text = fake_rig_text(load_named_rig("synthetic-2x3090-x16-x8"))
    lines = text.splitlines()
    second_memory = max(i for i, line in enumerate(lines) if line.startswith("memory "))
    rig_file = tmp_path / "fake-rig.txt"
    rig_file.write_text("\n".join(lines[:second_memory] + lines[second_memory + 1 :]) + "\n")
    log = tmp_path / "calls.log"
    env = fake_env(fake_nvml_dir, rig_file, FAKE_NVML_LOG=str(log))
    error, _ = _assert_one_error(run_provision("probe", env=env))
    assert "cannot read the memory of GPU 1 (00000000:05:00.0): Not Supported" in error
    assert log.read_text().splitlines() == ["init", "shutdown"]


def test_the_fake_refuses_a_line_it_does_not_understand(
    fake_nvml_dir: Path, tmp_path: Path
) -> None:
    # A typo in the fake's input must not silently become a "not supported" reading.
    rig_file = tmp_path / "fake-rig.txt"
    rig_file.write_text("gpu 0\nmemroy 1 0\n")
    result = run_provision("probe", env=fake_env(fake_nvml_dir, rig_file))
    _assert_one_error(result)
    assert "fake_nvml: " in result.stderr and "memroy" in result.stderr


def test_snapshots_nvml_cannot_produce_are_refused_by_the_converter() -> None:
    rig = load_named_rig("synthetic-2x3090-x16-x8")
    gpu: Gpu = dataclasses.replace(rig.gpus[0], memory_used_bytes=None)
    with pytest.raises(ValueError, match="reports total and used memory together"):
        fake_rig_text(dataclasses.replace(rig, gpus=(gpu,)))


@pytest.mark.parametrize(
    ("nvml", "text"), [(12040, "12.4"), (11080, "11.8"), (13000, "13.0"), (10010, "10.1")]
)
def test_cuda_driver_version_format(nvml: int, text: str) -> None:
    assert format_cuda_version(nvml) == text


def test_importing_the_probe_does_not_load_pynvml() -> None:
    check = (
        "import sys, provision.hardware.nvml, provision.cli.main\n"
        "assert 'pynvml' not in sys.modules, 'eager import'\n"
    )
    subprocess.run([sys.executable, "-c", check], cwd=REPO_ROOT, check=True, timeout=60)
