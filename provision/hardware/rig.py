"""The rig: what the probe saw, as frozen dataclasses, and the versioned snapshot file format.

A snapshot (`schema: 2`, YAML or JSON) is what `provision probe --save` writes and what every
command reads with `--rig`. A reading the hardware did not give is `None` (`null` in the file),
never a guessed value. Schema 2 added the AMD facts (`gpus[].amd`, `host.amdgpu_version`);
a schema 1 file still reads, with those null.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from provision.documents import DocumentError, check_depth, check_yaml_int, load_json, read_document
from provision.errors import InputError
from provision.typed_load import FieldError, from_plain, to_plain

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)

_COMPUTE_CAPABILITY = re.compile(r"^\d+\.\d+$")
# NVML reports the 32-bit domain form (00000000:01:00.0); lspci and sysfs the 16-bit one.
_UNIQUE_ID = re.compile(r"^[0-9a-f]{16}$")
_PCI_BUS_ID = re.compile(r"^[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]$")


class Vendor(StrEnum):
    NVIDIA = "nvidia"
    AMD = "amd"


@dataclass(frozen=True)
class PcieLink:
    """PCIe link: `*_max` is what device and slot together allow, `*_current` what it trained to."""

    gen_max: int | None
    width_max: int | None
    gen_current: int | None
    width_current: int | None


@dataclass(frozen=True)
class NvLink:
    """One active NVLink; the peer is another GPU or an NVSwitch, named by its PCI bus id."""

    link: int
    peer_pci_bus_id: str


@dataclass(frozen=True)
class PowerLimits:
    limit_w: float | None
    default_w: float | None
    min_w: float | None
    max_w: float | None


@dataclass(frozen=True)
class AmdInfo:
    """What only an AMD GPU has: ROCm's view of it (KFD topology) and how it is joined."""

    gfx_target: str | None  # "gfx1100": the compiler target KFD reports, not the IP version
    kfd_node: int | None  # KFD topology node number (the CPU is 0); None: KFD skipped the card
    render_minor: int | None  # /dev/dri/renderD<N>
    unique_id: str | None  # 16 lower-case hex digits; None on GFX8 and older
    xgmi_hive_id: int | None  # None: not in an XGMI hive
    xgmi_peers: tuple[str, ...]  # PCI bus ids of the GPUs it reaches over XGMI
    integrated: bool  # an APU's iGPU: shares system memory
    rocm_usable: bool
    rocm_reason: str | None  # why ROCm cannot use it, when it cannot
    memory_visible_bytes: int | None  # the CPU-visible part of VRAM (the BAR)
    gtt_total_bytes: int | None  # system memory the GPU can map


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    name: str
    vendor: Vendor
    pci_bus_id: str
    memory_total_bytes: int
    memory_used_bytes: int | None
    compute_capability: str | None
    architecture: str | None
    pcie: PcieLink
    nvlink: tuple[NvLink, ...]
    power: PowerLimits
    display_active: bool | None
    persistence_mode: bool | None
    mig_enabled: bool | None
    amd: AmdInfo | None  # None for NVIDIA

    @property
    def compute_capability_tuple(self) -> tuple[int, int] | None:
        if self.compute_capability is None:
            return None
        major, minor = self.compute_capability.split(".")
        return int(major), int(minor)


