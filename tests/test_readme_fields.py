"""The README's profile table names every field a profile may set, and nothing else: a field
added to the profile's dataclasses without a row (or a row for a field that is gone) fails."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from provision.placement.profile import Listen, ModelEntry, Power, _ProfileData

README = Path(__file__).resolve().parents[1] / "README.md"
NESTED = {"listen": Listen, "power": Power, "models": ModelEntry}


def accepted_fields() -> set[str]:
    names = {"extends"}  # read before the dataclasses see the document (profile._resolve_extends)
    for field in dataclasses.fields(_ProfileData):
        nested = NESTED.get(field.name)
        if nested is None:
            names.add(field.name)
            continue
        prefix = "models[]" if field.name == "models" else field.name
        names |= {f"{prefix}.{f.name}" for f in dataclasses.fields(nested)}
    return names


def documented_fields() -> set[str]:
    text = README.read_text()
    section = text[text.index("\n## Profiles\n") :]
    section = section[: section.index("\n## ", 1)]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            names |= set(re.findall(r"`([^`]+)`", first_cell))
    return names


def test_every_profile_field_has_a_readme_row_and_every_row_a_field() -> None:
    accepted, documented = accepted_fields(), documented_fields()
    assert accepted - documented == set(), "fields the README's profile table leaves out"
    assert documented - accepted == set(), "rows for fields a profile cannot set"
