"""Human-readable text for the terminal: tables and trait lists. Pure: returns strings."""

from __future__ import annotations

from collections.abc import Sequence

from provision.classify import RigTraits, Severity, gib, normalize_bus_id, short_name
from provision.rig import Gpu, Rig

_HEADERS = ("#", "NAME", "VRAM", "USED", "CC", "PCIE NOW/MAX", "NVLINK PEERS", "POWER", "DISPLAY")


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)


def _pcie(gpu: Gpu) -> str:
    p = gpu.pcie

    def link(gen: int | None, width: int | None) -> str:
        return f"Gen{_or_dash(gen)} x{_or_dash(width)}" if gen or width else "-"

    return f"{link(p.gen_current, p.width_current)} / {link(p.gen_max, p.width_max)}"


def _watts(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


def _power(gpu: Gpu) -> str:
    p = gpu.power
    if p.min_w is None and p.max_w is None and p.limit_w is None:
        return "-"
    return f"{_watts(p.min_w)}-{_watts(p.max_w)} W (now {_watts(p.limit_w)})"


def _nvlink_peers(gpu: Gpu, rig: Rig) -> str:
    if not gpu.nvlink:
        return "-"
    index_by_bus = {normalize_bus_id(g.pci_bus_id): g.index for g in rig.gpus}
    peers: dict[str, int] = {}
    for link in gpu.nvlink:
        peer_index = index_by_bus.get(normalize_bus_id(link.peer_pci_bus_id))
        key = f"GPU {peer_index}" if peer_index is not None else "switch"
        peers[key] = peers.get(key, 0) + 1
    return ", ".join(f"{name} x{n}" for name, n in peers.items())


def _display(gpu: Gpu) -> str:
    return {True: "yes", False: "no", None: "-"}[gpu.display_active]


def gpu_rows(rig: Rig) -> list[tuple[str, ...]]:
    return [
        (
            str(g.index),
            short_name(g),
            gib(g.memory_total_bytes),
            "-" if g.memory_used_bytes is None else gib(g.memory_used_bytes),
            _or_dash(g.compute_capability),
            _pcie(g),
            _nvlink_peers(g, rig),
            _power(g),
            _display(g),
        )
        for g in rig.gpus
    ]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=False)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in (headers, *rows)
    ]
    return "\n".join(lines)


def host_line(rig: Rig) -> str:
    h = rig.host
    runtimes = (
        ", ".join(
            f"{name} {version or '(version unknown)'}"
            for name, version in sorted(h.runtimes.items())
        )
        or "none found"
    )
    return (
        f"host {h.hostname}: driver {_or_dash(h.driver_version)}, "
        f"CUDA {_or_dash(h.cuda_driver_version)}, kernel {_or_dash(h.kernel)}; "
        f"runtimes: {runtimes}"
    )


def traits_text(traits: RigTraits) -> str:
    lines = []
    for trait in traits.traits:
        mark = "warning" if trait.severity == Severity.WARNING else "-"
        lines.append(f"  {mark} {trait.kind}: {trait.reason}")
    return "\n".join(lines)


def probe_report(rig: Rig, traits: RigTraits) -> str:
    parts = [host_line(rig), "", table(_HEADERS, gpu_rows(rig)), "", "traits:", traits_text(traits)]
    return "\n".join(parts)


BAR_WIDTH = 40
BAR_LEGEND = "# weights  = KV cache  + compute  ~ overhead  . free"


def memory_bar(parts: Sequence[int], free_bytes: int, width: int = BAR_WIDTH) -> str:
    """[####==+~......]: weights, KV, compute, overhead, then what stays free; '!' past free."""
    used = sum(parts)
    scale = max(free_bytes, used, 1)
    cells = ""
    for symbol, size in zip("#=+~", parts, strict=True):
        cells += symbol * round(size / scale * width)
    if used > free_bytes:
        cells = cells[:width] + "!"
    return "[" + cells.ljust(width, ".")[: width + 1] + "]"
