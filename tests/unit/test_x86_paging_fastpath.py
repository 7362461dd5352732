"""The walker's fast path: tables whose present entries are all clean leaves.

Such a table (a PD of 2 MiB pages, a PDPT of 1 GiB pages, any PT without
reserved bits) is turned into leaves in one loop instead of entry by entry;
OVMF's 1 TiB identity map is 1024 of them. Every result must be what the
entry-by-entry walk gives: checked here against a plain reference walker
written from the SDM for this test, and on the edges where the two paths
meet (budgets running out inside such a table, reserved bits, mixed tables).
"""

import gc
import random

import pytest

from kinspect.inspector.x86.control import PagingMode
from kinspect.inspector.x86.paging import (
    Leaf,
    WalkProblem,
    coalesce_ranges,
    collect_address_space,
    walk_page_tables,
)
from tests.unit.ptbuilder import NX, PAT_LARGE, PCD, PS, PWT, RW, US, A, D, G, P, PageTables

MODE4 = PagingMode(levels=4, nxe=True)
MiB2, GiB1 = 1 << 21, 1 << 30
SHIFT = {5: 48, 4: 39, 3: 30, 2: 21, 1: 12}
ADDR = 0x000F_FFFF_FFFF_F000


def reference_walk(memory, root, levels=4, nxe=True):
    """(va, pa, size, raw, W, U, X) of every leaf and (va, level) of every bad entry.

    Entry by entry, recursively, the way SDM 4.5 reads: no caching, no fast
    path. Only for well-formed tables below 4 GiB (MAXPHYADDR 52, no
    reserved bits but NX without NXE and PS at the top levels).
    """
    out = []

    def visit(table, level, base, w, u, nx):
        for index in range(512):
            raw = memory.read_u64(table + 8 * index)
            if not raw & P:
                continue
            va = base | (index << SHIFT[level])
            if va >> 47 & 1 and levels == 4:
                va |= 0xFFFF_0000_0000_0000
            leaf = level == 1 or (level in (2, 3) and raw & PS)
            if (raw & NX and not nxe) or (level >= 4 and raw & PS):
                out.append(("problem", va, level))
                continue
            lw, lu, lnx = w and raw & RW, u and raw & US, nx or (nxe and raw & NX)
            if leaf:
                size = 1 << SHIFT[level]
                pa = raw & ADDR & ~(size - 1)
                out.append((va, pa, size, raw, bool(lw), bool(lu), not lnx))
            else:
                visit(raw & ADDR, level - 1, va & ((1 << 48) - 1), lw, lu, lnx)

    visit(root, levels, 0, True, True, False)
    return out


def ours(pt, mode=MODE4, **kw):
    out = []
    for item in walk_page_tables(pt.memory.read_physical, pt.root, mode, **kw):
        if isinstance(item, Leaf):
            p = item.permissions
            out.append(
                (item.va, item.pa, item.size, item.entry.raw, p.writable, p.user, p.executable)
            )
        else:
            out.append(("problem", item.va, item.level))
    return out


def identity_map(pt, gib, flags=P | RW | A):
    """Identity-map ``gib`` GiB with 2 MiB pages, OVMF style: one full PD per GiB."""
    for g in range(gib):
        for n in range(512):
            va = g * GiB1 + n * MiB2
            pt.map(va, va, MiB2, flags)


def test_a_full_pd_of_2m_leaves_gives_every_leaf():
    pt = PageTables()
    identity_map(pt, 3)
    space = collect_address_space(pt.memory.read_physical, pt.root, MODE4)
    assert len(space.leaves) == 3 * 512 and not space.problems
    assert [leaf.va for leaf in space.leaves] == [n * MiB2 for n in range(3 * 512)]
    assert all(
        leaf.pa == leaf.va and leaf.size == MiB2 and leaf.level == 2 for leaf in space.leaves
    )
    assert ours(pt) == reference_walk(pt.memory, pt.root)
    (r,) = coalesce_ranges(space.leaves)
    assert (r.start, r.end, r.phys, r.page_size) == (0, 3 * GiB1, 0, MiB2)


def test_mixed_rights_inside_a_leaf_table():
    pt = PageTables()
    identity_map(pt, 1)
    for n, (set_, clear) in enumerate([(NX, 0), (0, RW), (US, 0), (NX | US, RW), (G | PCD, 0)]):
        pt.set_flags(n * 7 * MiB2, 2, set_=set_, clear=clear)
    assert ours(pt) == reference_walk(pt.memory, pt.root)
    space = collect_address_space(pt.memory.read_physical, pt.root, MODE4)
    # the PD entry above allows US: the leaf with US set is a user page
    assert space.leaves[14].permissions.user and not space.leaves[0].permissions.user
    assert not space.leaves[0].permissions.executable and not space.leaves[7].permissions.writable


@pytest.mark.parametrize("table_flags", [P | RW | US, P | RW, P | US, P])
def test_upper_levels_still_restrict_a_leaf_table(table_flags):
    pt = PageTables(table_flags=table_flags)
    identity_map(pt, 1, flags=P | RW | US)
    pt.set_flags(0, 4, set_=NX)
    got = ours(pt)
    assert got == reference_walk(pt.memory, pt.root)
    assert {(w, u, x) for *_, w, u, x in got} == {
        (bool(table_flags & RW), bool(table_flags & US), False)
    }


