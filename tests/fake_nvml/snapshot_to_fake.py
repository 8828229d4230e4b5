"""Turn a Rig snapshot into the fake NVML's input file, and build the fake library.

The format is described at the top of fake_nvml.c. A `null` reading is written as no line at all,
which makes the fake answer NVML_ERROR_NOT_SUPPORTED, as real NVML does. Snapshots NVML itself
could never produce (memory used unknown while the total is known: one call returns both) are
refused with ValueError rather than approximated.

    python -m tests.fake_nvml.snapshot_to_fake tests/rigs/RIG.yaml > rig.txt
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from provision.hardware.nvml import ARCHITECTURES
from provision.hardware.rig import Gpu, Host, Rig, load_rig

SOURCE = Path(__file__).with_name("fake_nvml.c")
LIBRARY_NAME = "libnvidia-ml.so.1"
_ARCHITECTURE_NUMBERS = {name: number for number, name in ARCHITECTURES.items()}


def compile_fake_nvml(out_dir: Path) -> Path:
    """Build the fake into out_dir/libnvidia-ml.so.1; returns out_dir (for LD_LIBRARY_PATH)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError(
            "gcc is needed to build the fake libnvidia-ml.so.1 (apt-get install gcc)"
        )
    command = [gcc, "-shared", "-fPIC", "-O1", "-Wall", "-Wextra"]
    command += ["-o", str(out_dir / LIBRARY_NAME), str(SOURCE)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"building the fake NVML failed:\n{result.stderr}")
    return out_dir


def fake_env(library_dir: Path, rig_file: Path, **extra: str) -> dict[str, str]:
    """The environment that makes pynvml load the fake and the fake read rig_file."""
    return {
        **os.environ,
        "LD_LIBRARY_PATH": str(library_dir),
        "FAKE_NVML_RIG": str(rig_file),
        **extra,
    }


def write_fake_rig(rig: Rig, path: Path) -> Path:
    path.write_text(fake_rig_text(rig), encoding="utf-8")
    return path


def fake_rig_text(rig: Rig) -> str:
    lines = [
        "# fake_nvml input written by tests/fake_nvml/snapshot_to_fake.py",
        *_host_lines(rig.host),
    ]
    for position, gpu in enumerate(sorted(rig.gpus, key=lambda g: g.index)):
        if gpu.index != position:
            raise ValueError(f"NVML numbers GPUs 0..n-1; this snapshot has index {gpu.index}")
        lines += _gpu_lines(gpu)
    return "\n".join(lines) + "\n"


def _host_lines(host: Host) -> list[str]:
    lines = []
    if host.driver_version is not None:
        lines.append(f"driver_version {host.driver_version}")
    if host.nvml_version is not None:
        lines.append(f"nvml_version {host.nvml_version}")
    if host.cuda_driver_version is not None:
        major, minor = host.cuda_driver_version.split(".")
        lines.append(f"cuda_driver_version {int(major) * 1000 + int(minor) * 10}")
    return lines


def _gpu_lines(gpu: Gpu) -> list[str]:
    if gpu.memory_used_bytes is None:
        raise ValueError(
            f"GPU {gpu.index}: memory_used_bytes is null but memory_total_bytes is known; NVML "
            "cannot produce that (nvmlDeviceGetMemoryInfo reports total and used memory together)"
        )
    lines = [
        f"gpu {gpu.index}",
        f"uuid {gpu.uuid}",
        f"name {gpu.name}",
        f"pci_bus_id {gpu.pci_bus_id}",
        f"memory {gpu.memory_total_bytes} {gpu.memory_used_bytes}",
    ]
    if gpu.compute_capability is not None:
        lines.append("compute_capability " + gpu.compute_capability.replace(".", " "))
    if gpu.architecture is not None:
        if gpu.architecture not in _ARCHITECTURE_NUMBERS:
            raise ValueError(f"GPU {gpu.index}: architecture {gpu.architecture!r} has no number")
        lines.append(f"architecture {_ARCHITECTURE_NUMBERS[gpu.architecture]}")
    pcie = gpu.pcie
    readings = {
        "pcie_gen_max": pcie.gen_max,
        "pcie_width_max": pcie.width_max,
        "pcie_gen_current": pcie.gen_current,
        "pcie_width_current": pcie.width_current,
        "power_limit_mw": _milliwatts(gpu.power.limit_w),
        "power_default_mw": _milliwatts(gpu.power.default_w),
        "display_active": _state(gpu.display_active),
        "persistence_mode": _state(gpu.persistence_mode),
        "mig_mode": _state(gpu.mig_enabled),
    }
    lines += [f"{key} {value}" for key, value in readings.items() if value is not None]
    lines += _power_constraint_lines(gpu)
    lines += [f"nvlink {link.link} {link.peer_pci_bus_id}" for link in gpu.nvlink]
    return lines


def _power_constraint_lines(gpu: Gpu) -> list[str]:
    low, high = _milliwatts(gpu.power.min_w), _milliwatts(gpu.power.max_w)
    if low is None and high is None:
        return []
    if low is None or high is None:
        raise ValueError(f"GPU {gpu.index}: NVML reports min and max power limits together")
    return [f"power_constraints_mw {low} {high}"]


def _milliwatts(watts: float | None) -> int | None:
    return None if watts is None else round(watts * 1000)


def _state(flag: bool | None) -> int | None:
    return None if flag is None else int(flag)


if __name__ == "__main__":
    sys.stdout.write(fake_rig_text(load_rig(Path(sys.argv[1]))))
