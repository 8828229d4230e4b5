"""Golden directories: the exact rendered file set for every rig x bundled profile.

`UPDATE_GOLDEN=1 pytest tests/test_golden.py` rewrites them; review the diff like code.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.golden_cases import CASES, GOLDEN_DIR, Case, expected_tree, read_tree

UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def _write(case: Case, tree: dict[str, str]) -> None:
    shutil.rmtree(case.golden, ignore_errors=True)
    for relative, content in tree.items():
        path = case.golden / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_rendered_files_match_golden(case: Case) -> None:
    expected = expected_tree(case)
    if UPDATE:
        _write(case, expected)
    actual = read_tree(case.golden)
    assert sorted(actual) == sorted(expected), f"file set differs in {case.golden}"
    for relative, content in expected.items():
        assert actual[relative] == content, f"{case.golden / relative} differs"


def test_no_stale_golden_directories() -> None:
    known = {case.id for case in CASES}
    folders = GOLDEN_DIR.iterdir() if GOLDEN_DIR.is_dir() else iter(())
    stale = sorted(p.name for p in folders if p.is_dir() and p.name not in known)
    if UPDATE:
        for name in stale:
            shutil.rmtree(GOLDEN_DIR / name)
        stale = []
    assert not stale, f"golden directories without a rig x profile case: {stale}"


def test_every_case_renders_or_explains() -> None:
    """Most cases render files; the ones that do not say why in error.txt."""
    trees = [expected_tree(case) for case in CASES]
    assert sum("units.txt" in tree for tree in trees) >= len(CASES) * 3 // 4
