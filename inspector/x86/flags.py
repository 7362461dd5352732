"""Bit-field tables and the one flag formatter kinspect uses.

Registers and table entries are described by tables of :class:`BitField`
(name, position, width), the way the Intel SDM draws them. Text comes from
:func:`format_flags`, never from :class:`enum.IntFlag`, because ``IntFlag``
prints bits it does not know in decimal and we want them in hex, kept and
visible (``PE|MP|0x100``), since an unknown bit is a fact about the target.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "BitField",
    "fields_mask",
    "format_flags",
]


@dataclass(frozen=True, slots=True)
class BitField:
    """One named field of a register or table entry, by its SDM name.

    ``lsb`` is the lowest bit and ``width`` the number of bits. A field with
    ``as_address`` holds an address in place (its value is the masked bits,
    not shifted down) and prints in hex, like CR3's page-table base. A
    ``hidden`` field is architectural but fixed (RFLAGS bit 1 is always 1):
    it is known, so never reported as unknown, and never printed.
    """

    name: str
    lsb: int
    width: int = 1
    description: str = ""
    as_address: bool = False
    hidden: bool = False

    @property
    def mask(self) -> int:
        """The field's bits in place."""
        return ((1 << self.width) - 1) << self.lsb

    def extract(self, value: int) -> int:
        """The field's value in ``value``: shifted down, or in place for addresses."""
        if self.as_address:
            return value & self.mask
        return (value >> self.lsb) & ((1 << self.width) - 1)


def fields_mask(fields: Iterable[BitField]) -> int:
    """All bits that ``fields`` describe, known ones, set or not."""
    mask = 0
    for field in fields:
        mask |= field.mask
    return mask


def format_flags(value: int, fields: Iterable[BitField], *, sep: str = "|") -> str:
    """Name the set fields of ``value``, then any bits no field describes, in hex.

    Single-bit fields print by name when set (``PE``); multi-bit fields print
    as ``NAME=value`` when non-zero (``IOPL=3``, addresses in hex:
    ``BASE=0x487c000``). Bits outside every field are kept and printed last
    as one hex number, so ``format_flags(0x80000133, CR0_FIELDS)`` is
    ``PE|MP|ET|NE|PG|0x100``. An all-zero value gives ``""``.
    """
    fields = tuple(fields)
    parts: list[str] = []
    for field in sorted(fields, key=lambda f: f.lsb):
        if field.hidden:
            continue
        bits = field.extract(value)
        if not bits:
            continue
        if field.width == 1:
            parts.append(field.name)
        elif field.as_address:
            parts.append(f"{field.name}={bits:#x}")
        else:
            parts.append(f"{field.name}={bits}")
    unknown = value & ~fields_mask(fields)
    if unknown:
        parts.append(f"{unknown:#x}")
    return sep.join(parts)
