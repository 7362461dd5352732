"""Issue 16's figures beside their targets and references, measured in one run (make bench).

In process, from the captured tables (no target): walk plus coalesce of the
Linux capture (tests/fixtures, 109 table pages, 74,251 leaves; target 20 ms)
and of OVMF's 1 TiB identity map (1028 pages, 524,799 leaves; target 150
ms), and ``pt``'s JSON beside its text for the Linux capture's 65,775 ranges
(target: JSON at most 1.3 times the text).

Whole process, on the demo kernel through QEMU's gdb stub: ``kinspect pt``,
``kinspect --json pt`` and ``kinspect regs`` (cold start, target 150 ms),
each beside QEMU's own ``info mem`` and ``info tlb`` over QMP (connection
included) timed in the same run, and the ratio; with bytecode compiled once
(a warm-up round), as an installed kinspect runs. Each line printed is
``what: ours | reference | ratio``; a benchmark, never a timed assertion.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import pytest

from kinspect.inspector.formatting import format_json, format_ranges, json_document
from kinspect.inspector.x86.control import decode_paging_mode
from kinspect.inspector.x86.paging import coalesce_ranges, collect_address_space
from tests.qemu_view import capture_reader
from tests.unit import test_ovmf_capture as ovmf_capture
from tests.unit.test_x86_linux_capture import load_pages as load_linux_pages

LINUX = (0x80050033, 0x487C000, 0x6F0, 0xD01)  # CR0, CR3, CR4, EFER of the Linux capture


def report(capsys, text: str) -> None:
    with capsys.disabled():
        print(f"\n[issue 16] {text}")


def median_seconds(action: Callable[[], object], rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@pytest.fixture(scope="module")
def linux_capture():
    cr0, cr3, cr4, efer = LINUX
    return capture_reader(load_linux_pages()), cr3, decode_paging_mode(cr0, cr4, efer)


@pytest.fixture(scope="module")
def ovmf_tables():
    mode = decode_paging_mode(ovmf_capture.CR0, ovmf_capture.CR4, ovmf_capture.EFER)
    return capture_reader(ovmf_capture.load_pages()), ovmf_capture.CR3, mode


def walk_and_coalesce(read, cr3, mode):
    space = collect_address_space(read, cr3, mode)
    return space, coalesce_ranges(space.leaves)


@pytest.mark.parametrize(
    ("capture", "target_seconds", "leaves"),
    [("linux_capture", 0.020, 74251), ("ovmf_tables", 0.150, 524799)],
)
def test_walk_and_coalesce_capture(benchmark, request, capsys, capture, target_seconds, leaves):
    read, cr3, mode = request.getfixturevalue(capture)
    space, ranges = benchmark.pedantic(walk_and_coalesce, (read, cr3, mode), rounds=5)
    assert len(space.leaves) == leaves
    median = benchmark.stats.stats.median
    report(
        capsys,
        f"{capture}: walk + coalesce {median * 1000:.0f} ms (median) | target"
        f" {target_seconds * 1000:.0f} ms | ratio {median / target_seconds:.1f}",
    )


def test_pt_json_beside_text(benchmark, capsys, linux_capture):
    """What ``pt`` and ``--json pt`` do after the walk: the text, or the document written."""
    _space, ranges = walk_and_coalesce(*linux_capture)

    def as_json() -> str:
        body = {"ranges": [r.to_dict() for r in ranges]}
        return format_json(json_document("pt", None, body))

    text = median_seconds(lambda: format_ranges(ranges))
    benchmark.pedantic(as_json, rounds=5)
    json_seconds = benchmark.stats.stats.median
    report(
        capsys,
        f"Linux capture, {len(ranges)} ranges: --json {json_seconds:.3f} s | text"
        f" {text:.3f} s | ratio {json_seconds / text:.2f} (target 1.3)",
    )


#: The environment of the whole-process runs: with bytecode, as an installed kinspect has it
#: (this checkout may run with PYTHONDONTWRITEBYTECODE, which recompiles every module at
#: every start: 0.4 s of a cold start), kept apart from the tree.
CLI_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
CLI_ENV["PYTHONPYCACHEPREFIX"] = os.path.join(tempfile.gettempdir(), "kinspect-bench-pycache")


def kinspect(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "kinspect.inspector.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=CLI_ENV,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize(
    ("words", "reference"),
    [
        (("pt",), "info mem"),
        (("--json", "pt"), "info mem"),
        (("pt", "--leaves"), "info tlb"),
        (("--json", "pt", "--leaves"), "info tlb"),
        (("regs",), "info registers"),
    ],
    ids=["pt", "json-pt", "pt-leaves", "json-pt-leaves", "regs"],
)
def test_cli_whole_process_beside_qemu(benchmark, capsys, qemu, words, reference):
    """The whole process as a user runs it (Python and gdb start included), beside QMP."""
    out = benchmark.pedantic(
        kinspect, ("--target", qemu.gdb_endpoint, *words), rounds=5, warmup_rounds=1
    )
    assert out
    ours = benchmark.stats.stats.median
    theirs = median_seconds(lambda: qemu.monitor(reference))
    report(
        capsys,
        f"demo kernel, kinspect {' '.join(words)}: {ours:.3f} s (median, whole process) |"
        f" QEMU {reference} over QMP {theirs:.3f} s | ratio {ours / theirs:.1f}",
    )
