"""Classification on every recorded rig: each trait that must fire, on which GPUs, and no other."""

from __future__ import annotations

from dataclasses import replace

import pytest

from provision.hardware.classify import TraitKind as K
from provision.hardware.classify import classify, nvlink_pairs
from tests.helpers import ALL_RIG_FILES, load_named_rig

# Expected traits per rig (besides gpu_count, which always fires), with the GPUs each names.
# Written from the rig descriptions in tests/rigs/README.md, not from the classifier's output.
EXPECTED: dict[str, dict[K, tuple[int, ...]]] = {
    "synthetic-1x4090": {},
    "synthetic-1xh100": {},
    "synthetic-1xa100-mig": {K.MIG_ENABLED: (0,)},
    "synthetic-2x3090-x16-x8": {K.SYMMETRIC: (0, 1)},
    "synthetic-2x3090-nvlink": {K.SYMMETRIC: (0, 1), K.NVLINK: (0, 1)},
    "synthetic-2x3090-downtrained": {K.SYMMETRIC: (0, 1), K.DOWNTRAINED_LINK: (1,)},
    "synthetic-2x3090-driver535": {K.SYMMETRIC: (0, 1), K.BELOW_RUNTIME_FLOOR: (0, 1)},
    "synthetic-2x4090": {K.SYMMETRIC: (0, 1)},
    "synthetic-2xa6000": {K.SYMMETRIC: (0, 1)},
    "synthetic-4090-3090": {K.MIXED_COMPUTE: (0, 1)},
    "synthetic-4090-4060ti16": {K.ASYMMETRIC_VRAM: (0, 1)},
    "synthetic-2060-3090": {
        K.ASYMMETRIC_VRAM: (0, 1),
        K.MIXED_COMPUTE: (0, 1),
        K.NARROW_PCIE: (0,),
    },
    "synthetic-3090-1080ti-driver560": {
        K.ASYMMETRIC_VRAM: (0, 1),
        K.MIXED_COMPUTE: (0, 1),
        K.BELOW_RUNTIME_FLOOR: (1,),
    },
    "synthetic-4x3090-x4-riser": {K.SYMMETRIC: (0, 1, 2, 3), K.NARROW_PCIE: (3,)},
    "synthetic-2xk80": {
        K.SYMMETRIC: (0, 1, 2, 3),
        K.LEGACY_GPU: (0, 1, 2, 3),
        K.BELOW_RUNTIME_FLOOR: (0, 1, 2, 3),
    },
    "synthetic-8xa100-nvlink": {K.SYMMETRIC: tuple(range(8)), K.NVLINK: tuple(range(8))},
    "synthetic-3090-display-3090": {K.SYMMETRIC: (0, 1), K.DISPLAY_GPU: (0,)},
    "synthetic-nulls": {},
    # AMD rigs probed from tests/fakesysfs.py trees (each fixture's description says why).
    "fakesysfs-2x7900xtx": {K.SYMMETRIC: (0, 1), K.NARROW_PCIE: (1,), K.DISPLAY_GPU: (0,)},
    "fakesysfs-3090-7900xtx": {K.NARROW_PCIE: (1,), K.MIXED_VENDOR: (0, 1)},
    "fakesysfs-4xmi100-xgmi": {K.SYMMETRIC: (0, 1, 2, 3), K.XGMI_HIVE: (0, 1, 2, 3)},
    "fakesysfs-6700xt": {K.DISPLAY_GPU: (0,), K.AMD_NEEDS_GFX_OVERRIDE: (0,)},
    "fakesysfs-6900xt-7900xtx": {
        K.ASYMMETRIC_VRAM: (0, 1),
        K.DISPLAY_GPU: (0,),
        K.MIXED_AMD_ARCH: (0, 1),
    },
    "fakesysfs-7700s-fixed": {},
    "fakesysfs-7900xtx-od": {K.DISPLAY_GPU: (0,)},
    "fakesysfs-apu-7900xtx": {K.DISPLAY_GPU: (0,), K.AMD_IGPU: (1,)},
    "fakesysfs-kfd-skipped": {
        K.SYMMETRIC: (0, 1),
        K.NARROW_PCIE: (1,),
        K.DISPLAY_GPU: (0,),
        K.AMD_NOT_IN_KFD: (1,),
    },
    "fakesysfs-mi50": {K.BELOW_RUNTIME_FLOOR: (0,)},
    "fakesysfs-old-kernel": {K.DISPLAY_GPU: (0,), K.BELOW_RUNTIME_FLOOR: (0,)},
    "fakesysfs-read-errors": {K.DISPLAY_GPU: (0,)},
}
WARNINGS = {
    K.NARROW_PCIE,
    K.DOWNTRAINED_LINK,
    K.DISPLAY_GPU,
    K.LEGACY_GPU,
    K.BELOW_RUNTIME_FLOOR,
    K.MIG_ENABLED,
    K.MIXED_VENDOR,
    K.MIXED_AMD_ARCH,
    K.AMD_NOT_IN_KFD,
}


