"""`provision verify --loaded`: the planned loads in the manifest, the pure verdict on where a
loaded model sits, and the check itself against a small Ollama-shaped server on local://.
Also the balancer's proof that each replica answers (its X-Provision-Upstream header)."""

from __future__ import annotations

import http.server
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provision.change.manifest import build_manifest
from provision.pipeline import desired_state
from provision.verify.checks import (
    CheckKind,
    ManifestError,
    answered_by,
    checks_for,
    parse_memory_used,
    parse_ps,
    placement_verdict,
    reached_verdict,
    repeated_curl_argv,
    tolerance_bytes,
)
from provision.verify.runner import Target, connect, run_suite
from tests.helpers import load_named_rig, run_provision

GIB = 2**30
MIB = 2**20
RIG = "synthetic-2x3090-downtrained"  # Ollama 0.30.2: the plan models its scheduler
GPU0 = "GPU-4b15bcde-c016-d3f4-f7d0-06f6dce63d75"
GPU1 = "GPU-5db27836-2fc7-dd79-7ef5-06e5ed59d13e"


def manifest_for(rig: str, profile: str) -> dict[str, Any]:
    _, desired = desired_state(load_named_rig(rig), profile, {})
    return build_manifest(desired)


def loaded_checks(manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        c.target: c.expect
        for c in checks_for(manifest, live=True, loaded=True)
        if c.kind == CheckKind.LOADED
    }


# --- the manifest and the checks -------------------------------------------------------------


def test_the_manifest_records_each_planned_load() -> None:
    loads = manifest_for(RIG, "ollama-auto")["loads"]
    assert [(x["model"], x["unit"], x["keep_alive"]) for x in loads] == [
        ("qwen2.5:32b-provision", "ollama.service", "10m"),
        ("llama3.1:8b-provision", "ollama.service", "10m"),
    ]
    assert [(g["uuid"], g["layers"]) for g in loads[0]["gpus"]] == [(GPU0, 64)]
    assert [(g["uuid"], g["layers"]) for g in loads[1]["gpus"]] == [(GPU1, 32)]
    assert 20 * GIB < loads[0]["gpus"][0]["footprint_bytes"] < 22 * GIB  # plan: 20.7 GiB
    assert loads[0]["cpu_bytes"] == loads[0]["cpu_layers"] == 0


def test_loaded_checks_only_when_asked() -> None:
    manifest = manifest_for(RIG, "ollama-auto")
    assert all(c.kind != CheckKind.LOADED for c in checks_for(manifest, live=True))
    checks = loaded_checks(manifest)
    assert list(checks) == [
        "ollama.service/qwen2.5:32b-provision",
        "ollama.service/llama3.1:8b-provision",
    ]
    qwen = checks["ollama.service/qwen2.5:32b-provision"]
    assert qwen["address"] == "http://127.0.0.1:11434"
    assert [o["model"] for o in qwen["others"]] == ["llama3.1:8b-provision"]


def test_each_replica_loads_the_model_on_its_own_gpu() -> None:
    checks = loaded_checks(manifest_for(RIG, "ollama-replicas"))
    assert {t: [g["uuid"] for g in e["gpus"]] for t, e in checks.items()} == {
        "ollama@0.service/llama3.1:8b-provision": [GPU0],
        "ollama@1.service/llama3.1:8b-provision": [GPU1],
    }
    assert checks["ollama@1.service/llama3.1:8b-provision"]["address"] == "http://127.0.0.1:11436"


def test_a_llama_server_split_is_recorded_per_gpu() -> None:
    (load,) = manifest_for(RIG, "llama-server")["loads"]
    assert load["runtime"] == "llama-server" and load["keep_alive"] is None
    assert [g["uuid"] for g in load["gpus"]] == [GPU0, GPU1]
    assert sum(g["layers"] for g in load["gpus"]) == 80  # llama3.3:70b's 80 layers


def test_a_manifest_without_loads_needs_a_new_apply() -> None:
    manifest = manifest_for(RIG, "ollama-auto")
    del manifest["loads"]
    checks_for(manifest, live=True)  # the other checks do not need them
    with pytest.raises(ManifestError, match="no planned placement"):
        checks_for(manifest, live=True, loaded=True)


# --- the verdict -----------------------------------------------------------------------------

PLAN_ON_GPU0 = {"gpus": [{"uuid": GPU0, "index": 0, "bytes": 20 * GIB}], "cpu_bytes": 0}
FULL = (21 * GIB, 21 * GIB)


def on_gpus(gpu0: float, gpu1: float) -> dict[str, tuple[int, int]]:
    return {GPU0: (0, int(gpu0 * GIB)), GPU1: (1, int(gpu1 * GIB))}


