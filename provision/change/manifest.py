"""The manifest: what the last completed apply established, which verify and the next plan read.

Pure. Written last by apply, at /var/lib/provision/manifest.json, with sorted keys.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from provision.desired import DesiredFile, DesiredLoad, DesiredModel, DesiredState, DesiredUnit
from provision.ollama import normalize_model

MANIFEST_SCHEMA = 1


def encode(content: str) -> bytes:
    # surrogateescape: backed-up bytes that are not UTF-8 are restored exactly.
    return content.encode("utf-8", "surrogateescape")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_manifest(desired: DesiredState, created: Iterable[str] = ()) -> dict[str, Any]:
    """What the last completed apply established; `verify` and the next plan read it.

    `created`: the Ollama models provision created (absent before its `ollama create`) that may
    still exist; only these are ever removed."""
    return {
        "created_models": sorted(set(created)),
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


def created_models(manifest: Mapping[str, Any] | None) -> frozenset[str]:
    """The Ollama models the manifest says provision created, as normalized names.

    A manifest from before `created_models` existed: its `models`, which that version created on
    its first apply (their Modelfiles were new, so each got an `ollama create`)."""
    if not manifest:
        return frozenset()
    recorded = manifest.get("created_models")
    if recorded is None:
        recorded = [m.get("name") for m in manifest.get("models", ()) if isinstance(m, Mapping)]
    if not isinstance(recorded, list):
        return frozenset()
    return frozenset(normalize_model(n) for n in recorded if isinstance(n, str) and n)


# What readers of a manifest rely on, per record list: field -> the types it may have. A
# field in `_REQUIRED` must be there; others were added later and may be absent in an old one.
_Types = tuple[type, ...]
_STR, _OPT_STR, _BOOL, _NUMBER = (str,), (str, type(None)), (bool,), (int, float)
_RECORDS: dict[str, dict[str, _Types]] = {
    "files": {
        "path": _STR,
        "sha256": _STR,
        "mode": _STR,
        "owner": _STR,
        "group": _STR,
        "restarts": (list,),
        "reloads": (list,),
    },
    "units": {
        "name": _STR,
        "enabled": _BOOL,
        "active": _BOOL,
        "oneshot": _BOOL,
        "listen": _OPT_STR,
    },
    "ports": {"unit": _STR, "host": _STR, "port": (int,)},
    "power": {
        "uuid": _STR,
        "target_w": _NUMBER,
        "default_w": (*_NUMBER, type(None)),
        "device": _OPT_STR,
    },
    "models": {
        "name": _STR,
        "base": _OPT_STR,
        "modelfile_path": _STR,
        "modelfile_sha256": _OPT_STR,
    },
    "prior_units": {"name": _STR, "enabled": _STR, "active": _OPT_STR},  # change/prior.py
    "loads": {  # verify --loaded
        "model": _STR,
        "unit": _STR,
        "runtime": _STR,
        "keep_alive": _OPT_STR,
        "gpus": (list,),
        "cpu_layers": (int,),
        "cpu_bytes": (int,),
    },
}
_REQUIRED = {
    "files": ("path", "sha256", "mode", "owner", "group"),
    "units": ("name", "enabled", "active"),
    "ports": ("unit", "host", "port"),
    "power": ("uuid", "target_w"),
    "models": ("name",),
    "prior_units": ("name", "enabled"),
    "loads": ("model", "unit", "runtime", "gpus"),
}
_OCTAL_MODE = re.compile(r"^0?[0-7]{3,4}$")
_LISTEN = re.compile(r"^.*:(\d{1,5})$")


def shape_problem(document: Mapping[str, Any]) -> str | None:
    """What in a manifest does not have the shape apply writes (a field and why), or None:
    every reader (plan, rollback, verify) may then index it without checking again."""
    for key, fields in _RECORDS.items():
        records = document.get(key, [])
        if not isinstance(records, list):
            return f"'{key}' is not a list"
        for n, record in enumerate(records):
            problem = _record_problem(record, fields, _REQUIRED[key])
            if problem is not None:
                return f"{key}[{n}]{problem}"
    return None


def _record_problem(
    record: object, fields: dict[str, _Types], required: tuple[str, ...]
) -> str | None:
    if not isinstance(record, dict):
        return " is not an object"
    for name in required:
        if name not in record:
            return f".{name} is missing"
    for name, types in fields.items():
        value = record.get(name)
        if name not in record:
            continue
        # bool is an int in Python: a port or a watt figure must not be `true`
        wrong = isinstance(value, bool) and bool not in types
        if wrong or not isinstance(value, types):
            return f".{name}: {value!r:.60} has the wrong type"
        if isinstance(value, float) and not math.isfinite(value):
            return f".{name}: {value!r} is not a finite number"
        if name == "gpus" and isinstance(value, list):  # a load's shares: objects of their own
            problem = _shares_problem(value)
            if problem is not None:
                return f".gpus{problem}"
        elif isinstance(value, list) and not all(isinstance(v, str) for v in value):
            return f".{name}: not a list of strings"
    return _value_problem(record)


_SHARE: dict[str, _Types] = {
    "uuid": _STR,
    "index": (int,),
    "footprint_bytes": (int,),
    "layers": (int,),
}


def _shares_problem(shares: list[Any]) -> str | None:
    for n, share in enumerate(shares):
        problem = _record_problem(share, _SHARE, tuple(_SHARE))
        if problem is not None:
            return f"[{n}]{problem}"
    return None


def _value_problem(record: dict[str, Any]) -> str | None:
    mode, listen, port = record.get("mode"), record.get("listen"), record.get("port")
    if isinstance(mode, str) and not _OCTAL_MODE.match(mode):
        return f".mode: {mode!r:.60} is not an octal file mode"
    if isinstance(listen, str) and listen and not _LISTEN.match(listen):
        return f".listen: {listen!r:.60} is not host:port"
    if isinstance(listen, str) and listen:
        port = int(listen.rpartition(":")[2])
    if isinstance(port, int) and not 0 < port < 65536:
        return f": port {port} is not a TCP port"
    return None


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
            entry["name"], entry["enabled"], entry["active"], entry.get("oneshot", False), listen
        )
    return units