def test_every_recorded_rig_has_expectations() -> None:
    assert sorted(p.stem for p in ALL_RIG_FILES) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_traits_fire_exactly_as_expected(name: str) -> None:
    rig = load_named_rig(name)
    traits = classify(rig)
    fired = {t.kind: t.gpus for t in traits.traits if t.kind != K.GPU_COUNT}
    assert fired == EXPECTED[name]
    count = traits.get(K.GPU_COUNT)
    assert count is not None and count.gpus == tuple(g.index for g in rig.gpus)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_trait_names_its_gpus_and_says_why(name: str) -> None:
    rig = load_named_rig(name)
    for trait in classify(rig).traits:
        assert len(trait.reason) > 20
        if trait.kind in WARNINGS:
            assert trait.severity == "warning", trait
        if trait.kind not in (K.GPU_COUNT, K.SYMMETRIC):
            for index in trait.gpus:
                named = (f"GPU {index}", f"{index}-", f"-{index}")  # nvlink lists pairs as 0-1
                assert any(n in trait.reason for n in named), trait


def test_mixed_compute_is_a_warning_only_below_cc_8() -> None:
    assert classify(load_named_rig("synthetic-4090-3090")).get(K.MIXED_COMPUTE).severity == "info"
    slow = classify(load_named_rig("synthetic-2060-3090")).get(K.MIXED_COMPUTE)
    assert slow.severity == "warning" and "GPU 0 (RTX 2060) is below compute capability 8.0" in (
        slow.reason
    )


def test_nvlink_bridge_and_nvswitch_pairs() -> None:
    assert nvlink_pairs(load_named_rig("synthetic-2x3090-nvlink")) == {(0, 1)}
    dgx = nvlink_pairs(load_named_rig("synthetic-8xa100-nvlink"))
    assert len(dgx) == 28 and (0, 7) in dgx
    trait = classify(load_named_rig("synthetic-8xa100-nvlink")).get(K.NVLINK)
    assert "NVSwitch" in trait.reason
    assert nvlink_pairs(load_named_rig("synthetic-2x3090-x16-x8")) == frozenset()


def test_narrow_link_reason_names_the_link() -> None:
    trait = classify(load_named_rig("synthetic-4x3090-x4-riser")).get(K.NARROW_PCIE)
    assert "GPU 3 (RTX 3090) at most PCIe 3.0 x4" in trait.reason


def test_idle_generation_drop_is_not_a_downtrained_link() -> None:
    rig = load_named_rig("synthetic-2x3090-x16-x8")
    assert all(g.pcie.gen_current < g.pcie.gen_max for g in rig.gpus)  # idle: gen 1 of 4
    assert not classify(rig).has(K.DOWNTRAINED_LINK)


def test_vram_within_two_percent_is_symmetric() -> None:
    rig = load_named_rig("synthetic-2x3090-x16-x8")
    gpus = (
        rig.gpus[0],
        replace(rig.gpus[1], memory_total_bytes=rig.gpus[0].memory_total_bytes - 12 * 2**20),
    )
    nudged = replace(rig, gpus=gpus)
    assert classify(nudged).has(K.SYMMETRIC)
    assert not classify(nudged).has(K.ASYMMETRIC_VRAM)


def test_no_gpus_is_a_warning() -> None:
    rig = replace(load_named_rig("synthetic-1x4090"), gpus=())
    trait = classify(rig).get(K.GPU_COUNT)
    assert trait.severity == "warning" and "no GPUs" in trait.reason


def test_unknown_driver_judges_compute_capability_only() -> None:
    k80 = load_named_rig("synthetic-2xk80")
    no_driver = replace(k80, host=replace(k80.host, driver_version=None))
    assert classify(no_driver).has(K.BELOW_RUNTIME_FLOOR)
    pascal = load_named_rig("synthetic-3090-1080ti-driver560")
    unknown = replace(pascal, host=replace(pascal.host, driver_version=None))
    assert not classify(unknown).has(K.BELOW_RUNTIME_FLOOR)


@pytest.mark.parametrize(
    ("gen", "width", "narrow"),
    [
        (3, 16, False),  # the case: PCIe 3.0 x16 moves as much as 4.0 x8
        (4, 8, False),
        (5, 4, False),  # a gen 5 x4 link matches 4.0 x8 as well
        (4, 16, False),
        (3, 8, True),
        (4, 4, True),  # x4 riser
        (3, 4, True),
        (2, 16, True),
        (None, 4, True),  # unknown generation: taken as gen 4
        (3, None, False),  # unknown width: taken as x16
    ],
)
def test_narrow_pcie_compares_bandwidth(gen: int | None, width: int | None, narrow: bool) -> None:
    rig = load_named_rig("synthetic-2x3090-x16-x8")
    first = rig.gpus[0]
    slow = replace(first, pcie=replace(first.pcie, gen_max=gen, width_max=width))
    fired = classify(replace(rig, gpus=(slow, *rig.gpus[1:]))).get(K.NARROW_PCIE)
    assert (fired is not None and 0 in fired.gpus) == narrow
