"""The Ollama models of a plan (pure): pull missing bases, create missing or changed models,
remove only those provision created and no longer wants; and the warning for a stock Ollama
left running on GPUs a llama-server unit is planned on."""

from __future__ import annotations

from provision.change.actions import Action, ActionKind, Observed, Section
from provision.change.manifest import created_models
from provision.desired import DesiredState
from provision.ollama import is_registry_model, normalize_model
from provision.paths import ENABLED_STATES, OLLAMA_UNIT, RUNNING_STATES, stock_ollama_beside


def plan_models(
    desired: DesiredState, observed: Observed, dirty: set[str]
) -> tuple[Section, set[str]]:
    """Pull missing bases, create missing or changed models; and the wanted models provision
    created: those it created before, and those this plan creates where none was."""
    section = Section(observed.live)
    have = observed.ollama_models
    ours = created_models(observed.manifest)
    created = set()
    for model in desired.models:
        name = normalize_model(model.name)
        base_missing = (
            have is not None
            and is_registry_model(model.base)
            and normalize_model(model.base) not in have
        )
        if base_missing:
            section.act(ActionKind.PULL_MODEL, model.base, f"base of {model.name} is missing")
        if name in ours or (have is not None and name not in have):
            created.add(name)
        if model.modelfile_path in dirty:
            reason = f"Modelfile changed: {model.modelfile_path}"
        elif have is not None and name not in have:
            reason = "missing"
        elif have is None and observed.live:
            reason = "Ollama API not reachable: cannot tell whether it exists"
        else:
            why = "exists" if have is not None else "offline: not asked whether it exists"
            section.noop(model.name, f"{why}; Modelfile unchanged")
            continue
        section.act(ActionKind.CREATE_MODEL, model.name, reason, source=model.modelfile_path)
    return section, created


def plan_model_removals(desired: DesiredState, observed: Observed) -> tuple[Section, set[str]]:
    """Remove the models provision created that are no longer wanted (a renamed one, a dropped
    one); never one it did not create. Returns those still to remove on a later apply."""
    section = Section(observed.live)
    wanted = {normalize_model(m.name) for m in desired.models}
    have = observed.ollama_models
    kept = set()
    for name in sorted(created_models(observed.manifest) - wanted):
        if not desired.models:
            section.noop(name, "no longer wanted, but no Ollama is managed now: left in its store")
            kept.add(name)
        elif observed.live and have is None:
            section.noop(
                name, "no longer wanted; Ollama API not reachable: left for the next apply"
            )
            kept.add(name)
        elif have is not None and name not in have:
            section.noop(name, "no longer wanted and already absent")
        else:
            section.act(ActionKind.REMOVE_MODEL, name, "no longer wanted (provision created it)")
            if not observed.live:
                kept.add(name)  # skipped offline: still there for the next live apply
    return section, kept


def stock_ollama_warning(
    desired: DesiredState, observed: Observed, actions: tuple[Action, ...]
) -> tuple[str, ...]:
    """The stock Ollama left running or enabled on GPUs a llama-server unit is planned on."""
    seen = observed.units.get(OLLAMA_UNIT)
    if seen is None or not stock_ollama_beside(u.name for u in desired.units):
        return ()
    if any(a.target == OLLAMA_UNIT and a.kind is ActionKind.DISABLE for a in actions):
        return ()  # the plan itself stops and disables it
    running = seen.active in RUNNING_STATES
    if not running and seen.enabled not in ENABLED_STATES:
        return ()
    ours = {g: u.name for u in desired.units for g in u.gpu_uuids}
    devices = observed.stock_ollama_devices
    if not ours:
        return ()
    shared = sorted(ours) if not devices else sorted(set(devices) & set(ours))
    if devices and all(d.startswith("GPU-") for d in devices) and not shared:
        return ()  # it sees other GPUs only (by UUID)
    state = "running" if running else f"{seen.enabled} (it starts at boot)"
    if devices is None:
        sees = "every GPU unless its environment says otherwise (not read offline)"
    else:
        sees = ", ".join(devices) or "every GPU"
    units = sorted({ours[g] for g in shared} or set(ours.values()))
    return (
        f"{OLLAMA_UNIT} is {state} and sees {sees}, among them the GPUs of {', '.join(units)}: "
        "a model it loads takes memory the plan counted for llama-server (stop it: systemctl "
        f"disable --now {OLLAMA_UNIT}, or limit its CUDA_VISIBLE_DEVICES)",
    )
