"""The one canonical-address check, for both paging modes, and the other address helpers."""

import pytest

from kinspect.inspector.errors import FaultError
from kinspect.inspector.x86.control import PagingMode
from kinspect.inspector.x86.paging import (
    canonicalize,
    check_canonical,
    entry_span,
    higher_half,
    is_canonical,
    level_index,
    virtual_address_bits,
    walk_tables,
)
from tests.unit.ptbuilder import RW, P, PageTables

# The last address of the lower half and the first of the upper one, each mode.
EDGES = {
    4: (0x00007FFFFFFFFFFF, 0xFFFF800000000000),
    5: (0x00FFFFFFFFFFFFFF, 0xFF00000000000000),
}


@pytest.mark.parametrize("levels", [4, 5])
def test_canonical_edges(levels):
    low_end, high_start = EDGES[levels]
    bits = virtual_address_bits(levels)
    assert bits == {4: 48, 5: 57}[levels]
    for va in (0, low_end, high_start, (1 << 64) - 1):
        assert is_canonical(va, levels), hex(va)
        check_canonical(va, levels)  # no exception
    # One past each edge, into the hole; the top bit alone; 65-bit and negative numbers.
    for va in (low_end + 1, high_start - 1, 1 << 63, 1 << 64, -1):
        assert not is_canonical(va, levels), hex(va)
    with pytest.raises(FaultError) as raised:
        check_canonical(low_end + 1, levels)
    assert raised.value.address == low_end + 1
    top = bits - 1
    assert f"non-canonical address (bits 63:{top} must all equal bit {top})" in str(raised.value)
    assert higher_half(levels) == high_start
    assert canonicalize(low_end + 1, levels) == high_start


def test_what_only_5_level_paging_reaches():
    for va in (0x0000800000000000, 0x0080000000000000, 0xFF40000000000000, 0xFFFF7FFFFFFFFFFF):
        assert is_canonical(va, 5) and not is_canonical(va, 4), hex(va)
        with pytest.raises(FaultError, match="bits 63:47 must all equal bit 47"):
            check_canonical(va, 4)
    assert not is_canonical(0x0100000000000000, 5)  # bit 56 set alone: not even with 57 bits


def test_level_index_and_entry_span():
    va = 0xFF40_0000_0000_0000 | (3 << 39) | (5 << 30) | (7 << 21) | (9 << 12) | 0x123
    assert [level_index(va, level) for level in (5, 4, 3, 2, 1)] == [320, 3, 5, 7, 9]
    assert level_index(0xFFFF800000000000, 4) == 256  # the 4-level higher half's first slot
    assert [entry_span(level) for level in (1, 2, 3, 4, 5)] == [
        1 << 12,
        1 << 21,
        1 << 30,
        1 << 39,
        1 << 48,
    ]


@pytest.mark.parametrize("levels", [4, 5])
def test_walk_tables_lists_each_table_once(levels):
    pt = PageTables(levels)
    pt.map(0x1000, 0x1000, flags=P | RW)
    pt.map(0x2000, 0x2000, flags=P | RW)  # same PT
    pt.map(0x40000000, 0x40000000, 1 << 21, P | RW)  # a 2 MiB leaf: no PT under it
    pt.map(0xFFFFFFFF80000000, 0x100000, flags=P | RW)
    # A self-referencing top-level entry (Windows' and old Linux's recursive slot).
    pt.memory.write_u64(pt.root + 8 * 510, pt.root | P | RW)
    mode = PagingMode(levels=levels, nxe=True)
    found = list(walk_tables(pt.memory.read_physical, pt.root | 0x18, mode))
    assert found[0] == (levels, pt.root)
    assert len(found) == len(set(found))
    tables = {address for _level, address in found}
    allocated = set(range(pt.root, pt.next_table, 0x1000))
    assert tables == allocated
    # The recursive slot shows the root at every level below the top, each once.
    assert {level for level, address in found if address == pt.root} == set(range(levels, 0, -1))


def test_walk_tables_skips_reserved_entries_and_keeps_unreadable_tables():
    pt = PageTables(4)
    pt.map(0x1000, 0x1000, flags=P | RW)
    pt.memory.write_u64(pt.root + 8, 0x7000 | P | RW | (1 << 7))  # PS in a PML4E: reserved
    pt.memory.write_u64(pt.root + 16, 0xF_0000_0000 | P | RW)  # past the end of RAM
    mode = PagingMode(levels=4, nxe=True)
    found = set(walk_tables(pt.memory.read_physical, pt.root, mode))
    assert (3, 0x7000) not in found
    assert (3, 0xF_0000_0000) in found
