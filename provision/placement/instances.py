"""Which service instances serve the placed models: one Ollama, one Ollama per GPU behind nginx,
or one llama-server per model with an explicit layer plan. Pure; each instance says why."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from provision import ollama, paths
from provision.errors import InputError, ProfileFieldError
from provision.hardware.classify import TraitKind, classify, gpu_label, gpu_labels
from provision.hardware.rig import Gpu, Rig, Vendor
from provision.models.estimate import KvType, Runtime
from provision.placement.decisions import Balancer, Instance, ModelPlacement
from provision.placement.fit import SAFETY_MARGIN_BYTES, GpuShare, Verdict, by_speed, fit_model
from provision.placement.ollama_levers import with_ollama_view
from provision.placement.profile import ModelEntry, Profile
from provision.placement.visibility import device_names, kfd_order, visibility_env
from provision.units import MIB

# What llama.cpp's --fit leaves free per device: the margin our own placement keeps.
FIT_TARGET_MIB = SAFETY_MARGIN_BYTES // MIB
# A llama-server model without `port:` listens on listen.port + (sha256 of its name mod this):
# its port depends on nothing but its name, so adding, removing or reordering other models never
# moves it. Two models on one port are refused rather than moved.
LLAMA_SERVER_PORT_SPAN = 1000
# Ollama's headroom for a projector's buffers beyond its weights (llm/llama_server.go).
MMPROJ_OFFLOAD_HEADROOM_BYTES = 1 << 30


@dataclass
class Layout:
    instances: tuple[Instance, ...] = ()
    models: tuple[ModelPlacement, ...] = ()
    balancer: Balancer | None = None
    warnings: list[str] = field(default_factory=list)
    disabled_units: tuple[str, ...] = ()


def instances(
    rig: Rig,
    profile: Profile,
    placements: Sequence[ModelPlacement],
    all_resident: bool,
    ollama_version: str | None,
    box: Rig | None = None,
    ollama_store: str | None = None,
) -> Layout:
    """`rig`: the GPUs models may run on; `box`: every GPU of the host (default `rig`), which
    the visibility variables must hide from a unit as much as show it its own; `ollama_store`:
    the OLLAMA_MODELS the host's own ollama.service sets (None: it sets none), which replicas
    must share, or they would not see the models pulled before."""
    box = box or rig
    if profile.runtime == Runtime.LLAMA_SERVER:
        layout = _llama_servers(box, profile, placements)
        if profile.replicas != 1:
            layout.warnings.append(
                f"replicas: {profile.replicas} is ignored: llama-server runs one server per "
                "model (replicas are Ollama instances behind nginx)"
            )
        return layout
    candidates = _replica_candidates(rig, profile, placements)
    replicas, note = _replica_gpus(rig, profile, placements, candidates)
    if replicas:
        layout = _ollama_replicas(box, profile, placements, replicas, ollama_version, ollama_store)
    else:
        layout = _ollama_single(rig, profile, placements, all_resident, ollama_version, box)
    if note:
        layout.warnings.append(note)
    return layout


def server_parallel(profile: Profile) -> int:
    """OLLAMA_NUM_PARALLEL: one value for the whole server, the largest any model asks for.

    Taken over every profile model, a left-out one too: the estimate needs it before the fit
    knows what is left out, and rendering the same value keeps the two in step."""
    return max((m.parallel for m in profile.models), default=1)


def _placed(placements: Sequence[ModelPlacement]) -> list[ModelPlacement]:
    return [p for p in placements if p.placed]


def _common_ollama_env(profile: Profile, placed: Sequence[ModelPlacement]) -> list[tuple[str, str]]:
    entries = [p.entry for p in placed] or list(profile.models)
    kv_types = {e.kv_type for e in entries}
    if len(kv_types) > 1:
        raise InputError(
            "models disagree on kv_type, but Ollama's OLLAMA_KV_CACHE_TYPE is server-wide",
            hint="give every model the same kv_type, or run them with runtime: llama-server",
        )
    env = [
        ("OLLAMA_CONTEXT_LENGTH", str(_context_length(placed, entries))),
        ("OLLAMA_NUM_PARALLEL", str(server_parallel(profile))),
        ("OLLAMA_KEEP_ALIVE", max((e.keep_alive for e in entries), key=ollama.duration_rank)),
    ]
    # Explicit either way: the estimate assumed one or the other, and Ollama's default differs
    # by version (auto since 0.30, off with per-model exceptions before).
    flash = any(p.settings.flash_attention for p in placed)
    env.append(("OLLAMA_FLASH_ATTENTION", "1" if flash else "0"))
    kv = kv_types.pop()
    if kv != KvType.F16:
        env.append(("OLLAMA_KV_CACHE_TYPE", kv.value))
    return env


def _context_length(placed: Sequence[ModelPlacement], entries: Sequence[ModelEntry]) -> int:
    """The largest context a placed model runs at (after clamping to its trained length)."""
    if placed:
        return max(p.settings.ctx_tokens for p in placed)
    return max(e.ctx for e in entries)


def _ollama_single(
    rig: Rig,
    profile: Profile,
    placements: Sequence[ModelPlacement],
    all_resident: bool,
    version: str | None,
    box: Rig,
) -> Layout:
    placed = _placed(placements)
    used = {i for p in placed for i in p.gpu_indices}
    gpus = by_speed([g for g in rig.gpus if g.index in used] or list(rig.gpus))
    if all(g.vendor == Vendor.AMD for g in gpus):
        gpus = kfd_order(gpus)  # Ollama's device positions (main_gpu) are the HIP ordinals
    listen = profile.listen
    env = [
        *visibility_env(gpus, box, version, ollama=True),
        ("OLLAMA_HOST", paths.host_port((listen.address, listen.port))),
        *_common_ollama_env(profile, placed),
        ("OLLAMA_MAX_LOADED_MODELS", str(len(placed) if all_resident else 1)),
    ]
    reasons = [f"one Ollama sees {gpu_labels(gpus)} by UUID, fastest first"]
    warnings = []
    if not all_resident:
        warnings.append(
            "not every model fits beside the others: OLLAMA_MAX_LOADED_MODELS=1, "
            "so Ollama swaps models in and out"
        )
    split = [p for p in placed if p.fit.verdict == Verdict.SPLIT]
    spread, why = _spread_decision(rig, placed, split, len(gpus))
    reasons.append(why)
    if spread:
        env.append(("OLLAMA_SCHED_SPREAD", "1"))
    tensor_split = None
    if not ollama.is_legacy_ollama(version):
        fit_target, why = _fit_target(gpus, _projector_pad_mib(placed))
        env.append(("LLAMA_ARG_FIT_TARGET", fit_target))
        reasons.append(why)
        tensor_split = _explicit_split(rig, placed, split, gpus)
        if tensor_split:
            env.append(("LLAMA_ARG_TENSOR_SPLIT", tensor_split))
            reasons.append(f"explicit split {tensor_split} for {split[0].entry.ref}")
    instance = Instance(
        runtime=Runtime.OLLAMA,
        unit=paths.OLLAMA_UNIT,
        address=listen.address,
        port=listen.port,
        gpu_uuids=tuple(g.uuid for g in gpus),
        env=tuple(env),
        reason="; ".join(reasons),
        models=tuple(p.name for p in placed),
    )
    served = [replace(p, units=(paths.OLLAMA_UNIT,) if p.placed else ()) for p in placements]
    models = with_ollama_view(gpus, served, spread, version, all_resident)
    if tensor_split:
        enforced = f"; LLAMA_ARG_TENSOR_SPLIT={tensor_split} enforces the plan's layers per GPU"
        models = tuple(
            replace(m, ollama_reason=m.ollama_reason + enforced) if m.name == split[0].name else m
            for m in models
        )
    return Layout((instance,), models, None, warnings)


def _projector_pad_mib(placed: Sequence[ModelPlacement]) -> int:
    """What Ollama would add to LLAMA_ARG_FIT_TARGET for the largest projector it may load.

    Since v0.31.2 (a6293eb51, #16996) Ollama pads the fit target by the projector's tensors
    plus 1 GiB for its buffers (llm/llama_server.go, mmprojFitTargetMiB and
    mmprojOffloadHeadroom), because llama.cpp's fit does not count the projector; but when the
    variable is already in its environment, as our unit sets it, it keeps that value as it is
    (extraEnvsForStart). So the margin we render carries the pad itself."""
    pads = [
        -(-(p.spec.projector_bytes + MMPROJ_OFFLOAD_HEADROOM_BYTES) // MIB)
        for p in placed
        if p.spec.multimodal
    ]
    return max(pads, default=0)


def _fit_target(gpus: Sequence[Gpu], projector_pad_mib: int = 0) -> tuple[str, str]:
    """LLAMA_ARG_FIT_TARGET: the margin llama.cpp's fit leaves free, per device when needed.

    On ROCm the fit reads HIP's free memory, which does not count the desktop's and other
    graphics allocations (hipMemGetInfo; llama.cpp issue #24906): an AMD card's margin is raised
    by the VRAM sysfs shows in use, in HIP order (what -fit-target's list follows). A
    multimodal model raises every margin by Ollama's projector pad (`_projector_pad_mib`)."""
    base = FIT_TARGET_MIB + projector_pad_mib
    why = f"llama.cpp's fit leaves {FIT_TARGET_MIB} MiB free per GPU" + (
        f" plus {projector_pad_mib} MiB for the vision projector (its tensors and 1 GiB, as "
        "Ollama pads it when the variable is unset)"
        if projector_pad_mib
        else ""
    )
    if not gpus or any(g.vendor != Vendor.AMD for g in gpus):
        return str(base), why
    margins = [base + (g.memory_used_bytes or 0) // MIB for g in kfd_order(gpus)]
    if len(set(margins)) == 1 and margins[0] == base:
        return str(base), why
    listed = ",".join(map(str, margins))
    return listed, (
        f"{why}, plus what the desktop and other graphics hold, which HIP's free figure "
        f"misses ({listed} MiB, HIP order)"
    )


def _spread_decision(
    rig: Rig, placed: Sequence[ModelPlacement], split: Sequence[ModelPlacement], n_gpus: int
) -> tuple[bool, str]:
    # OLLAMA_SCHED_SPREAD applies to every model: set it only when every model is split across
    # all visible GPUs, or it would spread models that fit one card.
    symmetric = rig.gpus and _is_symmetric(rig)
    if split and len(split) == len(placed) and all(len(p.gpu_indices) == n_gpus for p in split):
        if symmetric:
            return True, "spread evenly (OLLAMA_SCHED_SPREAD=1): every model needs all GPUs"
        return False, "no spread: the split follows each card's free memory"
    if split:
        return False, "no spread: other models fit one GPU and must stay on one"
    return False, "no spread: every model fits one GPU"


def _is_symmetric(rig: Rig) -> bool:
    return classify(rig).has(TraitKind.SYMMETRIC)


def _explicit_split(
    rig: Rig,
    placed: Sequence[ModelPlacement],
    split: Sequence[ModelPlacement],
    gpus: Sequence[Gpu],
) -> str | None:
    """LLAMA_ARG_TENSOR_SPLIT is server-wide: only when the one split model is the only model
    placed (Ollama hands the variable to every llama-server it starts), on an uneven rig."""
    if len(split) != 1 or len(placed) != 1 or _is_symmetric(rig):
        return None
    by_index = {s.gpu.index: s for s in split[0].fit.shares}
    if set(by_index) != {g.index for g in gpus}:
        return None
    return ",".join(str(_layer_units(by_index[g.index])) for g in gpus)


def _layer_units(share: GpuShare) -> int:
    """Layers a device runs as llama.cpp counts them: the output head is one more."""
    return len(share.footprint.layers) + int(share.footprint.holds_output)


def _replica_candidates(
    rig: Rig, profile: Profile, placements: Sequence[ModelPlacement]
) -> list[Gpu]:
    """GPUs that each hold every model on their own, fastest first. Worked out for a single
    instance too, but only when it leaves GPUs idle: that is what the idle-GPU hint needs."""
    if not placements:
        return []
    if profile.replicas == 1:
        used = {i for p in _placed(placements) for i in p.gpu_indices}
        if len(used) >= len(rig.gpus) or not used:
            return []
    candidates = []
    for gpu in by_speed(rig.gpus):
        alone = replace(rig, gpus=(gpu,))
        if all(
            fit_model(alone, p.spec, p.settings).verdict == Verdict.SINGLE_GPU for p in placements
        ):
            candidates.append(gpu)
    return candidates


def _replica_gpus(
    rig: Rig, profile: Profile, placements: Sequence[ModelPlacement], candidates: Sequence[Gpu]
) -> tuple[list[Gpu], str | None]:
    """(the GPUs that get one Ollama each, or none for one Ollama; what to tell the user).

    Replicas are built only where two or more cards hold every model; a count the rig cannot
    give is said, and so are GPUs a single Ollama leaves idle when replicas could use them."""
    held = ", ".join(str(g.index) for g in candidates) or "none"
    if profile.replicas == 1:
        used = {i for p in _placed(placements) for i in p.gpu_indices}
        idle = len(rig.gpus) - len(used)
        if idle and len(candidates) >= 2:
            return [], (
                f"{idle} of {len(rig.gpus)} GPUs idle: one Ollama serves every model from "
                f"{gpu_labels(g for g in rig.gpus if g.index in used)}; GPUs {held} each hold "
                "every model alone, so `replicas: auto` would run one Ollama per GPU behind "
                "nginx for more requests at once"
            )
        return [], None
    wanted = len(candidates) if profile.replicas == "auto" else int(profile.replicas)
    chosen = list(candidates[:wanted])
    if len(chosen) < 2:
        return [], (
            f"replicas: {profile.replicas} not built: replicas need two or more GPUs that each "
            f"hold every model alone, and this rig has {len(candidates)} ({held}); one Ollama "
            "serves every model instead"
        )
    if profile.replicas != "auto" and len(chosen) < wanted:
        return chosen, (
            f"replicas: {wanted} asked, {len(chosen)} built: only GPUs {held} each hold every "
            "model alone"
        )
    return chosen, None


def _ollama_replicas(
    rig: Rig,
    profile: Profile,
    placements: Sequence[ModelPlacement],
    gpus: Sequence[Gpu],
    version: str | None,
    store: str | None,
) -> Layout:
    listen = profile.listen
    common = _common_ollama_env(profile, placements)
    # The stock service's user is `ollama`, whose home holds the store unless it names one.
    models_dir = store or paths.OLLAMA_MODELS_DIR
    where = "the stock ollama.service's OLLAMA_MODELS" if store else "the stock service's store"
    created = []
    for n, gpu in enumerate(gpus):
        port = _derived_port(
            listen.port,
            1 + n,
            f"replica {n} (GPU {gpu.index})",
            "lower listen.port so that it plus the number of replicas is at most 65535",
        )
        env = [
            *visibility_env([gpu], rig, version, ollama=True),
            ("OLLAMA_HOST", f"127.0.0.1:{port}"),
            ("OLLAMA_MODELS", models_dir),
            *common,
            ("OLLAMA_MAX_LOADED_MODELS", str(len(placements))),
        ]
        reason = (
            f"replica {n} of {len(gpus)} on {gpu_label(gpu)}: every model fits this GPU "
            f"alone; models are stored once and shared, in {models_dir} ({where})"
        )
        replica = Instance(
            runtime=Runtime.OLLAMA,
            unit=paths.replica_unit(n),
            address="127.0.0.1",
            port=port,
            gpu_uuids=(gpu.uuid,),
            env=tuple(env),
            reason=reason,
            env_file=paths.replica_env_file(n),
            models=tuple(p.name for p in placements),
        )
        created.append(replica)
    balancer = Balancer(listen.address, listen.port, tuple((i.address, i.port) for i in created))
    units = tuple(i.unit for i in created)
    models = tuple(replace(p, units=units) for p in placements)
    return Layout(tuple(created), models, balancer, [], disabled_units=(paths.OLLAMA_UNIT,))


def _llama_servers(rig: Rig, profile: Profile, placements: Sequence[ModelPlacement]) -> Layout:
    created, models = [], []
    taken: dict[int, int] = {}
    for position, p in enumerate(placements):
        if not p.placed:
            models.append(p)
            continue
        port = _llama_server_port(profile, p, position)
        if port in taken:
            other = taken[port]
            raise InputError(
                f"models[{position}] ({p.name}) and models[{other}] ({placements[other].name}) "
                f"would both listen on port {port}",
                hint=f"give one of them its own `port:` (a model without one listens on "
                f"listen.port plus a number from 0 to {LLAMA_SERVER_PORT_SPAN - 1} its name gives)",
            )
        taken[port] = position
        instance = _llama_server(rig, profile, p, position, port)
        created.append(instance)
        models.append(replace(p, units=(instance.unit,)))
    return Layout(tuple(created), tuple(models))


def _llama_server_port(profile: Profile, p: ModelPlacement, position: int) -> int:
    """The model's `port:`, else listen.port plus a number its name alone gives."""
    if p.entry.port is not None:
        return p.entry.port
    digest = hashlib.sha256(p.name.encode()).digest()
    offset = int.from_bytes(digest[:4], "big") % LLAMA_SERVER_PORT_SPAN
    return _derived_port(
        profile.listen.port,
        offset,
        f"models[{position}] ({p.name})",
        f"lower listen.port to at most {65536 - LLAMA_SERVER_PORT_SPAN}, or give the model "
        "its own `port:`",
    )


def _derived_port(base: int, offset: int, what: str, hint: str) -> int:
    """listen.port + offset, which must still be a TCP port."""
    port = base + offset
    if port > 65535:
        raise InputError(
            f"listen.port: {what} would listen on port {port}, past 65535 "
            f"(listen.port {base} + {offset})",
            hint=hint,
        )
    return port


def _model_path(p: ModelPlacement, position: int) -> str:
    if p.entry.path:
        return p.entry.path
    if p.entry.ref.endswith(".gguf") and p.entry.ref.startswith("/"):
        return p.entry.ref
    raise ProfileFieldError(
        f"models[{position}].path",
        f"llama-server needs the GGUF file to load for {p.entry.ref}",
        hint="add `path: /srv/models/<file>.gguf` to that model (relative to the profile file)",
    )


def _llama_server(
    rig: Rig, profile: Profile, p: ModelPlacement, position: int, port: int
) -> Instance:
    shares = p.fit.shares
    s = p.settings
    args = ["-m", _model_path(p, position), "--alias", p.name, "--host", profile.listen.address,
            "--port", str(port), "-c", str(s.ctx_tokens), "-np", str(s.parallel), "--kv-unified",
            "-fa", "on" if s.flash_attention else "off"]  # fmt: skip
    if s.kv_type != KvType.F16:
        args += ["-ctk", s.kv_type.value, "-ctv", s.kv_type.value]
    if p.entry.num_batch:
        args += ["-b", str(p.entry.num_batch)]
    if p.entry.mmproj:
        # The projector goes to the first device of the split: its weights and graph are
        # counted there (estimate.device_footprint, holds_projector).
        args += ["--mmproj", p.entry.mmproj]
    # An explicit plan (never mixed with --fit): devices in split order, layers per device.
    offloaded = sum(_layer_units(sh) for sh in shares)
    gpus = [sh.gpu for sh in shares]
    args += ["--device", ",".join(device_names(gpus))]
    args += ["-ngl", "all" if not p.fit.cpu_layers else str(offloaded)]
    if len(shares) > 1:
        args += ["-sm", "layer", "-ts", ",".join(str(_layer_units(sh)) for sh in shares)]
    else:
        args += ["-sm", "none"]
    # --device selects the cards itself: no version-dependent override list is known for a
    # llama.cpp build, so the newest Ollama's targets stand for "what ROCm builds ship".
    env = tuple(visibility_env(gpus, rig, None, ollama=False))
    return Instance(
        runtime=Runtime.LLAMA_SERVER,
        unit=paths.llama_server_unit(p.name),
        address=profile.listen.address,
        port=port,
        gpu_uuids=tuple(sh.gpu.uuid for sh in shares),
        env=env,
        reason=f"{p.entry.ref}: {p.fit.reason}",
        args=tuple(args),
        models=(p.name,),
    )
