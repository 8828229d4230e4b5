"""Placement -> DesiredState: the files, unit actions, power limits and Ollama models. Pure.

Templates in `templates/` hold loops and conditionals only; every value leaves through a quoting
filter of `provision.render.filters`, and a value that cannot be quoted safely becomes an
InputError naming it (exit 2). Output is deterministic: files sorted by path, no timestamps and
no reasons in the files (a reworded reason must not change a unit and restart a service; the
reasons are in `provision plan`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from provision.desired import (
    MANAGED_HEADER,
    DesiredFile,
    DesiredLoad,
    DesiredModel,
    DesiredPower,
    DesiredShare,
    DesiredState,
    DesiredUnit,
)
from provision.errors import InputError
from provision.models import catalog
from provision.models.estimate import Runtime
from provision.paths import (
    AMDGPU_POWER_SCRIPT,
    INSTANCE_ENV_DIR,
    LLAMA_SERVER_BIN,
    NGINX_UNIT,
    NVIDIA_SMI,
    OLLAMA_BIN,
    OLLAMA_DROPIN,
    OLLAMA_TEMPLATE_UNIT,
    POWER_RESUME_UNIT,
    POWER_UNIT,
    SLEEP_TARGETS,
    UPSTREAM_HEADER,
    unit_file,
)
from provision.placement.decisions import Balancer, Instance, ModelPlacement, Placement
from provision.render.templates import environment


def _render(template: str, path: str, **context: Any) -> str:
    try:
        return environment().get_template(template).render(header=MANAGED_HEADER, **context)
    except ValueError as exc:
        raise InputError(
            f"cannot render {path}: {exc}",
            hint="change that value in the profile: rendered files take only values they can quote",
        ) from None


def render(placement: Placement) -> DesiredState:
    power_unit = POWER_UNIT if placement.power else None
    files: list[DesiredFile] = []
    units = [DesiredUnit(name, enabled=False, active=False) for name in placement.disabled_units]
    if placement.power:
        files.append(_power_file(placement))
        units.append(DesiredUnit(POWER_UNIT, oneshot=True))
    if any(p.device for p in placement.power):
        files += _amd_power_files()
        # Enabled, not run now: it runs after a resume.
        units.append(DesiredUnit(POWER_RESUME_UNIT, active=False, oneshot=True))
    files += _instance_files(placement.instances, power_unit)
    units += [
        DesiredUnit(i.unit, listen=(i.address, i.port), gpu_uuids=i.gpu_uuids)
        for i in placement.instances
    ]
    if placement.balancer is not None:
        files.append(_nginx_file(placement.balancer))
        balancer = placement.balancer
        units.append(DesiredUnit(NGINX_UNIT, listen=(balancer.address, balancer.port)))
    models = [m for m in placement.models if m.modelfile_path is not None]
    files += [_modelfile(m) for m in models]
    return DesiredState(
        files=tuple(sorted(files, key=lambda f: f.path)),
        units=tuple(units),
        power=tuple(
            DesiredPower(p.uuid, p.target_w, p.default_w, p.reason, p.device)
            for p in placement.power
        ),
        models=tuple(
            DesiredModel(m.name, m.modelfile_path or "", _modelfile_base(m)) for m in models
        ),
        loads=tuple(_loads(placement)),
    )


def _loads(placement: Placement) -> list[DesiredLoad]:
    """Each placed model on each service that serves it, with what the plan puts on each GPU.

    A replica runs the model on its own GPU: the fit's single share moves there."""
    by_unit = {i.unit: i for i in placement.instances}
    loads = []
    for model in placement.models:
        if not model.placed:
            continue
        for unit in model.units:
            instance = by_unit[unit]
            shares = [
                DesiredShare(
                    uuid=s.gpu.uuid,
                    index=s.gpu.index,
                    footprint_bytes=s.footprint.total_bytes,
                    layers=len(s.footprint.layers),
                )
                for s in model.fit.shares
            ]
            own = instance.gpu_uuids
            if len(shares) == 1 and len(own) == 1 and shares[0].uuid != own[0]:
                gpu = next(g for g in placement.rig.gpus if g.uuid == own[0])
                shares = [replace(shares[0], uuid=gpu.uuid, index=gpu.index)]
            ollama = instance.runtime == Runtime.OLLAMA
            loads.append(
                DesiredLoad(
                    model=model.name,
                    unit=unit,
                    runtime=str(instance.runtime),
                    keep_alive=model.entry.keep_alive if ollama else None,
                    shares=tuple(shares),
                    cpu_layers=len(model.fit.cpu_layers),
                    cpu_bytes=model.fit.cpu_bytes,
                )
            )
    return loads


