"""Rig + profile + model specs -> Placement: which instance runs which model where, and why.

Pure. Implements docs/ARCHITECTURE.md §5: a model that fits one GPU stays on one GPU; a larger
one is split over the fewest, fastest GPUs; throughput profiles get one Ollama per GPU behind
nginx; a model that does not fit is left out (never rendered to OOM) with what would fit;
power limits are clamped to NVML's range. Every decision carries its reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from provision import ollama, paths
from provision.errors import InputError, ProfileFieldError
from provision.hardware.classify import RigTraits, TraitKind, classify, gpu_label, gpu_labels
from provision.hardware.rig import Gpu, Rig
from provision.models.estimate import KvType, RunSettings, Runtime
from provision.models.spec import ModelSpec
from provision.placement import instances, power
from provision.placement.decisions import ModelPlacement, Placement
from provision.placement.fit import (
    FitResult,
    Verdict,
    fit_model,
    ollama_enables_flash_attention,
    resident_bytes,
    whole_fit,
)
from provision.placement.instances import server_parallel
from provision.placement.profile import ModelEntry, Profile

WHOLE = (Verdict.SINGLE_GPU, Verdict.SPLIT)


def settings_for(
    entry: ModelEntry, profile: Profile, flash_ok: bool = True, ctx_train: int | None = None
) -> RunSettings:
    """The settings the runtime will really use for this model. Ollama's parallelism is
    server-wide: a model asking for 1 stream under OLLAMA_NUM_PARALLEL=4 allocates 4; and
    flash attention is on only where the runtime enables it on these GPUs (`flash_ok`)."""
    quantized = entry.kv_type != KvType.F16
    ollama = profile.runtime == Runtime.OLLAMA
    return RunSettings(
        # Above the trained length a model degrades; Ollama caps num_ctx there too.
        ctx_tokens=min(entry.ctx, ctx_train) if ctx_train else entry.ctx,
        parallel=server_parallel(profile) if ollama else entry.parallel,
        kv_type=entry.kv_type,
        runtime=profile.runtime,
        flash_attention=(profile.flash_attention or quantized) and flash_ok,
        batch=max(entry.num_batch or 2048, 1),
        ubatch=min(entry.num_batch or 512, 512),
    )


def one_model_settings(
    rig: Rig, entry: ModelEntry, runtime: Runtime, spec: ModelSpec
) -> tuple[RunSettings, list[str]]:
    """What `provision fit` runs one model with, by the rules `plan` uses for a profile of just
    that model: flash attention only where the runtime enables it on these GPUs, the context
    clamped to the trained length. (The warnings say where either applied.)"""
    profile = Profile(runtime=runtime, models=(entry,))
    warnings: list[str] = []
    flash_ok = _flash_attention_ok(rig, profile, rig.host.runtimes.get("ollama"), warnings)
    warnings += _context_warnings(profile, {entry.ref: spec})
    return settings_for(entry, profile, flash_ok, spec.ctx_train), warnings


def _pinned_rig(rig: Rig, entry: ModelEntry, at: str) -> Rig:
    if entry.gpus is None:
        return rig
    known = {g.index for g in rig.gpus}
    missing = sorted(set(entry.gpus) - known)
    if missing:
        raise ProfileFieldError(
            f"{at}.gpus",
            f"GPU {missing[0]} is not in this rig (it has {sorted(known)})",
            hint="pin to indices that 'provision probe' lists",
        )
    return replace(rig, gpus=tuple(g for g in rig.gpus if g.index in entry.gpus))


def _with_resident(rig: Rig, placed: Sequence[FitResult]) -> Rig:
    """The rig as the next model sees it: earlier models' footprints count as used."""
    used = resident_bytes(placed)
    gpus = tuple(
        replace(
            g,
            memory_used_bytes=min(
                (g.memory_used_bytes or 0) + used.get(g.index, 0), g.memory_total_bytes
            ),
        )
        for g in rig.gpus
    )
    return replace(rig, gpus=gpus)


