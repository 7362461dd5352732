"""Paging-structure entries: their bits, their decoding, the rights they give.

Names follow the Intel SDM, Vol. 3A, chapter 4 (4.5, Tables 4-15 to 4-20):
levels 5=PML5, 4=PML4, 3=PDPT, 2=PD, 1=PT, and the entry bits P RW US PWT
PCD A D PS G PAT NX. Pure: integers and bytes in, frozen records out.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kinspect.inspector.errors import InspectorError
from kinspect.inspector.numbers import format_size
from kinspect.inspector.x86.flags import BitField, format_flags

if TYPE_CHECKING:
    from kinspect.inspector.x86.control import PagingMode

__all__ = [
    "ENTRIES_PER_TABLE",
    "ENTRY_FIELDS",
    "LEAF_SIZES",
    "LEVEL_NAMES",
    "LEVEL_SHIFT",
    "PAGE_SIZE",
    "PageTableEntry",
    "Permissions",
    "ReadPhysical",
    "decode_entry",
    "decode_table",
    "format_size",
]

ReadPhysical = Callable[[int, int], bytes]
"""``read_physical(address, size) -> bytes``; raises FaultError for unreadable memory."""

PAGE_SIZE = 4096
ENTRIES_PER_TABLE = 512
LEVEL_NAMES: dict[int, str] = {5: "PML5", 4: "PML4", 3: "PDPT", 2: "PD", 1: "PT"}
"""SDM names of the table at each level (an entry at level 2 is a "PD entry")."""

LEAF_SIZES: dict[int, int] = {1: 1 << 12, 2: 1 << 21, 3: 1 << 30}
"""Bytes mapped by a leaf at each level: 4 KiB, 2 MiB, 1 GiB."""

LEVEL_SHIFT: dict[int, int] = {5: 48, 4: 39, 3: 30, 2: 21, 1: 12}
"""Lowest virtual-address bit that indexes the table at each level (9 bits a level)."""

_U64 = (1 << 64) - 1
_HEX_FIELDS = frozenset(
    {"va", "pa", "size", "phys", "start", "end", "page_size", "table_address", "entry_address"}
)


def _repr(record: Any) -> str:
    """Constructor-style repr with addresses and sizes in hex, so they can be read."""
    parts = []
    for name in record.__slots__:
        value = getattr(record, name)
        if name in _HEX_FIELDS and isinstance(value, int):
            parts.append(f"{name}={value:#x}")
        elif name == "table_path":
            parts.append(f"table_path=({', '.join(f'{a:#x}' for a in value)},)")
        else:
            parts.append(f"{name}={value!r}")
    return f"{type(record).__name__}({', '.join(parts)})"


_P = 1 << 0
_RW = 1 << 1
_US = 1 << 2
_PWT = 1 << 3
_PCD = 1 << 4
_A = 1 << 5
_D = 1 << 6
_PS = 1 << 7
_G = 1 << 8
_PAT_LARGE = 1 << 12
_NX = 1 << 63
_AVAILABLE = (0b111 << 9) | (0x7F << 52)
_PKEY_SHIFT = 59
_PKEY_MASK = 0xF << _PKEY_SHIFT
_ADDRESS_BITS = ((1 << 52) - 1) & ~0xFFF

ENTRY_FIELDS: dict[bool, tuple[BitField, ...]] = {
    # Tables (non-leaf entries) and 4 KiB leaves: bit 7 is PS, or PAT in a PT.
    False: (
        BitField("P", 0, description="Present"),
        BitField("RW", 1, description="Read/write"),
        BitField("US", 2, description="User/supervisor"),
        BitField("PWT", 3, description="Page-level write-through"),
        BitField("PCD", 4, description="Page-level cache disable"),
        BitField("A", 5, description="Accessed"),
        BitField("D", 6, description="Dirty"),
        BitField("PS", 7, description="Page size (maps a page, not a table)"),
        BitField("G", 8, description="Global"),
        BitField("AVL", 9, 3, "Ignored, available to software"),
        BitField("ADDR", 12, 40, "Physical address", as_address=True),
        BitField("AVL_HI", 52, 7, "Ignored, available to software"),
        BitField("PK", 59, 4, "Protection key"),
        BitField("NX", 63, description="Execute-disable (XD)"),
    ),
    # 2 MiB and 1 GiB leaves: bit 7 is PS, bit 12 is PAT.
    True: (
        BitField("P", 0, description="Present"),
        BitField("RW", 1, description="Read/write"),
        BitField("US", 2, description="User/supervisor"),
        BitField("PWT", 3, description="Page-level write-through"),
        BitField("PCD", 4, description="Page-level cache disable"),
        BitField("A", 5, description="Accessed"),
        BitField("D", 6, description="Dirty"),
        BitField("PS", 7, description="Page size (maps a page, not a table)"),
        BitField("G", 8, description="Global"),
        BitField("AVL", 9, 3, "Ignored, available to software"),
        BitField("PAT", 12, description="Page attribute table index bit"),
        BitField("ADDR", 13, 39, "Physical address", as_address=True),
        BitField("AVL_HI", 52, 7, "Ignored, available to software"),
        BitField("PK", 59, 4, "Protection key"),
        BitField("NX", 63, description="Execute-disable (XD)"),
    ),
}
"""Bit tables used to print an entry, keyed by "is a large (PS=1) leaf"."""

_PT_FIELDS = tuple(
    BitField("PAT", 7, description="Page attribute table index bit") if f.name == "PS" else f
    for f in ENTRY_FIELDS[False]
)


def _reserved_mask(level: int, leaf: bool, *, nxe: bool, maxphyaddr: int) -> int:
    """Bits that must be 0 in a present entry (SDM Vol. 3A, 4.5, Tables 4-15..4-20)."""
    mask = _ADDRESS_BITS & ~((1 << maxphyaddr) - 1)
    if not nxe:
        mask |= _NX
    if level >= 4:
        mask |= _PS
    elif leaf and level == 2:
        mask |= ((1 << 21) - 1) & ~((1 << 13) - 1)  # bits 20:13
    elif leaf and level == 3:
        mask |= ((1 << 30) - 1) & ~((1 << 13) - 1)  # bits 29:13
    return mask


def _address_mask(level: int, leaf: bool, maxphyaddr: int) -> int:
    mask = ((1 << maxphyaddr) - 1) & ~0xFFF
    if leaf:
        mask &= ~(LEAF_SIZES[level] - 1)
    return mask


@dataclass(frozen=True, slots=True)
class PageTableEntry:
    """One 64-bit paging-structure entry at a given level, decoded.

    ``address`` is the next table's physical address, or for a leaf the page
    frame aligned to the leaf size, both cut at MAXPHYADDR. ``reserved`` is
    the mask of reserved bits that are set: non-zero means the CPU would
    raise #PF with RSVD=1 on any walk through this entry. The bit accessors
    (``present``, ``rw``, ``us``, ``nx``...) read ``raw`` directly; bits of
    a non-present entry are software's and mean nothing to the CPU.
    """

    raw: int
    level: int
    address: int
    reserved: int

    @property
    def present(self) -> bool:
        """P: the entry maps something."""
        return bool(self.raw & _P)

    @property
    def rw(self) -> bool:
        """RW: writes allowed (through this entry)."""
        return bool(self.raw & _RW)

    @property
    def us(self) -> bool:
        """US: user-mode accesses allowed (through this entry)."""
        return bool(self.raw & _US)

    @property
    def pwt(self) -> bool:
        """PWT: page-level write-through."""
        return bool(self.raw & _PWT)

    @property
    def pcd(self) -> bool:
        """PCD: page-level cache disable."""
        return bool(self.raw & _PCD)

    @property
    def accessed(self) -> bool:
        """A: the CPU has used this entry."""
        return bool(self.raw & _A)

    @property
    def dirty(self) -> bool:
        """D: the page has been written (leaves only; ignored in tables)."""
        return bool(self.raw & _D)

    @property
    def ps(self) -> bool:
        """PS: a PDPT or PD entry maps a 1 GiB or 2 MiB page (bit 7; PAT in a PT)."""
        return self.level in (2, 3) and bool(self.raw & _PS)

    @property
    def pat(self) -> bool:
        """PAT: bit 7 of a 4 KiB leaf, bit 12 of a 2 MiB or 1 GiB leaf."""
        if self.level == 1:
            return bool(self.raw & _PS)
        return self.ps and bool(self.raw & _PAT_LARGE)

    @property
    def g(self) -> bool:
        """G: global translation (leaves only, with CR4.PGE)."""
        return self.is_leaf and bool(self.raw & _G)

    @property
    def nx(self) -> bool:
        """NX (XD, bit 63): instruction fetches forbidden, if EFER.NXE."""
        return bool(self.raw & _NX)

    @property
    def protection_key(self) -> int:
        """Bits 62:59, the protection key of a leaf (used with CR4.PKE/PKS)."""
        return (self.raw & _PKEY_MASK) >> _PKEY_SHIFT if self.is_leaf else 0

    @property
    def available(self) -> int:
        """Software-available bits 11:9 and 58:52, in place."""
        return self.raw & _AVAILABLE

    @property
    def is_leaf(self) -> bool:
        """Whether this entry maps a page (PT entry, or PS=1 in a PD/PDPT)."""
        return self.level == 1 or self.ps

    @property
    def page_size(self) -> int:
        """Bytes mapped by this entry if it is a leaf, else 0."""
        return LEAF_SIZES[self.level] if self.is_leaf else 0

    @property
    def level_name(self) -> str:
        """SDM name of the table holding this entry (``PT`` for a 4 KiB leaf)."""
        return LEVEL_NAMES[self.level]

    @property
    def flags(self) -> tuple[str, ...]:
        """SDM names of the single-bit fields that are set."""
        return tuple(f.name for f in self._fields() if f.width == 1 and self.raw & f.mask)

    def _fields(self) -> tuple[BitField, ...]:
        if self.level == 1:
            return _PT_FIELDS
        return ENTRY_FIELDS[self.ps]

    def is_set(self, name: str) -> bool:
        """Whether the single-bit field ``name`` (``"NX"``, ``"G"``...) is set."""
        for field in self._fields():
            if field.name == name:
                return bool(self.raw & field.mask)
        raise KeyError(f"{self.level_name} entries have no field {name!r}")

    def describe(self) -> str:
        """Set bits by name, then protection key and available bits (``P RW A D NX``)."""
        fields = self._fields()
        address = next(f for f in fields if f.name == "ADDR")
        shown = tuple(f for f in fields if f is not address)
        return format_flags(self.raw & ~address.mask, shown, sep=" ")

    def __str__(self) -> str:
        kind = "PTE" if self.level == 1 else f"{self.level_name}E"
        text = f"{kind} {self.raw:#018x} {self.describe() if self.present else 'not present'}"
        if self.present:
            text += f" -> {self.address:#x}"
            if self.is_leaf and self.level > 1:
                text += f" ({format_size(self.page_size)} page)"
        if self.reserved:
            text += f" RESERVED={self.reserved:#x}"
        return text

    def __repr__(self) -> str:
        return (
            f"PageTableEntry(raw={self.raw:#x}, level={self.level}, "
            f"address={self.address:#x}, reserved={self.reserved:#x})"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON shape, see ``docs/json.md``."""
        return {
            "raw": self.raw,
            "level": self.level,
            "level_name": self.level_name,
            "present": self.present,
            "leaf": self.is_leaf,
            "page_size": self.page_size,
            "address": self.address,
            "flags": list(self.flags),
            "protection_key": self.protection_key,
            "available": self.available,
            "reserved": self.reserved,
        }


