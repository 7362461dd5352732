"""GDT, LDT, IDT and TSS of the live demo kernel against QEMU's monitor (through QMP,
not gdb) and binutils' nm (not our ELF reader).

The LDT (kernel-agent/demo/gdt.c) is checked three ways: LDTR against the
``LDT=`` line of ``info registers`` (QEMU's cached copy, loaded by LLDT from
the GDT), each entry against the bytes QEMU's ``x`` reads, decoded by the
small decoder below (not kinspect's), and against the values gdt.c writes.
Each way through the gdb stub, through the agent, and through the CLI's JSON.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from kinspect.inspector.targets.agent import AgentTarget
from kinspect.inspector.targets.qemu_text import decode_info_registers, decode_info_tlb

pytestmark = pytest.mark.integration

BUSY = 0x200  # the busy bit of a TSS type, in QEMU's attribute layout

GDT_LDT = 0x38  # gdt.h: after the TSS, so the older selectors stay
# What gdt.c puts in the LDT, by the selector that reaches it (TI=1: the LDT's).
LDT_SLOTS = {
    0x04: dict(
        kind="code",
        type=0xA,
        DPL=3,
        P=True,
        L=False,
        DB=True,
        G=True,
        base=0,
        effective_limit=0xFFFFFFFF,
    ),
    0x0C: dict(
        kind="data",
        type=0x2,
        DPL=3,
        P=True,
        L=False,
        DB=True,
        G=False,
        base=0x12345000,
        effective_limit=0x2FFFF,
    ),
    0x14: dict(
        kind="data",
        type=0x2,
        DPL=3,
        P=False,
        L=False,
        DB=False,
        G=False,
        base=0,
        effective_limit=0xFFF,
    ),
    0x1C: dict(kind="call-gate64", type=0xC, DPL=3, P=True, gate_selector=0x08),
}


def ldt_line(text: str) -> tuple[int, int, int, int]:
    """(selector, base, limit, attributes) of the ``LDT=`` line, read with a regex of its own."""
    m = re.search(
        r"^LDT=([0-9a-f]{4}) ([0-9a-f]{16}) ([0-9a-f]{8}) ([0-9a-f]{8}) DPL=0 LDT\b", text, re.M
    )
    assert m, text
    return tuple(int(g, 16) for g in m.groups())  # type: ignore[return-value]


def qemu_qwords(qemu, address: int, count: int) -> list[int]:
    """``count`` quadwords at a virtual address, as QEMU's ``x`` reads them."""
    text = qemu.monitor(f"x /{count}gx {address:#x}")
    words = [int(w, 16) for w in re.findall(r"\b0x([0-9a-f]{16})\b", text)]
    assert len(words) == count, text
    return words


def decode_independently(low: int, high: int) -> dict:
    """One LDT entry by SDM Figures 3-8 and 5-9, written apart from inspector.x86."""
    access, flags = (low >> 40) & 0xFF, (low >> 52) & 0xF
    kind_type, s = access & 0xF, access >> 4 & 1
    common = dict(type=kind_type, DPL=access >> 5 & 3, P=bool(access >> 7))
    if not s and kind_type == 0xC:
        offset = (low & 0xFFFF) | (low >> 48) << 16 | (high & 0xFFFFFFFF) << 32
        return dict(common, kind="call-gate64", gate_selector=low >> 16 & 0xFFFF, base=offset)
    limit = (low & 0xFFFF) | (low >> 48 & 0xF) << 16
    if flags & 8:
        limit = limit << 12 | 0xFFF
    return dict(
        common,
        kind=("code" if kind_type & 8 else "data") if s else "system",
        L=bool(flags & 2),
        DB=bool(flags & 4),
        G=bool(flags & 8),
        base=(low >> 16 & 0xFFFFFF) | (low >> 56) << 24,
        effective_limit=limit,
    )


def assert_ldt_slots(slots: list[dict], words: list[int], ldt_call_gate_target: int) -> None:
    """kinspect's LDT slots (to_dict form) against QEMU's bytes and gdt.c's values."""
    assert [s["selector"] for s in slots] == [0x04, 0x0C, 0x14, 0x1C, 0x24]
    assert slots[4]["descriptor"] is None and slots[4]["continues"] == 0x1C
    assert all(s["loaded_by"] == [] for s in slots)
    for i, slot in enumerate(slots[:4]):
        ours = slot["descriptor"]
        assert ours["raw"] == words[i]
        theirs = decode_independently(words[i], words[i + 1])
        assert {k: ours[k] for k in theirs} == theirs, slot["selector"]
        expected = dict(LDT_SLOTS[slot["selector"]])
        if expected["kind"] == "call-gate64":
            expected["base"] = ldt_call_gate_target
        assert {k: ours[k] for k in expected} == expected, slot["selector"]
    gate = slots[3]["descriptor"]
    assert gate["raw_high"] == words[4] and gate["reserved"] == 0