def _fit_beside(
    rig: Rig, resident: Sequence[FitResult], spec: ModelSpec, settings: RunSettings, legacy: bool
) -> tuple[FitResult, bool]:
    """The fit beside the models already resident, or alone; (result, resident with them).

    Alone on the rig a model may fit one GPU: then it is never split (the runtime swaps models
    instead), and it never offloads what the GPUs could hold on their own. The full fit beside
    the others (partial offload, suggestions) is computed only when neither fits whole.
    """
    beside = _with_resident(rig, resident)
    result = whole_fit(beside, spec, settings, legacy)
    if result is not None and result.verdict == Verdict.SINGLE_GPU:
        return result, True
    alone = fit_model(rig, spec, settings, legacy)
    if alone.verdict == Verdict.SINGLE_GPU or (result is None and alone.verdict in WHOLE):
        return alone, False
    if result is None:
        result = fit_model(beside, spec, settings, legacy)
    return result, True


def _fit_all(
    rig: Rig, profile: Profile, specs: Mapping[str, ModelSpec], legacy: bool, flash_ok: bool
) -> tuple[list[tuple[int, FitResult]], bool]:
    """Fit models largest first, each beside those already resident; (results, all resident)."""
    order = sorted(
        range(len(profile.models)),
        key=lambda i: -specs[profile.models[i].ref].weight_bytes,
    )
    resident: list[FitResult] = []
    results: list[tuple[int, FitResult]] = []
    all_resident = True
    for i in order:
        entry = profile.models[i]
        own_rig = _pinned_rig(rig, entry, f"models[{i}]")
        settings = settings_for(entry, profile, flash_ok, specs[entry.ref].ctx_train)
        result, resident_too = _fit_beside(own_rig, resident, specs[entry.ref], settings, legacy)
        all_resident = all_resident and resident_too
        if result.verdict != Verdict.NO_FIT:
            resident.append(result)  # offloaded layers occupy their GPUs too
        results.append((i, result))
    return sorted(results, key=lambda pair: pair[0]), all_resident


def place(
    rig: Rig,
    profile: Profile,
    specs: Mapping[str, ModelSpec],
    sysfs_root: str = "/sys",
    ollama_store: str | None = None,
) -> Placement:
    """`specs` maps each profile model's ref to its ModelSpec (resolved by the caller);
    `sysfs_root` is the target's sysfs, below which AMD power caps are written;
    `ollama_store` is the model store the host's own ollama.service sets, if it sets one."""
    traits = classify(rig)
    version = rig.host.runtimes.get("ollama")
    legacy = profile.runtime == Runtime.OLLAMA and ollama.is_legacy_ollama(version)
    warnings = [t.reason for t in traits.warnings]
    rig_for_models = _runnable(rig, profile, traits, warnings)
    flash_ok = _flash_attention_ok(rig_for_models, profile, version, warnings)
    fits, all_resident = _fit_all(rig_for_models, profile, specs, legacy, flash_ok)
    warnings += _parallel_warnings(profile) + _context_warnings(profile, specs)
    warnings += _architecture_warnings(profile, specs)
    if not profile.is_loopback:
        warnings.append(_exposure_warning(profile))
    placements = [
        _model_placement(profile, entry, specs[entry.ref], fit)
        for entry, fit in ((profile.models[i], f) for i, f in fits)
    ]
    for mp in placements:
        if not mp.placed:
            warnings.append(
                f"{mp.entry.ref} left out: {mp.fit.reason}; what would fit: "
                + "; ".join(mp.fit.suggestions)
            )
    layout = instances.instances(
        rig_for_models, profile, placements, all_resident, version, rig, ollama_store
    )
    decided = power.decide(rig, profile, sysfs_root)
    warnings += layout.warnings + decided.warnings
    return Placement(
        profile=profile,
        rig=rig,
        traits=traits,
        ollama_version=version,
        instances=layout.instances,
        models=layout.models,
        power=decided.decisions,
        balancer=layout.balancer,
        warnings=tuple(warnings),
        disabled_units=layout.disabled_units,
    )


