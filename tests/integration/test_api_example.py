"""The README's Python API example runs as shown."""

from __future__ import annotations

import re
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


FAULT_EXAMPLE = EXAMPLE.parent / "fault_demo.py"


def test_fault_example_runs(demo_kernel):
    """The README's "When it faults" transcript comes from this script."""
    result = subprocess.run(
        [sys.executable, str(FAULT_EXAMPLE)], capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("catchpoint ") and "#PF (vector 14) at its handler" in out
    assert "error code 0x3 [P W]: protection violation, write, supervisor mode" in out
    assert "cause: a write to a read-only page with CR0.WP=1" in out
    assert "QEMU: shutdown" in out
    assert "triple fault: vector 32 (interrupt) at RIP " in out
    assert re.search(r"not present at level 4 \(PML4 entry 0 at 0x[0-9a-f]+\)$", out.rstrip())
