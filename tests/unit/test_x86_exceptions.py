"""Error codes and the rule a #PF or a selector fault broke, from literal tables."""

import pytest

from kinspect.inspector.x86.control import PagingMode
from kinspect.inspector.x86.descriptors import decode_gdt
from kinspect.inspector.x86.exceptions import (
    decode_error_code,
    decode_segment_load,
    describe_vector,
    explain_double_fault,
    explain_page_fault,
    explain_selector_fault,
    validate_gate,
)
from kinspect.inspector.x86.paging import translate

from .ptbuilder import NX, RW, US, P, PageTables

MODE = PagingMode(levels=4, nxe=True, wp=True)
VA = 0xFFFFFFFF80200000


def walk(flags, *, va=VA, table_flags=P | RW | US, mode=MODE, mapped=True):
    pt = PageTables(table_flags=table_flags)
    if mapped:
        pt.map(va, 0x400000, flags=flags)
    else:
        pt.map(va + 0x1000, 0x400000, flags=flags)  # the tables, but not this page
    return translate(pt.memory.read_physical, pt.root, mode, va)


def test_vector_names_come_from_the_one_table():
    assert describe_vector(14) == "#PF (vector 14)"
    assert describe_vector(32) == "vector 32 (interrupt)"


@pytest.mark.parametrize(
    "value, flags, access",
    [
        (0x0, (), "read"),
        (0x2, ("W",), "write"),
        (0x3, ("P", "W"), "write"),
        (0x5, ("P", "U"), "read"),
        (0x11, ("P", "I"), "fetch"),
        (0x8029, ("P", "RSVD", "PK", "SGX"), "read"),
    ],
)
def test_page_fault_error_code(value, flags, access):
    error = decode_error_code(14, value)
    assert error.kind == "page-fault" and error.flags == flags and error.access == access


def test_page_fault_error_code_text_keeps_unknown_bits():
    text = str(decode_error_code(14, 0x10003))
    assert "P W" in text and "0x10000" in text


def test_selector_error_code():
    e = decode_error_code(13, 0x28)
    assert (e.kind, e.table, e.index, e.selector, e.flags) == ("selector", "GDT", 5, 0x28, ())
    e = decode_error_code(11, 0x15)
    assert (e.table, e.index, e.selector, e.flags) == ("LDT", 2, 0x14, ("EXT", "TI"))
    e = decode_error_code(13, 0x42)
    assert (e.table, e.index, e.selector) == ("IDT", 8, None)
    assert "IDT gate 8" in str(e)
    assert decode_error_code(8, 0).kind == "zero"
    assert decode_error_code(6, 0).kind == "none"


def test_not_present_names_the_level_and_entry():
    t = walk(P, mapped=False)
    cause = explain_page_fault(decode_error_code(14, 0x0), VA, t, MODE)
    assert cause.rule == "not-present" and cause.level == 1
    assert cause.step.entry_address == t.steps[-1].entry_address
    # The CPU said present (P=1) and the walk says not: removed after the fault.
    assert "removed after" in str(explain_page_fault(decode_error_code(14, 0x1), VA, t, MODE))


def test_not_present_at_the_top_level():
    pt = PageTables()
    t = translate(pt.memory.read_physical, pt.root, MODE, 0xFFFFA00000000000)
    cause = explain_page_fault(decode_error_code(14, 0x2), 0xFFFFA00000000000, t, MODE)
    assert cause.rule == "not-present" and cause.level == 4


def test_write_to_read_only_with_wp():
    t = walk(P | NX)
    cause = explain_page_fault(decode_error_code(14, 0x3), VA, t, MODE)
    assert cause.rule == "write-read-only" and cause.level == 1 and "CR0.WP" in str(cause)
    # Read-only at the PD level, not at the leaf: that is the level named.
    pt = PageTables(table_flags=P | RW | US)
    pt.map(VA, 0x400000, flags=P | RW)
    pt.set_flags(VA, 2, clear=RW)
    t = translate(pt.memory.read_physical, pt.root, MODE, VA)
    assert explain_page_fault(decode_error_code(14, 0x3), VA, t, MODE).level == 2
    # Without CR0.WP a supervisor write is allowed: the walk allows it now.
    nowp = PagingMode(levels=4, nxe=True, wp=False)
    assert explain_page_fault(decode_error_code(14, 0x3), VA, t, nowp).rule == "allowed-now"


def test_user_access_to_supervisor_page_names_the_first_level_without_us():
    t = walk(P | RW, table_flags=P | RW)
    cause = explain_page_fault(decode_error_code(14, 0x5), VA, t, MODE)
    assert cause.rule == "user-supervisor" and cause.level == 4


def test_fetch_from_nx_page():
    t = walk(P | RW | NX)
    cause = explain_page_fault(decode_error_code(14, 0x11), VA, t, MODE)
    assert cause.rule == "nx" and cause.level == 1


