"""Fixtures shared by every test module (helpers live in tests/helpers.py)."""
from __future__ import annotations

import pytest

from helpers import run_cli


@pytest.fixture
def cli():
    return run_cli
