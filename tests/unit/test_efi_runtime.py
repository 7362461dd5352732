"""The UEFI runtime move on literal data: where each region goes, with which flags,
what the plan refuses, EFI_TIME's sense, and the undo that UEFI forbids."""

import struct
from datetime import UTC, datetime

import pytest

from kinspect.inspector.efi.memmap import (
    EFI_MEMORY_RUNTIME,
    decode_memory_attributes_table,
    decode_memory_map,
)
from kinspect.inspector.efi.runtime import (
    EFI_VA_BASE,
    EfiTime,
    format_guid,
    plan_virtual_map,
    system_table_va,
)
from kinspect.inspector.errors import InspectorError
from kinspect.inspector.remap.apply import Remapper, UndoRefused
from kinspect.inspector.remap.efi import SVAM, EfiState, plan_efi_steps
from kinspect.inspector.remap.journal import Journal, kernel_identity
from kinspect.inspector.remap.plan import protected_areas
from kinspect.inspector.x86.paging import Permissions, Range

RT = EFI_MEMORY_RUNTIME
WB, UC, XP, RO = 0x8, 0x1, 1 << 14, 1 << 17
RW, PWT, PCD, NX = 1 << 1, 1 << 3, 1 << 4, 1 << 63
KERNEL = 0xFFFFFFFF80100000


def descriptor(type_, start, pages, attribute):
    raw = struct.pack("<IIQQQQ", type_, 0, start, 0, pages, attribute)
    return raw + bytes(8)  # 48 bytes apart, as OVMF gives them


# OVMF at -m 256M, as the demo kernel printed it: three RTData, one RTCode, the pflash.
MAP = decode_memory_map(
    descriptor(7, 0x100000, 0x700, WB)
    + descriptor(6, 0xE8F2000, 0x100, RT | WB)
    + descriptor(5, 0xF5EC000, 0x100, RT | WB)
    + descriptor(4, 0xF6EC000, 0x20, WB)
    + descriptor(6, 0xF6EC000 + 0x20000, 0x80, RT | WB)
    + descriptor(11, 0xFFC00000, 0x400, RT | UC),
    48,
)
# The attributes table splits the RTCode image: its headers RO+XP, code RO, data XP.
MEMATTR = decode_memory_attributes_table(
    struct.pack("<IIII", 2, 3, 48, 0)
    + descriptor(5, 0xF5EC000, 1, RT | RO | XP)
    + descriptor(5, 0xF5ED000, 0x3F, RT | RO)
    + descriptor(5, 0xF62C000, 0xC0, RT | XP)
)


def test_every_runtime_region_goes_to_base_plus_physical():
    mappings = plan_virtual_map(MAP, MEMATTR)
    assert [(m.physical_start, m.virtual_start, m.size) for m in mappings] == [
        (0xE8F2000, 0xFFFFFFEF0E8F2000, 0x100000),
        (0xF5EC000, 0xFFFFFFEF0F5EC000, 0x100000),
        (0xF70C000, 0xFFFFFFEF0F70C000, 0x80000),
        (0xFFC00000, 0xFFFFFFEFFFC00000, 0x400000),
    ]
    assert EFI_VA_BASE == 0xFFFFFFEF00000000


def test_code_follows_the_attributes_table_and_mmio_is_uncached_in_2m_pages():
    code, mmio = plan_virtual_map(MAP, MEMATTR)[1], plan_virtual_map(MAP, MEMATTR)[3]
    assert [(p.va - code.virtual_start, p.size, p.page_size, p.flags) for p in code.pieces] == [
        (0, 0x1000, 0x1000, NX),  # RO|XP: read-only, not executable
        (0x1000, 0x3F000, 0x1000, 0),  # RO: read-only, executable
        (0x40000, 0xC0000, 0x1000, RW | NX),  # XP: the image's data
    ]
    assert [(p.pa, p.size, p.page_size, p.flags) for p in mmio.pieces] == [
        (0xFFC00000, 0x400000, 0x200000, RW | PCD | PWT | NX)
    ]


def test_without_the_attributes_table_code_is_writable_and_executable():
    code = plan_virtual_map(MAP)[1]
    assert [(p.size, p.flags) for p in code.pieces] == [(0x100000, RW)]
    data = plan_virtual_map(MAP)[0]
    assert [(p.size, p.flags) for p in data.pieces] == [(0x100000, RW | NX)]


def test_4k_pages_up_to_a_2m_boundary_then_2m_pages():
    (m,) = plan_virtual_map(decode_memory_map(descriptor(6, 0x1FF000, 0x202, RT | WB), 48))
    assert [(p.pa, p.size, p.page_size) for p in m.pieces] == [
        (0x1FF000, 0x1000, 0x1000),
        (0x200000, 0x200000, 0x200000),
        (0x400000, 0x1000, 0x1000),
    ]


