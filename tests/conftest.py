"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import rig_file


@pytest.fixture
def sample_rig_file() -> Path:
    return rig_file("synthetic-2x3090-x16-x8")