@pytest.fixture(scope="module")
def nm(demo_kernel) -> dict[str, int]:
    out = subprocess.run(["nm", demo_kernel], capture_output=True, text=True, check=True).stdout
    return {
        parts[2]: int(parts[0], 16) for parts in map(str.split, out.splitlines()) if len(parts) == 3
    }


def kinspect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kinspect.inspector.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_gdt_slots_agree_with_qemus_segment_caches(qemu, session, nm):
    gdt = session.gdt()  # attaching stopped the CPU: the monitor sees the same state
    truth = decode_info_registers(qemu.monitor("info registers"))
    assert (gdt.base, gdt.limit) == (truth["gdt"].base, truth["gdt"].limit)
    assert gdt.base == nm["kernel_gdt"] and gdt.problems == ()
    for name in ("cs", "ss", "ds", "es"):
        cache = truth[name]
        slot = gdt.slot(cache.selector)
        assert name.upper() in slot.loaded_by
        d = slot.descriptor
        assert (d.base, d.effective_limit, d.attributes) == (
            cache.base,
            cache.limit,
            cache.attributes,
        )
    cs = gdt.slot(truth["cs"].selector).descriptor
    assert truth["cs"].selector == 0x08 and cs.kind == "code" and cs.L and not cs.DB and cs.DPL == 0
    assert "CS64" in qemu.monitor("info registers")
    # TR: QEMU prints TSS64-avl from its cache; LTR set the busy bit in the GDT copy.
    tr = truth["tr"]
    slot = gdt.slot(tr.selector)
    assert slot.loaded_by == ("TR",) and slot.descriptor.kind == "TSS64-busy"
    assert (slot.descriptor.base, slot.descriptor.effective_limit) == (tr.base, tr.limit)
    assert slot.descriptor.attributes & ~BUSY == tr.attributes & ~BUSY
    assert slot.descriptor.base == nm["kernel_tss"]
    assert gdt.slot(tr.selector + 8).continues == tr.selector
    assert [gdt.slot(s).descriptor.DPL for s in (0x18, 0x20)] == [3, 3]
    # LDTR: its descriptor after the TSS, as QEMU cached it at LLDT.
    ldtr = truth["ldt"]
    slot = gdt.slot(GDT_LDT)
    assert ldtr.selector == GDT_LDT and slot.loaded_by == ("LDTR",)
    assert slot.descriptor.kind == "LDT" and slot.descriptor.base == nm["kernel_ldt"]
    assert (slot.descriptor.base, slot.descriptor.effective_limit, slot.descriptor.attributes) == (
        ldtr.base,
        ldtr.limit,
        ldtr.attributes,
    )
    assert gdt.slot(GDT_LDT + 8).continues == GDT_LDT
    assert gdt.limit == 0x47 and len(gdt.slots) == 9