@pytest.mark.parametrize(
    ("sizes", "measured", "ok", "detail"),
    [
        (FULL, on_gpus(20.5, 0), True, "on GPU 0 as planned: GPU 0 20.5 GiB (planned 20.0 GiB)"),
        # Ollama spread it over both cards: the lever (main_gpu) is missing
        (
            FULL,
            on_gpus(10.5, 10.4),
            False,
            "on GPU 0, GPU 1, planned GPU 0: GPU 0 10.5 GiB (planned 20.0 GiB), "
            "GPU 1 10.4 GiB (planned 0.0 GiB)",
        ),
        # on the other card entirely
        (
            FULL,
            on_gpus(0, 20.4),
            False,
            "on GPU 1, planned GPU 0: GPU 0 0.0 GiB (planned 20.0 GiB), GPU 1 20.4 GiB",
        ),
        # the right card, but far more than planned (10% of 20 GiB = 2 GiB)
        (FULL, on_gpus(23.0, 0.1), False, "GPU 0 holds 23.0 GiB, planned 20.0 GiB (tolerance"),
        # part of it on the CPU
        (
            (21 * GIB, 15 * GIB),
            on_gpus(15, 0),
            False,
            "6.0 GiB of 21.0 GiB on the CPU, planned all on GPU",
        ),
        # no nvidia-smi: only the spill can be judged
        (FULL, None, True, "loaded, 21.0 GiB in VRAM (per-GPU use not read: no nvidia-smi)"),
        # a GPU nvidia-smi does not list (an AMD card): per-GPU use not judged
        (
            FULL,
            {GPU1: (1, 0)},
            True,
            "loaded, 21.0 GiB in VRAM (per-GPU use not read: nvidia-smi lacks GPU 0)",
        ),
    ],
)
def test_placement_verdict(
    sizes: tuple[int, int], measured: dict[str, tuple[int, int]] | None, ok: bool, detail: str
) -> None:
    seen_ok, seen = placement_verdict(PLAN_ON_GPU0, sizes, measured)
    assert (seen_ok, seen[: len(detail)]) == (ok, detail), seen


def test_a_planned_cpu_share_is_not_a_spill() -> None:
    plan = PLAN_ON_GPU0 | {"cpu_bytes": 6 * GIB}
    assert placement_verdict(plan, (26 * GIB, 20 * GIB), on_gpus(20, 0))[0]


def test_tolerance_is_ten_percent_or_512_mib() -> None:
    assert tolerance_bytes(20 * GIB) == 2 * GIB
    assert tolerance_bytes(2 * GIB) == 512 * MIB
    assert tolerance_bytes(0) == 512 * MIB


def test_parse_ps_as_ollama_answers() -> None:
    # the shape of api.ProcessResponse (api/types.go ProcessModelResponse)
    body = json.dumps(
        {
            "models": [
                {
                    "name": "qwen2.5:32b-provision",
                    "model": "qwen2.5:32b-provision",
                    "size": 22000000000,
                    "size_vram": 21000000000,
                    "digest": "a" * 64,
                    "expires_at": "2026-12-03T09:00:00Z",
                    "context_length": 8192,
                },
                {"name": "phi", "model": "phi:latest", "size": 5, "size_vram": 5},
            ]
        }
    )
    assert parse_ps(body, "qwen2.5:32b-provision") == (22000000000, 21000000000)
    assert parse_ps(body, "phi:latest") == (5, 5)
    assert parse_ps(body, "llama3.1:8b-provision") is None
    assert parse_ps('{"models": []}', "phi:latest") is None


def test_parse_memory_used_as_nvidia_smi_prints_it() -> None:
    text = f"0, {GPU0}, 21274\n1, {GPU1}, [N/A]\n"
    assert parse_memory_used(text) == {GPU0: (0, 21274 * MIB)}


def test_loaded_needs_a_live_host(tmp_path: Path) -> None:
    result = run_provision("verify", "--loaded", "--root", str(tmp_path))
    assert result.returncode == 2 and "--loaded needs a running host" in result.stderr


# --- the check, against an Ollama-shaped server on this machine --------------------------------


class FakeOllama:
    """Loads a model where told (`placement[model]`: GiB per GPU), lists it in /api/ps and
    reports the GPUs' use through a fake nvidia-smi that reads `state`."""

    def __init__(self, directory: Path, placement: dict[str, dict[str, float]]) -> None:
        self.state = directory / "used.json"
        self.placement = placement
        self.loaded: dict[str, dict[str, float]] = {}
        self.requests: list[dict[str, Any]] = []
        self.save()

    def save(self) -> None:
        used = {GPU0: 300 * MIB, GPU1: 300 * MIB}  # idle: the driver's own
        for shares in self.loaded.values():
            for uuid, gib in shares.items():
                used[uuid] += int(gib * GIB)
        self.state.write_text(json.dumps(used))

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def reply(self, document: object) -> None:
                body = json.dumps(document).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                models = [
                    {"name": m, "model": m, "size": int(sum(s.values()) * GIB)}
                    | {"size_vram": int(sum(s.values()) * GIB)}
                    for m, s in fake.loaded.items()
                ]
                self.reply({"models": models})

            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(request)
                model = request["model"]
                if request.get("keep_alive") == 0:
                    fake.loaded.pop(model, None)
                else:
                    fake.loaded[model] = fake.placement[model]
                fake.save()
                self.reply({"model": model, "done": True})

        return Handler


