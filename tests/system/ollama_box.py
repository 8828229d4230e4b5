"""What an Ollama install leaves on a GPU box, for the system tests' containers.

The stand-in ``ollama`` at /usr/local/bin/ollama with the stock ollama.service enabled and the
``ollama`` account made as Ollama's install.sh makes them, and the stand-in ``nvidia-smi`` at
/usr/bin/nvidia-smi (both in tests/system/standins). :func:`prepare` runs once per session to
bake a layer (conftest's ``ollama_box_layer``); :func:`dress` describes one recorded rig's GPUs
to a container booted on it.
"""

from __future__ import annotations

import json
from pathlib import Path

from provision.hardware.rig import load_rig
from tests.system.nspawn import Container

HERE = Path(__file__).parent
STANDINS = HERE / "standins"
RIGS = HERE.parent / "rigs"
STOCK_OLLAMA_UNIT = HERE.parent / "data/stock-root/etc/systemd/system/ollama.service"

# What prepare() creates: the layer keeps exactly these paths.
KEEP = (
    "/usr/local/bin/ollama",
    "/usr/bin/nvidia-smi",
    "/etc/systemd/system/ollama.service",
    "/etc/systemd/system/default.target.wants",
    "/etc/passwd",
    "/etc/group",
    "/etc/shadow",
    "/etc/gshadow",
    "/usr/share/ollama",
    "/var/lib/ollama-standin",
    "/etc/ollama-standin",
    "/etc/nvidia-smi-standin",
    "/var/lib/nvidia-smi-standin",
)


def prepare(container: Container) -> None:
    container.copy_in(STANDINS / "ollama", "/usr/local/bin/ollama")
    container.copy_in(STANDINS / "nvidia-smi", "/usr/bin/nvidia-smi")
    container.copy_in(STOCK_OLLAMA_UNIT, "/etc/systemd/system/ollama.service")
    container.sh(
        # as Ollama's install.sh does: a system user with its home as the model store
        "useradd -r -s /bin/false -U -m -d /usr/share/ollama ollama\n"
        "install -d -o ollama -g ollama /var/lib/ollama-standin\n"
        "install -d /etc/ollama-standin /etc/nvidia-smi-standin /var/lib/nvidia-smi-standin\n"
        "systemctl enable ollama.service\n"
    )


def standin_gpus(rig_name: str) -> str:
    """The rig's GPUs as the nvidia-smi stand-in reads them."""
    rig = load_rig(RIGS / f"{rig_name}.yaml")
    gpus = [
        {
            "index": g.index,
            "uuid": g.uuid,
            "name": g.name,
            "pci_bus_id": g.pci_bus_id,
            "memory_total_mib": g.memory_total_bytes // 2**20,
            "memory_idle_mib": (g.memory_used_bytes or 0) // 2**20,
            "driver_version": rig.host.driver_version,
            "power": {
                "default_w": g.power.default_w,
                "min_w": g.power.min_w,
                "max_w": g.power.max_w,
            },
        }
        for g in rig.gpus
    ]
    return json.dumps(gpus, indent=2)


# The GGUF facts the Ollama stand-in's scheduler loads by (its PredictServerVRAM and layer
# split), per model as Ollama's registry ships it: the file size of the default q4_K_M tag
# (ollama.com/library, the blob's size) and the shape from the GGUF header (config.json).
GGUF_FACTS = {
    "qwen2.5:32b": {  # Qwen/Qwen2.5-32B-Instruct: 64 layers, 40 heads, 8 KV heads
        "file_bytes": 19_851_336_256,
        "block_count": 64,
        "embedding_length": 5120,
        "head_count": 40,
        "head_count_kv": 8,
        "context_length": 32768,
    },
    "llama3.1:8b": {  # meta-llama/Llama-3.1-8B-Instruct: 32 layers, 32 heads, 8 KV heads
        "file_bytes": 4_920_739_232,
        "block_count": 32,
        "embedding_length": 4096,
        "head_count": 32,
        "head_count_kv": 8,
        "context_length": 131072,
    },
}


def dress(container: Container, rig_name: str) -> None:
    """Make the stand-ins report the recorded rig's GPUs and Ollama version."""
    container.put("/etc/nvidia-smi-standin/gpus.json", standin_gpus(rig_name))
    container.put("/etc/ollama-standin/gguf.json", json.dumps(GGUF_FACTS, indent=2))
    version = load_rig(RIGS / f"{rig_name}.yaml").host.runtimes.get("ollama")
    container.put("/etc/ollama-standin/version", f"{version or '0.30.0'}\n")