def _entry_text(level: int, index: int, entry_address: int) -> str:
    return f"{LEVEL_NAMES[level]} entry {index} at {entry_address:#x}"


def _check_mode(mode: PagingMode) -> None:
    if not mode.enabled:
        raise InspectorError("paging is off (CR0.PG=0): virtual addresses are physical")
    if not mode.is_long_mode:
        raise InspectorError(
            f"{mode.name} paging is not supported: only 4- and 5-level (long mode) tables"
        )


def decode_entry(raw: int, level: int, *, maxphyaddr: int = 52, nxe: bool = True) -> PageTableEntry:
    """Decode one paging-structure entry found at ``level`` (5..1).

    ``nxe`` is EFER.NXE: with it off, bit 63 is reserved. ``maxphyaddr`` is
    the CPU's physical address width; address bits above it are reserved.
    A non-present entry decodes with ``address=0`` and ``reserved=0``: the
    CPU ignores every other bit of it.
    """
    if level not in LEVEL_NAMES:
        raise ValueError(f"paging level must be 1..5, not {level}")
    if not 0 <= raw <= _U64:
        raise ValueError(f"entry {raw:#x} does not fit in 64 bits")
    if not raw & _P:
        return PageTableEntry(raw, level, 0, 0)
    leaf = level == 1 or (level in (2, 3) and bool(raw & _PS))
    reserved = raw & _reserved_mask(level, leaf, nxe=nxe, maxphyaddr=maxphyaddr)
    return PageTableEntry(raw, level, raw & _address_mask(level, leaf, maxphyaddr), reserved)


