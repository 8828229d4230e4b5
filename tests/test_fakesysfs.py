"""Tests of the fake /sys builder itself (tests/fakesysfs.py), not of the product's probe."""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

import pytest

from tests.fakesysfs import RIGS, AmdGpu, build, layout

KFD_NODES = "class/kfd/kfd/topology/nodes"


@pytest.fixture(params=sorted(RIGS))
def built(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path]:
    name: str = request.param
    return name, build(tmp_path / "sys", RIGS[name])


def _walk(root: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """(files, dirs, symlinks) without following links (sysfs links make cycles)."""
    files: list[Path] = []
    dirs: list[Path] = []
    links: list[Path] = []
    for top, subdirs, names in os.walk(root):
        for n in subdirs + names:
            p = Path(top, n)
            (links if p.is_symlink() else dirs if p.is_dir() else files).append(p)
    return files, dirs, links


def test_links_are_relative_and_resolve_inside_the_root(built: tuple[str, Path]) -> None:
    _, root = built
    _, _, links = _walk(root)
    assert links
    for link in links:
        text = os.readlink(link)
        assert not os.path.isabs(text), link
        target = link.resolve(strict=True)
        assert target.is_relative_to(root.resolve()), (link, text)


def test_files_end_with_one_newline(built: tuple[str, Path]) -> None:
    _, root = built
    files, _, _ = _walk(root)
    for f in files:
        text = f.read_text()
        assert text.endswith("\n") and not text.endswith("\n\n"), f


def test_kfd_properties_are_decimal_key_value_lines(built: tuple[str, Path]) -> None:
    name, root = built
    nodes = root / KFD_NODES
    if RIGS[name].amdgpu_initstate is None:
        assert not (root / "class/kfd").exists()
        return
    for props in nodes.glob("*/**/properties"):
        for line in props.read_text().splitlines():
            assert re.fullmatch(r"[a-z0-9_]+ \d+", line), (props, line)
    gpus = [n for n in layout(RIGS[name]) if n.kfd_node is not None]
    assert sorted(int(p.name) for p in nodes.iterdir()) == list(range(len(gpus) + 1))


def _props(path: Path) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in path.read_text().splitlines())}


def test_kfd_joins_drm_by_render_minor_and_location(built: tuple[str, Path]) -> None:
    """§1.1: renderD<drm_render_minor>/device names the BDF; location_id and unique_id agree."""
    name, root = built
    for n in layout(RIGS[name]):
        if n.kfd_node is None:
            continue
        p = _props(root / KFD_NODES / str(n.kfd_node) / "properties")
        dev = (root / f"class/drm/renderD{p['drm_render_minor']}/device").resolve()
        assert dev.name == n.bdf
        bus, devfn = int(n.bdf[5:7], 16), int(n.bdf[8:10], 16) << 3 | int(n.bdf[11])
        assert p["location_id"] == bus << 8 | devfn
        if "unique_id" in p:
            assert (dev / "unique_id").read_text() == f"{p['unique_id']:016x}\n"
        assert (dev / "driver").resolve().name == "amdgpu"


def test_reference_rig_matches_section_1_5(tmp_path: Path) -> None:
    root = build(tmp_path, RIGS["2x7900xtx"])
    gpu0 = root / "bus/pci/devices/0000:03:00.0"
    assert os.readlink(gpu0) == (
        "../../../devices/pci0000:00/0000:00:01.1/0000:01:00.0/0000:02:00.0/0000:03:00.0"
    )
    assert os.readlink(gpu0 / "driver") == "../../../../../../bus/pci/drivers/amdgpu"
    assert os.readlink(gpu0 / "drm/card0/device") == "../../../0000:03:00.0"
    assert os.readlink(root / "class/kfd/kfd") == "../../devices/virtual/kfd/kfd"
    assert (gpu0 / "unique_id").read_text() == "9f781dc6258d77a7\n"
    assert (gpu0 / "hwmon/hwmon2/power1_cap_min").read_text() == "294000000\n"
    assert (root / "class/drm/card0-DP-1/status").read_text() == "connected\n"
    node1 = _props(root / KFD_NODES / "1/properties")
    assert node1["unique_id"] == 11490967186106578855
    assert (node1["location_id"], node1["device_id"], node1["simd_count"]) == (768, 29772, 192)
    assert (node1["io_links_count"], node1["p2p_links_count"]) == (1, 1)
    assert _props(root / KFD_NODES / "2/properties")["location_id"] == 3072
    assert _props(root / KFD_NODES / "0/properties")["io_links_count"] == 2
    up = root / "bus/pci/devices/0000:0a:00.0"
    assert (up / "current_link_width").read_text() == "4\n"
    assert (up / "max_link_width").read_text() == "16\n"


def test_old_kernel_lacks_new_keys(tmp_path: Path) -> None:
    root = build(tmp_path, RIGS["old-kernel"])
    for node in ("0", "1"):
        keys = _props(root / KFD_NODES / node / "properties").keys()
        assert not keys & {"gfx_target_version", "unique_id", "domain", "p2p_links_count"}
    assert not (root / "bus/pci/devices/0000:01:00.0/unique_id").exists()


def test_xgmi_hive(tmp_path: Path) -> None:
    root = build(tmp_path, RIGS["4xmi100-xgmi"])
    hives = {_props(root / KFD_NODES / str(n) / "properties")["hive_id"] for n in range(1, 5)}
    assert len(hives) == 1 and 0 not in hives
    links = [_props(p) for p in (root / KFD_NODES / "1/io_links").glob("*/properties")]
    pairs = sorted((lk["type"], lk["node_to"]) for lk in links)
    assert pairs == [(2, 0), (11, 2), (11, 3), (11, 4)]  # CPU link, then XGMI to every peer
    for n in layout(RIGS["4xmi100-xgmi"]):
        hive_id = root / f"bus/pci/devices/{n.bdf}/xgmi_hive_info/xgmi_hive_id"
        assert int(hive_id.read_text()) in hives


def test_unreadable_files_fail_to_read(tmp_path: Path) -> None:
    root = build(tmp_path, RIGS["read-errors"])
    gpu, upstream = root / "bus/pci/devices/0000:03:00.0", root / "bus/pci/devices/0000:01:00.0"
    for path in (gpu / "mem_info_vram_used", upstream / "current_link_width"):
        with pytest.raises(IsADirectoryError):
            path.read_text()
    assert (gpu / "hwmon/hwmon2/power1_cap").read_text() == "\n"


def test_bad_rigs_are_rejected(tmp_path: Path) -> None:
    rig = RIGS["read-errors"]
    xtx = rig.gpus[0]
    assert isinstance(xtx, AmdGpu)
    typo = replace(rig, gpus=(replace(xtx, unreadable=("nope",)),))
    with pytest.raises(ValueError, match="match no file"):
        build(tmp_path / "a", typo)
    with pytest.raises(ValueError, match="duplicate BDF"):
        build(tmp_path / "b", replace(RIGS["old-kernel"], gpus=RIGS["old-kernel"].gpus * 2))
