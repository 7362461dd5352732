"""GDT, IDT and TSS of the live demo kernel against QEMU's monitor (through QMP, not gdb)
and binutils' nm (not our ELF reader)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from inspector.targets.qemu_text import decode_info_registers, decode_info_tlb

pytestmark = pytest.mark.integration

BUSY = 0x200  # the busy bit of a TSS type, in QEMU's attribute layout


@pytest.fixture(scope="module")
def nm(demo_kernel) -> dict[str, int]:
    out = subprocess.run(["nm", demo_kernel], capture_output=True, text=True, check=True).stdout
    return {
        parts[2]: int(parts[0], 16) for parts in map(str.split, out.splitlines()) if len(parts) == 3
    }


def kinspect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "inspector.cli", *args], capture_output=True, text=True, timeout=60
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
    assert session.ldt() is None and truth["ldt"].selector == 0


def test_idt_handlers_are_the_isr_stubs(qemu, session, nm):
    idt = session.idt()
    truth = decode_info_registers(qemu.monitor("info registers"))
    assert (
        (idt.base, idt.limit)
        == (truth["idt"].base, truth["idt"].limit)
        == (nm["kernel_idt"], 0xFFF)
    )
    present = [e for e in idt.entries if e.gate.P]
    assert [e.gate.vector for e in present] == list(range(48))
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
    assert gdt["command"] == "gdt" and gdt["ldt"] is None
    by_selector = {s["selector"]: s for s in gdt["gdt"]["slots"]}
    assert by_selector[8]["loaded_by"] == ["CS"] and by_selector[8]["descriptor"]["L"] is True
    assert by_selector[0x28]["descriptor"]["kind"] == "TSS64-busy"
    idt = json.loads(kinspect(*target, "idt", "--json").stdout)
    assert idt["idt"]["gates"][14]["offset"] == nm["isr_stub_14"]
    assert idt["idt"]["gates"][14]["handler"] == "isr_stub_14"
    tss = json.loads(kinspect(*target, "tss", "--json").stdout)
    assert tss["tss"]["IST"][0] == nm["df_stack_top"] and tss["tss"]["stacks"][3]["mapped"]
    text = kinspect(*target, "gdt")
    assert text.returncode == 0 and "<- CS" in text.stdout and "TSS64-busy" in text.stdout
