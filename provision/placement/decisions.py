"""The placement decisions as data: instances, models, power, balancer. Pure, no logic."""

from __future__ import annotations

from dataclasses import dataclass

from provision.hardware.classify import RigTraits
from provision.hardware.rig import Rig
from provision.models.estimate import RunSettings, Runtime
from provision.models.spec import ModelSpec
from provision.paths import NGINX_SITE
from provision.placement.fit import FitResult, GpuShare, Verdict
from provision.placement.profile import ModelEntry, Profile


@dataclass(frozen=True, kw_only=True)
class Instance:
    runtime: Runtime
    unit: str
    address: str
    port: int
    gpu_uuids: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    reason: str
    args: tuple[str, ...] = ()  # llama-server arguments
    env_file: str | None = None  # ollama@N reads its environment from here
    models: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelPlacement:
    entry: ModelEntry
    name: str  # the name clients ask for: the Ollama model created, or llama-server's alias
    spec: ModelSpec
    fit: FitResult
    settings: RunSettings
    units: tuple[str, ...]  # the instances that serve it
    modelfile_path: str | None = None
    num_gpu: int | None = None  # Ollama's PARAMETER num_gpu (layers offloaded), when decided
    # What the installed Ollama does with it (None: not modelled for that runtime or version),
    # and the lever that makes it follow the plan.
    ollama_gpus: tuple[int, ...] | None = None  # GPU indices Ollama will run it on
    main_gpu: int | None = None  # PARAMETER main_gpu: position in CUDA_VISIBLE_DEVICES
    ollama_reason: str = ""
    # Where the installed Ollama puts the layers when it does not follow the plan and no lever
    # makes it (before 0.30): what the memory bars show for this model.
    ollama_shares: tuple[GpuShare, ...] | None = None

    @property
    def placed(self) -> bool:
        return self.fit.verdict != Verdict.NO_FIT

    @property
    def gpu_indices(self) -> tuple[int, ...]:
        return tuple(s.gpu.index for s in self.fit.shares)

    @property
    def layers_per_gpu(self) -> tuple[int, ...]:
        return tuple(len(s.footprint.layers) for s in self.fit.shares)


@dataclass(frozen=True)
class PowerDecision:
    index: int
    uuid: str
    target_w: int  # whole watts, as nvidia-smi -pl and amdgpu take them
    default_w: float | None
    reason: str
    # AMD: the card's PCI device directory on the target (the cap goes to its hwmon's
    # power1_cap); None: an NVIDIA card, set with nvidia-smi.
    device: str | None = None


@dataclass(frozen=True)
class Balancer:
    address: str
    port: int
    upstreams: tuple[tuple[str, int], ...]
    path: str = NGINX_SITE


@dataclass(frozen=True)
class Placement:
    profile: Profile
    rig: Rig
    traits: RigTraits
    ollama_version: str | None
    instances: tuple[Instance, ...]
    models: tuple[ModelPlacement, ...]
    power: tuple[PowerDecision, ...]
    balancer: Balancer | None
    warnings: tuple[str, ...]
    disabled_units: tuple[str, ...] = ()  # e.g. the stock ollama.service in replica mode
