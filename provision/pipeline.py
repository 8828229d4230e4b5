"""Rig + profile reference -> (Placement, DesiredState): the one path every command takes.

Loads the profile, resolves each model reference (a GGUF file, an installed Ollama model or the
bundled catalog), places and renders, and stamps the digests the manifest records so that
`verify` knows which plan it checks. Reads files; never the host's services.
"""

from __future__ import annotations

import hashlib
import json
import stat
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path

from provision.desired import DesiredState
from provision.errors import InputError, ProfileFieldError
from provision.hardware.rig import Rig, dump_rig
from provision.models.estimate import Runtime
from provision.models.refs import mmproj_spec, resolve
from provision.models.spec import ModelSpec
from provision.placement.decisions import ModelPlacement, Placement
from provision.placement.place import place
from provision.placement.profile import Profile, load_profile
from provision.render.files import render
from provision.typed_load import to_plain


def desired_state(
    rig: Rig,
    profile_ref: str | None,
    environ: Mapping[str, str],
    allow_partial: bool = False,
    sysfs_root: str = "/sys",
    root: Path | None = None,
    files_must_exist: bool = False,
    ollama_store: str | None = None,
) -> tuple[Placement, DesiredState]:
    """A model that cannot be placed is an error (exit 2) unless `allow_partial`: a plan that
    silently serves less than the profile asks for is what an operator finds out too late.
    `sysfs_root` is where the target's sysfs is: AMD power caps are written below it. `root`
    is the target's tree: the Ollama store is looked up and llama-server's model files are
    checked there; a missing file is a warning for `plan`, an error where `files_must_exist`
    (diff and apply: the unit would fail to start). `ollama_store`: the OLLAMA_MODELS the
    target's own ollama.service sets (observed by the caller,
    provision.change.observe.stock_ollama_store), which replicas share."""
    profile = load_profile(profile_ref)
    try:
        specs = {
            entry.ref: _with_mmproj(
                _resolve_model(entry.ref, f"models[{i}].ref", environ, root), entry.mmproj, root
            )
            for i, entry in enumerate(profile.models)
        }
        placement = place(rig, profile, specs, sysfs_root, ollama_store)
        warnings = _model_file_warnings(placement, root or Path("/"), files_must_exist)
    except ProfileFieldError as exc:
        raise InputError(f"{profile.where(exc.field)}: {exc.message}", hint=exc.hint) from None
    if warnings:
        placement = replace(placement, warnings=(*placement.warnings, *warnings))
    _refuse_dropped(placement, allow_partial)
    desired = replace(
        render(placement), profile_digest=profile_digest(profile), rig_digest=rig_digest(rig)
    )
    return placement, desired


def _resolve_model(
    ref: str, field: str, environ: Mapping[str, str], root: Path | None
) -> ModelSpec:
    try:
        return resolve(ref, environ, root)
    except ProfileFieldError:
        raise
    except InputError as exc:
        raise ProfileFieldError(field, exc.message, exc.hint) from None


def _with_mmproj(spec: ModelSpec, mmproj: str | None, root: Path | None) -> ModelSpec:
    """A model served with `--mmproj FILE`: the projector's size from that file in the target's
    tree, else the catalog's figure."""
    if not mmproj:
        return spec
    on_target = (root or Path("/")) / mmproj.lstrip("/") if mmproj.startswith("/") else Path(mmproj)
    return mmproj_spec(spec, str(on_target), mmproj)


def _model_file_warnings(placement: Placement, root: Path, must_exist: bool) -> list[str]:
    """llama-server's `-m` file, as its unit's sandbox will see it. The unit runs with
    DynamicUser=yes, which implies PrivateTmp=yes and ProtectHome=read-only (systemd.exec(5),
    "DynamicUser="): a file in /tmp or /var/tmp is not there for it, and the transient user
    reads only what any user may read."""
    if placement.profile.runtime != Runtime.LLAMA_SERVER:
        return []
    warnings = []
    for i, mp in enumerate(placement.models):
        if not mp.placed:
            continue
        for field, path in _model_files(mp, i):
            warning = _model_file_warning(field, path, root, must_exist)
            if warning:
                warnings.append(warning)
    return warnings