def test_smep_and_smap():
    mode = PagingMode(levels=4, nxe=True, wp=True, smep=True, smap=True)
    t = walk(P | RW | US, va=0x400000)
    assert explain_page_fault(decode_error_code(14, 0x11), 0x400000, t, mode).rule == "smep"
    cause = explain_page_fault(decode_error_code(14, 0x1), 0x400000, t, mode, rflags=0x2)
    assert cause.rule == "smap" and "RFLAGS.AC=0" in str(cause)
    # With RFLAGS.AC set, an explicit supervisor read of a user page is allowed.
    allowed = explain_page_fault(decode_error_code(14, 0x1), 0x400000, t, mode, rflags=1 << 18)
    assert allowed.rule == "allowed-now"


def test_protection_key_and_reserved_bit():
    mode = PagingMode(levels=4, nxe=True, wp=True, pke=True)
    t = walk(P | RW | US | (3 << 59), va=0x400000, mode=mode)
    cause = explain_page_fault(decode_error_code(14, 0x27), 0x400000, t, mode, pkru=0b11 << 6)
    assert cause.rule == "protection-key" and "key 3" in str(cause) and "AD=1 WD=1" in str(cause)
    t = walk(P | RW | (1 << 51), mode=PagingMode(levels=4, maxphyaddr=40))
    cause = explain_page_fault(decode_error_code(14, 0x9), VA, t, MODE)
    assert cause.rule == "reserved-bit" and cause.level == 1


def test_access_allowed_now():
    t = walk(P | RW)
    cause = explain_page_fault(decode_error_code(14, 0x3), VA, t, MODE)
    assert cause.rule == "allowed-now" and "stale TLB" in str(cause)
    assert explain_page_fault(decode_error_code(14, 0x2), VA, t, MODE).rule == "allowed-now"


@pytest.mark.parametrize(
    "code, register",
    [
        (bytes.fromhex("8ed8"), "DS"),
        (bytes.fromhex("668ed0"), "SS"),
        (bytes.fromhex("0fb211"), "SS"),
        (bytes.fromhex("0f00d8"), "TR"),
        (bytes.fromhex("48cf"), "CS"),
        (bytes.fromhex("90"), None),
        (b"", None),
    ],
)
def test_segment_load_register(code, register):
    assert decode_segment_load(code) == register


def _demo_gdt():
    # null, code 0x08 (L), data 0x10, then a 16-byte TSS at 0x18
    raw = [0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF, 0x80008901C0000067, 0xFFFFFFFF]
    data = b"".join(v.to_bytes(8, "little") for v in raw)
    return decode_gdt(data, 0xFFFFFFFF8019C070)


def test_selector_fault_names_the_descriptor_and_what_is_wrong():
    gdt = _demo_gdt()
    cause = explain_selector_fault(decode_error_code(13, 0x18), gdt=gdt, register="DS")
    assert cause.descriptor.kind == "TSS64-avail"
    assert "DS must select a data or readable code segment" in str(cause)
    past = explain_selector_fault(decode_error_code(13, 0x48), gdt=gdt, register="DS")
    assert "past the GDT limit" in str(past)
    upper = explain_selector_fault(decode_error_code(13, 0x20), gdt=gdt)
    assert "upper half" in str(upper)


def test_double_fault_stack_overflow():
    top = 0xFFFFFFFF80181000
    stacks = {"RSP0": top, "IST1": 0xFFFFFFFF80186000}
    rsp = 0xFFFFFFFF8017D000 + 0x40
    result = explain_double_fault(
        rsp, stacks, rsp_mapped=True, below_mapped=False, cr2=0xFFFFFFFF8017CFF8
    )
    assert result.stack == "RSP0" and result.guard_start == 0xFFFFFFFF8017C000
    assert "ran into the unmapped page" in str(result)
    fine = explain_double_fault(top - 0x100, stacks, rsp_mapped=True, below_mapped=True)
    assert fine.guard_start is None and "no stack overflow" in str(fine)


def _gate(vector=8, *, offset=0xFFFFFFFF8010A8F0, selector=0x08, type_=0xE, present=True):
    low = (offset & 0xFFFF) | (selector << 16) | (type_ << 40) | (int(present) << 47)
    low |= ((offset >> 16) & 0xFFFF) << 48
    data = low.to_bytes(8, "little") + (offset >> 32).to_bytes(8, "little")
    from kinspect.inspector.x86.descriptors import decode_gate

    return decode_gate(data, vector)


def test_validate_gate():
    gdt = _demo_gdt()
    assert validate_gate(_gate(), gdt) is None
    assert "not present (#NP)" in validate_gate(_gate(present=False), gdt)
    assert "past the IDT limit" in validate_gate(None, gdt)
    assert "not an interrupt or trap gate" in validate_gate(_gate(type_=0xC), gdt)
    assert "null code selector" in validate_gate(_gate(selector=0), gdt)
    assert "CS must select a code segment, this is data" in validate_gate(_gate(selector=0x10), gdt)
    assert "past the GDT limit" in validate_gate(_gate(selector=0x48), gdt)
    assert "not canonical" in validate_gate(_gate(offset=0x0000900000000000), gdt)
