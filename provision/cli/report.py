"""What the terminal shows: the probe table and traits, a fit, a placement, memory bars. Pure.

Each function returns a string (people) or a plain dict (the body of a `--json` document, which
provision.cli.envelope wraps and prints); the commands print the strings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from provision.hardware.classify import RigTraits, Severity, normalize_bus_id, short_name
from provision.hardware.rig import Gpu, Rig
from provision.typed_load import to_plain
from provision.units import gib

if TYPE_CHECKING:
    from provision.desired import DesiredState
    from provision.models.catalog import QuantVariant
    from provision.models.estimate import RunSettings
    from provision.placement.decisions import ModelPlacement, Placement
    from provision.placement.fit import FitResult, GpuShare

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
            _or_dash(g.amd.gfx_target if g.amd else g.compute_capability),
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
    amdgpu = f", amdgpu {h.amdgpu_version}" if h.amdgpu_version else ""
    return (
        f"host {h.hostname}: driver {_or_dash(h.driver_version)}, "
        f"CUDA {_or_dash(h.cuda_driver_version)}{amdgpu}, kernel {_or_dash(h.kernel)}; "
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


# --- fit ---------------------------------------------------------------------------------------


def gpu_ref(gpu: Gpu) -> dict[str, Any]:
    """A GPU wherever a document names one: the `gpu_ref` of docs/JSON.md."""
    return {"index": gpu.index, "uuid": gpu.uuid, "name": gpu.name}


_MEMORY_KEYS = ("weights_bytes", "kv_bytes", "compute_bytes", "overhead_bytes")


def _memory(gpu: Gpu, parts: Sequence[int], free_bytes: int) -> dict[str, Any]:
    """`gpu_memory`: what is held on a GPU, by kind, and what it has free."""
    held = dict(zip(_MEMORY_KEYS, parts, strict=True))
    return gpu_ref(gpu) | held | {"total_bytes": sum(parts), "free_bytes": free_bytes}


def share_to_plain(share: GpuShare) -> dict[str, Any]:
    """`gpu_share`: one model's layers and bytes on one GPU (fit's `gpus`, plan's `per_gpu`)."""
    f = share.footprint
    parts = (f.weights_bytes, f.kv_bytes, f.compute_bytes, f.overhead_bytes)
    plain = _memory(share.gpu, parts, share.free_bytes)
    # A vision projector (first GPU only) is held apart: the plan's bars count it as weights.
    held = {"projector_bytes": f.projector_bytes, "total_bytes": f.total_bytes}
    return {**plain, **held, "layers": len(f.layers), "holds_output": f.holds_output}


def settings_to_plain(settings: RunSettings) -> dict[str, Any]:
    """`run_settings`: what a model runs with (fit's and plan's `settings`)."""
    return {
        "runtime": settings.runtime.value,
        "ctx": settings.ctx_tokens,
        "parallel": settings.parallel,
        "kv_type": settings.kv_type.value,
        "flash_attention": settings.flash_attention,
        "ubatch": settings.ubatch,
    }


def fit_to_plain(result: FitResult) -> dict[str, Any]:
    spec = result.model
    gpus = [share_to_plain(s) for s in result.shares]
    totals = {
        key: sum(g[key] for g in gpus)
        for key in (*_MEMORY_KEYS, "projector_bytes", "total_bytes", "free_bytes")
    }
    return {
        "model": spec.name,
        "source": spec.source,
        "architecture": spec.architecture,
        "quant": spec.quant,
        "n_layer": spec.n_layer,
        "settings": settings_to_plain(result.settings),
        "verdict": result.verdict.value,
        "reason": result.reason,
        "kv_estimate": "known" if spec.kv_known else "unknown",
        "gpus": gpus,
        "cpu": {"layers": len(result.cpu_layers), "bytes": result.cpu_bytes},
        "totals": totals,
        "suggestions": list(result.suggestions),
    }


