"""Where we want each model against where the installed Ollama will put it, and the lever. Pure.

Before v0.30 Ollama places every layer itself (provision.placement.ollama_families: llm/memory.go
or the llm/server.go layout, by version) and no per-model setting chooses its GPUs: where its
placement differs from the plan, the plan says what Ollama will do and the memory bars show
Ollama's placement (`ollama_shares`). PARAMETER num_gpu, when the plan sets it, is enforced.

Ollama (v0.30 and later) chooses GPUs itself: one GPU when its own prediction fits 80% of that
GPU's free memory, otherwise every visible GPU (provision.placement.ollama_scheduler). Where its
choice differs from the plan for a model that fits one card, the Modelfile pins the model with
`PARAMETER main_gpu N`, N being the card's position in the rendered CUDA_VISIBLE_DEVICES; a split
has no per-model lever, so the plan says what Ollama will do instead. Models are taken in the
plan's order, largest first, each seeing the memory the ones before it hold (Ollama lowers a
GPU's free memory by what its loaded runners use: server/sched.go updateFreeSpace).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from provision.hardware.classify import gpu_label, gpu_labels
from provision.hardware.rig import Gpu, Vendor
from provision.models.estimate import device_footprint
from provision.placement.decisions import ModelPlacement
from provision.placement.fit import GpuShare, Verdict, usable_free_bytes
from provision.placement.ollama_families import OllamaLayers, legacy_layers
from provision.placement.ollama_scheduler import (
    SINGLE_GPU_PERCENT,
    SchedGpu,
    predicted_vram_bytes,
    select_placement,
    uses_llama_server,
)

GB = 10**9  # Ollama logs and reasons in decimal GB


def with_ollama_view(
    visible: Sequence[Gpu],
    placements: Sequence[ModelPlacement],
    spread: bool,
    version: str | None,
    all_resident: bool = True,
) -> tuple[ModelPlacement, ...]:
    """Each placement with `ollama_gpus`, `ollama_reason` and, where needed, `main_gpu` (from
    v0.30) or `ollama_shares` (before) set."""
    held: dict[int, int] = {}  # GPU index -> bytes Ollama's runners hold when the next loads
    viewed: dict[int, ModelPlacement] = {}
    order = sorted(range(len(placements)), key=lambda i: -placements[i].spec.weight_bytes)
    first = True
    for i in order:
        p = placements[i]
        if not p.placed:
            viewed[i] = p
            continue
        if version is not None and not uses_llama_server(version):
            # A model loading beside others must fit whole (server/sched.go requireFull).
            view = _legacy_view(visible, p, spread, held, version, all_resident and not first)
        else:
            view = _view(visible, p, spread, held)
            view = replace(view, ollama_reason=view.ollama_reason + _enforced(p))
        viewed[i], first = view, False
        if all_resident:  # else OLLAMA_MAX_LOADED_MODELS=1: each model loads onto emptied GPUs
            shares = view.ollama_shares if view.ollama_shares is not None else p.fit.shares
            for share in shares:
                held[share.gpu.index] = held.get(share.gpu.index, 0) + share.footprint.total_bytes
    return tuple(viewed[i] for i in range(len(placements)))


def _legacy_view(
    visible: Sequence[Gpu],
    p: ModelPlacement,
    spread: bool,
    held: dict[int, int],
    version: str,
    require_full: bool,
) -> ModelPlacement:
    num_gpu = p.num_gpu if p.num_gpu is not None else -1

    def answer(resident: dict[int, int], full: bool) -> OllamaLayers:
        sched = [SchedGpu(g.uuid, _library(g), _free(g, resident)) for g in visible]
        return legacy_layers(
            p.spec, p.settings, sched, version, num_gpu, spread, full, p.entry.num_batch
        )

    ollama = answer(held, require_full)
    if ollama.evicts:  # Ollama unloads the others until it loads onto emptied GPUs
        ollama = replace(answer({}, False), evicts=True)
    by_uuid = {g.uuid: g for g in visible}
    shares = _shares(p, [(by_uuid[uuid], layers) for uuid, layers in ollama.gpu_layers])
    gpus = tuple(s.gpu.index for s in shares)
    where = _layers_text(shares, p.spec.n_layer)
    basis = f"by Ollama {version}'s {ollama.family}" + (
        f", {ollama.sizes_note}" if ollama.sizes_note else ""
    )
    enforced = _enforced(p)
    evicts = (
        "; it does not fit whole beside the models loaded before it, so Ollama unloads them first"
        if ollama.evicts
        else ""
    )
    if _layer_sets(shares) == _layer_sets(p.fit.shares):
        why = f"Ollama will put {where} as planned ({basis}){enforced}{evicts}"
        return replace(p, ollama_gpus=gpus, ollama_reason=why)
    why = (
        f"Ollama will put {where} ({basis}), not as planned: before 0.30 no per-model setting "
        "chooses Ollama's GPUs (from 0.30 PARAMETER main_gpu does), so the memory bars show "
        "Ollama's placement"
        f"{enforced}{evicts}"
    )
    return replace(p, ollama_gpus=gpus, ollama_reason=why, ollama_shares=shares)


def _enforced(p: ModelPlacement) -> str:
    """The layer count the Modelfile makes Ollama follow, whatever its own estimate says."""
    if p.num_gpu is None:
        return ""
    return f"; PARAMETER num_gpu {p.num_gpu} enforces {p.num_gpu} layers on the GPUs"


def _shares(
    p: ModelPlacement, placed: Sequence[tuple[Gpu, tuple[int, ...]]]
) -> tuple[GpuShare, ...]:
    """Our footprint of each GPU's part of Ollama's placement (index n_layer: the output)."""
    n_layer = p.spec.n_layer
    # llama.cpp pipelines micro-batches when several GPUs hold every layer and the output.
    pipeline = len(placed) > 1 and sum(len(layers) for _, layers in placed) == n_layer + 1
    shares = []
    for gpu, layers in placed:
        footprint = device_footprint(
            p.spec,
            p.settings,
            [il for il in layers if il < n_layer],
            n_layer in layers,
            gpu.compute_capability_tuple,
            legacy_ollama=True,
            pipeline=pipeline,
            rocm=gpu.vendor == Vendor.AMD,
        )
        shares.append(GpuShare(gpu, usable_free_bytes(gpu), footprint))
    return tuple(shares)


def _layer_sets(shares: Sequence[GpuShare]) -> dict[int, tuple[tuple[int, ...], bool]]:
    return {s.gpu.index: (s.footprint.layers, s.footprint.holds_output) for s in shares}


def _layers_text(shares: Sequence[GpuShare], n_layer: int) -> str:
    """Ollama's count: the blocks and the output layer, n_layer + 1 in all."""
    total = n_layer + 1
    counts = [(s.gpu, len(s.footprint.layers) + s.footprint.holds_output) for s in shares]
    on_gpus = sum(c for _, c in counts)
    if on_gpus == 0:
        return f"all {total} layers on the CPU"
    if len(counts) == 1:
        where = gpu_label(counts[0][0])
        if on_gpus == total:
            return f"all {total} layers ({n_layer} blocks + output) on {where}"
        return f"{on_gpus} of {total} layers on {where}, {total - on_gpus} on the CPU"
    parts = ", ".join(f"{c} on {gpu_label(g)}" for g, c in counts)
    if on_gpus == total:
        return f"all {total} layers: {parts}"
    return f"{on_gpus} of {total} layers: {parts}, {total - on_gpus} on the CPU"


