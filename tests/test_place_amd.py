"""Placement and rendering on AMD rigs: who sees which card, by what name, and the seed case.

The rigs are the fakesysfs-* snapshots (probed from tests/fakesysfs.py trees). Expected names
follow ROCm's and llama.cpp's rules, cited in provision/placement/visibility.py: cards are named
`GPU-<unique_id>` in ROCR_VISIBLE_DEVICES, llama.cpp calls them ROCm<HIP ordinal>, and HIP also
reads CUDA_VISIBLE_DEVICES, so no AMD card may ever appear there.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from provision.hardware.rig import Rig, Vendor
from provision.models import catalog
from provision.placement.fit import Verdict
from provision.placement.place import place
from provision.placement.profile import load_profile
from provision.placement.visibility import device_names, visibility_env
from tests.golden_cases import CASES, rendered
from tests.helpers import load_named_rig

GB = 10**9
AMD_CASES = [c for c in CASES if c.rig_file.stem.startswith("fakesysfs-")]


@pytest.mark.parametrize("case", AMD_CASES, ids=lambda c: c.id)
def test_no_amd_card_is_ever_named_in_cuda_visible_devices(case: object) -> None:
    result = rendered(case)  # type: ignore[arg-type]
    if result.desired is None:
        return  # the case is refused with an InputError: nothing is rendered
    rig = load_named_rig(case.rig_file.stem)  # type: ignore[attr-defined]
    amd = {g.uuid for g in rig.gpus if g.vendor == Vendor.AMD}
    for file in result.desired.files:
        for line in file.content.splitlines():
            match = re.search(r"CUDA_VISIBLE_DEVICES=\"?([^\"\s]*)", line)
            if match:
                assert not amd & set(match.group(1).split(",")), f"{file.path}: {line}"


def _env(gpus_at: list[int], rig: Rig, version: str | None = None, ollama: bool = True) -> dict:
    return dict(visibility_env([rig.gpu(i) for i in gpus_at], rig, version, ollama))


def test_amd_only_unit_uses_rocr_by_uuid_in_kfd_order() -> None:
    rig = load_named_rig("fakesysfs-2x7900xtx")
    env = _env([1, 0], rig)
    assert env == {"ROCR_VISIBLE_DEVICES": "GPU-9f781dc6258d77a7,GPU-4a2b1c3d5e6f7081"}
    # -ts follows --device, which lists the cards in split order by their HIP ordinal.
    assert device_names([rig.gpu(1), rig.gpu(0)]) == ["ROCm1", "ROCm0"]


def test_mixed_box_keeps_each_vendor_to_its_own_variable() -> None:
    rig = load_named_rig("fakesysfs-3090-7900xtx")
    nvidia_only = _env([0], rig)
    assert nvidia_only["ROCR_VISIBLE_DEVICES"] == "-1"
    amd_ollama = _env([1], rig)
    assert amd_ollama["ROCR_VISIBLE_DEVICES"] == "GPU-4a2b1c3d5e6f7081"
    assert amd_ollama["HIP_VISIBLE_DEVICES"] == "0"  # read by HIP before CUDA_VISIBLE_DEVICES
    assert amd_ollama["CUDA_VISIBLE_DEVICES"] == "-1"  # Ollama's CUDA backend: not the 3090
    amd_llama_server = _env([1], rig, ollama=False)
    assert "CUDA_VISIBLE_DEVICES" not in amd_llama_server  # --device picks the card


def test_override_is_global_for_one_target_and_per_node_when_cards_differ() -> None:
    single = load_named_rig("fakesysfs-6700xt")
    assert _env([0], single)["HSA_OVERRIDE_GFX_VERSION"] == "10.3.0"
    mixed = load_named_rig("fakesysfs-6900xt-7900xtx")
    # Make the 6900 XT a 6700 XT (gfx1031): one card needs the override, the other does not.
    amd = replace(mixed.gpu(0).amd, gfx_target="gfx1031")  # type: ignore[type-var]
    rig = replace(mixed, gpus=(replace(mixed.gpu(0), amd=amd), mixed.gpu(1)))
    env = _env([0, 1], rig)
    assert "HSA_OVERRIDE_GFX_VERSION" not in env  # global would break the gfx1100 card
    assert env["HSA_OVERRIDE_GFX_VERSION_1"] == "10.3.0"  # KFD node 1 (the CPU is node 0)


def test_card_without_unique_id_is_named_by_ordinal() -> None:
    rig = load_named_rig("fakesysfs-old-kernel")
    assert _env([0], rig)["ROCR_VISIBLE_DEVICES"] == "0"


def test_igpu_is_left_out_and_vulkan_off() -> None:
    rig = load_named_rig("fakesysfs-apu-7900xtx")
    placement = place(rig, load_profile("ollama-auto"), _catalog_specs("ollama-auto"))
    (instance,) = placement.instances
    env = dict(instance.env)
    assert env["ROCR_VISIBLE_DEVICES"] == "GPU-9f781dc6258d77a7"
    assert env["OLLAMA_VULKAN"] == "0"
    assert all(1 not in m.gpu_indices for m in placement.models)


def _catalog_specs(profile_name: str) -> dict:
    profile = load_profile(profile_name)
    return {m.ref: catalog.lookup(m.ref) for m in profile.models}


def test_seed_case_qwen72b_iq3_xxs_at_32k_splits_over_two_radeons(tmp_path: Path) -> None:
    """Issue 12's seed: 2x 24 GB Radeon, Qwen2.5-72B IQ3_XXS (~30 GB file) at 32K with
    llama-server: a split over both, -ts in proportion to usable VRAM, about 10 GB of KV."""
    entry = catalog._catalog()["qwen2.5:72b"]
    quants = {**entry["quants"], "IQ3_XXS": {"tag": "iq3_xxs", "file_bytes": 30 * GB}}
    spec = catalog.spec_from_entry("qwen2.5:72b", {**entry, "quants": quants}, "IQ3_XXS")
    profile_file = tmp_path / "seed.yaml"
    profile_file.write_text(
        "runtime: llama-server\n"
        "models:\n"
        "  - ref: qwen2.5:72b\n"
        "    ctx: 32768\n"
        "    path: /srv/models/Qwen2.5-72B-Instruct-IQ3_XXS.gguf\n"
    )
    profile = load_profile(str(profile_file))
    rig = load_named_rig("fakesysfs-2x7900xtx")
    placement = place(rig, profile, {"qwen2.5:72b": spec})
    (model,) = placement.models
    assert model.fit.verdict == Verdict.SPLIT and sorted(model.gpu_indices) == [0, 1]
    kv = sum(s.footprint.kv_bytes for s in model.fit.shares)
    assert 10 * GB <= kv <= 11 * GB  # 80 layers x 8 KV heads x 128 x 2 x f16 x 32768 = 10.7 GB
    (instance,) = placement.instances
    args = list(instance.args)
    devices = args[args.index("--device") + 1].split(",")
    split = [int(n) for n in args[args.index("-ts") + 1].split(",")]
    assert sorted(devices) == ["ROCm0", "ROCm1"]
    # The headless card has ~0.55 GB more free (the desktop holds the other): it gets as many
    # layers or more, and the split stays within a few layers of even.
    headless = split[devices.index("ROCm1")]
    display = split[devices.index("ROCm0")]
    assert headless >= display and abs(headless - display) <= 6
    env = dict(instance.env)
    assert set(env["ROCR_VISIBLE_DEVICES"].split(",")) == {g.uuid for g in rig.gpus}
    assert "CUDA_VISIBLE_DEVICES" not in env


def test_override_is_global_when_the_other_card_natively_is_that_target() -> None:
    mixed = load_named_rig("fakesysfs-6900xt-7900xtx")
    # A 6900 XT (gfx1030 = 10.3.0) beside a 6700 XT (gfx1031, needs 10.3.0): Ollama reads only
    # the global variable, and 10.3.0 is right for both.
    amd = replace(mixed.gpu(1).amd, gfx_target="gfx1031")  # type: ignore[type-var]
    rig = replace(mixed, gpus=(mixed.gpu(0), replace(mixed.gpu(1), amd=amd)))
    env = _env([0, 1], rig)
    assert env["HSA_OVERRIDE_GFX_VERSION"] == "10.3.0"
    assert not [k for k in env if k.startswith("HSA_OVERRIDE_GFX_VERSION_")]


def test_dropping_amd_caps_leaves_the_restore_to_the_power_unit() -> None:
    """The cap script leaves with the last AMD cap; apply must not run it afterwards."""
    from provision.change.actions import ActionKind, Observed
    from provision.change.plan_power import plan_power
    from provision.desired import DesiredState

    device = "/sys/bus/pci/devices/0000:03:00.0"
    recorded = {"power": [{"uuid": "GPU-9f781dc6258d77a7", "target_w": 300.0,
                           "default_w": 327.0, "device": device}]}  # fmt: skip
    observed = Observed(
        live=True,
        files={},
        units={},
        power_w={"GPU-9f781dc6258d77a7": 300.0},
        manifest=recorded,
    )
    section = plan_power(DesiredState(), observed)
    assert not [a for a in section.actions if a.kind == ActionKind.SET_POWER]


def test_override_value_and_target_are_inverse() -> None:
    from provision import rocm

    for gfx in ("gfx1030", "gfx1100", "gfx90a", "gfx942"):
        assert rocm.override_target(rocm.override_value(gfx)) == gfx
    assert rocm.override_value("gfx90a") == "9.0.10"