def test_1g_leaves_and_4k_tables_take_the_same_path():
    pt = PageTables()
    for n in range(512):
        pt.map((1 << 39) + n * GiB1, n * GiB1, GiB1, P | RW | (PAT_LARGE if n % 3 else 0))
    for n in range(512):
        pt.map(0x4000_0000 + n * 4096, 0x7000_0000 + n * 4096, 4096, P | RW | (PWT if n & 1 else 0))
    assert ours(pt) == reference_walk(pt.memory, pt.root)
    space = collect_address_space(pt.memory.read_physical, pt.root, MODE4)
    assert len(space.leaves) == 1024


def test_a_reserved_leaf_sends_the_table_through_the_slow_path():
    pt = PageTables()
    identity_map(pt, 1)
    pt.set_flags(5 * MiB2, 2, set_=1 << 13)  # bit 13 of a 2 MiB leaf is reserved
    space = collect_address_space(pt.memory.read_physical, pt.root, MODE4)
    assert len(space.leaves) == 511
    (problem,) = space.problems
    assert problem.kind == "reserved" and problem.va == 5 * MiB2 and problem.index == 5
    items = list(walk_page_tables(pt.memory.read_physical, pt.root, MODE4))
    assert isinstance(items[5], WalkProblem) and items[4].va == 4 * MiB2


def test_a_table_of_leaves_and_tables_is_walked_in_va_order():
    pt = PageTables()
    identity_map(pt, 1)
    pt.memory.write_u64(pt.entry_address(3 * MiB2, 2), 0)
    pt.map(3 * MiB2 + 0x5000, 0x9000)  # a PT in the middle of the 2 MiB leaves
    got = ours(pt)
    assert got == reference_walk(pt.memory, pt.root)
    assert [va for va, *_ in got][2:5] == [2 * MiB2, 3 * MiB2 + 0x5000, 4 * MiB2]


@pytest.mark.parametrize("max_leaves", [1, 511, 512, 513, 1023, 1024, 1025])
def test_the_leaf_budget_runs_out_inside_a_leaf_table_at_the_same_leaf(max_leaves):
    pt = PageTables()
    identity_map(pt, 2)
    items = list(walk_page_tables(pt.memory.read_physical, pt.root, MODE4, max_leaves=max_leaves))
    leaves = [item for item in items if isinstance(item, Leaf)]
    if max_leaves < 1024:
        assert len(leaves) == max_leaves
        assert items[-1].kind == "truncated" and items[-1].va == max_leaves * MiB2
    else:
        assert len(leaves) == 1024 and not any(isinstance(i, WalkProblem) for i in items)


@pytest.mark.parametrize("max_entries", [2, 3, 4, 514, 515, 516, 1028])
def test_the_entry_budget_counts_every_present_entry(max_entries):
    """PML4E, PDPTE, then 512 leaves, PDPTE, 512 leaves: 1027 present entries."""
    pt = PageTables()
    identity_map(pt, 2)
    space = collect_address_space(pt.memory.read_physical, pt.root, MODE4, max_entries=max_entries)
    expected = max(0, min(max_entries - 2, 512)) + max(0, min(max_entries - 515, 512))
    assert len(space.leaves) == expected
    assert space.truncated == (max_entries < 1027)


def test_a_shared_leaf_table_is_read_and_decoded_once():
    """Linux's espfix shares tables; every reference is reported, the entries decoded once."""
    pt = PageTables()
    identity_map(pt, 1)
    pd = pt.memory.read_u64(pt.entry_address(0, 3))
    for index in range(1, 8):
        pt.memory.write_u64(pt.entry_address(0, 3) + 8 * index, pd)
    pt.memory.reads.clear()
    space = collect_address_space(pt.memory.read_physical, pt.root, MODE4)
    assert len(space.leaves) == 8 * 512
    assert len(pt.memory.reads) == 3  # PML4, PDPT, the one PD
    assert space.leaves[0].entry is space.leaves[512].entry
    assert space.leaves[512].va == GiB1 and space.leaves[512].pa == 0


def test_random_leaf_tables_match_the_reference_walk():
    rng = random.Random(7)
    for _ in range(40):
        pt = PageTables(levels=4)
        for _ in range(rng.randint(1, 6)):
            g = rng.randrange(1 << 9) if rng.random() < 0.3 else rng.randrange(4)
            base = (g << 30) | (rng.choice((0, 256)) << 39)
            size = rng.choice((4096, MiB2))
            count = rng.choice((1, 17, 511, 512))
            for n in range(count):
                va = base + n * size
                flags = P | rng.choice((0, RW)) | rng.choice((0, US)) | rng.choice((0, NX))
                flags |= rng.choice((0, A | D, G, PCD | PWT))
                pt.map(va, rng.randrange(1 << 20) * size, size, flags)
        for mode in (MODE4, PagingMode(levels=4, nxe=False)):
            assert ours(pt, mode) == reference_walk(pt.memory, pt.root, nxe=mode.nxe)


def test_walk_page_tables_stays_lazy():
    """Leaves come in chunks: the first leaf does not read the whole map first."""
    pt = PageTables()
    identity_map(pt, 64)
    pt.memory.reads.clear()
    walk = walk_page_tables(pt.memory.read_physical, pt.root, MODE4)
    first = next(walk)
    assert first.va == 0
    assert len(pt.memory.reads) < 32  # of 66 tables
    walk.close()


@pytest.mark.parametrize("enabled", [True, False])
def test_collect_leaves_the_garbage_collector_as_it_found_it(enabled):
    pt = PageTables()
    identity_map(pt, 1)
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        collect_address_space(pt.memory.read_physical, pt.root, MODE4)
        assert gc.isenabled() == enabled
    finally:
        gc.enable() if was else gc.disable()
