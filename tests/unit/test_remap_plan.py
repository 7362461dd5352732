"""Remap plans, journal and refusal rules on literal data (no target)."""

import json
import os
import subprocess
import sys

import pytest

from kinspect.inspector.remap.journal import Journal
from kinspect.inspector.remap.plan import (
    FLAG_BITS,
    Expectation,
    parse_flags,
    plan_map,
    plan_move,
    plan_protect,
    plan_unmap,
    protected_areas,
    verify_expectations,
)
from kinspect.inspector.x86.paging import Permissions, Range

RW, NX = FLAG_BITS["RW"], FLAG_BITS["NX"]
KERNEL = 0xFFFFFFFF80100000
RANGES = [
    Range(0x1000, 0x200000, 0x1000, 0x1000, Permissions(True, False, True), ()),
    Range(KERNEL, KERNEL + 0x10000, 0x100000, 0x1000, Permissions(False, False, True), ("G",)),
    Range(
        KERNEL + 0x10000,
        KERNEL + 0x20000,
        0x110000,
        0x1000,
        Permissions(True, False, False),
        ("G",),
    ),
]
REGS = {
    "rip": KERNEL + 0x1234,
    "rsp": KERNEL + 0x18F00,
    "gdtr_base": KERNEL + 0x11000,
    "gdtr_limit": 0x37,
    "idtr_base": KERNEL + 0x12000,
    "idtr_limit": 0xFFF,
}
AREAS = protected_areas(
    REGS, tss_base=KERNEL + 0x13000, frames_top=KERNEL + 0x19000, table_aliases=[KERNEL + 0x14000]
)


def test_parse_flags_by_sdm_names():
    # The SDM's names still parse; NX is now set unless x is named (ro kept NX clear: a bug).
    assert parse_flags("rw,nx") == RW | NX
    assert parse_flags("ro") == NX
    assert parse_flags("RW+G+PCD") == RW | FLAG_BITS["G"] | FLAG_BITS["PCD"] | NX
    assert parse_flags("rwx") == RW
    with pytest.raises(ValueError):
        parse_flags("rwz")


def test_map_plan_splits_into_steps_of_64_pages_and_counts_tables():
    plan = plan_map(RANGES, AREAS, 0xFFFFD00000000000, 0x400000, 65 * 0x1000, 0x1000, RW | NX)
    assert [s.method for s in plan.steps] == ["map", "map"]
    assert plan.steps[0].params == (0xFFFFD00000000000, 0x400000, 64 * 0x1000, 0x1000, RW | NX)
    assert plan.steps[1].params[:3] == (0xFFFFD00000040000, 0x440000, 0x1000)
    assert len(plan.steps[0].writes) == 64
    assert plan.tables_to_allocate == 3  # PDPT, PD, PT: nothing mapped in that PML4 slot
    assert not plan.refusals and not plan.unreachable
    assert "page tables to allocate: 3" in str(plan)


#: PML5 entry 320 (neither the first nor the last): canonical only with 57-bit addresses.
VA57 = 0xFF40000000000000


def test_map_at_a_57_bit_address_is_planned_on_5_levels_and_refused_on_4():
    five = plan_map(RANGES, AREAS, VA57, 0x400000, 0x2000, 0x1000, RW | NX, levels=5)
    assert not five.refusals and not five.unreachable
    assert five.steps[0].params == (VA57, 0x400000, 0x2000, 0x1000, RW | NX)
    assert five.tables_to_allocate == 4  # PML4, PDPT, PD, PT under an empty PML5 entry
    four = plan_map(RANGES, AREAS, VA57, 0x400000, 0x2000, 0x1000, RW | NX)  # 4 levels
    assert [r.reason for r in four.refusals] == ["non-canonical"]
    four = plan_map(RANGES, AREAS, VA57, 0x400000, 0x2000, 0x1000, RW | NX, levels=4)
    assert [r.reason for r in four.refusals] == ["non-canonical"]
    # A lower-half 57-bit address too (PML5 entry 128), for unmap, protect and move.
    low57 = 0x0080000000000000
    assert not plan_unmap(RANGES, AREAS, low57, 0x1000, 0x1000, levels=5).refusals
    assert [r.reason for r in plan_unmap(RANGES, AREAS, low57, 0x1000, 0x1000).refusals] == [
        "non-canonical"
    ]
    protect = plan_protect(RANGES, AREAS, low57, 0x1000, 0x1000, RW, levels=5)
    assert [r.reason for r in protect.refusals] == ["not-mapped"]  # canonical, just unmapped
    move = plan_move(RANGES, AREAS, 0x1000, 0x2000, low57, levels=5)
    assert not move.refusals and move.tables_to_allocate == 4
    assert "non-canonical" in [
        r.reason for r in plan_move(RANGES, AREAS, 0x1000, 0x2000, low57).refusals
    ]