def test_ldt_through_the_gdb_stub_against_qemu(qemu, session, nm):
    ldt = session.ldt()  # attaching stopped the CPU
    text = qemu.monitor("info registers")
    selector, base, limit, attributes = ldt_line(text)
    assert (selector, base, limit, attributes) == (GDT_LDT, nm["kernel_ldt"], 0x27, 0x00008200)
    assert ldt is not None and ldt.name == "LDT" and (ldt.base, ldt.limit) == (base, limit)
    assert ldt.problems == ()
    ldtr = session.system_registers().ldtr
    assert (ldtr.selector, ldtr.base, ldtr.limit, ldtr.attributes) == (
        selector,
        base,
        limit,
        attributes,
    )
    words = qemu_qwords(qemu, base, (limit + 1) // 8)
    assert_ldt_slots([s.to_dict() for s in ldt.slots], words, nm["ldt_call_gate_target"])
    assert str(ldt.slot(0x18).descriptor) == (
        f"call-gate64 sel=0x0008 offset={nm['ldt_call_gate_target']:#x} DPL=3 P"
    )


def test_ldt_through_the_agent_against_qemu(qemu, demo_kernel, nm):
    agent = AgentTarget(qemu.agent_endpoint, timeout=5)
    try:
        ldtr = agent.system_registers().ldtr  # rebuilt from the GDT descriptor sldt selects
    finally:
        agent.close()
    selector, base, limit, attributes = ldt_line(qemu.monitor("info registers"))
    assert ldtr is not None
    assert (ldtr.selector, ldtr.base, ldtr.limit, ldtr.attributes) == (
        selector,
        base,
        limit,
        attributes,
    )
    words = qemu_qwords(qemu, base, (limit + 1) // 8)
    out = kinspect("--agent", qemu.agent_endpoint, "--elf", demo_kernel, "gdt", "--json")
    assert out.returncode == 0, out.stderr
    document = json.loads(out.stdout)
    assert "agent" in document["target"]
    ldt = document["ldt"]
    assert (ldt["name"], ldt["base"], ldt["limit"], ldt["problems"]) == ("LDT", base, limit, [])
    assert_ldt_slots(ldt["slots"], words, nm["ldt_call_gate_target"])
    by_selector = {s["selector"]: s for s in document["gdt"]["slots"]}
    assert by_selector[GDT_LDT]["loaded_by"] == ["LDTR"]
    text = kinspect("--agent", qemu.agent_endpoint, "--elf", demo_kernel, "gdt")
    assert text.returncode == 0 and f"LDT base={base:#x} limit=0x27 (5 slots)" in text.stdout


def test_idt_handlers_are_the_isr_stubs(qemu, session, nm):
    idt = session.idt()
    truth = decode_info_registers(qemu.monitor("info registers"))
    assert (
        (idt.base, idt.limit)
        == (truth["idt"].base, truth["idt"].limit)
        == (nm["kernel_idt"], 0xFFF)
    )
    present = [e for e in idt.entries if e.gate.P]
    # exceptions, the 8259's IRQs, and the local APIC's vectors (SMP: the APs' timer, the
    # agent's TLB shootdown and hold IPIs, spurious)
    assert [e.gate.vector for e in present] == [*range(48), 0xF0, 0xF1, 0xF2, 0xFF]
    for entry in present:
        gate = entry.gate
        assert gate.offset == nm[f"isr_stub_{gate.vector}"], gate  # rebuilt from three parts
        assert entry.handler == f"isr_stub_{gate.vector}"
        assert gate.kind == "interrupt" and gate.selector == 0x08 and gate.reserved == 0
        assert gate.IST == (1 if gate.vector == 8 else 0)
    assert idt.entries[14].gate.name == "#PF"
    assert idt.handlers()[nm["isr_stub_14"]] == 14


def test_tss_stacks_are_mapped_where_the_kernel_put_them(qemu, session, nm):
    tss = session.tss()
    assert tss.tss.RSP[0] == nm["boot_stack_top"] and tss.tss.IST[0] == nm["df_stack_top"]
    stacks = {s.name: s for s in tss.stacks}
    assert stacks["RSP0"].mapped and stacks["IST1"].mapped
    assert "df_stack_top" in stacks["IST1"].symbol
    assert not stacks["IST2"].value and not stacks["IST2"].mapped
    assert tss.tss.iomap_base == 104 and "none" in tss.iomap
    # QEMU's own walk maps the top page of each stack, and not the guard page under IST1.
    leaves = {line.va for line in decode_info_tlb(qemu.monitor("info tlb"))}
    assert (nm["df_stack_top"] - 8) & ~0xFFF in leaves
    assert (nm["boot_stack_top"] - 8) & ~0xFFF in leaves
    assert nm["df_stack_guard"] not in leaves


def test_cli_gdt_idt_tss_json(qemu, demo_kernel, nm):
    target = ("--target", qemu.gdb_endpoint, "--elf", demo_kernel)
    gdt = json.loads(kinspect(*target, "gdt", "--json").stdout)
    assert gdt["command"] == "gdt"
    selector, base, limit, _attributes = ldt_line(qemu.monitor("info registers"))
    assert (gdt["ldt"]["base"], gdt["ldt"]["limit"]) == (base, limit) == (nm["kernel_ldt"], 0x27)
    assert_ldt_slots(
        gdt["ldt"]["slots"], qemu_qwords(qemu, base, (limit + 1) // 8), nm["ldt_call_gate_target"]
    )
    by_selector = {s["selector"]: s for s in gdt["gdt"]["slots"]}
    assert by_selector[8]["loaded_by"] == ["CS"] and by_selector[8]["descriptor"]["L"] is True
    assert by_selector[0x28]["descriptor"]["kind"] == "TSS64-busy"
    assert by_selector[selector]["loaded_by"] == ["LDTR"]
    assert by_selector[selector]["descriptor"]["kind"] == "LDT"
    idt = json.loads(kinspect(*target, "idt", "--json").stdout)
    assert idt["idt"]["gates"][14]["offset"] == nm["isr_stub_14"]
    assert idt["idt"]["gates"][14]["handler"] == "isr_stub_14"
    tss = json.loads(kinspect(*target, "tss", "--json").stdout)
    assert tss["tss"]["IST"][0] == nm["df_stack_top"] and tss["tss"]["stacks"][3]["mapped"]
    text = kinspect(*target, "gdt")
    assert text.returncode == 0 and "<- CS" in text.stdout and "TSS64-busy" in text.stdout
    assert "<- LDTR" in text.stdout and "call-gate64 sel=0x0008" in text.stdout
