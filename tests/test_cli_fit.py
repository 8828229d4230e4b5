"""`provision fit` as an operator runs it: verdicts, bars, JSON, and bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.gguf_factory import TinyShape, write_tiny_gguf
from tests.helpers import rig_file, run_provision

RIG_2X3090 = str(rig_file("synthetic-2x3090-x16-x8"))
GPU_KEYS = {
    "index", "uuid", "layers", "weights_bytes", "kv_bytes", "compute_bytes", "overhead_bytes",
    "total_bytes", "free_bytes", "projector_bytes",
}  # fmt: skip


def test_fit_json_document() -> None:
    result = run_provision("fit", "llama3.3:70b", "--ctx", "8192", "--rig", RIG_2X3090, "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["model"] == "llama3.3:70b" and document["verdict"] == "split"
    assert [g["index"] for g in document["gpus"]] == [0, 1]
    for gpu in document["gpus"]:
        assert set(gpu) >= GPU_KEYS
        assert gpu["total_bytes"] == sum(
            gpu[k]
            for k in (
                "weights_bytes",
                "kv_bytes",
                "compute_bytes",
                "overhead_bytes",
                "projector_bytes",
            )
        )
        assert gpu["total_bytes"] <= gpu["free_bytes"]
    assert sum(g["layers"] for g in document["gpus"]) == 80
    assert document["totals"]["total_bytes"] == sum(g["total_bytes"] for g in document["gpus"])
    assert document["suggestions"] == []
    assert document["settings"] == {
        "runtime": "ollama", "ctx": 8192, "parallel": 1, "kv_type": "f16",
        "flash_attention": True, "ubatch": 512,
    }  # fmt: skip


def test_fit_human_output_draws_a_bar_per_gpu() -> None:
    result = run_provision("fit", "llama3.3:70b", "--rig", RIG_2X3090)
    assert result.returncode == 0, result.stderr
    bars = [line for line in result.stdout.splitlines() if line.lstrip().startswith("GPU ")]
    assert len(bars) == 2
    assert all("[" in line and "#" in line and "=" in line for line in bars)
    assert "verdict: split: split across 0,1 because" in result.stdout


def test_fit_offload_lists_suggestions() -> None:
    rig = str(rig_file("synthetic-1x4090"))
    result = run_provision("fit", "llama3.3:70b", "--ctx", "32768", "--rig", rig)
    assert result.returncode == 0, result.stderr
    assert "verdict: partial-offload" in result.stdout
    assert "what would fit entirely on the GPUs:" in result.stdout


def test_fit_a_gguf_file(tmp_path: Path) -> None:
    model = write_tiny_gguf(tmp_path / "tiny.gguf")
    result = run_provision("fit", str(model), "--rig", RIG_2X3090, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["verdict"] == "single-gpu"


def test_unknown_model_exits_2_with_suggestions(tmp_path: Path) -> None:
    env = {"OLLAMA_MODELS": str(tmp_path)}
    result = run_provision("fit", "qwen2.5:72", "--rig", RIG_2X3090, env=env)
    assert result.returncode == 2
    assert "error: unknown model 'qwen2.5:72'" in result.stderr
    assert "hint: did you mean" in result.stderr and "qwen2.5:72b" in result.stderr


def test_bad_numbers_exit_2() -> None:
    for flag in ("--ctx", "--parallel"):
        result = run_provision("fit", "llama3.1:8b", flag, "0", "--rig", RIG_2X3090)
        assert result.returncode == 2
        assert result.stderr.startswith(f"error: {flag} must be a positive")


def test_not_a_gguf_and_truncated_gguf_exit_2(tmp_path: Path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("not a model\n")
    truncated = write_tiny_gguf(tmp_path / "cut.gguf")
    os.truncate(truncated, truncated.stat().st_size // 2)
    for path in (text, truncated):
        result = run_provision("fit", str(path), "--rig", RIG_2X3090)
        assert result.returncode == 2
        assert f"error: {path}: not a readable GGUF file" in result.stderr


def test_unknown_architecture_prints_weights_and_exits_2(tmp_path: Path) -> None:
    model = write_tiny_gguf(tmp_path / "odd.gguf", TinyShape(arch="mystery"))
    result = run_provision("fit", str(model), "--rig", RIG_2X3090, "--json")
    assert result.returncode == 2
    document = json.loads(result.stdout)
    assert document["kv_estimate"] == "unknown" and document["totals"]["weights_bytes"] > 0
    assert "architecture 'mystery' is not modelled" in result.stderr


def test_models_lists_the_catalog() -> None:
    result = run_provision("models")
    assert result.returncode == 0
    assert any(line.startswith("llama3.3:70b") for line in result.stdout.splitlines())


def test_fit_runs_a_model_by_the_rules_plan_uses() -> None:
    """Flash attention only where Ollama enables it, the context clamped to the trained
    length: `fit` and `plan` agree on one model (they used to differ on a K80)."""
    k80 = str(rig_file("synthetic-2xk80"))
    result = run_provision("fit", "llama3.1:8b", "--ctx", "200000", "--rig", k80, "--json")
    assert result.returncode == 0, result.stderr
    assert "warning: flash attention off: Ollama (current) does not enable it" in result.stderr
    assert "ctx 200000 is above the 131072 tokens it was trained on" in result.stderr
    assert json.loads(result.stdout)["settings"]["ctx"] == 131072
    refused = run_provision("fit", "llama3.1:8b", "--kv-type", "q8_0", "--rig", k80)
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: --kv-type q8_0: q8_0 needs flash attention")


def test_a_vision_model_shows_its_projector_on_the_first_gpu() -> None:
    result = run_provision("fit", "gemma3:27b", "--ctx", "8192", "--rig", RIG_2X3090, "--json")
    assert result.returncode == 0, result.stderr
    gpus = json.loads(result.stdout)["gpus"]
    assert gpus[0]["projector_bytes"] == 858000000 + (1 << 30)
    assert all(g["projector_bytes"] == 0 for g in gpus[1:])
