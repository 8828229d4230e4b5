"""The golden cases: every recorded rig x every bundled profile, rendered once per session.

Shared by the golden-directory test, `systemd-analyze verify` and `nginx -t`. Model references
resolve from the bundled catalog only (an empty Ollama store), so the result never depends on
what the machine running the tests has installed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from provision.desired import DesiredState
from provision.errors import InputError
from provision.hardware.rig import load_rig
from provision.pipeline import desired_state
from provision.placement.decisions import Placement
from provision.placement.profile import bundled_names
from tests.helpers import ALL_RIG_FILES, TESTS_DIR

GOLDEN_DIR = TESTS_DIR / "golden"
ENVIRON = {"OLLAMA_MODELS": "/nonexistent/provision-tests/ollama-models"}


@dataclass(frozen=True)
class Case:
    rig_file: Path
    profile: str

    @property
    def id(self) -> str:
        return f"{self.rig_file.stem}__{self.profile}"

    @property
    def golden(self) -> Path:
        return GOLDEN_DIR / self.id


@dataclass(frozen=True)
class Rendered:
    placement: Placement | None
    desired: DesiredState | None
    error: InputError | None


CASES = [Case(rig, profile) for rig in ALL_RIG_FILES for profile in bundled_names()]


@functools.cache
def rendered(case: Case) -> Rendered:
    try:
        placement, desired = desired_state(load_rig(case.rig_file), case.profile, ENVIRON)
    except InputError as exc:
        return Rendered(None, None, exc)
    return Rendered(placement, desired, None)


def summary(desired: DesiredState) -> str:
    """units.txt: everything in the desired state that is not file content."""
    lines = ["# units (in the order apply handles them)"]
    for unit in desired.units:
        action = "enable" if unit.enabled else "disable"
        state = "start" if unit.active else "stop"
        extra = " oneshot" if unit.oneshot else ""
        if unit.listen:
            extra += f" listen {unit.listen[0]}:{unit.listen[1]}"
        lines.append(f"{action} {state} {unit.name}{extra}")
    lines.append("# power targets")
    for power in desired.power:
        default = f"{power.default_w:g} W" if power.default_w is not None else "unknown"
        lines.append(f"{power.uuid} {power.target_w:g} W (default {default})")
    lines.append("# models: ollama create NAME -f MODELFILE, after pulling BASE")
    lines += [f"{m.name} {m.modelfile_path} from {m.base}" for m in desired.models]
    lines.append("# files")
    for file in desired.files:
        actions = [f" restarts {u}" for u in file.restarts]
        actions += [f" reloads {u}" for u in file.reloads]
        owner = f"{file.owner}:{file.group}"
        lines.append(f"{file.path} {file.mode:04o} {owner}{''.join(actions)}")
    return "\n".join(lines) + "\n"


def expected_tree(case: Case) -> dict[str, str]:
    """Relative path under the golden directory -> exact content."""
    result = rendered(case)
    if result.error is not None:
        hint = f"hint: {result.error.hint}\n" if result.error.hint else ""
        return {"error.txt": f"error: {result.error.message}\n{hint}"}
    assert result.desired is not None
    tree = {f.path.lstrip("/"): f.content for f in result.desired.files}
    tree["units.txt"] = summary(result.desired)
    return tree


def read_tree(folder: Path) -> dict[str, str]:
    if not folder.is_dir():
        return {}
    return {
        str(path.relative_to(folder)): path.read_text(encoding="utf-8")
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }
