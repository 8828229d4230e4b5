"""The estimate against published real CUDA loads (bench/real_logs.yaml): an underestimate of
a compute buffer, a KV cache or a per-GPU footprint by more than 5% is an OOM and fails CI."""

from __future__ import annotations

import yaml

from tests.helpers import REPO_ROOT, accuracy_check

LOGS = REPO_ROOT / "bench/real_logs.yaml"


def test_no_real_load_is_underestimated_by_more_than_5_percent() -> None:
    accuracy_check("--real-logs", timeout_s=120)


def test_every_log_is_cited_and_says_what_ran() -> None:
    logs = yaml.safe_load(LOGS.read_text())["logs"]
    assert len(logs) >= 12
    for entry in logs:
        assert entry["url"].startswith("https://github.com/"), entry["id"]
        for key in ("runtime", "gpus", "model", "identified_by", "shape", "settings", "devices"):
            assert entry.get(key), f"{entry['id']}: {key}"
        for device in entry["devices"]:
            assert device["logged"]["compute_mib"] or device["logged"].get("ollama_required_mib")
