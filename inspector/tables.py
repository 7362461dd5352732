"""The descriptor tables the CPU is using: GDT, LDT, IDT and TSS, read and explained.

Analysis on top of the pure decoders in :mod:`inspector.x86.descriptors`:
these functions take a ``read_virtual(address, size)`` callable and the
system registers (GDTR, IDTR, TR, LDTR), never a target, and add what the
decoders cannot know alone: handler names, whether the TSS's stacks are
mapped, which segment registers point where. The session calls them.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InspectorError
from .symbols import SymbolTable
from .targets.base import DescriptorTableRegister, SegmentRegister
from .x86.descriptors import (
    DescriptorTable,
    Gate,
    Tss64,
    decode_gdt,
    decode_idt,
    decode_tss64,
)
from .x86.paging import Range, RangeList

__all__ = [
    "IdtEntry",
    "InterruptTable",
    "StackPointer",
    "TaskState",
    "describe_gdt",
    "describe_idt",
    "describe_ldt",
    "describe_tss",
    "mapping_lookup",
]

ReadVirtual = Callable[[int, int], bytes]
MappingLookup = Callable[[int], "str | None"]


def mapping_lookup(ranges: Sequence[Range]) -> MappingLookup:
    """``address -> "start-end RW NX"`` for the mapped range holding it, or None.

    The walk's ranges (a :class:`RangeList`) give their starts as an array: only the
    ranges looked up become records (a Linux map has 65,000)."""
    starts = ranges.start.tolist() if isinstance(ranges, RangeList) else [r.start for r in ranges]

    def lookup(address: int) -> str | None:
        index = bisect.bisect_right(starts, address) - 1
        if index < 0 or address >= ranges[index].end:
            return None
        r = ranges[index]
        p = r.permissions
        rights = ("RW" if p.writable else "ro") + (" x" if p.executable else " NX")
        return f"{r.start:#x}-{r.end:#x} {rights}"

    return lookup


def _read(read_virtual: ReadVirtual, base: int, size: int, what: str) -> bytes:
    try:
        return read_virtual(base, size)
    except InspectorError as exc:
        raise InspectorError(f"cannot read the {what} at {base:#x}: {exc}") from exc


def describe_gdt(
    read_virtual: ReadVirtual,
    gdtr: DescriptorTableRegister,
    loaded: Mapping[str, int],
    *,
    long_mode: bool = True,
) -> DescriptorTable:
    """The GDT at GDTR with the slots ``loaded`` (``CS``..``GS``, ``TR``, ``LDTR``) point at."""
    data = _read(read_virtual, gdtr.base, gdtr.limit + 1, "GDT")
    return decode_gdt(data, gdtr.base, long_mode=long_mode, loaded=loaded)


def describe_ldt(
    read_virtual: ReadVirtual,
    ldtr: SegmentRegister | None,
    loaded: Mapping[str, int],
    *,
    long_mode: bool = True,
) -> DescriptorTable | None:
    """The LDT that LDTR holds, or None when LDTR is null."""
    if ldtr is None or not ldtr.selector >> 2:
        return None
    data = _read(read_virtual, ldtr.base, ldtr.limit + 1, "LDT")
    return decode_gdt(data, ldtr.base, long_mode=long_mode, loaded=loaded, name="LDT")


@dataclass(frozen=True, slots=True)
class IdtEntry:
    """A gate and the symbol its handler address resolves to."""

    gate: Gate
    handler: str | None

    def __str__(self) -> str:
        text = str(self.gate)
        return f"{text}  {self.handler}" if self.handler and self.gate.P else text

    def to_dict(self) -> dict[str, Any]:
        return {**self.gate.to_dict(), "handler": self.handler}


@dataclass(frozen=True, slots=True)
class InterruptTable:
    """The IDT at IDTR, gate by gate."""

    base: int
    limit: int
    entries: tuple[IdtEntry, ...]

    def handlers(self) -> dict[int, int]:
        """Handler address to vector, for present gates (the unwinder's IDT lookup)."""
        result: dict[int, int] = {}
        for entry in self.entries:
            if entry.gate.P:
                result.setdefault(entry.gate.offset, entry.gate.vector)
        return result

    def __str__(self) -> str:
        present = sum(1 for e in self.entries if e.gate.P)
        lines = [f"IDT base={self.base:#x} limit={self.limit:#x} ({present} present gates)"]
        lines.extend(str(e) for e in self.entries if e.gate.P or e.gate.raw_low or e.gate.raw_high)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "limit": self.limit,
            "gates": [e.to_dict() for e in self.entries],
        }


