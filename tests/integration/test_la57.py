"""5-level paging, live: the demo kernel booted with ``la57`` on a CPU with LA57.

One QEMU boot (``-cpu qemu64,+pdpe1gb,+la57 -append la57``): boot.S sets
CR4.LA57 before long mode and paging.c builds a PML5 whose entry 511 holds
the kernel's usual higher half (kernel_pml4) and entry 0 the identity map.
kinspect's walk through the gdb stub is compared with QEMU's own monitor
(``info registers``, ``info tlb``, ``gva2gpa``, through QMP) and with the
agent's walk inside the kernel. The 4-level boot is test_paging_vs_qemu's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from kinspect.inspector import api
from kinspect.inspector.errors import FaultError
from kinspect.inspector.symbols import SymbolTable
from kinspect.inspector.targets.agent import AgentTarget
from kinspect.inspector.targets.qemu_text import (
    decode_info_mem,
    decode_info_registers,
    decode_info_tlb,
)
from kinspect.inspector.x86.paging import canonicalize

pytestmark = pytest.mark.integration

KERNEL_VMA = 0xFFFFFFFF80000000
DIRECT_MAP = 0xFFFF888000000000
MMIO_WINDOW = 0xFFFFC90000000000
CR4_LA57 = 1 << 12
#: PML5 entry 320, neither the first (identity map) nor the last (kernel_pml4): an address
#: only 5-level paging reaches (non-canonical with 48 bits), with nothing mapped under it.
VA57 = 0xFF40000000000000
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def qemu(demo_kernel):
    instance = api.launch_demo(append="la57", cpu_flags=("+la57",))
    try:
        yield instance
    finally:
        instance.stop()


def tlb_flags(raw: int) -> str:
    """The flags ``info tlb`` prints for a leaf: its raw bits, XGPDACTUW."""
    bits = (
        (63, "X"),
        (8, "G"),
        (7, "P"),
        (6, "D"),
        (5, "A"),
        (4, "C"),
        (3, "T"),
        (2, "U"),
        (1, "W"),
    )
    return "".join(letter if raw >> bit & 1 else "-" for bit, letter in bits)


def gva2gpa(qemu, va: int) -> int | None:
    text = qemu.monitor(f"gva2gpa {va:#x}")
    match = re.search(r"gpa:\s*(0x[0-9a-f]+|0)\b", text)  # QEMU prints zero as "0"
    return int(match.group(1), 16) if match else None


def test_the_kernel_says_5_level(qemu):
    text = qemu.serial_output()
    assert "la57: 5-level paging (CR4.LA57 set at the PVH entry)" in text
    assert "paging: 5-level (CR4.LA57)" in text
    assert "exception" not in text.lower()


def test_paging_mode_is_5_level_as_info_registers_says(session, qemu):
    control = session.control_registers()
    truth = decode_info_registers(qemu.monitor("info registers"))
    for name in ("CR0", "CR3", "CR4", "EFER"):
        assert control[name].value == truth[name.lower()], name
    assert truth["cr4"] & CR4_LA57
    assert control["CR4"].is_set("LA57") and control["CR4"].is_set("PGE")
    assert control.paging.levels == 5 and control.paging.name == "5-level"
    assert control.paging.virtual_address_bits == 57
    # CR3 is kernel_pml5, whose entry 511 is kernel_pml4 (the higher half)
    pml5 = session.symbols.lookup("kernel_pml5") - KERNEL_VMA
    assert control["CR3"].value & ~0xFFF == pml5
    entry_511 = int.from_bytes(session.read_physical(pml5 + 511 * 8, 8), "little")
    assert entry_511 & ~0xFFF == session.symbols.lookup("kernel_pml4") - KERNEL_VMA


def test_every_leaf_matches_info_tlb(session, qemu):
    space = session.address_space()
    assert not space.problems and not space.truncated
    ours = {(leaf.va, leaf.pa, tlb_flags(leaf.entry.raw)) for leaf in space.leaves}
    theirs = {tuple(line) for line in decode_info_tlb(qemu.monitor("info tlb"))}
    assert len(theirs) > 600
    assert ours == theirs
    # both halves, and every leaf reached through the PML5 at CR3
    cr3 = session.control_registers()["CR3"].value & ~0xFFF
    assert any(leaf.va < 1 << 30 for leaf in space.leaves)
    assert any(leaf.va >= KERNEL_VMA for leaf in space.leaves)
    for leaf in space.leaves:
        assert leaf.table_path[0] == cr3
        assert len(leaf.table_path) == 6 - leaf.level  # PML5 .. the leaf's table


def test_effective_ranges_match_info_mem(session, qemu):
    """info mem merges on the effective U/W bits (ANDed across levels), NX ignored.

    QEMU 7.2's ``info mem`` with CR4.LA57 (mem_info_la57 in
    target/i386/monitor.c) tests P the wrong way round at the PDPT and PD
    levels: present entries count as unmapped, so it prints nothing for a
    kernel whose page 0 holds no entries. Then the comparison is with what
    QEMU's own 4-level walker prints for each PML4 that the PML5 holds.
    """
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
    assert len(merged) >= 4
    theirs = [list(r) for r in decode_info_mem(qemu.monitor("info mem"))]
    if theirs:
        assert merged == theirs
        return
    theirs = info_mem_per_pml4(session, qemu)
    assert merged == theirs


def info_mem_per_pml4(session, qemu) -> list[list]:
    """``info mem`` of each PML4 under the PML5, as QEMU's 4-level walker prints it.

    The guest is stopped (the gdb session holds it); through the stub, CR4.LA57
    is cleared and CR3 pointed at each PML4 for one ``info mem``, then both are
    put back. The PML5 entries grant RW and no US, as the PML4 level does here,
    so the 4-level view loses nothing the PML5 would take away.
    """
    registers = session.registers()
    cr3, cr4 = registers["cr3"], registers["cr4"]
    assert cr4 & CR4_LA57
    low48 = (1 << 48) - 1
    found: list[list] = []
    pml5 = session.read_physical(cr3 & ~0xFFF, 4096)
    try:
        session.target._console(f"set $cr4 = (long){cr4 & ~CR4_LA57:#x}")
        for index in range(512):
            entry = int.from_bytes(pml5[index * 8 : index * 8 + 8], "little")
            if not entry & 1:
                continue
            session.target._console(f"set $cr3 = (long){entry & 0x000FFFFFFFFFF000:#x}")
            for start, end, prot in decode_info_mem(qemu.monitor("info mem")):
                start = canonicalize((index << 48) | (start & low48), 5)
                end = canonicalize((index << 48) + ((end - 1) & low48), 5) + 1
                if found and found[-1][1] == start and found[-1][2] == prot:
                    found[-1][1] = end
                else:
                    found.append([start, end, prot])
    finally:
        session.target._console(f"set $cr3 = (long){cr3:#x}")
        session.target._console(f"set $cr4 = (long){cr4:#x}")
    after = decode_info_registers(qemu.monitor("info registers"))
    assert (after["cr3"], after["cr4"]) == (cr3, cr4)
    return found


@pytest.mark.parametrize(
    ("where", "steps"),
    [
        ("demo_level3", 5),
        ("demo_ticks", 5),
        ("kernel_pml5", 5),
        ("direct+0x123456", 4),
        ("mmio+0x10", 3),
        ("low+0x200010", 4),
        ("low+0x1010", 5),
        ("guard", None),
        ("zero", None),
        ("canonical57", None),
        ("higher57", None),
    ],
)
def test_vtop_matches_gva2gpa(session, qemu, where, steps):
    symbols = session.symbols
    va = {
        "direct+0x123456": DIRECT_MAP + 0x123456,
        "mmio+0x10": MMIO_WINDOW + 0x10,
        "low+0x200010": 0x200010,
        "low+0x1010": 0x1010,
        "guard": symbols.lookup("boot_stack_bottom") - 0x800,
        "zero": 0x10,
        # canonical only with 57 bits; PML5 entry 0 holds PML4 entry 0 alone
        "canonical57": 0x0000800000000000,
        # where the 57-bit higher half starts: PML5 entry 256, not present
        "higher57": 0xFF00000000000000,
    }.get(where)
    if va is None:
        va = symbols.lookup(where) + 8
    ours = session.translate(va)
    truth = gva2gpa(qemu, va)
    assert (ours.pa if ours.ok else None) == truth
    assert ours.steps[0].level == 5
    assert [s.level for s in ours.steps] == list(range(5, 5 - len(ours.steps), -1))
    if steps is None:
        assert not ours.ok and "not present" in ours.fault
    else:
        assert ours.ok and len(ours.steps) == steps and ours.steps[-1].entry.is_leaf


def test_non_canonical_with_57_bits(session):
    with pytest.raises(FaultError, match="non-canonical"):
        session.read_virtual(0x0100000000000000, 8)
    # canonical with 57 bits (not with 48): an ordinary unmapped address now
    with pytest.raises(FaultError) as raised:
        session.read_virtual(0x0000800000000000, 8)
    assert "non-canonical" not in str(raised.value)


def test_agent_walk_equals_kinspects_walk(qemu, demo_kernel):
    """The agent's walk in the kernel, then kinspect's through the stub, same tables."""
    vas = [
        SymbolTable.from_elf(demo_kernel).lookup("kernel_main"),
        DIRECT_MAP + 0x123456,
        MMIO_WINDOW + 0x10,
        0x1010,
    ]
    agent = AgentTarget(qemu.agent_endpoint, timeout=5)
    try:
        assert agent.info["paging_levels"] == 5
        agent.stop()  # held in the agent's loop: gdb then sees the same tables
        ranges = agent.walk_ranges()
        assert agent.walk_stats["problems"] == 0
        translations = [agent.translate(va) for va in vas]
        session = api.attach(qemu.gdb_endpoint, elf=demo_kernel)
        try:
            assert ranges == session.ranges()
            assert agent.walk_stats["leaves"] == len(session.address_space().leaves)
            for va, theirs in zip(vas, translations, strict=True):
                ours = session.translate(va)
                assert ours.ok and theirs.pa == ours.pa
                assert theirs.entries == tuple(step.entry.raw for step in ours.steps)
        finally:
            session.close()
        agent.resume()
    finally:
        agent.close()


def test_remap_map_at_a_57_bit_address_matches_info_tlb_and_gva2gpa(qemu, tmp_path):
    """``kinspect --agent ... remap map`` under a PML5 entry of its own, then undone."""
    journal = tmp_path / "la57.jsonl"
    size, pa = 0x3000, 0x200000

    def kinspect(*args: str) -> subprocess.CompletedProcess:
        command = ["--agent", qemu.agent_endpoint, "remap", *args, "--journal", str(journal)]
        return subprocess.run(
            [sys.executable, "-m", "kinspect.inspector.cli", *command],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )

    def pml5_entry() -> int:
        cr3 = decode_info_registers(qemu.monitor("info registers"))["cr3"] & ~0xFFF
        text = qemu.monitor(f"xp /1gx {cr3 + 8 * 320:#x}")
        return int(re.search(r":\s*0x([0-9a-f]+)", text).group(1), 16)

    def tlb() -> dict[int, tuple[int, str]]:
        """va -> (pa, flags); D and A left out (the CPU sets them as the kernel runs)."""
        lines = decode_info_tlb(qemu.monitor("info tlb"))
        return {line.va: (line.pa, line.flags[:3] + "--" + line.flags[5:]) for line in lines}

    before = tlb()
    assert not any(VA57 <= va < VA57 + (1 << 48) for va in before)
    assert pml5_entry() == 0 and gva2gpa(qemu, VA57) is None

    done = kinspect("map", hex(VA57), hex(pa), hex(size), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "page tables to allocate: 4" in done.stdout  # PML4, PDPT, PD, PT: a new PML5 slot
    assert "verified: the walk matches the plan" in done.stdout
    now = tlb()
    mapped = {va: now[va] for va in now if VA57 <= va < VA57 + (1 << 48)}
    assert sorted(mapped) == [VA57, VA57 + 0x1000, VA57 + 0x2000]
    for i in range(3):
        page_pa, flags = mapped[VA57 + i * 0x1000]
        assert page_pa == pa + i * 0x1000
        assert flags[0] == "X" and flags[-1] == "W"  # NX and writable (rw,nx), as QEMU sees it
    assert gva2gpa(qemu, VA57 + 0x1234) == pa + 0x1234
    assert gva2gpa(qemu, VA57 + size) is None
    assert pml5_entry() & 1  # the walk went through PML5 entry 320
    assert {va: now[va] for va in now if va not in mapped} == before  # nothing else moved

    undone = kinspect("undo")
    assert undone.returncode == 0 and "undone: #1 map" in undone.stdout, undone.stderr
    assert tlb() == before
    assert pml5_entry() == 0 and gva2gpa(qemu, VA57 + 0x1234) is None


def test_la57_on_a_cpu_without_it_stays_4_level(demo_kernel):
    """A second, short boot: ``la57`` asked for, but the CPU (plain qemu64) lacks it."""
    instance = api.launch_demo(append="la57")
    try:
        text = instance.serial_output()
        assert (
            "la57: the CPU has no LA57 (CPUID.7.0:ECX[16] clear), staying with 4-level paging"
            in text
        )
        assert "5-level" not in text
        truth = decode_info_registers(instance.monitor("info registers"))
        assert not truth["cr4"] & CR4_LA57
        pml4 = SymbolTable.from_elf(demo_kernel).lookup("kernel_pml4")
        assert truth["cr3"] & ~0xFFF == pml4 - KERNEL_VMA
    finally:
        instance.stop()
