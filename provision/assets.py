"""Where the bundled templates and profiles are: inside the installed package, or beside it.

A wheel ships the top-level `templates/` and `profiles/` as the packages `provision.templates`
and `provision.profiles`; a source checkout (tests, `python -m provision`) reads them from the
repository, next to the `provision/` package.
"""

from __future__ import annotations

from importlib import resources
from importlib.abc import Traversable
from pathlib import Path


def asset_dir(name: str) -> Traversable:
    """`name` is "templates" or "profiles"."""
    beside = Path(__file__).resolve().parent.parent / name
    if beside.is_dir():
        return beside
    return resources.files(f"provision.{name}")
