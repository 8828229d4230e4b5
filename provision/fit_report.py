"""A FitResult for people (bars, reasons) and for machines (the `fit --json` document). Pure."""

from __future__ import annotations

from typing import Any

from provision.classify import short_name
from provision.fit import FitResult, gib
from provision.show import BAR_LEGEND, memory_bar


def fit_to_plain(result: FitResult) -> dict[str, Any]:
    spec, settings = result.model, result.settings
    gpus = [
        {
            "index": s.gpu.index,
            "uuid": s.gpu.uuid,
            "name": s.gpu.name,
            "layers": len(s.footprint.layers),
            "holds_output": s.footprint.holds_output,
            "weights_bytes": s.footprint.weights_bytes,
            "kv_bytes": s.footprint.kv_bytes,
            "compute_bytes": s.footprint.compute_bytes,
            "overhead_bytes": s.footprint.overhead_bytes,
            "total_bytes": s.footprint.total_bytes,
            "free_bytes": s.free_bytes,
        }
        for s in result.shares
    ]
    totals = {
        key: sum(g[key] for g in gpus)  # type: ignore[misc]
        for key in (
            "weights_bytes",
            "kv_bytes",
            "compute_bytes",
            "overhead_bytes",
            "total_bytes",
            "free_bytes",
        )
    }
    return {
        "model": spec.name,
        "source": spec.source,
        "architecture": spec.architecture,
        "quant": spec.quant,
        "n_layer": spec.n_layer,
        "settings": {
            "runtime": settings.runtime.value,
            "ctx": settings.ctx_tokens,
            "parallel": settings.parallel,
            "kv_type": settings.kv_type.value,
            "flash_attention": settings.flash_attention,
            "ubatch": settings.ubatch,
        },
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
            (f.weights_bytes, f.kv_bytes, f.compute_bytes, f.overhead_bytes), share.free_bytes
        )
        layers = f"{len(f.layers)} layers" + (" + output" if f.holds_output else "")
        lines.append(
            f"  GPU {share.gpu.index} {short_name(share.gpu):<14} {bar} "
            f"{gib(f.total_bytes)} / {gib(share.free_bytes)}  ({layers}: weights "
            f"{gib(f.weights_bytes)}, KV {gib(f.kv_bytes)}, compute {gib(f.compute_bytes)}, "
            f"overhead {gib(f.overhead_bytes)})"
        )
    if result.cpu_layers:
        lines.append(f"  CPU: {len(result.cpu_layers)} layers, {gib(result.cpu_bytes)}")
    if not spec.kv_known:
        lines.append(f"  KV estimate unknown: architecture '{spec.architecture}' is not modelled")
    if result.suggestions:
        lines += ["", "what would fit entirely on the GPUs:"]
        lines += [f"  - {s}" for s in result.suggestions]
    return "\n".join(lines)
