"""The AMD probe, run on fake sysfs trees that tests/fakesysfs.py lays out as the kernel does.

Each tree is probed through the live code path (Sysfs -> probe_amd -> the same assembly the
CLI uses) and must equal its recorded snapshot `tests/rigs/fakesysfs-<rig>.yaml`. Those files
are goldens of the probe and, being in tests/rigs, inputs of the rendering goldens too:
`UPDATE_GOLDEN=1 pytest tests/test_probe_amd.py` rewrites them; review the diff like code. The
facts each fixture must yield (the slot link, not the card's internal x16; whole watts; the
KFD node; null for a read error) are asserted one by one below, from the fixture's own
description, so a golden regenerated from a wrong probe still fails here.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from provision.errors import InputError
from provision.hardware.amdgpu import pci_device_dir, probe_amd
from provision.hardware.classify import TraitKind, classify
from provision.hardware.probe import combine
from provision.hardware.rig import Gpu, Host, Rig, dump_rig, load_rig, parse_rig
from provision.hardware.sysfs import Sysfs
from tests.fake_nvml.snapshot_to_fake import compile_fake_nvml, fake_env, write_fake_rig
from tests.fakesysfs import RIGS, build
from tests.helpers import RIGS_DIR, load_named_rig, run_provision

UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
# Rigs whose snapshot needs more than sysfs (the NVIDIA card comes from NVML) or has no GPU.
SYSFS_ONLY = sorted(set(RIGS) - {"3090-7900xtx", "amdgpu-absent"})
GIB = 1 << 30


def _host(name: str, amdgpu_version: str | None) -> Host:
    """Host facts are this machine's in a live probe: fixed ones keep the goldens stable."""
    return Host(
        hostname=f"fake-{name}",
        kernel="6.8.0-fake",
        cpu_count=16,
        ram_bytes=64 * GIB,
        driver_version=None,
        cuda_driver_version=None,
        nvml_version=None,
        amdgpu_version=amdgpu_version,
        runtimes={},
    )


def _tree(tmp_path: Path, name: str) -> Path:
    return build(tmp_path / "sys", RIGS[name])


def _probe(tmp_path: Path, name: str) -> Rig:
    amd = probe_amd(Sysfs(_tree(tmp_path, name)))
    return combine(_host(name, amd.driver_version), (), amd)


def _snapshot_file(name: str) -> Path:
    return RIGS_DIR / f"fakesysfs-{name}.yaml"


def _write_snapshot(name: str, rig: Rig) -> None:
    header = f"# Probed from tests/fakesysfs.py RIGS[{name!r}]: {RIGS[name].description}\n"
    _snapshot_file(name).write_text(header + dump_rig(rig), encoding="utf-8")


@pytest.mark.parametrize("name", SYSFS_ONLY)
def test_probe_matches_recorded_snapshot(tmp_path: Path, name: str) -> None:
    rig = _probe(tmp_path, name)
    if UPDATE:
        _write_snapshot(name, rig)
    assert load_rig(_snapshot_file(name)) == rig


def _gpu(rig: Rig, bdf: str) -> Gpu:
    return next(g for g in rig.gpus if g.pci_bus_id == bdf)


def test_two_7900xtx_slot_link_display_and_power(tmp_path: Path) -> None:
    rig = _probe(tmp_path, "2x7900xtx")
    first, second = _gpu(rig, "0000:03:00.0"), _gpu(rig, "0000:0c:00.0")
    assert (first.uuid, second.uuid) == ("GPU-9f781dc6258d77a7", "GPU-4a2b1c3d5e6f7081")
    assert [g.amd.kfd_node for g in rig.gpus if g.amd] == [1, 2]
    # The chipset slot: x4 read on the card's upstream port (its GPU function says x16).
    assert (second.pcie.width_current, second.pcie.width_max) == (4, 4)
    assert (first.pcie.width_current, first.pcie.width_max) == (16, 16)
    assert (first.display_active, second.display_active) == (True, False)
    assert first.memory_used_bytes == 612368384 and second.memory_used_bytes == 37748736
    assert (first.power.limit_w, first.power.min_w, first.power.max_w) == (327, 294, 327)
    assert first.amd and first.amd.gfx_target == "gfx1100" and first.architecture == "rdna3"
    kinds = classify(rig).kinds
    assert {TraitKind.NARROW_PCIE, TraitKind.DISPLAY_GPU, TraitKind.SYMMETRIC} <= kinds
    assert TraitKind.DOWNTRAINED_LINK not in kinds  # a plain x4 slot is narrow, not a fault


def test_mi100_hive(tmp_path: Path) -> None:
    rig = _probe(tmp_path, "4xmi100-xgmi")
    assert len(rig.gpus) == 4
    hives = {g.amd.xgmi_hive_id for g in rig.gpus if g.amd}
    assert hives == {0x5A1B2C3D4E5F6071}
    assert all(g.amd and len(g.amd.xgmi_peers) == 3 for g in rig.gpus)
    assert rig.host.amdgpu_version == "6.8.5"
    assert TraitKind.XGMI_HIVE in classify(rig).kinds


