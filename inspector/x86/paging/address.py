"""Virtual addresses under 4- and 5-level paging: canonical form, table indices, halves.

The one canonical-address check kinspect has, parameterized by the paging
mode: 4-level paging translates 48-bit addresses, 5-level (CR4.LA57) 57-bit
ones, and bits 63 down to the top translated bit must all be equal (SDM
Vol. 3A, 3.3.7.1 and 4.5). A reader that does not know the mode checks for
5 levels, the widest, and lets the walk refuse the rest.
"""

from __future__ import annotations

from kinspect.inspector.errors import FaultError
from kinspect.inspector.x86.paging.entry import ENTRIES_PER_TABLE, LEVEL_SHIFT

__all__ = [
    "canonicalize",
    "check_canonical",
    "entry_span",
    "higher_half",
    "is_canonical",
    "level_index",
    "virtual_address_bits",
]

_U64 = (1 << 64) - 1


def virtual_address_bits(levels: int = 4) -> int:
    """Width of a linear address: 57 with 5 levels (LA57), else 48."""
    return 57 if levels == 5 else 48


def is_canonical(va: int, levels: int = 4) -> bool:
    """Whether ``va`` is canonical: bits 63..47 (63..56 with 5 levels) all equal."""
    top = virtual_address_bits(levels) - 1
    upper = va >> top
    return upper == 0 or upper == (1 << (64 - top)) - 1


def check_canonical(va: int, levels: int = 4) -> None:
    """Raise :class:`FaultError` for an address that is not canonical under ``levels``."""
    if not is_canonical(va, levels):
        top = virtual_address_bits(levels) - 1
        raise FaultError(va, f"non-canonical address (bits 63:{top} must all equal bit {top})")


def canonicalize(va: int, levels: int = 4) -> int:
    """Sign-extend the low 48 (or 57) bits of ``va`` to a canonical 64-bit address."""
    bits = virtual_address_bits(levels)
    va &= (1 << bits) - 1
    if va >> (bits - 1):
        va |= _U64 & ~((1 << bits) - 1)
    return va


def higher_half(levels: int = 4) -> int:
    """The first address of the upper (kernel) half: 0xffff800000000000 or 0xff00000000000000."""
    return canonicalize(1 << (virtual_address_bits(levels) - 1), levels)


def level_index(va: int, level: int) -> int:
    """Index (0..511) of the entry that translates ``va`` in the table at ``level`` (5..1)."""
    return (va >> LEVEL_SHIFT[level]) & (ENTRIES_PER_TABLE - 1)


def entry_span(level: int) -> int:
    """Bytes of address space one entry at ``level`` covers: 4 KiB at 1 ... 256 TiB at 5."""
    return 1 << LEVEL_SHIFT[level]
