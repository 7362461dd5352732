"""Parse the text QEMU's human monitor prints (pure functions, no I/O).

``info registers`` is the only place a QEMU gdb session can learn GDTR, IDTR,
TR and LDTR; ``info memory_size_summary`` tells how much RAM the guest has, so
physical reads past the end of RAM (which QEMU answers with zeros) can be
refused. Tests also parse ``info tlb`` and ``info mem`` as the independent
truth for page-table walks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from ..errors import DecodeError
from .base import DescriptorTableRegister, SegmentRegister, SystemRegisters

__all__ = [
    "TlbLine",
    "decode_info_mem",
    "decode_info_registers",
    "decode_info_tlb",
    "decode_memory_size_summary",
    "system_registers_from_info",
]

_PAIR = re.compile(r"\b([A-Z][A-Z0-9]*)\s*=\s*([0-9a-fA-F]+)\b")
_SEGMENT = re.compile(
    r"^(ES|CS|SS|DS|FS|GS|LDT|TR)\s*=\s*([0-9a-f]{4})\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)",
    re.M,
)
_TABLE = re.compile(r"^(GDT|IDT)\s*=\s+([0-9a-f]+)\s+([0-9a-f]+)", re.M)


def decode_info_registers(text: str) -> dict[str, object]:
    """Return the first CPU's registers from ``info registers`` text.

    Plain registers map to ints (``rip``, ``cr0``, ``efer``, ...); segments to
    :class:`SegmentRegister`; ``gdt``/``idt`` to :class:`DescriptorTableRegister`.
    """
    cpus = re.split(r"^CPU#\d+\s*$", text, flags=re.M)
    body = next((part for part in cpus if part.strip()), "")
    if not body:
        raise DecodeError(0, "no registers in the monitor's output")
    result: dict[str, object] = {}
    for match in _SEGMENT.finditer(body):
        name = match.group(1).lower()
        selector, base, limit, attributes = (int(match.group(i), 16) for i in range(2, 6))
        result[name] = SegmentRegister(selector, base, limit, attributes)
    for match in _TABLE.finditer(body):
        result[match.group(1).lower()] = DescriptorTableRegister(
            int(match.group(2), 16), int(match.group(3), 16)
        )
    for line in body.splitlines():
        if re.match(r"^(ES|CS|SS|DS|FS|GS|LDT|TR|GDT|IDT)\s*=", line) or line.startswith(
            ("FPR", "XMM", "YMM", "ZMM", "FCW")
        ):
            continue
        for name, value in _PAIR.findall(line):
            key = "rflags" if name in ("RFL", "EFL") else name.lower()
            result.setdefault(key, int(value, 16))
    if "gdt" not in result or "idt" not in result:
        raise DecodeError(0, "the monitor's output has no GDT= or IDT= line")
    return result


def system_registers_from_info(text: str) -> SystemRegisters:
    regs = decode_info_registers(text)
    gdt, idt = regs["gdt"], regs["idt"]
    assert isinstance(gdt, DescriptorTableRegister) and isinstance(idt, DescriptorTableRegister)
    tr = regs.get("tr")
    ldt = regs.get("ldt")
    return SystemRegisters(
        gdtr=gdt,
        idtr=idt,
        tr=tr if isinstance(tr, SegmentRegister) else None,
        ldtr=ldt if isinstance(ldt, SegmentRegister) else None,
    )


def decode_memory_size_summary(text: str) -> int | None:
    """RAM size in bytes from ``info memory_size_summary`` (None if absent)."""
    base = re.search(r"base memory:\s*(\d+)", text)
    if not base:
        return None
    plugged = re.search(r"plugged memory:\s*(\d+)", text)
    return int(base.group(1)) + (int(plugged.group(1)) if plugged else 0)


class TlbLine(tuple[int, int, str]):
    """(va, pa, flags) of one ``info tlb`` line; flags is the 9-letter string."""

    __slots__ = ()

    @property
    def va(self) -> int:
        return self[0]

    @property
    def pa(self) -> int:
        return self[1]

    @property
    def flags(self) -> str:
        return self[2]


#: A line of ``info tlb`` and of ``info mem``: compiled by the first decode (the tests' and
#: the benchmark's oracles; no command reads them).
_TLB = r"^([0-9a-f]{16}): ([0-9a-f]{16}) ([-XGPDACTUW]{9})\s*$"
_MEM = r"^([0-9a-f]{16})-([0-9a-f]{16}) ([0-9a-f]{16}) ([-u][-r][-w])\s*$"


def decode_info_tlb(text: str) -> Iterator[TlbLine]:
    """Each leaf QEMU's ``info tlb`` lists: flags ``XGPDACTUW`` (NX G PS D A PCD PWT U W)."""
    line_match = re.compile(_TLB).match
    for line in text.splitlines():
        match = line_match(line.strip())
        if match:
            yield TlbLine((int(match.group(1), 16), int(match.group(2), 16), match.group(3)))


def decode_info_mem(text: str) -> Iterator[tuple[int, int, str]]:
    """Each range of ``info mem``: (start, end, "urw")."""
    line_match = re.compile(_MEM).match
    for line in text.splitlines():
        match = line_match(line.strip())
        if match:
            yield int(match.group(1), 16), int(match.group(2), 16), match.group(4)
