"""kinspect's view of the demo kernel against QEMU's own monitor.

The monitor is reached through QMP, not through gdb, so the truth we compare
with does not pass through any of our code but the text parser.
"""

from __future__ import annotations

import re

import pytest

from kinspect.inspector.targets.qemu_text import (
    decode_info_mem,
    decode_info_registers,
    decode_info_tlb,
)
from tests.qemu_view import tlb_flags

pytestmark = pytest.mark.integration

DIRECT_MAP = 0xFFFF888000000000


def gva2gpa(qemu, va: int) -> int | None:
    text = qemu.monitor(f"gva2gpa {va:#x}")
    match = re.search(r"gpa:\s*(0x[0-9a-f]+|0)\b", text)  # QEMU prints zero as "0"
    return int(match.group(1), 16) if match else None


def test_control_registers_match_info_registers(session, qemu):
    control = session.control_registers()
    truth = decode_info_registers(qemu.monitor("info registers"))
    for name in ("CR0", "CR3", "CR4", "EFER"):
        assert control[name].value == truth[name.lower()], name
    assert control["CR0"].is_set("PG") and control["CR0"].is_set("WP")
    assert control["CR4"].is_set("PAE") and control["CR4"].is_set("PGE")
    assert control["EFER"].is_set("LME") and control["EFER"].is_set("LMA")
    assert control["EFER"].is_set("NXE")
    assert control.paging.levels == 4


def test_every_leaf_matches_info_tlb(session, qemu):
    space = session.address_space()
    assert not space.problems and not space.truncated
    ours = {(leaf.va, leaf.pa, tlb_flags(leaf.entry.raw)) for leaf in space.leaves}
    theirs = set(decode_info_tlb(qemu.monitor("info tlb")))
    assert len(theirs) > 100
    assert ours == {tuple(line) for line in theirs}


def test_effective_ranges_match_info_mem(session, qemu):
    """info mem merges on the effective U/W bits (ANDed across levels), NX ignored."""
    merged: list[list] = []
    for leaf in session.address_space().leaves:
        prot = (
            ("u" if leaf.permissions.user else "-")
            + "r"
            + ("w" if leaf.permissions.writable else "-")
        )
        if merged and merged[-1][1] == leaf.va and merged[-1][2] == prot:
            merged[-1][1] = leaf.va + leaf.size
        else:
            merged.append([leaf.va, leaf.va + leaf.size, prot])
    theirs = [list(r) for r in decode_info_mem(qemu.monitor("info mem"))]
    assert merged == theirs


def test_demo_kernel_layout(session):
    """The mappings a careful kernel has: checked on kinspect's own ranges."""
    symbols = session.symbols
    by_va = {leaf.va: leaf for leaf in session.address_space().leaves}
    # page 0 unmapped, the rest of the low identity map present
    assert not session.translate(0).ok
    assert session.translate(0x1000).ok
    # text RX, rodata R NX, data RW NX
    text = session.translate(symbols.lookup("demo_level3"))
    assert text.ok and text.permissions.executable and not text.permissions.writable
    data = session.translate(symbols.lookup("demo_ticks"))
    assert data.ok and data.permissions.writable and not data.permissions.executable
    # the direct map uses 2 MiB pages, RW NX
    direct = [leaf for va, leaf in by_va.items() if DIRECT_MAP <= va < DIRECT_MAP + (1 << 30)]
    assert direct and all(leaf.size == 2 << 20 for leaf in direct)
    assert all(leaf.permissions.writable and not leaf.permissions.executable for leaf in direct)
    # one 1 GiB page (the MMIO window)
    assert any(leaf.size == 1 << 30 for leaf in by_va.values())
    # the stack's guard page is unmapped
    bottom = symbols.lookup("boot_stack_bottom")
    assert session.translate(bottom).ok
    assert not session.translate(bottom - 0x1000).ok


@pytest.mark.parametrize(
    "where",
    [
        "demo_level3",
        "demo_ticks",
        "kernel_pml4",
        "direct+0x123456",
        "low+0x200010",
        "guard",
        "zero",
    ],
)
def test_vtop_matches_gva2gpa(session, qemu, where):
    symbols = session.symbols
    if where == "direct+0x123456":
        va = DIRECT_MAP + 0x123456
    elif where == "low+0x200010":
        va = 0x200010
    elif where == "guard":
        va = symbols.lookup("boot_stack_bottom") - 0x800
    elif where == "zero":
        va = 0x10
    else:
        va = symbols.lookup(where) + 8
    ours = session.translate(va)
    truth = gva2gpa(qemu, va)
    assert (ours.pa if ours.ok else None) == truth
    if ours.ok:
        assert len(ours.steps) >= 2 and ours.steps[-1].entry.is_leaf
    else:
        assert ours.fault and "not present" in ours.fault