def fit_text(result: FitResult) -> str:
    spec, settings = result.model, result.settings
    lines = [
        f"{spec.name} ({spec.architecture}, {spec.quant or 'unknown quant'}, {spec.n_layer} "
        f"layers) on {settings.runtime}: ctx {settings.ctx_tokens} x {settings.parallel}, "
        f"KV {settings.kv_type}",
        f"verdict: {result.verdict}: {result.reason}",
    ]
    if result.shares:
        lines += ["", f"  {BAR_LEGEND}"]
    for share in result.shares:
        f = share.footprint
        bar = memory_bar(
            (f.weights_bytes + f.projector_bytes, f.kv_bytes, f.compute_bytes, f.overhead_bytes),
            share.free_bytes,
        )
        layers = f"{len(f.layers)} layers" + (" + output" if f.holds_output else "")
        lines.append(
            f"  GPU {share.gpu.index} {short_name(share.gpu):<14} {bar} "
            f"{gib(f.total_bytes)} / {gib(share.free_bytes)}  ({layers}: weights "
            f"{gib(f.weights_bytes)}, KV {gib(f.kv_bytes)}, compute {gib(f.compute_bytes)}, "
            f"overhead {gib(f.overhead_bytes)}"
            + (f", vision projector {gib(f.projector_bytes)}" if f.projector_bytes else "")
            + ")"
        )
    if result.cpu_layers:
        lines.append(f"  CPU: {len(result.cpu_layers)} layers, {gib(result.cpu_bytes)}")
    if not spec.kv_known:
        lines.append(f"  KV estimate unknown: architecture '{spec.architecture}' is not modelled")
    if result.suggestions:
        lines += ["", "what would fit entirely on the GPUs:"]
        lines += [f"  - {s}" for s in result.suggestions]
    return "\n".join(lines)


# --- models ------------------------------------------------------------------------------------


def catalog_to_plain(variants: Mapping[str, Sequence[QuantVariant]]) -> dict[str, Any]:
    """`models --json`: each catalog model and its quants, smallest file first."""
    return {
        "models": [
            {
                "name": name,
                "variants": [
                    {"quant": v.quant, "tag": v.tag, "file_bytes": v.file_bytes} for v in found
                ],
            }
            for name, found in variants.items()
        ]
    }


# --- placement ---------------------------------------------------------------------------------


def placement_to_plain(placement: Placement, desired: DesiredState) -> dict[str, Any]:
    """The plan's body: every number `placement_text` shows (the warnings go in the envelope)."""
    profile = placement.profile
    gpu_by_uuid = {g.uuid: g for g in placement.rig.gpus}
    return {
        "profile": profile.name,
        "description": profile.description,
        "runtime": profile.runtime.value,
        "ollama_version": placement.ollama_version,
        "instances": [
            {
                "runtime": i.runtime.value,
                "unit": i.unit,
                "address": i.address,
                "port": i.port,
                "gpu_uuids": list(i.gpu_uuids),
                "gpus": [gpu_ref(gpu_by_uuid[u]) for u in i.gpu_uuids],
                "env": dict(i.env),
                "args": list(i.args),
                "models": list(i.models),
                "reason": i.reason,
            }
            for i in placement.instances
        ],
        "models": [_model_to_plain(m) for m in placement.models],
        "power": [
            {
                **gpu_ref(placement.rig.gpu(d.index)),
                "target_w": d.target_w,
                "default_w": d.default_w,
                "reason": d.reason,
            }
            for d in placement.power
        ],
        "balancer": to_plain(placement.balancer),
        "disabled_units": list(placement.disabled_units),
        "traits": to_plain(placement.traits.traits),
        "memory": [_memory(gpu, parts, free) for gpu, parts, free in gpu_memory(placement)],
        "files": [f.path for f in desired.files],
    }


def _model_to_plain(m: ModelPlacement) -> dict[str, Any]:
    return {
        "name": m.name,
        "ref": m.entry.ref,
        "verdict": m.fit.verdict.value,
        "settings": settings_to_plain(m.settings),
        "gpus": list(m.gpu_indices),
        "gpu_uuids": [s.gpu.uuid for s in m.fit.shares],
        "per_gpu": [share_to_plain(s) for s in m.fit.shares],
        "layers_per_gpu": list(m.layers_per_gpu),
        "cpu_layers": len(m.fit.cpu_layers),
        "cpu": {"layers": len(m.fit.cpu_layers), "bytes": m.fit.cpu_bytes},
        "num_gpu": m.num_gpu,
        "main_gpu": m.main_gpu,
        "ollama_gpus": None if m.ollama_gpus is None else list(m.ollama_gpus),
        "ollama_reason": m.ollama_reason or None,
        "ollama_layers_per_gpu": (
            None if m.ollama_shares is None else [len(s.footprint.layers) for s in m.ollama_shares]
        ),
        "units": list(m.units),
        "reason": m.fit.reason,
        "suggestions": list(m.fit.suggestions),
    }


