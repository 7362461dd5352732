import json
import random
import time

import pytest

from kinspect.inspector.x86.control import PagingMode
from kinspect.inspector.x86.paging import (
    Leaf,
    Permissions,
    Range,
    WalkProblem,
    canonicalize,
    coalesce_ranges,
    collect_address_space,
    find_aliases,
    is_canonical,
    translate,
    walk_page_tables,
)
from tests.unit.ptbuilder import NX, PAT_LARGE, PCD, PWT, RW, US, A, D, G, P, PageTables

MODE4 = PagingMode(levels=4, nxe=True)
MODE5 = PagingMode(levels=5, nxe=True)
KiB4, MiB2, GiB1 = 1 << 12, 1 << 21, 1 << 30


def walk(pt, mode=MODE4, **kw):
    return collect_address_space(pt.memory.read_physical, pt.root, mode, **kw)


def va_of(*indices, levels=4):
    """Canonical VA from table indices, top level first."""
    va = 0
    for n, index in enumerate(indices):
        va |= index << (12 + 9 * (levels - 1 - n))
    return canonicalize(va, levels)


# --- canonical addresses -----------------------------------------------------


def test_is_canonical_and_canonicalize():
    assert is_canonical(0x00007FFFFFFFFFFF) and is_canonical(0xFFFF800000000000)
    assert not is_canonical(0x0000800000000000) and not is_canonical(0xFFFF7FFFFFFFFFFF)
    assert is_canonical(0x0000800000000000, 5) and is_canonical(0xFF00000000000000, 5)
    assert not is_canonical(0x0100000000000000, 5)
    assert canonicalize(0x0000800000000000) == 0xFFFF800000000000
    assert canonicalize(0xFFFF800000000000) == 0xFFFF800000000000
    assert canonicalize(0x00FF800000000000, 4) == 0xFFFF800000000000
    assert canonicalize(0x0100000000000000, 5) == 0xFF00000000000000
    assert canonicalize(0x7FFFFFFFF000) == 0x7FFFFFFFF000


# --- the walk ----------------------------------------------------------------


def test_4_level_leaves_of_every_size_in_va_order():
    pt = PageTables()
    pt.map(0x40000000, 0x80000000, GiB1, P | RW | A | D)
    pt.map(0x400000, 0x3000, KiB4, P | US | A)
    pt.map(0x600000, 0x800000, MiB2, P | RW | G | PAT_LARGE)
    space = walk(pt)
    assert not space.problems and not space.truncated
    got = [(leaf.va, leaf.pa, leaf.size, leaf.level) for leaf in space.leaves]
    assert got == [
        (0x400000, 0x3000, KiB4, 1),
        (0x600000, 0x800000, MiB2, 2),
        (0x40000000, 0x80000000, GiB1, 3),
    ]
    small, medium, large = space.leaves
    assert small.permissions == Permissions(writable=False, user=True, executable=True)
    assert medium.entry.pat and medium.entry.g and medium.pa == 0x800000
    assert large.entry.dirty and large.permissions.writable and not large.permissions.user
    assert len(small.table_path) == 4 and small.table_path[0] == pt.root
    assert small.entry_address == pt.entry_address(0x400000, 1)
    assert len(large.table_path) == 2


def test_pml4_slot_511_is_sign_extended():
    pt = PageTables()
    pt.map(0xFFFFFF8000000000, 0x5000)
    pt.map(0xFFFF800000000000, 0x6000)  # slot 256, the first upper-half slot
    pt.map(0xFFFFFFFFFFFFF000, 0x7000)  # the very last page
    vas = [leaf.va for leaf in walk(pt).leaves]
    assert vas == [0xFFFF800000000000, 0xFFFFFF8000000000, 0xFFFFFFFFFFFFF000]


def test_5_level_walk_sign_extends_from_bit_56():
    pt = PageTables(levels=5)
    pt.map(0x0001000000000000, 0x5000)  # PML5 slot 1, unreachable with 4 levels
    pt.map(0xFF00000000000000, 0x400000, MiB2)  # PML5 slot 256
    pt.map(0xFFFFFFFFFFE00000, 0x200000, MiB2)
    space = walk(pt, MODE5)
    assert not space.problems
    assert [(leaf.va, leaf.pa) for leaf in space.leaves] == [
        (0x0001000000000000, 0x5000),
        (0xFF00000000000000, 0x400000),
        (0xFFFFFFFFFFE00000, 0x200000),
    ]
    assert len(space.leaves[0].table_path) == 5
    t = translate(pt.memory.read_physical, pt.root, MODE5, 0x0001000000000123)
    assert t.ok and t.pa == 0x5123 and [s.level for s in t.steps] == [5, 4, 3, 2, 1]
    assert not translate(pt.memory.read_physical, pt.root, MODE5, 0x0100000000000000).ok


