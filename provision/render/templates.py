"""The Jinja environment the renderer uses: templates compiled ahead of time, source as fallback.

Parsing and compiling the templates cost ~25 ms on every run, more than rendering them, so
`make templates` compiles them once into `compiled/` (jinja2's own compiler and ModuleLoader),
with an index of the source digests. At run time the compiled modules are used only when every
template's digest and the jinja2 version still match; otherwise the templates are compiled from
source as before, so a stale index costs speed, never correctness. tests/test_templates.py fails
on a stale index and proves both paths render the same bytes.

Pure: reads the templates and the compiled modules shipped with the package.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provision.assets import asset_dir
from provision.render.filters import FILTERS

if TYPE_CHECKING:
    import jinja2

COMPILED_DIR = Path(__file__).resolve().parent / "compiled"
INDEX = COMPILED_DIR / "index.json"
# Output must not depend on which loader built the template: both use these options.
OPTIONS: dict[str, Any] = {
    "autoescape": False,
    "keep_trailing_newline": True,
    "trim_blocks": True,
    "lstrip_blocks": True,
}


def sources() -> dict[str, str]:
    """Template name -> source text, for every template the package ships."""
    folder = asset_dir("templates")
    return {
        entry.name: entry.read_text(encoding="utf-8")
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.is_file() and entry.name.endswith(".j2")
    }


def digests(texts: dict[str, str]) -> dict[str, str]:
    return {name: hashlib.sha256(text.encode()).hexdigest() for name, text in texts.items()}


def index_is_current(texts: dict[str, str], jinja2_version: str) -> bool:
    try:
        index: object = json.loads(INDEX.read_text())
    except (OSError, ValueError):
        return False
    return index == {"jinja2": jinja2_version, "templates": digests(texts)}


@functools.cache
def environment(precompiled: bool = True) -> jinja2.Environment:
    import jinja2  # lazy: ~30 ms, paid only by commands that render

    texts = sources()
    use_compiled = precompiled and index_is_current(texts, jinja2.__version__)
    loader: jinja2.BaseLoader = (
        jinja2.ModuleLoader(COMPILED_DIR) if use_compiled else jinja2.DictLoader(texts)
    )
    env = jinja2.Environment(loader=loader, undefined=jinja2.StrictUndefined, **OPTIONS)
    env.filters.update(FILTERS)
    return env


def compile_all(target: Path = COMPILED_DIR) -> list[str]:
    """Compile every template into `target` and write the index; the names compiled."""
    import jinja2  # lazy: only `make templates` compiles

    texts = sources()
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.glob("tmpl_*.py"):
        stale.unlink()
    source_env = environment(precompiled=False)
    source_env.compile_templates(str(target), zip=None, ignore_errors=False)
    index = {"jinja2": jinja2.__version__, "templates": digests(texts)}
    (target / "index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return sorted(texts)


if __name__ == "__main__":
    print("compiled:", ", ".join(compile_all()))
