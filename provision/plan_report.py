"""A Placement for people (`provision plan`) and for machines (`plan --json`). Pure."""

from __future__ import annotations

from typing import Any

from provision.classify import short_name
from provision.desired import DesiredState
from provision.fit import gib, usable_free_bytes
from provision.placement import Placement
from provision.show import BAR_LEGEND, memory_bar, traits_text
from provision.typed_load import to_plain


def plan_to_plain(placement: Placement, desired: DesiredState) -> dict[str, Any]:
    profile = placement.profile
    return {
        "profile": profile.name,
        "runtime": profile.runtime.value,
        "ollama_version": placement.ollama_version,
        "instances": [
            {
                "runtime": i.runtime.value,
                "unit": i.unit,
                "address": i.address,
                "port": i.port,
                "gpu_uuids": list(i.gpu_uuids),
                "env": dict(i.env),
                "args": list(i.args),
                "models": list(i.models),
                "reason": i.reason,
            }
            for i in placement.instances
        ],
        "models": [
            {
                "name": m.name,
                "ref": m.entry.ref,
                "verdict": m.fit.verdict.value,
                "gpus": list(m.gpu_indices),
                "gpu_uuids": [s.gpu.uuid for s in m.fit.shares],
                "layers_per_gpu": list(m.layers_per_gpu),
                "cpu_layers": len(m.fit.cpu_layers),
                "num_gpu": m.num_gpu,
                "units": list(m.units),
                "reason": m.fit.reason,
                "suggestions": list(m.fit.suggestions),
            }
            for m in placement.models
        ],
        "power": [
            {
                "index": d.index,
                "uuid": d.uuid,
                "target_w": d.target_w,
                "default_w": d.default_w,
                "reason": d.reason,
            }
            for d in placement.power
        ],
        "balancer": to_plain(placement.balancer),
        "disabled_units": list(placement.disabled_units),
        "traits": to_plain(placement.traits.traits),
        "warnings": list(placement.warnings),
        "files": [f.path for f in desired.files],
    }


def _gpu_bars(placement: Placement) -> list[str]:
    totals: dict[int, list[int]] = {g.index: [0, 0, 0, 0] for g in placement.rig.gpus}
    index_by_uuid = {g.uuid: g.index for g in placement.rig.gpus}
    for model in placement.models:
        for share in model.fit.shares:
            f = share.footprint
            # Replicas each hold the whole model on their own GPU.
            replicas = (
                [i for i in placement.instances if len(i.gpu_uuids) == 1]
                if (placement.balancer)
                else []
            )
            targets = [index_by_uuid[i.gpu_uuids[0]] for i in replicas] or [share.gpu.index]
            for index in targets:
                for k, value in enumerate(
                    (f.weights_bytes, f.kv_bytes, f.compute_bytes, f.overhead_bytes)
                ):
                    totals[index][k] += value
    lines = [f"  {BAR_LEGEND}"]
    for gpu in placement.rig.gpus:
        parts = totals[gpu.index]
        free = usable_free_bytes(gpu)
        lines.append(
            f"  GPU {gpu.index} {short_name(gpu):<14} {memory_bar(parts, free)} "
            f"{gib(sum(parts))} / {gib(free)}"
        )
    return lines


def plan_text(placement: Placement, desired: DesiredState) -> str:
    p = placement.profile
    lines = [f"profile {p.name} ({p.source}): runtime {p.runtime}", "", "traits:",
             traits_text(placement.traits), "", "models:"]  # fmt: skip
    for m in placement.models:
        where = ",".join(map(str, m.gpu_indices)) or "-"
        lines.append(f"  {m.entry.ref} -> {m.name}: {m.fit.verdict} on GPU {where}")
        lines.append(f"      {m.fit.reason}")
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
