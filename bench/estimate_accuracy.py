"""The memory estimate against what real llama.cpp allocated, per device and per component.

Reads tests/data/llama_measurements.json (bench/measure_llama.py: real llama-server loads, each
GPU stood in for by a ggml-rpc-server device) and tests/data/measured_models.json (the ModelSpec
of each measured GGUF, so that no model file is needed here), estimates every run with
provision.models.estimate in the same layout, and prints the error of each component. Targets (issue
3): weights and KV within 1%, compute within 10%, per-device total within 3%.

  python bench/estimate_accuracy.py            # the table and the worst errors
  python bench/estimate_accuracy.py --check    # exit 1 when a target is missed (CI)
  python bench/estimate_accuracy.py --write    # also rewrite bench/ACCURACY.md
  python bench/estimate_accuracy.py --refresh-specs   # re-read the GGUFs (needs the cache)
  python bench/estimate_accuracy.py --real-logs [--check] [--write]
      # published CUDA load logs (bench/real_logs.yaml): no component underestimated by > 5%
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from provision.models.estimate import (  # noqa: E402
    KvType,
    RunSettings,
    Runtime,
    assign_layers,
    device_footprint,
)
from provision.models.spec import ModelSpec  # noqa: E402
from provision.typed_load import from_plain, to_plain  # noqa: E402

MEASUREMENTS = REPO / "tests/data/llama_measurements.json"
REAL_LOGS = REPO / "bench/real_logs.yaml"
# An underestimate is an OOM: on a real CUDA load no compute buffer, KV cache or per-GPU
# footprint may be predicted more than this much below what the log shows.
REAL_LOG_UNDER_BOUND = 0.05
REAL_LOGS_BEGIN, REAL_LOGS_END = "<!-- real-logs -->", "<!-- /real-logs -->"
SPECS = REPO / "tests/data/measured_models.json"
REPORT = REPO / "bench/ACCURACY.md"
MODELS_CACHE = Path.home() / ".cache/gpu-provision/models"
MIB = 1024**2
TARGETS = {"weights": 0.01, "kv": 0.01, "compute": 0.10, "total": 0.03}
# Known misses, each with the bound CI holds it to so that it cannot grow unnoticed: on the
# 270M Gemma (a 25-30 MiB compute buffer) pipelining with a q8_0 cache keeps 3-4 MiB more than
# the fitted shape, which every larger model follows within 6%.
KNOWN_MISSES = {("gemma3-270m", "compute"): 0.12, ("gemma3-270m", "total"): 0.04}
# A projection reports whole MiB: a difference below that is not an error we can see.
PROJECTION_PRECISION_MIB = 1.0
# measure_llama.py: the --fit projection overstates the last device's compute under pipeline
# parallelism by 4 n_embd-wide f32 copies of the micro-batch (checked against real loads).
PROJECTION_LAST_DEVICE_EXTRA = 4


@dataclass(frozen=True)
class Error:
    model: str
    run: str
    device: str
    component: str
    estimated_mib: float
    measured_mib: float
    precision_mib: float = 0.01

    @property
    def relative(self) -> float:
        """Relative error beyond what the measurement can resolve, with its sign."""
        difference = self.estimated_mib - self.measured_mib
        beyond = max(abs(difference) - self.precision_mib, 0.0)
        return (beyond if difference >= 0 else -beyond) / self.measured_mib


def load_specs() -> dict[str, ModelSpec]:
    plain = json.loads(SPECS.read_text())
    return {name: from_plain(ModelSpec, data) for name, data in plain["models"].items()}


def refresh_specs(runs: list[dict[str, Any]]) -> None:
    from provision.models.refs import spec_from_gguf

    files = {r["model"]: r["gguf"] for r in runs}
    specs = {}
    for model, name in sorted(files.items()):
        found = [p for p in (MODELS_CACHE / name, MODELS_CACHE / "sparse" / name) if p.exists()]
        if not found:
            sys.exit(f"{name} not in {MODELS_CACHE}: run bench/measure_llama.py first")
        specs[model] = to_plain(spec_from_gguf(found[0]))
    document = {"source": "provision.models.spec_from_gguf on the measured GGUFs", "models": specs}
    SPECS.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    print(f"wrote {SPECS.relative_to(REPO)} ({len(specs)} models)")


def settings_of(run: dict[str, Any]) -> RunSettings:
    auto = run["parallel"] == "auto"  # no -np: 4 slots sharing one unified pool
    return RunSettings(
        ctx_tokens=run["ctx"],
        parallel=4 if auto else int(run["parallel"]),
        kv_type=KvType(run["kv_type"]),
        runtime=Runtime.LLAMA_SERVER,
        flash_attention=run["flash_attn"] == "enabled",
        batch=run["batch"],
        ubatch=run["ubatch"],
        kv_unified=auto,
        # The measured build caps the reserved logits at llama-server's slots (PR #23861).
        logits_all=False,
    )


def compare_run(run: dict[str, Any], spec: ModelSpec) -> list[Error]:
    settings = settings_of(run)
    devices = [d for d in run["devices"] if d != "CPU"]
    layers, output = assign_layers(spec.n_layer, [1.0] * len(devices))
    label = f"ctx {run['ctx']} np {run['parallel']} {run['kv_type']} {run['layout']}"
    projected = run["method"] == "llama-server-projection"
    precision = PROJECTION_PRECISION_MIB if projected else 0.01
    errors = []
    for i, device in enumerate(devices):
        estimate = device_footprint(
            spec, settings, layers[i], output == i, pipeline=len(devices) > 1
        )
        measured = dict(run["per_device"][device])
        if projected and len(devices) > 1 and output == i:
            extra = PROJECTION_LAST_DEVICE_EXTRA * spec.n_embd * settings.ubatch * 4 / MIB
            measured["compute_mib"] -= extra
        pairs = {
            "weights": (estimate.weights_bytes, measured["model_mib"]),
            "kv": (estimate.kv_bytes, measured["kv_mib"]),
            "compute": (estimate.compute_bytes, measured["compute_mib"]),
        }
        total = sum(e for e, _ in pairs.values()), sum(m for _, m in pairs.values())
        for component, (est, meas) in (*pairs.items(), ("total", total)):
            if meas > 0:
                errors.append(
                    Error(run["model"], label, f"dev{i}", component, est / MIB, meas, precision)
                )
    host = run["per_device"]["CPU"]["model_mib"]
    errors.append(
        Error(run["model"], label, "host", "weights", spec.input_bytes / MIB, host, precision)
    )
    return errors


def worst(errors: list[Error], component: str) -> Error:
    return max((e for e in errors if e.component == component), key=lambda e: abs(e.relative))


def table(runs: list[dict[str, Any]], errors: list[Error]) -> list[str]:
    lines = [
        "| model | method | runs | weights | KV | compute | total |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in dict.fromkeys(r["model"] for r in runs):
        mine = [e for e in errors if e.model == model]
        method = next(r["method"] for r in runs if r["model"] == model)
        count = sum(1 for r in runs if r["model"] == model)
        cells = [f"{worst(mine, c).relative * 100:+.2f}%" for c in TARGETS]
        lines.append(f"| {model} | {method} | {count} | " + " | ".join(cells) + " |")
    return lines


def spec_of_log(entry: dict[str, Any]) -> ModelSpec:
    """The catalog's spec where the log is of a catalog model; else one from the log's printed
    (or identified) hyperparameters, weights per block only where the log gives them."""
    if entry.get("catalog"):
        from provision.models import catalog

        found = catalog.lookup(entry["catalog"])
        assert found is not None, entry["catalog"]
        return found
    shape = entry["shape"]
    n_layer = int(shape["n_layer"])
    per_layer = int(float(entry.get("weights_mib_per_layer") or 0) * MIB)
    return ModelSpec(
        name=entry["id"],
        source="catalog",
        architecture="llama",
        quant=None,
        n_layer=n_layer,
        n_embd=int(shape["n_embd"]),
        n_ff=int(shape["n_ff"]),
        n_head=int(shape["n_head"]),
        n_head_kv=int(shape["n_head_kv"]),
        key_length=int(shape["head_dim"]),
        value_length=int(shape["head_dim"]),
        n_vocab=int(shape["n_vocab"]),
        ctx_train=shape.get("ctx_train"),
        sliding_window=None,
        swa_layers=(False,) * n_layer,
        n_expert=None,
        n_expert_used=None,
        layer_weight_bytes=(per_layer,) * n_layer,
        input_bytes=0,
        output_bytes=int(float(entry.get("output_mib") or 0) * MIB),
        file_bytes=0,
        kv_known=True,
    )


def settings_of_log(entry: dict[str, Any]) -> RunSettings:
    s = entry["settings"]
    return RunSettings(
        ctx_tokens=int(s["ctx"]),
        parallel=int(s["parallel"]),
        kv_type=KvType(s["kv_type"]),
        runtime=Runtime(s["runtime"]),
        flash_attention=bool(s["flash_attention"]),
        batch=int(s["batch"]),
        ubatch=int(s["ubatch"]),
    )


def real_log_errors(entry: dict[str, Any]) -> list[Error]:
    spec, settings = spec_of_log(entry), settings_of_log(entry)
    legacy = settings.runtime == Runtime.OLLAMA
    # llama.cpp pipelines micro-batches whenever every layer sits on more than one GPU.
    pipeline = len(entry["gpus"]) > 1
    # Blocks left on the host: the first GPU copies their weights in to run their products.
    host = spec.layer_weight_bytes[0] if entry.get("host_layers") else 0
    errors = []
    for i, device in enumerate(entry["devices"]):
        first, last = device["layers"]
        estimate = device_footprint(
            spec,
            settings,
            range(first, last + 1),
            device["holds_output"],
            legacy_ollama=legacy,
            pipeline=pipeline,
            host_weight_bytes=host if i == 0 else 0,
            holds_projector=bool(device.get("holds_projector")),
        )
        logged = device["logged"]
        pairs = {
            "kv": (estimate.kv_bytes, logged["kv_mib"]),
            "compute": (estimate.compute_bytes, logged["compute_mib"]),
        }
        if logged.get("model_mib") is not None and entry.get("weights_mib_per_layer"):
            pairs["weights"] = (estimate.weights_bytes, logged["model_mib"])
        shown = [(e, m) for e, m in pairs.values() if m is not None]
        if logged.get("ollama_required_mib"):
            # Ollama's own full-offload prediction against our whole footprint on that GPU.
            required = logged["ollama_required_mib"]
            if not logged.get("ollama_fully_loaded", True):
                # llm/memory.go: a partial load is summed with the partial-offload graph.
                required += logged["ollama_graph_full_mib"] - logged["ollama_graph_partial_mib"]
            pairs["ollama_predicted"] = (estimate.total_bytes, required)
        else:
            pairs["footprint"] = (sum(e for e, _ in shown), sum(m for _, m in shown))
        for component, (est, meas) in pairs.items():
            if meas:
                errors.append(
                    Error(entry["id"], entry["url"], device["name"], component, est / MIB, meas)
                )
    return errors


def real_logs_report() -> tuple[list[str], list[str]]:
    import yaml

    logs = yaml.safe_load(REAL_LOGS.read_text())["logs"]
    errors = [e for entry in logs for e in real_log_errors(entry)]
    by_id = {entry["id"]: entry for entry in logs}
    lines = [
        f"{len(logs)} published logs, {len({(e.model, e.device) for e in errors})} devices "
        "(bench/real_logs.yaml); error = (estimate - logged) / logged, negative = under:",
        "",
        "| log | runtime | GPU | model | ctx | FA | device | est / logged MiB | "
        "compute | KV | footprint | Ollama predicted |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    failed = []
    for key in dict.fromkeys((e.model, e.device) for e in errors):
        mine = {e.component: e for e in errors if (e.model, e.device) == key}
        entry = by_id[key[0]]
        s = entry["settings"]
        shown = mine.get("compute") or mine["ollama_predicted"]
        cells = [
            f"{mine[c].relative * 100:+.1f}%" if c in mine else "-"
            for c in ("compute", "kv", "footprint", "ollama_predicted")
        ]
        gpu = entry["gpus"][0] if len(entry["gpus"]) == 1 else f"{len(entry['gpus'])} GPUs"
        lines.append(
            f"| [{entry['id']}]({entry['url']}) | {entry['runtime'].split(' (')[0]} | {gpu} | "
            f"{entry['model']} | {s['ctx']} | {'on' if s['flash_attention'] else 'off'} | "
            f"{key[1]} | {shown.component}: {shown.estimated_mib:.0f} / {shown.measured_mib:.0f} | "
            + " | ".join(cells)
            + " |"
        )
        for e in mine.values():
            if e.relative < -REAL_LOG_UNDER_BOUND:
                failed.append(f"{e.model} {e.device} {e.component} {e.relative * 100:+.1f}%")
    under = min(errors, key=lambda e: e.relative)
    lines += [
        "",
        f"largest underestimate: {under.relative * 100:+.2f}% ({under.model} {under.device} "
        f"{under.component}); bound {REAL_LOG_UNDER_BOUND * 100:g}%",
        "CI check: " + ("FAILED: " + "; ".join(failed) if failed else "passed"),
    ]
    return lines, failed


def write_real_logs(lines: list[str]) -> None:
    text = REPORT.read_text()
    head, _, rest = text.partition(REAL_LOGS_BEGIN)
    _, _, tail = rest.partition(REAL_LOGS_END)
    REPORT.write_text(
        head + REAL_LOGS_BEGIN + "\n" + "\n".join(lines) + "\n" + REAL_LOGS_END + tail
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--refresh-specs", action="store_true")
    parser.add_argument("--real-logs", action="store_true")
    args = parser.parse_args()
    if args.real_logs:
        real_lines, failed = real_logs_report()
        print("\n".join(real_lines))
        if args.write:
            write_real_logs(real_lines)
        return 1 if args.check and failed else 0
    measurements = json.loads(MEASUREMENTS.read_text())
    runs = [
        r for r in measurements["runs"] if "error" not in r and r["method"] != "llama-fit-params"
    ]
    if args.refresh_specs:
        refresh_specs(runs)
    specs = load_specs()
    errors = [e for r in runs for e in compare_run(r, specs[r["model"]])]
    lines = [
        f"llama.cpp: {measurements['llama_cpp_version']}",
        f"measured: {measurements['measured_on']}",
        f"{len(runs)} runs, {len(errors)} comparisons; worst error per model and component "
        "(estimate - measured) / measured:",
        "",
        *table(runs, errors),
        "",
    ]
    missed = []
    for component, bound in TARGETS.items():
        e = worst(errors, component)
        verdict = "ok" if abs(e.relative) <= bound else "MISSED"
        lines.append(
            f"worst {component}: {e.relative * 100:+.2f}% (target {bound * 100:g}%) {verdict}: "
            f"{e.model} {e.run} {e.device}, {e.estimated_mib:.1f} vs {e.measured_mib:.1f} MiB"
        )
        for model in dict.fromkeys(x.model for x in errors):
            limit = KNOWN_MISSES.get((model, component), bound)
            mine = worst([x for x in errors if x.model == model], component)
            if abs(mine.relative) > limit:
                missed.append(f"{model} {component} {mine.relative * 100:+.2f}%")
    known = ", ".join(f"{m} {c} within {b * 100:g}%" for (m, c), b in KNOWN_MISSES.items())
    lines.append(f"known misses, held to their own bound: {known}")
    lines.append("CI check: " + ("FAILED: " + "; ".join(missed) if missed else "passed"))
    print("\n".join(lines))
    if args.write:
        write_report(lines)
    return 1 if args.check and missed else 0


def write_report(lines: list[str]) -> None:
    head = REPORT.read_text().split("<!-- table -->")[0] if REPORT.exists() else ""
    REPORT.write_text(head + "<!-- table -->\n```\n" + "\n".join(lines) + "\n```\n")


if __name__ == "__main__":
    sys.exit(main())
