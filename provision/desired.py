"""The desired host state: what rendering produces and what diff/apply compare with the host.

Pure data. Paths are absolute as on the target host; `--root` is applied by the host layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from provision.paths import SYSTEMD_DIR

MANAGED_HEADER = "# Managed by provision. Do not edit; run 'provision diff'."


@dataclass(frozen=True)
class DesiredFile:
    path: str  # absolute on the target, e.g. /etc/systemd/system/ollama.service.d/50-provision.conf
    content: str  # full text, starting with MANAGED_HEADER where the format has comments
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"
    # Units whose behaviour depends on this file: restarted (or reloaded) when it changes.
    restarts: tuple[str, ...] = ()
    reloads: tuple[str, ...] = ()  # e.g. nginx.service for an nginx site

    @property
    def is_systemd_unit(self) -> bool:
        """A change here needs `systemctl daemon-reload`."""
        return self.path.startswith(SYSTEMD_DIR + "/")


@dataclass(frozen=True)
class DesiredUnit:
    name: str  # "ollama.service", "ollama@0.service", "gpu-power-limits.service"
    enabled: bool = True
    active: bool = True  # should be running (a oneshot: ran and succeeded)
    oneshot: bool = False
    # Where the service must answer after a (re)start, e.g. ("127.0.0.1", 11434).
    listen: tuple[str, int] | None = None
    gpu_uuids: tuple[str, ...] = ()  # the GPUs it runs models on


@dataclass(frozen=True)
class DesiredPower:
    uuid: str
    target_w: float
    default_w: float | None
    reason: str
    # AMD: the card's PCI device directory (its hwmon power1_cap takes the cap in microwatts);
    # None: an NVIDIA card, set with nvidia-smi by UUID.
    device: str | None = None


@dataclass(frozen=True)
class DesiredModel:
    """An Ollama model created from a Modelfile (`ollama create NAME -f FILE`)."""

    name: str
    modelfile_path: str
    base: str  # the FROM line's model, which must be pulled first


@dataclass(frozen=True, kw_only=True)
class DesiredShare:
    """What the plan puts on one GPU for one loaded model."""

    uuid: str
    index: int
    footprint_bytes: int  # weights, KV cache, compute buffers and overhead
    layers: int  # repeating layers (the output head not counted)


@dataclass(frozen=True, kw_only=True)
class DesiredLoad:
    """One planned model as one service runs it once loaded: `verify --loaded` loads it and
    compares where it sits with this."""

    model: str  # the name clients ask for
    unit: str  # the service that serves it
    runtime: str  # "ollama" or "llama-server"
    keep_alive: str | None  # Ollama: how long the load keeps it resident
    shares: tuple[DesiredShare, ...]  # in split order
    cpu_layers: int = 0
    cpu_bytes: int = 0


@dataclass(frozen=True)
class DesiredState:
    files: tuple[DesiredFile, ...] = ()
    units: tuple[DesiredUnit, ...] = ()
    power: tuple[DesiredPower, ...] = ()
    models: tuple[DesiredModel, ...] = ()
    loads: tuple[DesiredLoad, ...] = ()
    # Digests that the manifest records so that `verify` knows what plan it checks.
    profile_digest: str = ""
    rig_digest: str = ""
    notes: tuple[str, ...] = field(default=())
