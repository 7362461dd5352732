"""Code run by a fresh interpreter: what a test of imports needs (nothing of the test's own
process is loaded there)."""

from __future__ import annotations

import subprocess
import sys


def fresh_python(
    code: str, *, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -c code``, finished; its stdout and stderr as text. Fails the test (with
    the interpreter's stderr) when the code does not succeed."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert result.returncode == 0, result.stderr
    return result