def _runnable(rig: Rig, profile: Profile, traits: RigTraits, warnings: list[str]) -> Rig:
    """The GPUs the runtime can run models on. An AMD iGPU, or a card ROCm cannot use, is never
    one; a card below Ollama's floor is left out of Ollama's, unless there is nothing else."""
    if not rig.gpus:
        # Every setting would be for GPUs that are not there, and the models would run on the
        # CPU: say so instead of planning for it.
        raise InputError(
            "no GPU on this rig: gpu-provision plans GPU inference, and every model would run "
            "on the CPU",
            hint="check the driver (nvidia-smi, or lsmod | grep amdgpu) and probe again, or "
            "plan for a recorded rig with --rig FILE",
        )
    _refuse_mig(rig, profile)
    unusable = {g.index for g in rig.gpus if _never_runs_models(g)}
    if len(unusable) == len(rig.gpus):
        why = "; ".join(f"{gpu_label(g)}: {_never_runs_models(g)}" for g in rig.gpus)
        raise InputError(
            f"no GPU here can run models ({why}): every model would run on the CPU",
            hint="'provision probe' shows each card's traits; a supported card or driver is needed",
        )
    below = traits.get(TraitKind.BELOW_RUNTIME_FLOOR)
    if profile.runtime == Runtime.OLLAMA and below is not None:
        supported = [g for g in rig.gpus if g.index not in below.gpus and g.index not in unusable]
        if supported:
            # Ollama would fall back to the CPU there; on a rig of only such cards (a K80 box
            # with a legacy build) they are all that there is, so they stay.
            unusable |= set(below.gpus)
            left_out = gpu_labels(g for g in rig.gpus if g.index in below.gpus)
            warnings.append(f"{left_out} left out of Ollama's GPUs: below its support floor")
    return replace(rig, gpus=tuple(g for g in rig.gpus if g.index not in unusable))


def _refuse_mig(rig: Rig, profile: Profile) -> None:
    """A MIG-enabled card is refused while a model may land on it.

    With MIG on, CUDA enumerates only the card's MIG devices, named MIG-<uuid> in
    CUDA_VISIBLE_DEVICES (CUDA C Programming Guide, "CUDA Environment Variables"); the GPU's
    own UUID there shows a unit nothing to run on. The snapshot records no MIG devices (NVML's
    mode only), so there is nothing right to write: the fix is to turn MIG off, or to keep the
    card out of every model's `gpus:`.
    """
    mig = [g for g in rig.gpus if g.mig_enabled]
    used = [g for g in mig if any(m.gpus is None or g.index in m.gpus for m in profile.models)]
    if not used:
        return
    gpu = used[0]
    others = [g.index for g in rig.gpus if not g.mig_enabled]
    keep_off = f", or pin every model to other GPUs with `gpus: {others}` in the profile"
    raise InputError(
        f"{gpu_label(gpu)} has MIG enabled: CUDA sees only its MIG devices (MIG-<uuid>), which "
        "the rig snapshot does not list, so no unit can be given this card",
        hint=f"disable MIG: sudo nvidia-smi -i {gpu.index} -mig 0, then reset the GPU "
        f"(sudo nvidia-smi -i {gpu.index} -r) or reboot, and probe again"
        + (keep_off if others else ""),
    )


def _never_runs_models(gpu: Gpu) -> str | None:
    """Why a card can never run a model (an AMD iGPU, a card ROCm cannot use), or None."""
    if gpu.mig_enabled:
        return "MIG enabled: CUDA sees only its MIG devices"
    if gpu.amd is not None and gpu.amd.integrated:
        return "an integrated GPU"
    if gpu.amd is not None and not gpu.amd.rocm_usable:
        return f"not usable by ROCm ({gpu.amd.rocm_reason or 'KFD does not list it'})"
    return None


