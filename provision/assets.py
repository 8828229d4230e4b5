"""Where the bundled templates, profiles and data are: inside the installed package, or beside it.

A wheel ships the top-level `templates/` and `profiles/` as the packages `provision.templates`
and `provision.profiles`, so they sit inside the installed `provision/`; a source checkout
(tests, `python -m provision`) has them in the repository, next to the `provision/` package.
Both are plain directories: no importlib.resources, whose import alone costs ~3 ms.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def asset_dir(name: str) -> Path:
    """`name` is "templates" or "profiles"; the installed copy first, so that a stray top-level
    directory of that name in site-packages is never taken for ours."""
    inside = PACKAGE_DIR / name
    return inside if inside.is_dir() else PACKAGE_DIR.parent / name


def data_file(name: str) -> Path:
    """A file of `provision/data/` (the catalog), the same in a checkout and a wheel."""
    return PACKAGE_DIR / "data" / name
