"""QEMU's exception log (-d int,cpu_reset) parsed from lines this QEMU wrote (fixtures)."""

from pathlib import Path

from kinspect.inspector.targets.qemu_log import (
    Delivery,
    ExceptionCheck,
    TripleFault,
    exception_chain,
    last_delivery,
    parse_qemu_log,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "qemu-int"


def events(name):
    return parse_qemu_log((FIXTURES / f"{name}.log").read_text())


def test_page_fault_line_and_its_dump():
    ev = events("pf-write-ro")
    assert ev[0] == ExceptionCheck(1, None, 0xE)
    d = ev[1]
    assert isinstance(d, Delivery)
    assert (d.vector, d.error_code, d.software, d.cpl) == (0xE, 0x3, False, 0)
    assert (d.cs, d.rip, d.ss, d.rsp) == (0x08, 0xFFFFFFFF8010098C, 0x10, 0xFFFFFFFF80180FB8)
    assert d.cr2 == 0xFFFFFFFF8010B740
    assert d.registers["cr2"] == d.cr2 and d.registers["cr0"] == 0x80010011
    assert d.registers["rax"] == 0xFFFFFFFF8010B740 and d.registers["efer"] == 0xD00
    assert exception_chain(ev) is None


def test_double_fault_from_a_stack_overflow():
    ev = events("df-stack")
    kinds = [type(e).__name__ for e in ev]
    assert kinds == ["ExceptionCheck", "Delivery", "ExceptionCheck", "Delivery"]
    assert ev[2] == ExceptionCheck(ev[2].line, 0xE, 0xE)
    df = last_delivery(ev)
    assert df.vector == 8 and df.cr2 is None
    # The second #PF has no line of its own: its CR2 is in the #DF's dump.
    assert df.registers["cr2"] == 0xFFFFFFFF8017CFB8
    assert last_delivery(ev, 14).cr2 == 0xFFFFFFFF8017CFC0


def test_triple_fault_chain_from_an_unmapped_idt():
    ev = events("triple-idt")
    assert isinstance(ev[-1], TripleFault)
    chain = exception_chain(ev)
    assert [d.vector for d in chain.deliveries] == [6, 0xE, 8]
    assert chain.final == 0xE and chain.triple
    assert chain.raised == (6, 0xE, 0xE)  # the #DF came from a #PF during the #PF's delivery
    assert chain.deliveries[1].cr2 == 0xFFFFFFFF8017C060  # IDT base + 6 * 16
    assert chain.deliveries[2].registers["cr2"] == 0xFFFFFFFF8017C0E0  # + 14 * 16
    assert {d.rip for d in chain.deliveries} == {0xFFFFFFFF801009CD}


def test_triple_fault_chain_starts_at_the_interrupt():
    chain = exception_chain(events("seed-lowgdt"))
    assert [d.vector for d in chain.deliveries] == [0x20, 0xE, 8]
    assert chain.raised == (None, 0xE, 0xE)  # an interrupt: no check_exception before it
    assert chain.deliveries[1].cr2 == 0x19C078  # the GDT's physical address + 8 (CS)


def test_unknown_lines_and_garbage_are_skipped():
    assert parse_qemu_log("") == ()
    assert parse_qemu_log("SMM: enter\nServicing hardware INT=0x08\nv=zz\n") == ()
    assert parse_qemu_log("Triple fault\n") == (TripleFault(1),)
    chain = exception_chain(parse_qemu_log("Triple fault\n"))
    assert chain.deliveries == () and chain.final is None
