"""Templates compiled ahead of time (provision/render/templates.py): the index is current, the
compiled modules are what the goldens render through, and the source path renders the same."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest

from provision.render import templates
from provision.render.files import render
from tests.golden_cases import CASES, rendered


@pytest.fixture
def fresh_environment() -> object:
    templates.environment.cache_clear()
    yield
    templates.environment.cache_clear()


def test_the_compiled_index_matches_every_template() -> None:
    texts = templates.sources()
    index = templates.INDEX.read_text()
    for name, digest in templates.digests(texts).items():
        assert digest in index, f"{name} changed since it was compiled: run `make templates`"
    assert sorted(templates.COMPILED_DIR.glob("tmpl_*.py")), "run `make templates`"


def test_a_changed_template_or_jinja2_disables_the_compiled_modules() -> None:
    texts = templates.sources()
    version = templates.json.loads(templates.INDEX.read_text())["jinja2"]
    assert templates.index_is_current(texts, version)
    edited = {**texts, "Modelfile.j2": texts["Modelfile.j2"] + "\n"}
    assert not templates.index_is_current(edited, version)
    assert not templates.index_is_current(texts, version + ".post1")


def test_the_renderer_uses_the_compiled_modules(fresh_environment: object) -> None:
    index = templates.json.loads(templates.INDEX.read_text())
    assert index["jinja2"] == jinja2.__version__, "compiled for another jinja2: `make templates`"
    assert isinstance(templates.environment().loader, jinja2.ModuleLoader)


def test_the_source_path_renders_every_golden_case_the_same(
    fresh_environment: object, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    placements = [p for case in CASES if (p := rendered(case).placement) is not None]
    assert isinstance(templates.environment().loader, jinja2.ModuleLoader)
    compiled = [render(p) for p in placements]
    monkeypatch.setattr(templates, "INDEX", tmp_path / "no-index.json")
    templates.environment.cache_clear()
    assert isinstance(templates.environment().loader, jinja2.DictLoader)
    from_source = [render(p) for p in placements]
    assert len(placements) > 20
    assert from_source == compiled