@dataclass(frozen=True)
class Host:
    hostname: str
    kernel: str | None
    cpu_count: int | None
    ram_bytes: int | None
    driver_version: str | None
    cuda_driver_version: str | None
    nvml_version: str | None
    # The amdgpu kernel driver: its DKMS version, "in-tree" when loaded without one, None when
    # it is not loaded.
    amdgpu_version: str | None
    # Installed runtimes by name (ollama, llama-server, nvidia-smi); the value is the version it
    # reported, or None when it is installed but its version could not be read.
    runtimes: Mapping[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Rig:
    host: Host
    gpus: tuple[Gpu, ...]

    def gpu(self, index: int) -> Gpu:
        for gpu in self.gpus:
            if gpu.index == index:
                return gpu
        raise KeyError(index)


_PROBE_JSON_ONLY = ("traits", "command", "warnings", "errors")


@dataclass(frozen=True)
class _Snapshot:
    schema: int
    host: Host
    gpus: tuple[Gpu, ...]


def rig_from_plain(data: object) -> Rig:
    """Validate parsed snapshot data; raises FieldError naming the offending field."""
    schema = data.get("schema") if isinstance(data, dict) else None
    if isinstance(data, dict) and schema not in READABLE_SCHEMAS:
        raise FieldError(
            "schema",
            f"unsupported snapshot schema {schema!r} "
            f"(this version reads {', '.join(map(str, READABLE_SCHEMAS))})",
        )
    if isinstance(data, dict):
        # `probe --json` adds the derived traits and the envelope of every --json document
        # (docs/JSON.md); they are recomputed, never read back.
        data = {k: v for k, v in data.items() if k not in _PROBE_JSON_ONLY}
    if isinstance(data, dict) and schema == 1:
        data = _upgrade_schema_1(data)
    snapshot = from_plain(_Snapshot, data)
    rig = Rig(host=snapshot.host, gpus=snapshot.gpus)
    _check_values(rig)
    return rig


def _upgrade_schema_1(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 had no AMD facts: they read as null."""
    upgraded = dict(data)
    if isinstance(data.get("host"), dict) and "amdgpu_version" not in data["host"]:
        upgraded["host"] = {**data["host"], "amdgpu_version": None}
    if isinstance(data.get("gpus"), list):
        upgraded["gpus"] = [
            {**g, "amd": None} if isinstance(g, dict) and "amd" not in g else g
            for g in data["gpus"]
        ]
    return upgraded


def rig_to_plain(rig: Rig) -> dict[str, Any]:
    plain: dict[str, Any] = {"schema": SCHEMA_VERSION}
    plain.update(to_plain(rig))
    return plain


def _check_values(rig: Rig) -> None:
    """Checks the types cannot express: signs, formats, uniqueness."""
    for name in ("cpu_count", "ram_bytes"):
        value = getattr(rig.host, name)
        if value is not None and value < 0:
            raise FieldError(f"host.{name}", f"must not be negative, got {value}")
    seen_index: set[int] = set()
    seen_uuid: set[str] = set()
    for position, gpu in enumerate(rig.gpus):
        _check_gpu(gpu, f"gpus[{position}]")
        if gpu.index in seen_index:
            raise FieldError(f"gpus[{position}].index", f"duplicate GPU index {gpu.index}")
        if gpu.uuid in seen_uuid:
            raise FieldError(f"gpus[{position}].uuid", f"duplicate GPU uuid {gpu.uuid}")
        seen_index.add(gpu.index)
        seen_uuid.add(gpu.uuid)


def _check_gpu(gpu: Gpu, path: str) -> None:
    if gpu.index < 0:
        raise FieldError(f"{path}.index", f"must not be negative, got {gpu.index}")
    if gpu.memory_total_bytes <= 0:
        raise FieldError(
            f"{path}.memory_total_bytes", f"must be positive, got {gpu.memory_total_bytes}"
        )
    used = gpu.memory_used_bytes
    if used is not None and not 0 <= used <= gpu.memory_total_bytes:
        raise FieldError(
            f"{path}.memory_used_bytes", f"must be between 0 and memory_total_bytes, got {used}"
        )
    cc = gpu.compute_capability
    if cc is not None and not _COMPUTE_CAPABILITY.match(cc):
        raise FieldError(f"{path}.compute_capability", f'expected a form like "8.6", got {cc!r}')
    if not _PCI_BUS_ID.match(gpu.pci_bus_id):
        raise FieldError(
            f"{path}.pci_bus_id", f'expected a form like "00000000:01:00.0", got {gpu.pci_bus_id!r}'
        )
    for name, value in vars(gpu.pcie).items():
        if value is not None and value <= 0:
            raise FieldError(f"{path}.pcie.{name}", f"must be positive, got {value}")
    for name, value in vars(gpu.power).items():
        if value is not None and value < 0:
            raise FieldError(f"{path}.power.{name}", f"must not be negative, got {value}")
    power = gpu.power
    if power.min_w is not None and power.max_w is not None and power.min_w > power.max_w:
        raise FieldError(f"{path}.power.min_w", f"{power.min_w} W is above max_w {power.max_w} W")
    if gpu.amd is not None:
        _check_amd(gpu, gpu.amd, path)
    elif gpu.vendor == Vendor.AMD:
        # Without them the card would be named wrongly to ROCm (its uuid is not a ROCm id).
        raise FieldError(
            f"{path}.amd",
            "an AMD GPU needs its AMD facts (snapshot schema 2): record it again with "
            "'provision probe --save FILE'",
        )
    for link_position, link in enumerate(gpu.nvlink):
        if not _PCI_BUS_ID.match(link.peer_pci_bus_id):
            raise FieldError(
                f"{path}.nvlink[{link_position}].peer_pci_bus_id",
                f"expected a PCI bus id, got {link.peer_pci_bus_id!r}",
            )


def _check_amd(gpu: Gpu, amd: AmdInfo, path: str) -> None:
    if gpu.vendor != Vendor.AMD:
        raise FieldError(f"{path}.amd", f"only an AMD GPU has AMD facts (vendor is {gpu.vendor})")
    if amd.unique_id is not None:
        if not _UNIQUE_ID.match(amd.unique_id):
            raise FieldError(
                f"{path}.amd.unique_id", f"expected 16 lower-case hex digits, got {amd.unique_id!r}"
            )
        if gpu.uuid != f"GPU-{amd.unique_id}":
            # ROCR_VISIBLE_DEVICES names the card by this string (as rocminfo prints it).
            raise FieldError(
                f"{path}.uuid", f"an AMD GPU's uuid is GPU-<unique_id>, got {gpu.uuid!r}"
            )
    for position, peer in enumerate(amd.xgmi_peers):
        if not _PCI_BUS_ID.match(peer):
            raise FieldError(
                f"{path}.amd.xgmi_peers[{position}]", f"expected a PCI bus id, got {peer!r}"
            )


def parse_rig(text: str, source: str) -> Rig:
    """Parse snapshot text (YAML, of which JSON is a subset); errors name `source` and the field."""
    try:
        if source.endswith(".json"):
            data = load_json(text)
        else:
            data = yaml.load(text, Loader=_YamlLoader)  # libyaml stops past 1,000 levels
            check_depth(data)
    except (ValueError, yaml.YAMLError) as exc:  # DocumentError is a ValueError
        raise InputError(
            f"{source}: not a valid snapshot file: {exc}",
            hint="record one with 'provision probe --save FILE'",
        ) from None
    try:
        return rig_from_plain(data)
    except FieldError as exc:
        raise InputError(
            f"{source}: field '{exc.path}': {exc.problem}",
            hint="fix that field, or record a fresh snapshot with 'provision probe --save FILE'",
        ) from None


def load_rig(path: Path) -> Rig:
    try:
        text = read_document(path).decode("utf-8")
    except (OSError, DocumentError) as exc:
        why = exc.problem if isinstance(exc, DocumentError) else exc.strerror
        raise InputError(
            f"{path}: cannot read snapshot: {why}", hint="check the --rig path"
        ) from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file", hint="pass a YAML or JSON snapshot") from None
    return parse_rig(text, str(path))


def dump_rig(rig: Rig, fmt: str = "yaml") -> str:
    plain = rig_to_plain(rig)
    if fmt == "json":
        return json.dumps(plain, indent=2) + "\n"
    return yaml.dump(plain, Dumper=_YamlDumper, sort_keys=False, default_flow_style=False)


def save_rig(rig: Rig, path: Path) -> None:
    path.write_text(dump_rig(rig, "json" if path.suffix == ".json" else "yaml"), encoding="utf-8")


def _construct_int(loader: Any, node: yaml.ScalarNode) -> Any:
    check_yaml_int(node.value, node.start_mark.line + 1)  # before int() of 5,000 digits
    return loader.construct_yaml_int(node)


# The C loader and dumper are several times faster; fall back where libyaml is missing.
class _YamlLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    pass


_YamlLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_YamlDumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