@pytest.fixture
def fake_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A PATH with a fake nvidia-smi, and a curl that records that it was called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(
        "#!/usr/bin/env python3\n"
        "import json\n"
        f"used = json.load(open({str(tmp_path / 'used.json')!r}))\n"
        "for n, (uuid, b) in enumerate(sorted(used.items())):\n"
        "    print(f'{n}, {uuid}, {b // 2**20}')\n"
    )
    curl = bin_dir / "curl"
    curl.write_text(f"#!/bin/sh\ntouch {tmp_path / 'curl-called'}\nexit 7\n")
    for script in (smi, curl):
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    yield tmp_path


def run_loaded(fake: FakeOllama, manifest: dict[str, Any]) -> dict[str, tuple[str, str]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        for unit in manifest["units"]:
            if unit["name"] == "ollama.service":
                unit["listen"] = f"127.0.0.1:{port}"
        checks = tuple(
            c for c in checks_for(manifest, live=True, loaded=True) if c.kind == CheckKind.LOADED
        )
        (host,) = connect(["local://"])
        results, _ = run_suite([Target("local", host, "/", checks)])
    finally:
        server.shutdown()
    return {r.check.target: (r.status, r.detail) for r in results}


def test_loaded_as_planned_passes_without_curl(fake_host: Path) -> None:
    manifest = manifest_for(RIG, "ollama-auto")
    placement = {"qwen2.5:32b-provision": {GPU0: 20.9}, "llama3.1:8b-provision": {GPU1: 6.1}}
    fake = FakeOllama(fake_host, placement)
    results = run_loaded(fake, manifest)
    assert {t: s for t, (s, _) in results.items()} == {
        "ollama.service/qwen2.5:32b-provision": "pass",
        "ollama.service/llama3.1:8b-provision": "pass",
    }, results
    assert results["ollama.service/qwen2.5:32b-provision"][1].startswith("on GPU 0 as planned")
    assert not (fake_host / "curl-called").exists()  # local:// speaks HTTP itself
    # each model was unloaded, then loaded with the planned keep_alive and an empty prompt
    assert fake.requests[:2] == [
        {"model": "qwen2.5:32b-provision", "keep_alive": 0},
        {"model": "qwen2.5:32b-provision", "prompt": "", "keep_alive": "10m", "stream": False},
    ]


def test_loaded_off_plan_fails_naming_the_gpus(fake_host: Path) -> None:
    manifest = manifest_for(RIG, "ollama-auto")
    placement = {
        "qwen2.5:32b-provision": {GPU0: 10.5, GPU1: 10.4},  # spread: no main_gpu
        "llama3.1:8b-provision": {GPU1: 6.1},
    }
    results = run_loaded(FakeOllama(fake_host, placement), manifest)
    status, detail = results["ollama.service/qwen2.5:32b-provision"]
    assert status == "fail"
    assert detail.startswith("on GPU 0, GPU 1, planned GPU 0: GPU 0 10.5 GiB"), detail
    assert results["ollama.service/llama3.1:8b-provision"][0] == "pass"  # measured on its own


# --- the balancer reaches each replica ---------------------------------------------------------

# `curl -D -` over nginx: the second request was retried on 11435 after 11436 refused it.
HEADERS = """\
HTTP/1.1 200 OK\r
Server: nginx/1.22.1\r
X-Provision-Upstream: 127.0.0.1:11435\r
\r
HTTP/1.1 200 OK\r
x-provision-upstream: 127.0.0.1:11436, 127.0.0.1:11435\r
\r
"""
UPSTREAMS = ["127.0.0.1:11435", "127.0.0.1:11436"]


def test_the_last_upstream_tried_is_the_one_that_answered() -> None:
    assert answered_by(HEADERS) == ["127.0.0.1:11435", "127.0.0.1:11435"]


@pytest.mark.parametrize(
    ("answered", "ok", "detail"),
    [
        (
            ["127.0.0.1:11435", "127.0.0.1:11436"] * 2,
            True,
            "each replica answered through it (127.0.0.1:11435 x2, 127.0.0.1:11436 x2)",
        ),
        (
            ["127.0.0.1:11435"] * 4,
            False,
            "127.0.0.1:11436 answered none of 4 requests (127.0.0.1:11435 x4)",
        ),
        ([], False, "no X-Provision-Upstream header in the answers: not the planned site?"),
    ],
)
def test_reached_verdict(answered: list[str], ok: bool, detail: str) -> None:
    assert reached_verdict(answered, UPSTREAMS) == (ok, detail)


def test_the_requests_share_one_connection() -> None:
    # one curl, the URL repeated: curl reuses the connection, so one nginx worker balances them
    argv = repeated_curl_argv("http://127.0.0.1:11434/api/version", 3)
    assert argv.count("-o /dev/null") == 3
    assert argv.count("http://127.0.0.1:11434/api/version") == 3
