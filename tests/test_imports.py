"""schemas/ imports on its own, first, in a fresh interpreter: a tool or a test that imports the
schemas before giftcard_provider must not meet a circular import (schemas/ imports
giftcard_provider.money, whose package imports giftcard_provider.api, which uses the schemas' fields)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "module", ["schemas", "schemas.common", "schemas.giftcards", "schemas.transactions", "giftcard_provider.api"]
)
def test_imports_first_in_a_fresh_interpreter(module):
    done = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
