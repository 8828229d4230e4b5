"""Ollama's conventions: version eras, model names and tags, durations, the /api/tags reply.

Pure. These are Ollama's rules, not ours: when Ollama changes its naming or its version eras,
this module changes and nothing else.
"""

from __future__ import annotations

import json
import re

DEFAULT_ADDRESS = ("127.0.0.1", 11434)  # OLLAMA_HOST's default


def version_tuple(version: str | None) -> tuple[int, ...] | None:
    if not version:
        return None
    numbers = re.findall(r"\d+", version)
    return tuple(int(n) for n in numbers[:3]) if numbers else None


def is_legacy_ollama(version: str | None) -> bool:
    """Ollama before 0.30 placed layers itself (llm/memory.go up to 0.12.10, then the layout of
    llm/server.go up to 0.25, both keeping 457 MiB per GPU); 0.30 and later hand GGUF models to
    llama-server, which fits them."""
    parsed = version_tuple(version)
    return parsed is not None and parsed[:2] < (0, 30)


# The tag suffix of the models provision creates. Not the registry name itself: Ollama's create
# merges the FROM model's parameters into the new ones (server/create.go, setParameters), so
# `ollama create qwen2.5:32b` FROM qwen2.5:32b would keep a stale num_gpu or main_gpu from our
# previous create, and a later `ollama pull` would silently drop ours.
CREATED_SUFFIX = "provision"


def model_name(ref: str, name: str | None = None) -> str:
    """The model `ollama create` makes: `<model>:<tag>-provision` unless the profile names it.

    Stable: ctx, parallel and the GPU pins live in the Modelfile, never in the name, so the name
    clients call survives a change of any of them."""
    if name:
        return name
    if ref.endswith(".gguf"):
        stem = re.sub(r"[^a-z0-9._-]+", "-", ref.rsplit("/", 1)[-1].removesuffix(".gguf").lower())
        return f"{stem}:{CREATED_SUFFIX}"
    # A catalog ref's `@quant` is ours, not Ollama's: '@' starts a digest in an Ollama name.
    model, _, tag = ref.replace("@", "-").partition(":")
    return f"{model}:{tag or 'latest'}-{CREATED_SUFFIX}"


def normalize_model(name: str) -> str:
    """Ollama lists `name:latest` for a model created as `name`."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def is_registry_model(base: str) -> bool:
    """Whether a Modelfile's FROM names a library model (pulled) rather than a file."""
    return not base.startswith(("/", "./", "../", "~")) and not base.endswith(".gguf")


def duration_rank(duration: str) -> float:
    """Seconds of a keep_alive duration, so the longest wins; -1 (forever) beats any."""
    if duration.startswith("-"):
        return float("inf")
    units = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ns|us|ms|s|m|h)", duration))


def parse_tags(body: bytes | str) -> frozenset[str]:
    """The installed models in an /api/tags reply, as normalized names."""
    entries = json.loads(body).get("models") or []
    return frozenset(normalize_model(str(e["name"])) for e in entries if "name" in e)
