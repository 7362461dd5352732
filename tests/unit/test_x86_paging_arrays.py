"""The array walk against the entry-by-entry walk it replaced, on random table trees.

The oracle is tests/unit/paging_reference.py: the walker, the coalescer, ptov
and the compactor as they were before issue 16, verbatim. Trees are drawn
by hypothesis from a few table pages whose entries are leaves of every size
(PS, aligned or not), pointers to other pages of the pool (shared subtrees,
self-references, loops), pointers past RAM, reserved bits and garbage, under
4- and 5-level paging (LA57), with NXE on and off, narrow MAXPHYADDRs and
small budgets. Lower and upper halves (the non-canonical hole between them)
come from the entries' indices. Leaf for leaf, problem for problem, in the
same order; then the same ranges, compact ranges and aliases.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kinspect.inspector.x86.control import PagingMode
from kinspect.inspector.x86.paging import (
    Leaf,
    WalkCache,
    WalkProblem,
    coalesce_ranges,
    collect_address_space,
    compact_ranges,
    find_alias_addresses,
    find_aliases,
    walk_page_tables,
)
from tests.qemu_view import capture_reader
from tests.unit.paging_reference import (
    reference_aliases,
    reference_coalesce,
    reference_compact,
    reference_walk,
)

P, RW, US, PWT, PCD, A, D, PS, G = 1, 2, 4, 8, 16, 32, 64, 128, 256
NX = 1 << 63
POOL = [0x10_0000 + 0x1000 * n for n in range(6)]  # the table pages
PAST_RAM = 0x7_0000_0000
FLAGS = st.sampled_from([0, RW, US, RW | US, NX, RW | NX, US | NX, A | D, G, PWT | PCD, G | NX])


@st.composite
def entry(draw):
    """A 64-bit entry of some kind."""
    kind = draw(st.sampled_from(["table", "table", "leaf", "big", "bad", "past", "garbage", "off"]))
    flags = draw(FLAGS)
    if kind == "table":
        return draw(st.sampled_from(POOL)) | P | flags
    if kind == "leaf":  # a PTE, or a PD/PDPT entry without PS: a table pointer there
        return (draw(st.integers(0, 1 << 20)) << 12) | P | flags
    if kind == "big":  # PS: a 2 MiB or 1 GiB leaf, or reserved at levels 4 and 5
        frame = draw(st.integers(0, 1 << 10)) << 21
        return frame | draw(st.sampled_from([0, 1 << 13, 1 << 12])) | PS | P | flags
    if kind == "bad":  # address bits above a narrow MAXPHYADDR
        return (1 << draw(st.sampled_from([40, 45, 51]))) | draw(st.sampled_from(POOL)) | P
    if kind == "past":
        return PAST_RAM | P | RW
    if kind == "garbage":
        return draw(st.integers(0, (1 << 64) - 1))
    return draw(st.integers(0, (1 << 64) - 1)) & ~P


@st.composite
def trees(draw):
    """(pages, mode, budget): a pool of table pages with a few entries each, the root first."""
    pages = {}
    for page in POOL:
        data = bytearray(4096)
        for _ in range(draw(st.integers(0, 6))):
            index = draw(
                st.one_of(st.integers(0, 511), st.sampled_from([0, 1, 255, 256, 510, 511]))
            )
            # a run of equal entries, as espfix and identity maps have
            value = draw(entry())
            for n in range(draw(st.sampled_from([1, 1, 1, 3, 40]))):
                if index + n < 512:
                    data[8 * (index + n) : 8 * (index + n) + 8] = value.to_bytes(8, "little")
        pages[page] = bytes(data)
    mode = PagingMode(
        levels=draw(st.sampled_from([4, 4, 5])),
        nxe=draw(st.booleans()),
        maxphyaddr=draw(st.sampled_from([52, 52, 46, 40])),
    )
    budget = draw(
        st.sampled_from(
            [
                {"max_leaves": 3000, "max_entries": 12000},
                {"max_leaves": 1, "max_entries": 12000},
                {"max_leaves": 37, "max_entries": 12000},
                {"max_leaves": 3000, "max_entries": 3},
                {"max_leaves": 3000, "max_entries": 600},
            ]
        )
    )
    return pages, mode, budget


RANDOM = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


@RANDOM
@given(trees())
def test_the_array_walk_is_the_entry_by_entry_walk(tree):
    pages, mode, budget = tree
    read = capture_reader(pages)
    cr3 = POOL[0] | 0x18  # PWT|PCD in CR3 are not part of the address
    expected = reference_walk(read, cr3, mode, **budget)
    assert list(walk_page_tables(read, cr3, mode, **budget)) == expected
    space = collect_address_space(read, cr3, mode, **budget)
    leaves = [item for item in expected if isinstance(item, Leaf)]
    assert list(space.leaves) == leaves
    assert len(space.leaves) == len(leaves)
    assert space.problems == tuple(item for item in expected if isinstance(item, WalkProblem))
    assert space.truncated == any(p.kind == "truncated" for p in space.problems)
    if leaves:
        assert space.leaves[-1] == leaves[-1] and space.leaves[: len(leaves) // 2] == tuple(
            leaves[: len(leaves) // 2]
        )
    ranges = coalesce_ranges(space.leaves)
    assert list(ranges) == reference_coalesce(leaves)
    assert coalesce_ranges(leaves) == ranges  # records in, the same arrays out
    breaks = [r.start for r in ranges[::7]]
    assert compact_ranges(ranges, breaks) == reference_compact(list(ranges), breaks)
    assert compact_ranges(list(ranges)) == reference_compact(list(ranges))
    for pa in {leaf.pa + 0x10 for leaf in leaves[:5]} | {0x1234}:
        assert find_aliases(space.leaves, pa) == reference_aliases(leaves, pa)
        assert find_alias_addresses(space.leaves, pa) == [
            va for va, _ in reference_aliases(leaves, pa)
        ]


@RANDOM
@given(trees(), st.integers(0, len(POOL) - 1), st.integers(0, 511), entry())
def test_a_walk_from_the_cache_is_a_fresh_walk(tree, page, index, value):
    """Unchanged tables keep their arrays; a changed entry anywhere gives what a fresh walk
    gives (the tables above it decoded again, the subtrees beside it not)."""
    pages, mode, budget = tree
    cache = WalkCache()
    cr3 = POOL[0]
    first = collect_address_space(capture_reader(pages), cr3, mode, cache=cache, **budget)
    again = collect_address_space(capture_reader(dict(pages)), cr3, mode, cache=cache, **budget)
    assert list(again.leaves) == list(first.leaves) and again.problems == first.problems
    if not first.truncated and len(first.leaves) < budget["max_leaves"]:
        assert again.arrays is first.arrays  # nothing decoded or placed again
    changed = dict(pages)
    data = bytearray(changed[POOL[page]])
    data[8 * index : 8 * index + 8] = value.to_bytes(8, "little")
    changed[POOL[page]] = bytes(data)
    read = capture_reader(changed)
    now = collect_address_space(read, cr3, mode, cache=cache, **budget)
    fresh = collect_address_space(read, cr3, mode, **budget)
    assert list(now.leaves) == list(fresh.leaves) and now.problems == fresh.problems
    # and the first walk's records are still those of the tables it read
    assert list(first.leaves) == list(again.leaves)


def test_the_linux_capture_walks_as_before():
    """Debian's 6.1 (tests/fixtures): every leaf record (table path, entry, rights) and every
    range as the entry-by-entry walk made them; QEMU's info tlb and info mem check the same
    walk in test_x86_linux_capture.py."""
    from kinspect.inspector.x86.control import decode_paging_mode
    from tests.unit.test_x86_linux_capture import CR0, CR3, CR4, EFER, load_pages

    read = capture_reader(load_pages())
    mode = decode_paging_mode(CR0, CR4, EFER)
    expected = reference_walk(read, CR3, mode)
    space = collect_address_space(read, CR3, mode)
    assert len(space.leaves) == len(expected) == 74251 and not space.problems
    assert list(space.leaves) == expected
    assert list(coalesce_ranges(space.leaves)) == reference_coalesce(expected)


def test_espfix_is_decoded_once_and_placed_65536_times():
    """The capture's espfix tables (PML4 slot 510) map one page 65,536 times through shared
    tables: each table page is read once and decoded once (one node a page)."""
    from kinspect.inspector.x86.control import decode_paging_mode
    from tests.unit.test_x86_linux_capture import CR0, CR3, CR4, EFER, load_pages

    pages = load_pages()
    reads = []

    def read(address, size):
        reads.append(address)
        return capture_reader(pages)(address, size)

    cache = WalkCache()
    space = collect_address_space(read, CR3, decode_paging_mode(CR0, CR4, EFER), cache=cache)
    assert sorted(reads) == sorted(set(reads)) == sorted(pages)  # each page read once
    espfix = space.arrays.va >= 0xFFFFFF0000000000
    espfix &= space.arrays.va < 0xFFFFFF8000000000
    assert int(espfix.sum()) == 65536
    tables = {table for table, _level in cache.nodes}
    assert len(cache.nodes) == len(tables) == len(pages)  # one decoded node a page
