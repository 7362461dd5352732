"""Pure decoder costs on a real Linux capture (74,251 leaves, 109 table pages)."""

from __future__ import annotations

from kinspect.inspector.x86.control import decode_paging_mode
from kinspect.inspector.x86.paging import coalesce_ranges, collect_address_space
from tests.unit.test_x86_linux_capture import load_pages

CR0, CR3, CR4, EFER = 0x80050033, 0x487C000, 0x6F0, 0xD01


def _reader():
    pages = load_pages()

    def read_physical(address: int, size: int) -> bytes:
        base = address & ~0xFFF
        return pages[base][address - base : address - base + size]

    return read_physical


def test_walk_linux(benchmark):
    read = _reader()
    mode = decode_paging_mode(CR0, CR4, EFER)
    space = benchmark(collect_address_space, read, CR3, mode)
    assert len(space.leaves) == 74251  # info tlb lists 74,251 lines


def test_coalesce_linux(benchmark):
    mode = decode_paging_mode(CR0, CR4, EFER)
    leaves = collect_address_space(_reader(), CR3, mode).leaves
    benchmark(coalesce_ranges, leaves)
