"""The README's Python API example runs as shown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "api_demo.py"


def test_api_example_runs(demo_kernel):
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=90
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("CR0=0x8001")
    assert "W+X: 0x0000000000001000-" in out  # the boot identity map is W+X, as it should show
    assert "PT[" in out and "demo_level3 -> 0x1" in out
    assert "0xffff8880001" in out  # the direct-map alias