def _instance_files(instances: Iterable[Instance], power_unit: str | None) -> list[DesiredFile]:
    files = []
    replicas = []
    for instance in instances:
        if instance.runtime == Runtime.LLAMA_SERVER:
            files.append(_llama_server_file(instance, power_unit))
        elif instance.env_file is not None:
            replicas.append(instance.unit)
            files.append(_env_file(instance))
        else:
            files.append(_ollama_dropin(instance, power_unit))
    if replicas:
        content = _render(
            "ollama@.service.j2",
            OLLAMA_TEMPLATE_UNIT,
            power_unit=power_unit,
            ollama_bin=OLLAMA_BIN,
            env_dir=INSTANCE_ENV_DIR,
        )
        files.append(DesiredFile(OLLAMA_TEMPLATE_UNIT, content, restarts=tuple(replicas)))
    return files


def _ollama_dropin(instance: Instance, power_unit: str | None) -> DesiredFile:
    content = _render(
        "ollama-dropin.conf.j2", OLLAMA_DROPIN, instance=instance, power_unit=power_unit
    )
    return DesiredFile(OLLAMA_DROPIN, content, restarts=(instance.unit,))


def _env_file(instance: Instance) -> DesiredFile:
    path = instance.env_file or ""
    content = _render("instance-env.j2", path, instance=instance)
    return DesiredFile(path, content, restarts=(instance.unit,))


def _llama_server_file(instance: Instance, power_unit: str | None) -> DesiredFile:
    path = unit_file(instance.unit)
    content = _render(
        "llama-server.service.j2",
        path,
        instance=instance,
        power_unit=power_unit,
        llama_server_bin=LLAMA_SERVER_BIN,
    )
    return DesiredFile(path, content, restarts=(instance.unit,))


def _power_file(placement: Placement) -> DesiredFile:
    path = unit_file(POWER_UNIT)
    content = _render(
        "gpu-power-limits.service.j2",
        path,
        power=placement.power,
        before=[i.unit for i in placement.instances],
        nvidia_smi=NVIDIA_SMI,
        nvidia=any(p.device is None for p in placement.power),
        amd=any(p.device for p in placement.power),
        amd_script=AMDGPU_POWER_SCRIPT,
    )
    # Restarting the oneshot runs ExecStop (defaults back) and then ExecStart (new limits).
    return DesiredFile(path, content, restarts=(POWER_UNIT,))


def _amd_power_files() -> list[DesiredFile]:
    script = _render("amdgpu-power-cap.sh.j2", AMDGPU_POWER_SCRIPT)
    resume_path = unit_file(POWER_RESUME_UNIT)
    resume = _render(
        "gpu-power-limits-resume.service.j2",
        resume_path,
        power_unit=POWER_UNIT,
        sleep_targets=SLEEP_TARGETS,
    )
    # A changed script takes effect at the next start of the power unit, which reads it.
    return [
        DesiredFile(AMDGPU_POWER_SCRIPT, script, mode=0o755, restarts=(POWER_UNIT,)),
        DesiredFile(resume_path, resume),
    ]


def _nginx_file(balancer: Balancer) -> DesiredFile:
    content = _render(
        "nginx-ollama.conf.j2", balancer.path, balancer=balancer, upstream_header=UPSTREAM_HEADER
    )
    return DesiredFile(balancer.path, content, reloads=(NGINX_UNIT,))


def _modelfile_base(model: ModelPlacement) -> str:
    """What FROM names: the GGUF file when the profile gives one, else the model as Ollama's
    registry names it."""
    return model.entry.path or catalog.ollama_ref(model.entry.ref)


def _modelfile(model: ModelPlacement) -> DesiredFile:
    path = model.modelfile_path or ""
    content = _render("Modelfile.j2", path, model=model, base=_modelfile_base(model))
    # No restart: a changed Modelfile is applied by `ollama create` (DesiredState.models).
    return DesiredFile(path, content)