def test_a_region_above_64g_does_not_fit_and_says_so():
    far = decode_memory_map(descriptor(6, 0x10_0000_0000, 1, RT | WB), 48)
    with pytest.raises(InspectorError, match="above 64 GiB"):
        plan_virtual_map(far)


def test_the_system_table_moves_with_its_region():
    mappings = plan_virtual_map(MAP, MEMATTR)
    assert system_table_va(mappings, 0xE8F3018) == 0xFFFFFFEF0E8F3018
    with pytest.raises(InspectorError, match="in no runtime region"):
        system_table_va(mappings, 0x100000)


def test_efi_time_sense():
    t = EfiTime.from_reply([2026, 11, 25, 20, 15, 3, 0, 2047, 0])
    assert not t.problems() and str(t) == "2026-11-25 20:15:03 (no time zone)"
    assert t.as_datetime() == datetime(2026, 11, 25, 20, 15, 3)
    # UEFI: Localtime = UTC - TimeZone, so 21:15 local with TimeZone -60 is 20:15 UTC.
    zoned = EfiTime.from_reply([2026, 11, 25, 21, 15, 3, 0, -60, 0])
    assert zoned.as_datetime() == datetime(2026, 11, 25, 20, 15, 3, tzinfo=UTC)
    bad = EfiTime.from_reply([2026, 13, 0, 24, 0, 0, 0, 5000, 0])
    assert bad.problems() == [
        "month 13 is outside 1..12",
        "day 0 is outside 1..31",
        "hour 24 is outside 0..23",
        "time zone 5000 is outside -1440..1440 and not 2047",
    ]
    with pytest.raises(InspectorError):
        EfiTime.from_reply([2026, 11])


def test_guid_in_memory_order():
    raw = bytes.fromhex("61dfe48bca93d211aa0d00e098032b8c")
    assert format_guid(raw) == "8be4df61-93ca-11d2-aa0d-00e098032b8c"


# -- the plan --------------------------------------------------------------------------

IDENTITY = Range(0x1000, 0x10000000, 0x1000, 0x1000, Permissions(True, False, True), ())
KERNEL_RANGE = Range(
    KERNEL, KERNEL + 0x20000, 0x100000, 0x1000, Permissions(True, False, True), ("G",)
)
REGS = {
    "rip": KERNEL + 0x1234,
    "rsp": KERNEL + 0x18F00,
    "gdtr_base": KERNEL + 0x11000,
    "gdtr_limit": 0x37,
    "idtr_base": KERNEL + 0x12000,
    "idtr_limit": 0xFFF,
}
AREAS = protected_areas(REGS, tss_base=KERNEL + 0x13000, frames_top=KERNEL + 0x19000)
INFO = {"system_table": 0xE8F3018, "system_table_va": 0xE8F3018, "virtual_mode": False}


def test_plan_maps_then_calls_set_virtual_address_map_once():
    plan = plan_efi_steps(EfiState(INFO, MAP, MEMATTR), [IDENTITY, KERNEL_RANGE], AREAS)
    assert not plan.refusals
    methods = [s.method for s in plan.steps]
    assert methods[-1] == SVAM and methods.count(SVAM) == 1
    assert set(methods[:-1]) == {"map"}
    mapped = sum(s.params[2] for s in plan.steps[:-1])
    assert mapped == 0x100000 + 0x100000 + 0x80000 + 0x400000
    assert all(len(s.writes) <= 64 for s in plan.steps[:-1])
    assert plan.steps[-1].params == (
        [
            [0xE8F2000, 0xFFFFFFEF0E8F2000],
            [0xF5EC000, 0xFFFFFFEF0F5EC000],
            [0xF70C000, 0xFFFFFFEF0F70C000],
            [0xFFC00000, 0xFFFFFFEFFFC00000],
        ],
    )
    assert "system table moves to 0xffffffef0e8f3018" in plan.steps[-1].description


def test_plan_refuses_a_second_call():
    info = dict(INFO, virtual_mode=True, system_table_va=0xFFFFFFEF0E8F3018)
    plan = plan_efi_steps(EfiState(info, MAP, MEMATTR), [KERNEL_RANGE], AREAS)
    assert not plan.steps
    assert [(r.reason, r.address) for r in plan.refusals] == [
        ("efi-virtual-mode", 0xFFFFFFEF0E8F3018)
    ]


def test_plan_refuses_when_the_firmware_is_not_identity_mapped():
    short = Range(0x1000, 0xF600000, 0x1000, 0x1000, Permissions(True, False, True), ())
    plan = plan_efi_steps(EfiState(INFO, MAP, MEMATTR), [short, KERNEL_RANGE], AREAS)
    assert [(r.reason, r.address) for r in plan.refusals] == [
        ("efi-unmapped", 0xF600000),  # inside the RTCode region
        ("efi-unmapped", 0xF70C000),  # the whole of the last RTData region
    ]