def test_permissions_combine_across_levels_pti_style():
    """A user leaf that is executable at the leaf but NX through its PML4 entry."""
    pt = PageTables()
    va = 0x7F0000000000
    pt.map(va, 0x9000, KiB4, P | RW | US)  # leaf: user, writable, executable
    pt.set_flags(va, 4, set_=NX)
    (leaf,) = walk(pt).leaves
    assert not leaf.entry.nx  # the leaf itself says executable...
    assert leaf.permissions == Permissions(writable=True, user=True, executable=False)
    t = translate(pt.memory.read_physical, pt.root, MODE4, va)
    assert t.permissions == leaf.permissions


@pytest.mark.parametrize(
    ("level", "clear", "expected"),
    [
        (4, RW, Permissions(writable=False, user=True, executable=True)),
        (3, US, Permissions(writable=True, user=False, executable=True)),
        (2, RW | US, Permissions(writable=False, user=False, executable=True)),
    ],
)
def test_upper_level_rw_and_us_override_the_leaf(level, clear, expected):
    pt = PageTables()
    pt.map(0x400000, 0x3000, KiB4, P | RW | US)
    pt.set_flags(0x400000, level, clear=clear)
    (leaf,) = walk(pt).leaves
    assert leaf.entry.rw and leaf.entry.us
    assert leaf.permissions == expected


def test_without_nxe_pages_are_executable_and_nx_is_a_reserved_bit():
    pt = PageTables()
    pt.map(0x400000, 0x3000, KiB4, P | RW)
    pt.map(0x600000, 0x4000, KiB4, P | RW | NX)
    mode = PagingMode(levels=4, nxe=False)
    space = walk(pt, mode)
    (leaf,) = space.leaves
    assert leaf.permissions.executable
    (problem,) = space.problems
    assert problem.kind == "reserved" and problem.va == 0x600000
    assert problem.entry.reserved == NX
    t = translate(pt.memory.read_physical, pt.root, mode, 0x600000)
    assert not t.ok and "reserved bits 0x8000000000000000" in t.fault


def test_shared_tables_are_walked_every_time_but_read_once():
    """Like Linux's espfix: one PD shared by many PDPT entries, every mapping reported."""
    pt = PageTables()
    pt.map(0x0, 0x7000)
    pd = pt.memory.read_u64(pt.entry_address(0, 3))
    for index in range(1, 64):
        pt.memory.write_u64(pt.entry_address(0, 3) + 8 * index, pd)
    pt.memory.reads.clear()
    space = walk(pt)
    assert [leaf.va for leaf in space.leaves] == [index << 30 for index in range(64)]
    assert {leaf.pa for leaf in space.leaves} == {0x7000}
    assert len(pt.memory.reads) == len(set(pt.memory.reads)) == 4
    assert all(size == 4096 for _, size in pt.memory.reads)


def test_recursive_pml4_entry_terminates_and_maps_the_tables():
    pt = PageTables()
    pt.map(0x400000, 0x3000)
    pt.memory.write_u64(pt.root + 8 * 510, pt.root | P | RW)
    space = walk(pt)
    assert not space.truncated and not space.problems
    # the real page plus the page tables seen through the self-map
    assert space.leaves[0].va == 0x400000
    self_map = [leaf for leaf in space.leaves if leaf.va >= 0xFFFFFF0000000000]
    tables = {pt.entry_address(0x400000, level) & ~0xFFF for level in (4, 3, 2, 1)}
    assert {leaf.pa for leaf in self_map} == tables  # the self-map shows tables, not data
    read = pt.memory.read_physical
    t = translate(read, pt.root, MODE4, va_of(510, 510, 510, 510))
    assert t.ok and t.pa == pt.root
    assert [s.entry.address for s in t.steps] == [pt.root] * 4
    # one level less of recursion reaches the PDPT that PML4[0] points to
    t = translate(read, pt.root, MODE4, va_of(510, 510, 510, 0))
    assert t.ok and t.pa == pt.entry_address(0x400000, 3) & ~0xFFF