def _model_files(mp: ModelPlacement, i: int) -> list[tuple[str, str]]:
    """The files llama-server's unit loads for a model: its GGUF and its projector."""
    path = mp.entry.path or (mp.entry.ref if mp.entry.ref.endswith(".gguf") else None)
    files = []
    if path is not None and path.startswith("/"):
        files.append((f"models[{i}].path" if mp.entry.path else f"models[{i}].ref", path))
    if mp.entry.mmproj:
        files.append((f"models[{i}].mmproj", mp.entry.mmproj))
    return files


def _model_file_warning(field: str, path: str, root: Path, must_exist: bool) -> str | None:
    if path.startswith(("/tmp/", "/var/tmp/")):
        raise ProfileFieldError(
            field,
            f"{path} is in a private /tmp for llama-server's unit (DynamicUser=yes "
            "implies PrivateTmp=yes): the service would not find it",
            hint="move the file to e.g. /srv/models/ and point the profile there",
        )
    problem = _unreadable_by_others(root, path)
    if problem is None:
        return None
    if problem.startswith("not found") and not must_exist:
        return f"{field}: {path} {problem}: llama-server will fail to start there"
    raise ProfileFieldError(
        field,
        f"{path} {problem}",
        hint="llama-server runs as a transient user (DynamicUser=yes): the file must be "
        "readable by others (chmod o+r) in folders they may enter (chmod o+x), e.g. under "
        "/srv/models",
    )


def _unreadable_by_others(root: Path, path: str) -> str | None:
    """Why a user with no groups could not read `path` under `root`, or None."""
    target = root / path.lstrip("/")
    try:
        info = target.stat()
        if not stat.S_ISREG(info.st_mode):
            return "is not a regular file"
        if not info.st_mode & stat.S_IROTH:
            return "is not readable by other users"
        for folder in target.parents:
            if folder == root:
                break
            if not folder.stat().st_mode & stat.S_IXOTH:
                inside = Path("/") / folder.relative_to(root)
                return f"is in {inside}, which other users cannot enter"
    except FileNotFoundError:
        return f"not found under {root}"
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"
    return None


def _refuse_dropped(placement: Placement, allow_partial: bool) -> None:
    dropped = [m for m in placement.models if not m.placed]
    if not dropped or (allow_partial and len(dropped) < len(placement.models)):
        return
    first = dropped[0]
    more = f" (and {len(dropped) - 1} more)" if len(dropped) > 1 else ""
    fits = "; ".join(first.fit.suggestions) or "nothing on this rig"
    if len(dropped) == len(placement.models):
        hint = "change the profile as suggested: no model of it can be placed on this rig"
    else:
        hint = "change the profile as suggested, or pass --allow-partial to serve the others"
    raise InputError(
        f"{first.entry.ref} cannot be placed{more}: {first.fit.reason}; what would fit: {fits}",
        hint=hint,
    )


def profile_digest(profile: Profile) -> str:
    """sha256 of the resolved profile data (after `extends:`), not of where it was read from."""
    data = {
        f.name: to_plain(getattr(profile, f.name))
        for f in fields(profile)
        if f.name not in ("name", "source")
    }
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def rig_digest(rig: Rig) -> str:
    """sha256 of the canonical snapshot JSON, without the readings that move while the box
    runs: the desktop's VRAM, the idle link generation and the power limit apply itself sets
    (a live probe right after apply reads the limit it wrote: the host must stay in sync)."""
    gpus = []
    for gpu in rig.gpus:
        changes: dict[str, object] = {"memory_used_bytes": None}
        changes["pcie"] = replace(gpu.pcie, gen_current=None)
        changes["power"] = replace(gpu.power, limit_w=None)
        gpus.append(replace(gpu, **changes))  # type: ignore[arg-type]
    stable = replace(rig, gpus=tuple(gpus))
    return hashlib.sha256(dump_rig(stable, "json").encode()).hexdigest()
