"""The AMD power-cap script, run by the real /bin/sh on fake sysfs trees (tests/fakesysfs.py).

The same rendered file the power unit and `apply` run: it must find the hwmon by PCI address,
write microwatts, clamp to power1_cap_min..max (amdgpu refuses a value outside with EINVAL),
write power1_cap_default back for "default", and fail when there is no power1_cap at all.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from provision.paths import AMDGPU_POWER_SCRIPT
from tests.fakesysfs import RIGS, build
from tests.golden_cases import GOLDEN_DIR

SCRIPT = GOLDEN_DIR / "fakesysfs-2x7900xtx__power-capped" / AMDGPU_POWER_SCRIPT.lstrip("/")


def _run(device: Path, watts: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", str(SCRIPT), str(device), watts],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "PROVISION_HWMON_WAIT_S": "1"},
    )


def _card(tmp_path: Path, rig: str, bdf: str = "0000:03:00.0") -> Path:
    return build(tmp_path / "sys", RIGS[rig]) / "bus" / "pci" / "devices" / bdf


def _cap(device: Path) -> str:
    (cap,) = device.glob("hwmon/hwmon*/power1_cap")
    return cap.read_text().strip()


def test_sets_microwatts_and_restores_the_default(tmp_path: Path) -> None:
    device = _card(tmp_path, "2x7900xtx")
    result = _run(device, "300")
    assert result.returncode == 0, result.stderr
    assert _cap(device) == "300000000" and "power cap 300 W" in result.stdout
    assert _run(device, "default").returncode == 0
    assert _cap(device) == "327000000"


def test_clamps_to_the_driver_range(tmp_path: Path) -> None:
    device = _card(tmp_path, "2x7900xtx")
    assert _run(device, "150").returncode == 0
    assert _cap(device) == "294000000"  # a 7900 XTX cannot go below 294 W
    assert _run(device, "400").returncode == 0
    assert _cap(device) == "327000000"


def test_an_empty_bound_does_not_block_the_write(tmp_path: Path) -> None:
    device = _card(tmp_path, "2x7900xtx")
    (low,) = device.glob("hwmon/hwmon*/power1_cap_min")
    low.write_text("\n")  # the SMU query failed
    assert _run(device, "250").returncode == 0
    assert _cap(device) == "250000000"


def test_a_card_without_power_files_fails_loudly(tmp_path: Path) -> None:
    igpu = _card(tmp_path, "apu-7900xtx", "0000:c6:00.0")
    result = _run(igpu, "50")
    assert result.returncode == 1 and "no hwmon power1_cap" in result.stderr


def test_an_unreadable_default_fails_clearly_and_missing_bounds_do_not(tmp_path: Path) -> None:
    device = _card(tmp_path, "2x7900xtx")
    (default,) = device.glob("hwmon/hwmon*/power1_cap_default")
    default.write_text("\n")
    result = _run(device, "default")
    assert result.returncode == 1 and "power1_cap_default cannot be read" in result.stderr
    assert _cap(device) == "327000000"  # left as it was
    for bound in device.glob("hwmon/hwmon*/power1_cap_m*"):
        bound.unlink()
    assert _run(device, "280").returncode == 0
    assert _cap(device) == "280000000"