def test_mixed_architectures(tmp_path: Path) -> None:
    rig = _probe(tmp_path, "6900xt-7900xtx")
    assert [g.amd.gfx_target for g in rig.gpus if g.amd] == ["gfx1030", "gfx1100"]
    kinds = classify(rig).kinds
    assert TraitKind.MIXED_AMD_ARCH in kinds and TraitKind.MIXED_COMPUTE not in kinds


def test_igpu_is_integrated_and_left_to_the_traits(tmp_path: Path) -> None:
    rig = _probe(tmp_path, "apu-7900xtx")
    igpu = _gpu(rig, "0000:c6:00.0")
    assert igpu.amd and igpu.amd.integrated and igpu.amd.kfd_node == 2
    assert not _gpu(rig, "0000:03:00.0").amd.integrated  # type: ignore[union-attr]
    assert igpu.power.max_w is None  # hwmon hides the caps on APUs
    assert classify(rig).get(TraitKind.AMD_IGPU).gpus == (igpu.index,)  # type: ignore[union-attr]


def test_card_kfd_skipped_is_present_not_usable(tmp_path: Path) -> None:
    rig = _probe(tmp_path, "kfd-skipped")
    skipped = _gpu(rig, "0000:0c:00.0")
    assert skipped.amd and skipped.amd.kfd_node is None and not skipped.amd.rocm_usable
    assert "KFD" in (skipped.amd.rocm_reason or "")
    assert skipped.index == 1  # after the KFD cards
    assert classify(rig).get(TraitKind.AMD_NOT_IN_KFD).gpus == (1,)  # type: ignore[union-attr]


def test_old_kernel_strings_and_no_unique_id(tmp_path: Path) -> None:
    rig = _probe(tmp_path, "old-kernel")
    (gpu,) = rig.gpus
    assert gpu.uuid == "PCI-0000:01:00.0" and gpu.amd and gpu.amd.unique_id is None
    # No gfx_target_version key on that kernel: the target comes from the device id (Polaris).
    assert gpu.amd.gfx_target == "gfx803" and not gpu.amd.rocm_usable
    floor = classify(rig).get(TraitKind.BELOW_RUNTIME_FLOOR)
    assert floor is not None and "older than GFX9" in floor.reason
    assert gpu.pcie.gen_max == 3  # "8 GT/s"
    assert gpu.power.min_w == 0


def test_read_errors_become_null(tmp_path: Path) -> None:
    (gpu,) = _probe(tmp_path, "read-errors").gpus
    assert gpu.power.limit_w is None and gpu.power.default_w == 327
    assert gpu.memory_used_bytes is None
    assert gpu.pcie.width_current is None and gpu.pcie.width_max == 16


def test_gfx_override_and_floor(tmp_path: Path) -> None:
    traits = classify(_probe(tmp_path, "6700xt"))
    assert "10.3.0" in traits.get(TraitKind.AMD_NEEDS_GFX_OVERRIDE).reason  # type: ignore[union-attr]
    mi50 = _probe(tmp_path / "mi50", "mi50")
    assert "gfx906" in classify(mi50).get(TraitKind.BELOW_RUNTIME_FLOOR).reason  # type: ignore[union-attr]


def test_power_ranges(tmp_path: Path) -> None:
    (od,) = _probe(tmp_path, "7900xtx-od").gpus
    assert (od.power.default_w, od.power.max_w) == (327, 376)
    (fixed,) = _probe(tmp_path / "b", "7700s-fixed").gpus
    assert fixed.power.min_w == fixed.power.max_w == 100


def test_schema_1_snapshot_still_reads() -> None:
    rig = load_named_rig("synthetic-2x3090-x16-x8")
    assert rig.host.amdgpu_version is None and all(g.amd is None for g in rig.gpus)


def test_cli_probe_sysfs_reads_an_amd_only_box(tmp_path: Path) -> None:
    result = run_provision("probe", "--sysfs", str(_tree(tmp_path, "2x7900xtx")), "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert [g["uuid"] for g in document["gpus"]] == ["GPU-9f781dc6258d77a7", "GPU-4a2b1c3d5e6f7081"]
    assert "narrow_pcie" in {t["kind"] for t in document["traits"]}


def test_cli_capture_replays_to_the_same_snapshot(tmp_path: Path) -> None:
    tree = _tree(tmp_path, "apu-7900xtx")
    out = tmp_path / "captured"
    result = run_provision("probe", "--sysfs", str(tree), "--capture-sysfs", str(out), "--json")
    assert result.returncode == 0, result.stderr
    replay = run_provision("probe", "--sysfs", str(out), "--json")
    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout)["gpus"] == json.loads(result.stdout)["gpus"]
    assert not list(out.rglob("serial_number"))
    assert all(not os.path.isabs(os.readlink(p)) for p in out.rglob("*") if p.is_symlink())