def test_garbage_cr3_all_entries_point_back_terminates_with_truncation():
    pt = PageTables()
    for index in range(512):
        pt.memory.write_u64(pt.root + 8 * index, pt.root | P | RW)
    space = walk(pt, max_leaves=5000)
    assert space.truncated
    assert len(space.leaves) == 5000
    assert space.problems[-1].kind == "truncated"
    assert "budget" in space.problems[-1].reason


def test_garbage_cr3_terminates_with_default_budget():
    pt = PageTables()
    for index in range(512):
        pt.memory.write_u64(pt.root + 8 * index, pt.root | P | RW)
    start = time.perf_counter()
    items = []
    for item in walk_page_tables(pt.memory.read_physical, pt.root, MODE4):
        items.append(item.kind if isinstance(item, WalkProblem) else "leaf")
    assert items[-1] == "truncated" and "truncated" not in items[:-1]
    assert len(items) > 1000
    assert time.perf_counter() - start < 30


def test_random_garbage_tables_terminate_and_report_problems():
    rng = random.Random(1234)
    pt = PageTables()
    pages = [pt.root] + [pt.alloc() for _ in range(7)]
    for page in pages:
        for index in range(512):
            roll = rng.random()
            if roll < 0.5:
                value = rng.getrandbits(64)  # mostly reserved bits or past RAM
            elif roll < 0.9:
                value = rng.choice(pages) | rng.getrandbits(12) | P
            else:
                value = 0
            pt.memory.write_u64(page + 8 * index, value)
    space = walk(pt, max_leaves=20000, max_entries=50000)
    kinds = {problem.kind for problem in space.problems}
    assert "reserved" in kinds
    vas = [leaf.va for leaf in space.leaves]
    assert vas == sorted(vas)
    assert all(is_canonical(va) for va in vas)


def test_table_past_ram_is_a_reported_problem_not_a_crash():
    pt = PageTables()
    pt.map(0x400000, 0x3000)
    pt.map(0x7F0000000000, 0x4000)
    pt.memory.write_u64(pt.root + 8 * 1, 0x2_0000_0000 | P | RW)  # beyond the 4 GiB of RAM
    space = walk(pt)
    assert [leaf.va for leaf in space.leaves] == [0x400000, 0x7F0000000000]
    (problem,) = space.problems
    assert problem.kind == "fault" and problem.va == 1 << 39
    assert (problem.level, problem.table_address, problem.index) == (4, pt.root, 1)
    assert problem.entry_address == pt.root + 8 and problem.entry.address == 0x2_0000_0000
    assert problem.reason == (
        f"PML4 entry 1 at {pt.root + 8:#x} points to a PDPT at 0x200000000"
        " that cannot be read: beyond the end of RAM"
    )
    t = translate(pt.memory.read_physical, pt.root, MODE4, (1 << 39) + 0x1000)
    assert not t.ok and "cannot read PDPT entry 0 at 0x200000000" in t.fault


def test_cr3_past_ram():
    pt = PageTables()
    space = collect_address_space(pt.memory.read_physical, 0x9_0000_0000, MODE4)
    assert not space.leaves and [p.kind for p in space.problems] == ["fault"]
    assert "cannot read the PML4 at 0x900000000 (from CR3)" in space.problems[0].reason


def test_short_read_is_a_fault_problem():
    pt = PageTables()
    pt.map(0x400000, 0x3000)

    def short(address, size):
        data = pt.memory.read_physical(address, size)
        return data[:100] if address != pt.root else data

    space = collect_address_space(short, pt.root, MODE4)
    assert not space.leaves and "gave 100 bytes" in space.problems[0].reason


def test_a_bad_table_shared_by_many_entries_is_reported_for_each_but_read_once():
    pt = PageTables()
    for index in range(3):
        pt.memory.write_u64(pt.root + 8 * index, 0x2_0000_0000 | P)
    pt.memory.reads.clear()
    space = walk(pt)
    assert [p.index for p in space.problems] == [0, 1, 2]
    assert pt.memory.reads == [(pt.root, 4096), (0x2_0000_0000, 4096)]