def decode_table(
    data: bytes, level: int, *, maxphyaddr: int = 52, nxe: bool = True
) -> tuple[PageTableEntry, ...]:
    """Decode a whole 4 KiB table page into its 512 entries."""
    if len(data) != PAGE_SIZE:
        raise ValueError(f"a page table is {PAGE_SIZE} bytes, not {len(data)}")
    return tuple(
        decode_entry(raw, level, maxphyaddr=maxphyaddr, nxe=nxe)
        for raw in struct.unpack("<512Q", data)
    )


@dataclass(frozen=True, slots=True)
class Permissions:
    """Effective access rights of a page, combined over every level of the walk.

    ``writable`` is the AND of RW, ``user`` the AND of US, ``executable`` the
    negation of the OR of NX (only when EFER.NXE). Supervisor rules that
    depend on CR0.WP, SMEP and SMAP are left to the reader of ``mode``.
    """

    writable: bool
    user: bool
    executable: bool

    def __str__(self) -> str:
        return " ".join(
            (
                "RW" if self.writable else "ro",
                "USR" if self.user else "ker",
                "x" if self.executable else "NX",
            )
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON shape: ``{"writable", "user", "executable"}``."""
        return {"writable": self.writable, "user": self.user, "executable": self.executable}


_PERMISSIONS = {
    (w, u, x): Permissions(bool(w), bool(u), bool(x))
    for w in (0, 1)
    for u in (0, 1)
    for x in (0, 1)
}


def _permissions(writable: int, user: int, executable: int) -> Permissions:
    return _PERMISSIONS[(writable, user, executable)]