def describe_idt(
    read_virtual: ReadVirtual,
    idtr: DescriptorTableRegister,
    symbols: SymbolTable | None,
    *,
    long_mode: bool = True,
) -> InterruptTable:
    data = _read(read_virtual, idtr.base, idtr.limit + 1, "IDT")
    entries = []
    for gate in decode_idt(data, long_mode=long_mode):
        handler = None
        if symbols is not None and gate.P and symbols.symbolize(gate.offset):
            handler = symbols.format_address(gate.offset)
        entries.append(IdtEntry(gate, handler))
    return InterruptTable(idtr.base, idtr.limit, tuple(entries))


@dataclass(frozen=True, slots=True)
class StackPointer:
    """One of the TSS's stack pointers (RSP0-2, IST1-7) and what it points into.

    ``mapping`` is the mapped range holding the stack's top quadword
    (``value - 8``, the first one a push writes), None when unmapped;
    ``symbol`` names ``value`` when the ELF knows it (``df_stack_top``).
    """

    name: str
    value: int
    mapping: str | None
    symbol: str | None

    @property
    def mapped(self) -> bool:
        return self.mapping is not None

    def __str__(self) -> str:
        if not self.value:
            return f"{self.name:<5} 0 (unused)"
        where = f" {self.symbol}" if self.symbol else ""
        state = f"mapped {self.mapping}" if self.mapping else "NOT MAPPED"
        return f"{self.name:<5} {self.value:#018x}{where}  {state}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "mapped": self.mapped,
            "mapping": self.mapping,
            "symbol": self.symbol,
        }


@dataclass(frozen=True, slots=True)
class TaskState:
    """The TSS TR selects: where it is, its fields, and its stacks."""

    selector: int
    base: int
    limit: int
    kind: str
    tss: Tss64
    stacks: tuple[StackPointer, ...]

    @property
    def iomap(self) -> str:
        """Where the I/O permission bitmap is, or why there is none."""
        base = self.tss.iomap_base
        if base > self.limit:
            return f"none (base {base:#x} is past the limit {self.limit:#x})"
        return f"at TSS+{base:#x} ({self.base + base:#x}), {self.limit - base + 1} bytes"

    def __str__(self) -> str:
        lines = [
            f"TR={self.selector:#06x} {self.kind} base={self.base:#x} limit={self.limit:#x}",
            *(str(s) for s in self.stacks),
            f"I/O permission bitmap: {self.iomap}",
        ]
        if self.tss.reserved:
            lines.append(f"reserved fields hold {self.tss.reserved:#x}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "selector": self.selector,
            "base": self.base,
            "limit": self.limit,
            "kind": self.kind,
            **self.tss.to_dict(),
            "iomap": self.iomap,
            "stacks": [s.to_dict() for s in self.stacks],
        }


def describe_tss(
    read_virtual: ReadVirtual,
    tr: SegmentRegister | None,
    gdt: DescriptorTable,
    symbols: SymbolTable | None,
    mapping: MappingLookup | None,
) -> TaskState:
    """The 64-bit TSS TR selects, with each stack pointer's mapping.

    The base and limit are TR's hidden part when the target gives it (what
    the CPU uses), else the GDT descriptor's.
    """
    if tr is None or not tr.selector >> 3:
        raise InspectorError("TR is null: no TSS is loaded")
    slot = gdt.slot(tr.selector)
    descriptor = slot.descriptor if slot else None
    if descriptor is None or not descriptor.is_tss:
        kind = descriptor.kind if descriptor else "nothing"
        raise InspectorError(f"TR={tr.selector:#06x} selects {kind} in the GDT, not a TSS")
    base, limit = (
        (tr.base, tr.limit)
        if tr.base or tr.limit
        else (
            descriptor.base,
            descriptor.effective_limit,
        )
    )
    tss = decode_tss64(_read(read_virtual, base, 104, "TSS"))
    stacks = []
    for name, value in [(f"RSP{i}", v) for i, v in enumerate(tss.RSP)] + [
        (f"IST{i + 1}", v) for i, v in enumerate(tss.IST)
    ]:
        region = None
        symbol = None
        if value:
            if mapping is not None:
                region = mapping(value - 8)
            if symbols is not None:
                symbol = " = ".join(symbols.names_at(value)) or None
        stacks.append(StackPointer(name, value, region, symbol))
    return TaskState(tr.selector, base, limit, descriptor.kind, tss, tuple(stacks))