def test_5_level_tables_and_the_57_bit_hole():
    # Under the PML5 entry that already holds the kernel, a PML4 exists: three tables, as on 4.
    plan = plan_map(RANGES, AREAS, 0xFFFFD00000000000, 0x400000, 0x1000, 0x1000, RW, levels=5)
    assert plan.tables_to_allocate == 3 and not plan.refusals
    # Crossing from the 57-bit lower half into the hole, or past bit 56: refused.
    for va in (0x00FFFFFFFFFFF000, 0x0100000000000000):
        plan = plan_map(RANGES, AREAS, va, 0x400000, 0x2000, 0x1000, RW, levels=5)
        assert [r.reason for r in plan.refusals] == ["non-canonical"], hex(va)


def test_map_over_existing_pages_says_what_it_replaces():
    plan = plan_map(RANGES, AREAS, 0x100000, 0x900000, 0x2000, 0x1000, RW)
    assert [(r.start, r.end) for r in plan.unreachable] == [(0x100000, 0x102000)]
    assert plan.tables_to_allocate == 0


@pytest.mark.parametrize(
    ("va", "reason"),
    [
        (KERNEL + 0x1000, "running-code"),
        (KERNEL + 0x18000, "own-stack"),
        (KERNEL + 0x11000, "descriptor-tables"),
        (KERNEL + 0x13000, "descriptor-tables"),
        (KERNEL + 0x14000, "page-tables"),
        (0x0000800000000000, "non-canonical"),
        (KERNEL + 0x800, "misaligned"),
    ],
)
def test_unmap_refusals_name_their_reason(va, reason):
    plan = plan_unmap(RANGES, AREAS, va, 0x1000, 0x1000)
    assert reason in [r.reason for r in plan.refusals]


def test_protect_refuses_nx_on_code_and_read_only_on_the_stack_only():
    code = plan_protect(RANGES, AREAS, KERNEL + 0x1000, 0x1000, 0x1000, NX)
    assert [r.reason for r in code.refusals] == ["running-code"]
    assert not plan_protect(RANGES, AREAS, KERNEL + 0x1000, 0x1000, 0x1000, 0).refusals
    stack = plan_protect(RANGES, AREAS, KERNEL + 0x18000, 0x1000, 0x1000, NX)
    assert [r.reason for r in stack.refusals] == ["own-stack"]
    assert not plan_protect(RANGES, AREAS, KERNEL + 0x18000, 0x1000, 0x1000, RW | NX).refusals


def test_verify_finds_each_kind_of_difference():
    e = Expectation(0x1000, 0x3000, 0x1000, True, True)
    assert verify_expectations([e], RANGES) == []
    assert verify_expectations([Expectation(0x1000, 0x3000, 0x2000, True, True)], RANGES)
    assert (
        "writable" in verify_expectations([Expectation(0x1000, 0x2000, 0x1000, False)], RANGES)[0]
    )
    assert "still mapped" in verify_expectations([Expectation(0x1000, 0x2000, None)], RANGES)[0]
    assert "not all mapped" in verify_expectations([Expectation(0, 0x2000, 0)], RANGES)[0]