def gpu_memory(placement: Placement) -> list[tuple[Gpu, list[int], int]]:
    """Per GPU: the bytes the placed models hold on it (weights, KV, compute, overhead) and
    what it has usable, as the plan's memory bars and its JSON `memory` show them."""
    from provision.placement.fit import usable_free_bytes  # lazy: `probe` needs no placement

    totals: dict[int, list[int]] = {g.index: [0, 0, 0, 0] for g in placement.rig.gpus}
    index_by_uuid = {g.uuid: g.index for g in placement.rig.gpus}
    # Replicas each hold the whole model on their own GPU.
    replicas = (
        [i for i in placement.instances if len(i.gpu_uuids) == 1] if placement.balancer else []
    )
    for model in placement.models:
        # Where Ollama will not follow the plan and nothing makes it, its placement is shown.
        shares = model.ollama_shares if model.ollama_shares is not None else model.fit.shares
        for share in shares:
            f = share.footprint
            targets = [index_by_uuid[i.gpu_uuids[0]] for i in replicas] or [share.gpu.index]
            for index in targets:
                for k, value in enumerate(
                    (
                        f.weights_bytes + f.projector_bytes,
                        f.kv_bytes,
                        f.compute_bytes,
                        f.overhead_bytes,
                    )
                ):
                    totals[index][k] += value
    return [(gpu, totals[gpu.index], usable_free_bytes(gpu)) for gpu in placement.rig.gpus]


def _gpu_bars(placement: Placement) -> list[str]:
    lines = [f"  {BAR_LEGEND}"]
    theirs = [m.name for m in placement.models if m.ollama_shares is not None]
    if theirs:
        lines.append(f"  # {', '.join(theirs)}: where Ollama will put them, not the plan")
    for gpu, parts, free in gpu_memory(placement):
        lines.append(
            f"  GPU {gpu.index} {short_name(gpu):<14} {memory_bar(parts, free)} "
            f"{gib(sum(parts))} / {gib(free)}"
        )
    return lines


def _one_line(text: str) -> str:
    """A profile's free text on one line: a newline in it cannot pass for a line of ours."""
    return " ".join(text.split())


def placement_text(placement: Placement, desired: DesiredState) -> str:
    p = placement.profile
    lines = [f"profile {p.name} ({p.source}): runtime {p.runtime}"]
    if p.description:
        lines.append(f"  {_one_line(p.description)}")
    lines += ["", "traits:", traits_text(placement.traits), "", "models:"]
    for m in placement.models:
        where = ",".join(map(str, m.gpu_indices)) or "-"
        lines.append(f"  {m.entry.ref} -> {m.name}: {m.fit.verdict} on GPU {where}")
        lines.append(f"      {m.fit.reason}")
        if m.ollama_reason:
            lines.append(f"      ollama: {m.ollama_reason}")
        lines += [f"      would fit: {s}" for s in m.fit.suggestions]
    lines += ["", "instances:"]
    for i in placement.instances:
        lines.append(f"  {i.unit} on {i.address}:{i.port}: {i.reason}")
    if placement.balancer is not None:
        b = placement.balancer
        lines.append(f"  nginx on {b.address}:{b.port} -> {len(b.upstreams)} replicas (least_conn)")
    if placement.power:
        lines += ["", "power:"]
        lines += [f"  GPU {d.index}: {d.target_w:g} W ({d.reason})" for d in placement.power]
    lines += ["", "memory per GPU:", *_gpu_bars(placement)]
    if placement.warnings:
        lines += ["", "warnings:", *(f"  warning: {w}" for w in placement.warnings)]
    lines += ["", f"files ({len(desired.files)}):", *(f"  {f.path}" for f in desired.files)]
    return "\n".join(lines)