def _free(gpu: Gpu, resident: dict[int, int]) -> int:
    """updateFreeSpace: the reported free memory, or total less what runners hold if lower."""
    reported = gpu.memory_total_bytes - (gpu.memory_used_bytes or 0)
    return max(min(reported, gpu.memory_total_bytes - resident.get(gpu.index, 0)), 0)


def _library(gpu: Gpu) -> str:
    return "ROCm" if gpu.vendor == Vendor.AMD else "CUDA"


def _view(
    visible: Sequence[Gpu], p: ModelPlacement, spread: bool, resident: dict[int, int]
) -> ModelPlacement:
    if len(visible) <= 1:
        where = gpu_label(visible[0]) if visible else "no GPU"
        why = f"Ollama sees only {where} (its visible devices), so it runs the model there"
        return replace(p, ollama_gpus=tuple(g.index for g in visible), ollama_reason=why)
    sched = [SchedGpu(g.uuid, _library(g), _free(g, resident)) for g in visible]
    by_uuid = {g.uuid: g for g in visible}
    predicted = predicted_vram_bytes(p.spec, p.settings.ctx_tokens, p.settings.parallel)
    num_gpu = p.num_gpu if p.num_gpu is not None else -1
    choice = select_placement(sched, predicted, spread=spread, num_gpu=num_gpu)
    chosen = tuple(by_uuid[g.id].index for g in choice.gpus)
    basis = _basis(predicted, visible, sched)
    if p.fit.verdict != Verdict.SINGLE_GPU:
        why = f"Ollama runs it on {_names(visible, chosen)} ({basis}); " + (
            "llama.cpp's fit places the layers: there is no per-model split in Ollama"
        )
        return replace(p, ollama_gpus=chosen, ollama_reason=why)
    wanted = p.gpu_indices
    if chosen == wanted:
        why = f"Ollama puts it on {_names(visible, chosen)} as planned ({basis})"
        return replace(p, ollama_gpus=chosen, ollama_reason=why)
    # main_gpu indexes each library's devices (bestExplicitMainGPU): the card's place among
    # the visible cards of its own vendor.
    target = next(g for g in visible if g.index == wanted[0])
    same = [g.index for g in visible if g.vendor == target.vendor]
    position = same.index(target.index)
    pinned = select_placement(sched, predicted, spread=spread, main_gpu=position, num_gpu=num_gpu)
    would = "spread it over" if len(chosen) > 1 else "run it on"
    if tuple(by_uuid[g.id].index for g in pinned.gpus) != wanted:
        # Both vendors have a card at that place and Ollama takes the one with more free memory.
        why = (
            f"Ollama will {would} {_names(visible, chosen)} ({basis}), not as planned: "
            f"PARAMETER main_gpu {position} names a card of each vendor, so no lever pins it"
        )
        return replace(p, ollama_gpus=chosen, ollama_reason=why)
    why = (
        f"Ollama alone would {would} {_names(visible, chosen)} ({basis}); PARAMETER main_gpu "
        f"{position} (its place among the visible {_library(target)} devices) pins it to "
        f"{_names(visible, wanted)}"
    )
    return replace(p, ollama_gpus=wanted, main_gpu=position, ollama_reason=why)


def _names(visible: Sequence[Gpu], indices: Sequence[int]) -> str:
    by_index = {g.index: g for g in visible}
    return gpu_labels(by_index[i] for i in indices)


def _basis(predicted: int, visible: Sequence[Gpu], sched: Sequence[SchedGpu]) -> str:
    most = max(sched, key=lambda g: g.free_bytes)
    label = gpu_label(next(g for g in visible if g.uuid == most.id))
    return (
        f"its prediction, file + f16 KV, is {predicted / GB:.1f} GB against "
        f"{SINGLE_GPU_PERCENT}% of {most.free_bytes / GB:.1f} GB free on {label}"
    )