def test_reserved_bits_in_a_table_entry_stop_that_subtree_only():
    pt = PageTables()
    pt.map(0x400000, 0x3000)
    pt.map(0x40000000, 0x4000)  # another PDPT slot
    pt.set_flags(0x400000, 2, set_=1 << 51)  # PD entry: bit 51 above MAXPHYADDR 40
    mode = PagingMode(levels=4, nxe=True, maxphyaddr=40)
    space = walk(pt, mode)
    assert [leaf.va for leaf in space.leaves] == [0x40000000]
    (problem,) = space.problems
    assert problem.kind == "reserved" and problem.level == 2 and problem.index == 2
    assert problem.entry.reserved == 1 << 51
    assert problem.entry_address == pt.entry_address(0x400000, 2)
    assert "RSVD" in problem.reason


def test_ps_in_pml4_is_reserved():
    pt = PageTables()
    pt.memory.write_u64(pt.root, 0x0 | P | RW | (1 << 7))
    space = walk(pt)
    assert not space.leaves and space.problems[0].kind == "reserved"
    assert space.problems[0].entry.reserved == 1 << 7


# --- translate ---------------------------------------------------------------


def test_translate_4k_2m_1g_keep_the_offset():
    pt = PageTables()
    pt.map(0x400000, 0x3000, KiB4, P | US)
    pt.map(0xFFFFFFFF81000000, 0x1000000, MiB2, P | G)
    pt.map(0xFFFF888000000000, 0x0, GiB1, P | RW | NX)
    read = pt.memory.read_physical
    t = translate(read, pt.root, MODE4, 0x400ABC)
    assert t.ok and t.pa == 0x3ABC and t.page_size == KiB4 and len(t.steps) == 4
    assert t.permissions == Permissions(False, True, True)
    t = translate(read, pt.root, MODE4, 0xFFFFFFFF811234AB)
    assert t.pa == 0x11234AB and t.page_size == MiB2 and len(t.steps) == 3
    assert str(t) == "0xffffffff811234ab -> 0x11234ab (2M page, ro ker x)"
    t = translate(read, pt.root, MODE4, 0xFFFF888012345678)
    assert t.pa == 0x12345678 and t.page_size == GiB1 and len(t.steps) == 2
    step = t.steps[0]
    assert (step.level, step.table_address, step.index) == (4, pt.root, 273)
    assert step.entry_address == pt.root + 8 * 273


@pytest.mark.parametrize(("level", "name"), [(4, "PML4"), (3, "PDPT"), (2, "PD"), (1, "PT")])
def test_translate_not_present_at_each_level(level, name):
    pt = PageTables()
    va = va_of(1, 2, 3, 4)
    pt.map(va, 0x3000)
    pt.set_flags(va, level, clear=P)
    index = {4: 1, 3: 2, 2: 3, 1: 4}[level]
    entry_address = pt.entry_address(va, level)
    t = translate(pt.memory.read_physical, pt.root, MODE4, va)
    assert not t.ok and t.pa is None and t.permissions is None
    assert t.fault == f"{name} entry {index} at {entry_address:#x} is not present"
    assert len(t.steps) == 5 - level and not t.steps[-1].entry.present


def test_translate_non_canonical():
    pt = PageTables()
    t = translate(pt.memory.read_physical, pt.root, MODE4, 0x0000800000000000)
    assert not t.ok and "not canonical" in t.fault and t.steps == ()
    t = translate(pt.memory.read_physical, pt.root, MODE4, -1)
    assert not t.ok


# --- ranges and aliases ------------------------------------------------------