def test_ptov_finds_every_alias(session, qemu):
    va = session.symbols.lookup("demo_level3")
    pa = session.translate(va).pa
    aliases = session.aliases(pa)
    assert va in aliases  # the higher-half kernel mapping
    assert DIRECT_MAP + pa in aliases  # the direct map
    assert pa in aliases  # the low identity map
    for alias in aliases:
        assert gva2gpa(qemu, alias) == pa


def test_walk_through_the_direct_map_like_a_non_qemu_stub(qemu, demo_kernel):
    """kgdb/OpenOCD have no physical mode: read tables through direct_map_base."""
    from kinspect.inspector import api

    with api.attach(qemu.gdb_endpoint, elf=demo_kernel, physical="direct-map") as s:
        assert s.target.physical == "direct-map"
        ours = {(leaf.va, leaf.pa, tlb_flags(leaf.entry.raw)) for leaf in s.address_space().leaves}
    truth = {tuple(line) for line in decode_info_tlb(qemu.monitor("info tlb"))}
    assert ours == truth


def test_direct_map_needs_a_base_or_symbols(qemu):
    from kinspect.inspector import api

    with api.attach(qemu.gdb_endpoint, physical="direct-map") as s:
        with pytest.raises(api.TargetError, match="--phys-base"):
            s.address_space()


def test_physical_reads_past_ram_are_refused(session, qemu):
    """QEMU answers zeros past RAM; kinspect refuses with a reason instead."""
    from kinspect.inspector.errors import FaultError

    summary = qemu.monitor("info memory_size_summary")
    assert str(session.target.ram_size) in summary
    assert session.read_physical(session.target.ram_size - 16, 16)
    with pytest.raises(FaultError, match="past the end of RAM"):
        session.read_physical(session.target.ram_size, 16)


def test_unmapped_virtual_read_is_a_fault(session):
    from kinspect.inspector.errors import FaultError

    with pytest.raises(FaultError):
        session.read_virtual(0x0, 8)
    with pytest.raises(FaultError, match="non-canonical"):
        session.read_virtual(0x0000800000000000, 8)


def test_bulk_physical_reads_through_the_monitor_match_qemus_own(qemu, demo_kernel, monkeypatch):
    """Physical reads on QEMU go through its monitor's pmemsave (inspector/targets/
    qemu_dump.py) in few commands; what they give is what QEMU's monitor prints (``xp``,
    over QMP), neighbours a gap apart included, and the files are gone when it closes."""
    import os

    from kinspect.inspector import api
    from kinspect.inspector.targets.qemu_dump import MonitorDumps

    with api.attach(qemu.gdb_endpoint, elf=demo_kernel) as session:
        cr3 = session.control_registers()["CR3"].value & ~0xFFF
        requests = [(cr3, 4096), (cr3 + 0x3000, 64), (0x100000 + 8, 24), (cr3 + 0x9000, 4096)]
        got = session.target.read_physical_many(requests)
        dumps = session.target._dumps
        assert isinstance(dumps, MonitorDumps), "the bulk path was turned off"
        for (address, size), data in zip(requests, got, strict=True):
            assert isinstance(data, bytes) and len(data) == size
            for offset in range(0, size, 1024):  # a word every KiB, as QEMU prints it
                text = qemu.monitor(f"xp /1gx {address + offset:#x}")
                word = int(text.split(":")[1].split()[0], 16)
                assert int.from_bytes(data[offset : offset + 8], "little") == word, hex(address)
        directory = dumps._directory
        assert directory is not None and os.listdir(directory) == []
    assert not os.path.exists(directory)

    # A QEMU that cannot write where we read (another host or file system): the stub's
    # own physical reads, the same bytes, and the path is not tried again.
    monkeypatch.setattr(MonitorDumps, "_make_directory", lambda self: "/nonexistent/ks")
    with api.attach(qemu.gdb_endpoint, elf=demo_kernel) as other:
        assert other.target.read_physical_many(requests) == got
        assert other.target._dumps is False