def test_journal_keeps_states_across_processes_and_finds_orphans(tmp_path):
    path = tmp_path / "j.jsonl"
    # A step applied by another process that is gone now: an orphan.
    script = (
        "import sys; from kinspect.inspector.remap.journal import Journal;"
        "j = Journal.open(sys.argv[1]); j.start_session('t');"
        "s = j.begin('map', [1, 2], {'entries': [[1, 4, 0]]}, 'one');"
        "j.applied(s, [[1, 4, 8, 0, 7]]); j.begin('unmap', [1], {'entries': []}, 'two')"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(path)],
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    with open(path, "a") as f:
        f.write('{"kind": "step", "seq": 9, "sta')  # torn by a crash mid-write: ignored
    j = Journal.open(path)
    j.start_session("t")
    orphans = j.orphaned()
    assert [(s.seq, s.state) for s in orphans] == [(1, "applied"), (2, "pending")]
    assert orphans[0].result == [[1, 4, 8, 0, 7]] and orphans[1].before == {"entries": []}
    j.undone(orphans[0])
    j.keep([orphans[1]])
    again = Journal.open(path)
    assert again.open_steps() == []
    assert {s.seq: s.state for s in again.steps.values()} == {1: "undone", 2: "kept"}
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1]) == {"kind": "kept", "seqs": [2]}


def test_a_session_that_ended_leaves_open_steps_but_no_orphans(tmp_path):
    path = tmp_path / "j.jsonl"
    script = (
        "import sys; from kinspect.inspector.remap.journal import Journal;"
        "j = Journal.open(sys.argv[1]); j.start_session('t');"
        "s = j.begin('map', [1], {'entries': []}, 'one'); j.applied(s, []);"
        "assert j.end_session()"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(path)],
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    j = Journal.open(path)
    j.start_session("t")
    assert [s.seq for s in j.open_steps()] == [1]
    assert j.orphaned() == []
    pending = j.begin("unmap", [1], {"entries": []}, "two")
    assert not j.end_session()  # a pending step: this session must look crashed
    assert pending.state == "pending"


def test_move_keeps_page_sizes_and_flags_and_drops_the_old_last():
    ranges = [
        Range(0x40000000, 0x40400000, 0x800000, 1 << 21, Permissions(True, False, False), ("G",))
    ]
    plan = plan_move(ranges, [], 0x40000000, 0x400000, 0x80000000, drop_old=True)
    assert [s.method for s in plan.steps] == ["map", "unmap"]
    assert plan.steps[0].params == (
        0x80000000,
        0x800000,
        0x400000,
        1 << 21,
        RW | NX | FLAG_BITS["G"],
    )
    assert plan.steps[1].params == (0x40000000, 0x400000, 1 << 21)
    assert not plan.refusals and plan.unreachable == tuple(ranges)
    bad = plan_move(ranges, [], 0x40000000, 0x400000, 0x80001000)
    assert "misaligned" in [r.reason for r in bad.refusals]


def test_range_index_finds_what_reaches_into_a_query():
    from kinspect.inspector.remap.plan import RangeIndex

    perm = Permissions(True, False, False)
    index = RangeIndex(
        [
            Range(0x5000, 0x6000, 0x5000, 0x1000, perm, ()),
            Range(0x1000, 0x3000, 0x1000, 0x1000, perm, ()),
            Range(0x3000, 0x4000, 0x9000, 0x1000, perm, ()),
        ]
    )
    starts = lambda a, b: [r.start for r in index.overlapping(a, b)]  # noqa: E731
    assert starts(0x2000, 0x2001) == [0x1000]  # starts before the query, reaches into it
    assert starts(0x2FFF, 0x5001) == [0x1000, 0x3000, 0x5000]
    assert starts(0x4000, 0x5000) == []  # the hole between
    assert starts(0x0, 0x1000) == [] and starts(0x6000, 0x7000) == []
    assert [r.start for r in index] == [0x1000, 0x3000, 0x5000] and len(index) == 3