def _flash_attention_ok(
    rig: Rig, profile: Profile, version: str | None, warnings: list[str]
) -> bool:
    """Whether the runtime will run flash attention on these GPUs; a quantized KV cache, which
    needs it, is refused where it will not."""
    if profile.runtime != Runtime.OLLAMA:
        return True  # llama-server gets -fa on|off on its command line
    if ollama_enables_flash_attention(rig, version):
        return True
    wanted = [m for m in profile.models if m.kv_type != KvType.F16]
    cards = ", ".join(f"{gpu_label(g)} (CC {g.compute_capability or '?'})" for g in rig.gpus)
    if wanted:
        raise ProfileFieldError(
            f"models[{profile.models.index(wanted[0])}].kv_type",
            f"{wanted[0].kv_type} needs flash attention, which Ollama {version or '(current)'} "
            f"does not enable on {cards}",
            hint="use kv_type: f16, or run the model with runtime: llama-server",
        )
    if profile.flash_attention:
        warnings.append(
            f"flash attention off: Ollama {version or '(current)'} does not enable it on "
            f"{cards}; every model is estimated without it (larger compute buffers)"
        )
    return False


def _exposure_warning(profile: Profile) -> str:
    where = f"listening on {profile.listen.address}"
    if profile.runtime == Runtime.LLAMA_SERVER:
        # llama-server checks a key only when it is given one (--api-key or --api-key-file).
        return (
            f"{where}: llama-server answers anyone who reaches the port unless it is started "
            "with --api-key (or --api-key-file); keep it on loopback or put a proxy with "
            "authentication in front"
        )
    return (
        f"{where}: the API has no authentication; anyone who reaches this port can run and "
        "delete models (set OLLAMA_ORIGINS for browser clients)"
    )


def _context_warnings(profile: Profile, specs: Mapping[str, ModelSpec]) -> list[str]:
    warnings = []
    for m in profile.models:
        trained = specs[m.ref].ctx_train
        if trained and m.ctx > trained:
            warnings.append(
                f"{m.ref}: ctx {m.ctx} is above the {trained} tokens it was trained on: "
                f"planned and rendered at {trained} (the model keeps its name)"
            )
    return warnings


def _architecture_warnings(profile: Profile, specs: Mapping[str, ModelSpec]) -> list[str]:
    """A model whose cache layout the estimate does not model (llama4's chunked attention, a
    vision model's own architecture string): the plan says so, not only `fit`."""
    seen: dict[str, str] = {}
    for m in profile.models:
        spec = specs[m.ref]
        if not spec.kv_known:
            seen.setdefault(m.ref, spec.architecture)
    return [
        f"{ref}: architecture '{arch}' is not modelled: its weights are counted from its "
        "tensors but its KV cache and compute buffer follow the plain transformer rule, so its "
        "memory may be underestimated; measure a real load before relying on the margin"
        for ref, arch in seen.items()
    ]


def _parallel_warnings(profile: Profile) -> list[str]:
    asked = sorted({m.parallel for m in profile.models})
    if profile.runtime != Runtime.OLLAMA or len(asked) < 2:
        return []
    widest = server_parallel(profile)
    return [
        f"models ask for parallel {', '.join(map(str, asked))}, but Ollama's OLLAMA_NUM_PARALLEL "
        f"is server-wide: every model is estimated and served with {widest} streams (give "
        "them one value, or run them with runtime: llama-server)"
    ]


def _model_placement(
    profile: Profile, entry: ModelEntry, spec: ModelSpec, fit: FitResult
) -> ModelPlacement:
    num_gpu = None
    if fit.verdict == Verdict.PARTIAL_OFFLOAD:
        # num_gpu counts offloaded layers in total, the output head included (not per GPU).
        num_gpu = sum(len(s.footprint.layers) + s.footprint.holds_output for s in fit.shares)
    if profile.runtime == Runtime.OLLAMA:
        name = ollama.model_name(entry.ref, entry.name)
        modelfile = paths.modelfile_path(name)
    else:
        name, modelfile = entry.name or entry.ref, None
    return ModelPlacement(
        entry=entry,
        name=name,
        spec=spec,
        fit=fit,
        settings=fit.settings,  # the settings the fit was made with, computed once
        units=(),
        modelfile_path=modelfile if fit.verdict != Verdict.NO_FIT else None,
        num_gpu=num_gpu,
    )
