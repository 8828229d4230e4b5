"""Placement problems found while reviewing the golden files, kept as regression tests."""

from __future__ import annotations

from provision.hardware.rig import load_rig
from provision.pipeline import desired_state
from provision.placement.decisions import Placement
from tests.golden_cases import ENVIRON
from tests.helpers import rig_file


def _placement(rig: str, profile: str) -> Placement:
    return desired_state(load_rig(rig_file(rig)), profile, ENVIRON)[0]


def _env(placement: Placement) -> dict[str, str]:
    (instance,) = placement.instances
    return dict(instance.env)


def test_server_wide_tensor_split_only_when_every_model_follows_it() -> None:
    # RTX 2060 + RTX 3090: qwen2.5:32b fits the 3090 alone; llama3.1:8b is split beside it.
    # Ollama passes the environment to every llama-server it starts, so qwen would get
    # -ts 11,22 too: two thirds of a 19 GiB model on the 6 GiB RTX 2060.
    placement = _placement("synthetic-2060-3090", "ollama-auto")
    single = [m for m in placement.models if m.placed and len(m.gpu_indices) == 1]
    assert single, "the premise: one model runs on one GPU"
    assert "LLAMA_ARG_TENSOR_SPLIT" not in _env(placement)


def test_partial_offload_counts_as_resident() -> None:
    # RTX 3060 12 GB: qwen2.5:32b offloads 32 layers using 11.2 of 11.3 GiB usable; llama3.1:8b
    # (6.0 GiB) cannot be resident beside it.
    placement = _placement("synthetic-nulls", "ollama-auto")
    assert _env(placement)["OLLAMA_MAX_LOADED_MODELS"] == "1"


def test_gpus_below_ollamas_floor_are_left_out_when_others_can_serve() -> None:
    # RTX 3090 + GTX 1080 Ti on driver 560: Ollama would run the 1080 Ti on the CPU.
    auto = _placement("synthetic-3090-1080ti-driver560", "ollama-auto")
    assert {i for m in auto.models for i in m.gpu_indices} == {0}
    assert any("GPU 1 (GTX 1080 Ti) left out of Ollama's GPUs" in w for w in auto.warnings)
    replicas = _placement("synthetic-3090-1080ti-driver560", "ollama-replicas")
    assert [i.unit for i in replicas.instances] == ["ollama.service"]


def test_k80_rig_keeps_its_gpus_under_ollama() -> None:
    placement = _placement("synthetic-2xk80", "ollama-auto")
    assert all(m.placed for m in placement.models)
    assert {s.gpu.compute_capability for m in placement.models for s in m.fit.shares} == {"3.7"}


def test_a_model_that_fits_one_gpu_alone_is_not_split_beside_another() -> None:
    # RTX 2060 + RTX 3090: qwen2.5:32b takes the 3090; llama3.1:8b fits the 3090 alone but not
    # beside qwen. It stays on one GPU and Ollama swaps the two instead of splitting it.
    placement = _placement("synthetic-2060-3090", "ollama-auto")
    assert all(len(m.gpu_indices) == 1 for m in placement.models)
    assert _env(placement)["OLLAMA_MAX_LOADED_MODELS"] == "1"