def test_cli_amdgpu_not_loaded_says_so(tmp_path: Path) -> None:
    result = run_provision("probe", "--sysfs", str(_tree(tmp_path, "amdgpu-absent")))
    assert result.returncode == 3
    assert "amdgpu driver does not own" in result.stderr and "modprobe amdgpu" in result.stderr


def test_cli_nvidia_card_without_nvml_is_an_error(tmp_path: Path) -> None:
    result = run_provision("probe", "--sysfs", str(_tree(tmp_path, "3090-7900xtx")))
    assert result.returncode == 3
    assert "0000:01:00.0" in result.stderr


@pytest.fixture(scope="module")
def fake_nvml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_fake_nvml(tmp_path_factory.mktemp("fake-nvml"))


def test_mixed_box_gets_both_vendors_in_one_snapshot(tmp_path: Path, fake_nvml: Path) -> None:
    """The 3090 through the fake NVML (the live NVML path), the 7900 XTX from sysfs."""
    recorded = load_named_rig("synthetic-4090-3090")
    nvidia = Rig(recorded.host, (_as_first(recorded.gpus[1], "00000000:01:00.0"),))
    nvml_input = write_fake_rig(nvidia, tmp_path / "nvml.txt")
    tree = _tree(tmp_path, "3090-7900xtx")
    saved = tmp_path / "mixed.yaml"
    env = fake_env(fake_nvml, nvml_input)
    result = run_provision("probe", "--sysfs", str(tree), "--save", str(saved), env=env)
    assert result.returncode == 0, result.stderr
    rig = parse_rig(saved.read_text(), str(saved))
    assert [(g.index, g.vendor, g.pci_bus_id) for g in rig.gpus] == [
        (0, "nvidia", "00000000:01:00.0"),
        (1, "amd", "0000:0c:00.0"),
    ]
    assert TraitKind.MIXED_VENDOR in classify(rig).kinds
    snapshot = _snapshot_file("3090-7900xtx")
    nvml_facts = {
        "driver_version": rig.host.driver_version,
        "cuda_driver_version": rig.host.cuda_driver_version,
        "nvml_version": rig.host.nvml_version,
    }
    fixed = Rig(replace(_host("3090-7900xtx", rig.host.amdgpu_version), **nvml_facts), rig.gpus)
    if UPDATE:
        _write_snapshot("3090-7900xtx", fixed)
    assert load_rig(snapshot) == fixed


def _as_first(gpu: Gpu, bus_id: str) -> Gpu:
    return replace(gpu, index=0, pci_bus_id=bus_id, nvlink=())


def test_every_fakesysfs_snapshot_has_its_fixture() -> None:
    """A renamed fixture must not leave a stale snapshot rendering goldens of its own."""
    recorded = {p.stem.removeprefix("fakesysfs-") for p in RIGS_DIR.glob("fakesysfs-*.yaml")}
    assert recorded <= set(RIGS)


def test_nvidia_box_with_an_amd_card_the_driver_does_not_own_still_probes(
    tmp_path: Path, fake_nvml: Path
) -> None:
    """An AMD card without amdgpu (an iGPU whose firmware is missing, a card passed to a VM)
    must not stop the NVIDIA cards from being read."""
    recorded = load_named_rig("synthetic-4090-3090")
    nvidia = Rig(recorded.host, (_as_first(recorded.gpus[1], "00000000:01:00.0"),))
    env = fake_env(fake_nvml, write_fake_rig(nvidia, tmp_path / "nvml.txt"))
    tree = _tree(tmp_path, "amdgpu-absent")
    result = run_provision("probe", "--sysfs", str(tree), "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert [g["vendor"] for g in json.loads(result.stdout)["gpus"]] == ["nvidia"]


def test_an_amd_gpu_without_its_amd_facts_is_refused(tmp_path: Path) -> None:
    data = yaml.safe_load(_snapshot_file("6700xt").read_text())
    data["gpus"][0]["amd"] = None
    with pytest.raises(InputError) as info:
        parse_rig(yaml.safe_dump(data), "old.yaml")
    assert "'gpus[0].amd'" in info.value.message and "schema 2" in info.value.message


def test_sysfs_device_dir_uses_the_16_bit_domain() -> None:
    assert pci_device_dir("/sys", "00000000:0C:00.0") == "/sys/bus/pci/devices/0000:0c:00.0"


def test_cli_capture_refuses_a_non_empty_directory_and_a_recorded_rig(tmp_path: Path) -> None:
    tree = _tree(tmp_path, "6700xt")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep").write_text("mine\n")
    result = run_provision("probe", "--sysfs", str(tree), "--capture-sysfs", str(busy))
    assert result.returncode == 2 and "not empty" in result.stderr
    assert (busy / "keep").read_text() == "mine\n"
    rig = str(_snapshot_file("6700xt"))
    result = run_provision("probe", "--rig", rig, "--capture-sysfs", str(tmp_path / "new"))
    assert result.returncode == 2 and "--rig" in result.stderr
