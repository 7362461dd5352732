"""OVMF's own page tables while boot services run: 1 TiB identity-mapped (make bench).

524,799 leaves (524,287 of 2 MiB, 512 of 4 KiB) in 1028 table pages, 26
ranges. From the captured pages (tests/fixtures/ovmf/), on an idle 2-core
machine: the walk about 0.7 s, coalescing about 0.08 s (1.7 s and 0.65 s
before the walker's fast path for tables of clean leaves). Live, through
QEMU's gdb stub on a booted OVMF (its shell, empty ESP): about 1.5-2.5 s,
most of it the 1028 page reads. QEMU's own ``info tlb`` on this map takes
0.5-2.3 s and prints 24 MB; ``info mem`` 0.01 s.
"""

from __future__ import annotations

import time

import pytest

from benchmarks import summary
from benchmarks.bench_speed import cli_median, qmp_seconds, run_cli
from kinspect.inspector import api
from kinspect.inspector.x86.control import decode_paging_mode
from kinspect.inspector.x86.paging import coalesce_ranges, collect_address_space
from tests.integration.test_ovmf_identity import ovmf  # noqa: F401 (the fixture: one boot)
from tests.qemu_view import capture_reader
from tests.unit.test_ovmf_capture import CR0, CR3, CR4, EFER, load_pages

LEAVES, RANGES = 524799, 26


@pytest.fixture(scope="module")
def captured():
    return capture_reader(load_pages()), decode_paging_mode(CR0, CR4, EFER)


def report(capsys, text: str) -> None:
    with capsys.disabled():
        print(f"\n{text}")


def test_walk_ovmf_capture(benchmark, captured, capsys):
    read, mode = captured
    space = benchmark.pedantic(collect_address_space, (read, CR3, mode), rounds=5, iterations=1)
    assert len(space.leaves) == LEAVES and not space.problems
    benchmark.extra_info.update(leaves=len(space.leaves), tables=1028)
    report(
        capsys,
        f"OVMF capture: walk {benchmark.stats.stats.median:.3f} s (median) for"
        f" {len(space.leaves)} leaves in 1028 tables",
    )


def test_coalesce_ovmf_capture(benchmark, captured, capsys):
    read, mode = captured
    leaves = collect_address_space(read, CR3, mode).leaves
    ranges = benchmark.pedantic(coalesce_ranges, (leaves,), rounds=5, iterations=1)
    assert len(ranges) == RANGES
    benchmark.extra_info.update(leaves=len(leaves), ranges=len(ranges))
    report(
        capsys,
        f"OVMF capture: coalesce {benchmark.stats.stats.median:.3f} s (median),"
        f" {len(leaves)} leaves -> {len(ranges)} ranges",
    )


@pytest.mark.timeout(600)
def test_walk_ovmf_live(benchmark, ovmf, capsys):  # noqa: F811
    """Registers, every table page through the gdb stub, walk; then coalesce, timed apart."""
    session = api.attach(ovmf.gdb_endpoint, timeout=60.0)
    coalesce_times: list[float] = []
    try:

        def walk():
            session.invalidate()
            space = session.address_space()
            started = time.perf_counter()
            ranges = session.ranges()
            coalesce_times.append(time.perf_counter() - started)
            return space, ranges

        space, ranges = benchmark.pedantic(walk, rounds=3, iterations=1)
    finally:
        session.close()
    assert len(space.leaves) == LEAVES and len(ranges) == RANGES
    coalesce = sorted(coalesce_times)[len(coalesce_times) // 2]
    benchmark.extra_info.update(
        leaves=len(space.leaves), ranges=len(ranges), coalesce_seconds=round(coalesce, 3)
    )
    report(
        capsys,
        f"OVMF live (gdb stub, OVMF booted in {ovmf.boot_seconds:.1f} s): walk + coalesce"
        f" {benchmark.stats.stats.median:.3f} s (median), of which coalesce {coalesce:.3f} s;"
        f" {len(space.leaves)} leaves, {len(ranges)} ranges",
    )


@pytest.mark.timeout(1200)  # a benchmark's time is its figure, never a failure
def test_ovmf_cli_beside_qemu(benchmark, ovmf, capsys):  # noqa: F811
    """`pt` and `--json pt --leaves` as whole processes (issue 16's target 8), beside QEMU's
    `info mem` and `info tlb` over QMP in the same run."""
    target = ("--target", ovmf.gdb_endpoint)
    run_cli(*target, "pt", where="OVMF")  # bytecode compiled once, as installed
    benchmark.pedantic(run_cli, (*target, "pt"), {"where": "OVMF"}, rounds=5)
    pt = benchmark.stats.stats.median
    summary.record("8.pt", pt)
    info_mem = qmp_seconds(ovmf, "info mem")
    leaves, peak = cli_median(*target, "--json", "pt", "--leaves", rounds=1, where="OVMF")
    info_tlb = qmp_seconds(ovmf, "info tlb", rounds=1)
    summary.record("8.leaves", leaves, info_tlb)
    report(
        capsys,
        f"OVMF, whole process: pt {pt:.3f} s (info mem over QMP {info_mem:.3f} s);"
        f" --json pt --leaves {leaves:.1f} s, {peak:.0f} MB peak (info tlb {info_tlb:.2f} s)",
    )
