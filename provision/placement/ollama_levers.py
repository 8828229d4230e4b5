"""Where we want each model against where the installed Ollama will put it, and the lever. Pure.

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
from provision.placement.decisions import ModelPlacement
from provision.placement.fit import FitResult, Verdict, resident_bytes
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
    """Each placement with `ollama_gpus`, `ollama_reason` and, where needed, `main_gpu` set."""
    if not uses_llama_server(version):
        why = f"Ollama {version} places models with its own estimate, which is not modelled here"
        return tuple(replace(p, ollama_reason=why) if p.placed else p for p in placements)
    loaded: list[FitResult] = []  # what Ollama's runners hold when the next model loads
    viewed: dict[int, ModelPlacement] = {}
    order = sorted(range(len(placements)), key=lambda i: -placements[i].spec.weight_bytes)
    for i in order:
        p = placements[i]
        if not p.placed:
            viewed[i] = p
            continue
        viewed[i] = _view(visible, p, spread, resident_bytes(loaded))
        if all_resident:  # else OLLAMA_MAX_LOADED_MODELS=1: each model loads onto emptied GPUs
            loaded.append(p.fit)
    return tuple(viewed[i] for i in range(len(placements)))


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
