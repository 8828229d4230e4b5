"""The manifest: what the last completed apply established, which verify and the next plan read.

Pure. Written last by apply, at /var/lib/provision/manifest.json, with sorted keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from provision.desired import DesiredFile, DesiredLoad, DesiredModel, DesiredState, DesiredUnit

MANIFEST_SCHEMA = 1


def encode(content: str) -> bytes:
    # surrogateescape: backed-up bytes that are not UTF-8 are restored exactly.
    return content.encode("utf-8", "surrogateescape")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_manifest(desired: DesiredState) -> dict[str, Any]:
    """What the last completed apply established; `verify` and the next plan read it."""
    return {
        "schema": MANIFEST_SCHEMA,
        "profile_digest": desired.profile_digest,
        "rig_digest": desired.rig_digest,
        "files": [_manifest_file(f) for f in sorted(desired.files, key=lambda f: f.path)],
        "units": [_manifest_unit(u) for u in desired.units],
        "ports": [
            {"unit": u.name, "host": u.listen[0], "port": u.listen[1]}
            for u in desired.units
            if u.listen
        ],
        "power": [
            {
                "uuid": p.uuid,
                "target_w": p.target_w,
                "default_w": p.default_w,
                "reason": p.reason,
                "device": p.device,
            }
            for p in desired.power
        ],
        "models": [_manifest_model(m, desired) for m in desired.models],
        "loads": [_manifest_load(load) for load in desired.loads],
    }


def _manifest_file(f: DesiredFile) -> dict[str, Any]:
    return {
        "path": f.path,
        "sha256": sha256(encode(f.content)),
        "mode": f"{f.mode:04o}",
        "owner": f.owner,
        "group": f.group,
        "restarts": list(f.restarts),
        "reloads": list(f.reloads),
    }


def _manifest_unit(u: DesiredUnit) -> dict[str, Any]:
    listen = f"{u.listen[0]}:{u.listen[1]}" if u.listen else None
    return {
        "name": u.name,
        "enabled": u.enabled,
        "active": u.active,
        "oneshot": u.oneshot,
        "listen": listen,
    }


def _manifest_model(model: DesiredModel, desired: DesiredState) -> dict[str, Any]:
    contents = {f.path: f.content for f in desired.files}
    content = contents.get(model.modelfile_path)
    digest = sha256(encode(content)) if content is not None else None
    return {
        "name": model.name,
        "base": model.base,
        "modelfile_path": model.modelfile_path,
        "modelfile_sha256": digest,
    }


def _manifest_load(load: DesiredLoad) -> dict[str, Any]:
    return {
        "model": load.model,
        "unit": load.unit,
        "runtime": load.runtime,
        "keep_alive": load.keep_alive,
        "gpus": [
            {
                "uuid": s.uuid,
                "index": s.index,
                "footprint_bytes": s.footprint_bytes,
                "layers": s.layers,
            }
            for s in load.shares
        ],
        "cpu_layers": load.cpu_layers,
        "cpu_bytes": load.cpu_bytes,
    }


def comparable(manifest: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A manifest without the record of when and by what it was written."""
    if manifest is None:
        return None
    return {k: v for k, v in manifest.items() if k != "last_apply"}


def units_from_manifest(manifest: Mapping[str, Any] | None) -> dict[str, DesiredUnit]:
    """The units a manifest records, as the desired state that established them."""
    units = {}
    for entry in (manifest or {}).get("units", []):
        listen = None
        if entry.get("listen"):
            address, _, port = str(entry["listen"]).rpartition(":")
            listen = (address.strip("[]"), int(port))
        units[entry["name"]] = DesiredUnit(
            entry["name"], entry["enabled"], entry["active"], entry["oneshot"], listen
        )
    return units