def test_plan_refuses_new_addresses_already_in_use():
    squatter = Range(
        0xFFFFFFEF0F5EC000, 0xFFFFFFEF0F5ED000, 0x5000, 0x1000, Permissions(True, False, False), ()
    )
    plan = plan_efi_steps(EfiState(INFO, MAP, MEMATTR), [IDENTITY, KERNEL_RANGE, squatter], AREAS)
    assert [(r.reason, r.address) for r in plan.refusals] == [("efi-va-in-use", 0xFFFFFFEF0F5EC000)]


# -- undo --------------------------------------------------------------------------------


class FakeAgent:
    """Enough of AgentTarget for Remapper.undo: it must refuse before any request."""

    spec = "fake"
    info = {"paging_levels": 4, "boot_nonce": 0x5EED}  # one kernel instance

    def __init__(self, virtual_mode=True):
        self.calls = []
        self.virtual_mode = virtual_mode

    def stop(self):
        pass

    def efi_info(self):
        return {"virtual_mode": self.virtual_mode}

    @property
    def client(self):
        return self

    def call(self, method, *params):
        self.calls.append(method)
        return []


def journal_with_svam(tmp_path, *, reply=True):
    journal = Journal.open(tmp_path / "journal.jsonl")
    journal.start_session("fake", kernel=kernel_identity(FakeAgent.info))  # the fake's kernel
    entry = [[0xFFFFFFEF0E8F2000, 1, 0x5000, 0, 0xE8F2000 | 0x8000000000000003]]
    first = journal.begin(
        "map", [0xFFFFFFEF0E8F2000, 0xE8F2000, 0x1000, 0x1000, RW | NX], {"entries": []}, "map"
    )
    journal.applied(first, entry)
    svam = journal.begin(SVAM, [[[0xE8F2000, 0xFFFFFFEF0E8F2000]]], {"efi_info": INFO}, "svam")
    if reply:
        journal.applied(svam, [0, 0xFFFFFFEF0E8F3018, 0xFFFFFFEF0E8F3100])
    drop = journal.begin("unmap", [0, 1 << 39, 1 << 39], {"entries": []}, "drop")
    journal.applied(drop, [[0, 4, 0x3000, 0x4003, 0]])
    return journal, (first, svam, drop)


def test_undo_through_set_virtual_address_map_is_refused_and_changes_nothing(tmp_path):
    journal, (first, svam, drop) = journal_with_svam(tmp_path)
    agent = FakeAgent()
    remapper = Remapper(agent, journal)
    with pytest.raises(UndoRefused, match=r"step #2 called SetVirtualAddressMap, which cannot be"):
        remapper.undo()
    assert agent.calls == []  # nothing was sent
    reopened = Journal.open(tmp_path / "journal.jsonl")
    assert [s.seq for s in reopened.open_steps()] == [1, 2, 3]
    with pytest.raises(UndoRefused):
        remapper.undo([first])
    # What came after the call can be undone on its own.
    assert [s.seq for s in remapper.undo([drop])] == [3]
    assert agent.calls == ["set_entries"]


def test_a_pending_call_the_firmware_never_saw_does_not_pin(tmp_path):
    journal, (first, svam, drop) = journal_with_svam(tmp_path, reply=False)
    remapper = Remapper(FakeAgent(virtual_mode=False), journal)
    assert [s.seq for s in remapper.undo([drop, first])] == [3, 1]


def test_after_the_call_the_runtime_regions_may_not_lose_their_mapping():
    from kinspect.inspector.remap.plan import Protected, check_change

    areas = [Protected("efi-runtime", 0xFFFFFFEF0E8F2000, 0xFFFFFFEF0E9F2000)]
    (refusal,) = check_change(areas, 0xFFFFFFEF0E8F3000, 0xFFFFFFEF0E8F4000, unmaps=True)
    assert (refusal.reason, refusal.address) == ("efi-runtime", 0xFFFFFFEF0E8F3000)
    assert "SetVirtualAddressMap" in refusal.message
    # Its permissions are the kernel's to choose: read-only or NX is not refused.
    assert not check_change(
        areas, 0xFFFFFFEF0E8F3000, 0xFFFFFFEF0E8F4000, unmaps=False, removes_w=True, removes_x=True
    )


def test_the_maps_share_their_page_tables_and_the_plan_counts_each_once():
    plan = plan_efi_steps(EfiState(INFO, MAP, MEMATTR), [IDENTITY, KERNEL_RANGE], AREAS)
    # PML4 slot 511 has the kernel's PDPT already. New: a PD for 0xffffffef00000000's GiB
    # and one for 0xffffffefc0000000's (the pflash, in 2 MiB pages); PTs for the 2 MiB
    # chunks that hold 4 KiB pages: 0xe800000 (the first RTData), 0xf400000 and 0xf600000
    # (RTCode across both, the last RTData in the second).
    assert plan.tables == 2 + 3