def test_coalesce_splits_where_ptdump_would():
    pt = PageTables()
    for n in range(4):  # 16K contiguous, RW
        pt.map(0xFFFFFFFF80100000 + n * KiB4, 0x100000 + n * KiB4, KiB4, P | RW | G | NX)
    pt.map(0xFFFFFFFF80104000, 0x104000, KiB4, P | G)  # permissions change: ro, x
    pt.map(0xFFFFFFFF80105000, 0x105000, KiB4, P | G | PCD | PWT)  # attributes change
    pt.map(0xFFFFFFFF80106000, 0x200000, KiB4, P | G | PCD | PWT)  # phys discontiguous
    pt.map(0xFFFFFFFF80108000, 0x202000, KiB4, P | G | PCD | PWT)  # VA gap
    pt.map(0xFFFFFFFF80200000, 0x400000, MiB2, P | G)  # size change
    ranges = coalesce_ranges(walk(pt).leaves)
    assert [(r.start, r.end, r.phys, r.page_size) for r in ranges] == [
        (0xFFFFFFFF80100000, 0xFFFFFFFF80104000, 0x100000, KiB4),
        (0xFFFFFFFF80104000, 0xFFFFFFFF80105000, 0x104000, KiB4),
        (0xFFFFFFFF80105000, 0xFFFFFFFF80106000, 0x105000, KiB4),
        (0xFFFFFFFF80106000, 0xFFFFFFFF80107000, 0x200000, KiB4),
        (0xFFFFFFFF80108000, 0xFFFFFFFF80109000, 0x202000, KiB4),
        (0xFFFFFFFF80200000, 0xFFFFFFFF80400000, 0x400000, MiB2),
    ]
    assert ranges[0].size == 16 * 1024
    assert ranges[2].attributes == ("G", "PWT", "PCD")
    assert str(ranges[0]) == (
        "0xffffffff80100000-0xffffffff80104000          16K     RW                 GLB NX pte"
    )
    assert str(ranges[1]) == (
        "0xffffffff80104000-0xffffffff80105000           4K     ro                 GLB x  pte"
    )
    assert str(ranges[-1]) == (
        "0xffffffff80200000-0xffffffff80400000           2M     ro         PSE     GLB x  pmd"
    )


def test_coalesce_merges_adjacent_2m_and_user_pages():
    pt = PageTables()
    for n in range(10):
        pt.map(0xFFFF888000000000 + n * MiB2, n * MiB2, MiB2, P | RW | G | NX)
    (r,) = coalesce_ranges(walk(pt).leaves)
    assert r == Range(
        0xFFFF888000000000, 0xFFFF888001400000, 0, MiB2, Permissions(True, False, False), ("G",)
    )
    assert str(r).split() == "0xffff888000000000-0xffff888001400000 20M RW PSE GLB NX pmd".split()


def test_find_aliases_reports_every_mapping():
    pt = PageTables()
    pt.map(0xFFFF888000000000, 0x0, MiB2, P | RW)
    pt.map(0xFFFFFFFF81000000, 0x0, MiB2, P)
    pt.map(0x400000, 0x1000, KiB4, P | US)
    pt.map(0x500000, 0x9000, KiB4, P | US)
    leaves = walk(pt).leaves
    found = find_aliases(leaves, 0x1234)
    assert [va for va, _ in found] == [0x400234, 0xFFFF888000001234, 0xFFFFFFFF81001234]
    assert all(isinstance(leaf, Leaf) for _, leaf in found)
    assert find_aliases(leaves, 0x7FFFFFFF) == []


# --- JSON shapes -------------------------------------------------------------


def test_records_serialize_to_json_with_int_values():
    pt = PageTables()
    pt.map(0x400000, 0x3000, KiB4, P | US)
    pt.memory.write_u64(pt.root + 8, 0x2_0000_0000 | P)
    space = walk(pt)
    d = json.loads(json.dumps(space.to_dict()))
    assert d["leaves"][0]["va"] == 0x400000 and d["leaves"][0]["pa"] == 0x3000
    assert d["leaves"][0]["permissions"] == {"writable": False, "user": True, "executable": True}
    assert d["problems"][0]["kind"] == "fault" and d["truncated"] is False
    assert d["mode"]["levels"] == 4
    r = coalesce_ranges(space.leaves)[0].to_dict()
    assert r["start"] == 0x400000 and r["size"] == 4096
    t = translate(pt.memory.read_physical, pt.root, MODE4, 0x400010).to_dict()
    assert t["pa"] == 0x3010 and t["fault"] is None and len(t["steps"]) == 4
    assert t["steps"][0]["entry"]["level_name"] == "PML4"
    json.dumps(t)


def test_reprs_read_like_constructors_in_hex():
    from kinspect.inspector.x86 import paging

    pt = PageTables()
    pt.map(0xFFFFFFFF81000000, 0x1000000, MiB2, P | G)
    pt.memory.write_u64(pt.root + 8, 0x2_0000_0000 | P)
    space = walk(pt)
    (leaf,) = space.leaves
    assert repr(leaf).startswith("Leaf(va=0xffffffff81000000, pa=0x1000000, size=0x200000,")
    (problem,) = space.problems
    (rng,) = coalesce_ranges(space.leaves)
    t = translate(pt.memory.read_physical, pt.root, MODE4, 0xFFFFFFFF81000010)
    for record in (leaf, problem, rng, t, t.steps[0]):
        assert eval(repr(record), vars(paging)) == record
