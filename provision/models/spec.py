"""What planning knows about one model: its shape and bytes per layer (ModelSpec). Pure.

Shared by the two sources of a spec, GGUF files (provision.models.refs) and the bundled catalog
(provision.models.catalog), with the llama.cpp rules both of them need.
"""

from __future__ import annotations

from dataclasses import dataclass

# llama.cpp's SWA layout per architecture (llama-model.cpp, set_swa_pattern): layer il uses the
# window when il % pattern < pattern - 1, so every pattern-th layer is full attention.
SWA_PATTERN_BY_ARCH = {"gemma2": 2, "gemma3": 6, "gpt-oss": 2, "cohere2": 4}
# Architectures whose KV cache follows the plain formula (cells x (k + v) per layer).
KNOWN_KV_ARCHS = frozenset(
    {
        "llama",
        "qwen2",
        "qwen3",
        "qwen3moe",
        "qwen2moe",
        # Qwen2.5-VL's text decoder (Ollama writes qwen25vl, llama.cpp qwen2vl): a plain GQA
        # cache; M-RoPE changes positions, not the cache.
        "qwen25vl",
        "qwen2vl",
        "gemma",
        "gemma2",
        "gemma3",
        "mistral3",
        "phi3",
        "gpt-oss",
        "starcoder2",
        "granite",
        "cohere2",
        "command-r",
        "olmo2",
        "internlm2",
    }
)


@dataclass(frozen=True)
class ModelSpec:
    """What planning knows about one model file (integers in bytes, counts in tokens)."""

    name: str
    source: str  # "gguf", "ollama" or "catalog"
    architecture: str
    quant: str | None
    n_layer: int
    n_embd: int
    n_ff: int | None
    n_head: int
    n_head_kv: int
    key_length: int
    value_length: int
    n_vocab: int
    ctx_train: int | None
    sliding_window: int | None
    swa_layers: tuple[bool, ...]  # per layer: uses the sliding window
    n_expert: int | None
    n_expert_used: int | None
    layer_weight_bytes: tuple[int, ...]  # blk.N.* per layer
    input_bytes: int  # token_embd: llama.cpp keeps it in host memory
    output_bytes: int  # output head + final norm: on the last offloaded device
    file_bytes: int
    kv_known: bool  # False for an architecture whose cache layout we do not model
    # A multimodal model's vision tower and projector (an mmproj file, Ollama's projector
    # layer, or v./mm./a. tensors inside the model file), and the compute graph it reserves
    # for the largest image: both on the first GPU the model runs on.
    projector_bytes: int = 0
    projector_graph_bytes: int = 0
    # The projector is a file of its own (an mmproj GGUF, Ollama's projector layer), not tensors
    # of the model file: Ollama before 0.30 counts the two differently (ollama_families.py).
    projector_separate: bool = False

    @property
    def n_embd_k_gqa(self) -> int:
        return self.key_length * self.n_head_kv

    @property
    def n_embd_v_gqa(self) -> int:
        return self.value_length * self.n_head_kv

    @property
    def multimodal(self) -> bool:
        return self.projector_bytes > 0

    @property
    def weight_bytes(self) -> int:
        return sum(self.layer_weight_bytes) + self.input_bytes + self.output_bytes


# What a projector's compute graph is taken to need when nothing better is known: Ollama leaves
# 1 GiB "for backend buffers beyond projector weights" (llm/llama_server.go,
# mmprojOffloadHeadroom); its <= 0.12 estimator logged projector.graph="1.0 GiB" for gemma3.
DEFAULT_PROJECTOR_GRAPH_BYTES = 1 << 30
# Tensor name prefixes of a vision/audio tower kept inside the model file (Ollama's
# mmprojMemoryRequirement counts the same ones).
PROJECTOR_TENSOR_PREFIXES = ("v.", "mm.", "a.")


def swa_layers(n_layer: int, has_window: bool, period: int) -> tuple[bool, ...]:
    """Per layer, whether it uses the sliding window (llama-model.cpp, set_swa_pattern): layer
    il does when il % period < period - 1; a period of 0 means every layer does."""
    if not has_window:
        return (False,) * n_layer
    if period <= 0:
        return (True,) * n_layer
    return tuple(il % period < period - 1 for il in range(n_layer))
