"""The agent's libFuzzer harnesses pass over the committed seed corpus (no fuzzing).

``make fuzz`` runs kernel-agent/fuzz/fuzz_{frame,msgpack,dispatch} for minutes;
this builds the same harnesses (clang, ASan, UBSan; -O0 to build fast) and runs each input of
kernel-agent/fuzz/corpus/ once, so a change to the agent that breaks a
harness's properties on a known input fails here, in seconds. The corpus is
what make_corpus.py writes (it is generated, then committed).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FUZZ = ROOT / "kernel-agent" / "fuzz"
HARNESSES = ["frame", "msgpack", "dispatch"]

needs_clang = pytest.mark.skipif(
    shutil.which("clang") is None,
    reason="clang is not installed (make fuzz installs it: scripts/bootstrap.sh fuzz)",
)


@pytest.fixture(scope="module")
def harnesses(tmp_path_factory) -> Path:
    build = tmp_path_factory.mktemp("fuzz-build")
    result = subprocess.run(
        ["make", "-s", "-C", str(FUZZ), f"BUILD={build}", "OPT=-O0", "all"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return build


@needs_clang
@pytest.mark.parametrize("name", HARNESSES)
def test_harness_passes_over_its_corpus(harnesses, name):
    inputs = sorted((FUZZ / "corpus" / name).iterdir())
    assert len(inputs) >= 10, f"corpus/{name} has only {len(inputs)} inputs"
    # Files (not a directory) as arguments: each input runs once, then the harness exits.
    result = subprocess.run(
        [str(harnesses / f"fuzz_{name}"), *map(str, inputs)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"Executed {inputs[-1]}" in result.stderr
    for bad in ("ERROR: AddressSanitizer", "runtime error", "check failed", "deadly signal"):
        assert bad not in result.stderr, result.stderr[-4000:]


def test_the_corpus_is_what_make_corpus_writes(tmp_path):
    """The committed corpus is the generator's output (rerun make_corpus.py after a change)."""
    subprocess.run(
        [sys.executable, str(FUZZ / "make_corpus.py"), str(tmp_path)], check=True, timeout=60
    )
    for name in HARNESSES:
        written = {p.name: p.read_bytes() for p in (tmp_path / name).iterdir()}
        committed = {p.name: p.read_bytes() for p in (FUZZ / "corpus" / name).iterdir()}
        assert written == committed, f"corpus/{name} differs: rerun make_corpus.py"
