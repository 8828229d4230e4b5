"""Test helpers: the recorded rigs and a way to run the real `provision` command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from provision.hardware.rig import Rig, load_rig

TESTS_DIR = Path(__file__).parent
REPO_ROOT = TESTS_DIR.parent
RIGS_DIR = TESTS_DIR / "rigs"
ALL_RIG_FILES = sorted(RIGS_DIR.glob("*.yaml"))
# The rigs NVML alone recorded (the fakesysfs-* ones come from sysfs: tests/test_probe_amd.py).
NVML_RIG_FILES = [p for p in ALL_RIG_FILES if not p.stem.startswith("fakesysfs-")]


def rig_file(name: str) -> Path:
    path = RIGS_DIR / f"{name}.yaml"
    assert path.exists(), f"no recorded rig {path}"
    return path


def load_named_rig(name: str) -> Rig:
    return load_rig(rig_file(name))


def run_provision(
    *args: str, env: dict[str, str] | None = None, check_no_traceback: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a fresh interpreter, as an operator would."""
    result = subprocess.run(
        [sys.executable, "-m", "provision", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=REPO_ROOT,
        timeout=120,
    )
    if check_no_traceback:
        assert "Traceback" not in result.stderr, result.stderr
    return result


def install_in_ollama_store(
    store: Path, name: str, tag: str, gguf_path: Path, projector_size: int = 0
) -> None:
    """Put a GGUF file in an Ollama store as `ollama pull NAME:TAG` would lay it out, with a
    projector layer of `projector_size` bytes (a llava-style vision model) when given."""
    digest = "sha256:" + "ab" * 32
    blobs = store / "blobs"
    blobs.mkdir(parents=True)
    shutil.copy(gguf_path, blobs / digest.replace(":", "-"))
    manifest = store / "manifests" / "registry.ollama.ai" / "library" / name / tag
    manifest.parent.mkdir(parents=True)
    layers = [
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "cd" * 32},
        {"mediaType": "application/vnd.ollama.image.model", "digest": digest},
    ]
    if projector_size:
        layers.append(
            {
                "mediaType": "application/vnd.ollama.image.projector",
                "digest": "sha256:" + "ef" * 32,
                "size": projector_size,
            }
        )
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": layers}))


def accuracy_check(*args: str, timeout_s: float = 300) -> str:
    """bench/estimate_accuracy.py --check with `args`: its stdout, after it said it passed."""
    result = subprocess.run(
        [sys.executable, "bench/estimate_accuracy.py", *args, "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "CI check: passed" in result.stdout
    return result.stdout
