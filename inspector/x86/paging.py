"""4- and 5-level (IA-32e) page tables: entries, walks, ranges, translations.

Pure: every function that needs memory takes ``read_physical(address, size)
-> bytes``, a plain callable, so tests hand it a dict of pages and the live
target hands it a GDB or agent read. Names follow the Intel SDM, Vol. 3A,
chapter 4 (4.5, Tables 4-15 to 4-20): levels 5=PML5, 4=PML4, 3=PDPT, 2=PD,
1=PT, and the entry bits P RW US PWT PCD A D PS G PAT NX.

The walker must survive anything a live or a broken kernel holds: tables
shared many times (Linux's espfix maps one page 65,536 times, and each one
is a real mapping we report), self-referencing entries, garbage CR3 values,
tables past the end of RAM. It never skips repeated tables (that would lose
real mappings); depth bounds every path and a budget bounds the total, and
whatever goes wrong is reported as a :class:`WalkProblem`, not raised.
"""

from __future__ import annotations

import gc
import struct
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kinspect.inspector.errors import FaultError, InspectorError
from kinspect.inspector.formatting import format_size
from kinspect.inspector.x86.control import PagingMode
from kinspect.inspector.x86.flags import BitField, format_flags

__all__ = [
    "ENTRY_FIELDS",
    "LEAF_SIZES",
    "LEVEL_NAMES",
    "PAGE_SIZE",
    "AddressSpace",
    "Leaf",
    "PageTableEntry",
    "Permissions",
    "Range",
    "ReadPhysical",
    "Translation",
    "WalkProblem",
    "WalkStep",
    "canonicalize",
    "coalesce_ranges",
    "collect_address_space",
    "decode_entry",
    "decode_table",
    "find_aliases",
    "is_canonical",
    "translate",
    "walk_page_tables",
]

ReadPhysical = Callable[[int, int], bytes]
"""``read_physical(address, size) -> bytes``; raises FaultError for unreadable memory."""

PAGE_SIZE = 4096
ENTRIES_PER_TABLE = 512
_U64 = (1 << 64) - 1

LEVEL_NAMES: dict[int, str] = {5: "PML5", 4: "PML4", 3: "PDPT", 2: "PD", 1: "PT"}
"""SDM names of the table at each level (an entry at level 2 is a "PD entry")."""

LEAF_SIZES: dict[int, int] = {1: 1 << 12, 2: 1 << 21, 3: 1 << 30}
"""Bytes mapped by a leaf at each level: 4 KiB, 2 MiB, 1 GiB."""

_LEVEL_SHIFT = {5: 48, 4: 39, 3: 30, 2: 21, 1: 12}
_LINUX_LEVEL = {1: "pte", 2: "pmd", 3: "pud", 4: "p4d", 5: "pgd"}
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


def is_canonical(va: int, levels: int = 4) -> bool:
    """Whether ``va`` is canonical: bits 63..47 (63..56 with 5 levels) all equal."""
    top = 56 if levels == 5 else 47
    upper = va >> top
    return upper == 0 or upper == (1 << (64 - top)) - 1


def canonicalize(va: int, levels: int = 4) -> int:
    """Sign-extend the low 48 (or 57) bits of ``va`` to a canonical 64-bit address."""
    bits = 57 if levels == 5 else 48
    va &= (1 << bits) - 1
    if va >> (bits - 1):
        va |= _U64 & ~((1 << bits) - 1)
    return va


@dataclass(frozen=True, slots=True)
class Leaf:
    """One mapping found by a walk: a page of ``size`` bytes at ``va`` -> ``pa``.

    ``entry`` is the leaf entry itself (its own bits, as ``info tlb`` shows
    them); ``permissions`` are the effective rights over the whole path.
    ``table_path`` holds the physical address of each table walked, top
    level first, ending with the table that holds ``entry``.
    """

    va: int
    pa: int
    size: int
    level: int
    entry: PageTableEntry
    permissions: Permissions
    table_path: tuple[int, ...]

    @property
    def end(self) -> int:
        """First virtual address after the page."""
        return self.va + self.size

    @property
    def entry_address(self) -> int:
        """Physical address of the leaf entry."""
        index = (self.va >> _LEVEL_SHIFT[self.level]) & 0x1FF
        return self.table_path[-1] + 8 * index

    def __str__(self) -> str:
        return (
            f"{self.va:#018x} -> {self.pa:#x} {format_size(self.size)} "
            f"{self.permissions} [{self.entry.describe()}]"
        )

    def __repr__(self) -> str:
        return _repr(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON shape, see ``docs/json.md``."""
        return {
            "va": self.va,
            "pa": self.pa,
            "size": self.size,
            "level": self.level,
            "entry": self.entry.to_dict(),
            "permissions": self.permissions.to_dict(),
            "table_path": list(self.table_path),
        }


@dataclass(frozen=True, slots=True)
class WalkProblem:
    """Something the walk could not follow, and why.

    ``kind`` is ``"reserved"`` (an entry with reserved bits set: the CPU
    would fault with RSVD=1, so the walk does not follow it), ``"fault"``
    (the table an entry points to cannot be read, e.g. past the end of RAM,
    or returned fewer than 4096 bytes) or ``"truncated"`` (the budget ran
    out; the walk stopped at ``va``). ``level``, ``table_address`` and
    ``index`` locate the entry concerned and ``entry`` is that entry; for a
    CR3 that cannot be read they name the top table and ``entry`` is None.
    ``va`` is the first address the entry would map.
    """

    kind: str
    va: int
    level: int
    table_address: int
    index: int
    entry: PageTableEntry | None
    reason: str

    @property
    def entry_address(self) -> int:
        """Physical address of the entry concerned."""
        return self.table_address + 8 * self.index

    def __str__(self) -> str:
        return f"{self.va:#018x}: {self.reason}"

    def __repr__(self) -> str:
        return _repr(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON shape, see ``docs/json.md``."""
        return {
            "kind": self.kind,
            "va": self.va,
            "level": self.level,
            "table_address": self.table_address,
            "index": self.index,
            "entry": None if self.entry is None else self.entry.to_dict(),
            "reason": self.reason,
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


def walk_page_tables(
    read_physical: ReadPhysical,
    cr3: int,
    mode: PagingMode,
    *,
    max_leaves: int = 1 << 20,
    max_entries: int = 1 << 22,
) -> Iterator[Leaf | WalkProblem]:
    """Yield every leaf mapping reachable from ``cr3``, in ascending VA order.

    Problems (reserved bits, unreadable tables) are yielded as
    :class:`WalkProblem` in VA order among the leaves. Each table page is
    read once (4096 bytes) and cached for the walk, but a table referenced
    many times is walked every time, because every reference is a real
    mapping. Termination on any input: depth is bounded by the number of
    levels, and once ``max_leaves`` leaves or ``max_entries`` present
    entries have been seen, a final ``"truncated"`` problem is yielded and
    the walk stops.

    ``cr3`` may hold flag or PCID bits; only the base (bits 12..MAXPHYADDR-1)
    is used. Raises :class:`InspectorError` only if ``mode`` is not long mode.
    """
    for leaves, problem in _walk_chunks(read_physical, cr3, mode, max_leaves, max_entries):
        yield from leaves
        if problem is not None:
            yield problem


_CHUNK = 8192
"""Leaves the walk gathers before handing them on (it stays lazy, a chunk at a time)."""


@dataclass(slots=True)
class _LeafTable:
    """A table whose present entries are all leaves without reserved bits, decoded once.

    ``indices`` are the present entries' indices, ``entries`` those entries
    decoded; ``uniform`` is their RW|US|NX bits when all have the same, else None.
    """

    indices: list[int]
    entries: list[PageTableEntry]
    uniform: int | None


def _rights(w: int, u: int, nx: int, bits: int) -> Permissions:
    """Effective rights of a leaf with RW|US|NX ``bits`` under tables that gave ``w u nx``."""
    return _PERMISSIONS[((w & bits) >> 1, (u & bits) >> 2, 0 if nx or bits & _NX else 1)]


def _walk_chunks(
    read_physical: ReadPhysical,
    cr3: int,
    mode: PagingMode,
    max_leaves: int,
    max_entries: int,
) -> Iterator[tuple[list[Leaf], WalkProblem | None]]:
    """The walk behind :func:`walk_page_tables`: runs of leaves, each followed by its problem.

    Leaves are gathered in lists rather than yielded one by one: an identity
    map such as OVMF's (1 TiB in 2 MiB pages, half a million leaves) pays for
    a generator step per leaf otherwise. A table whose present entries are
    all clean leaves (no reserved bits) is turned into leaves in one tight
    loop, its entries decoded once per walk even when the table is shared.
    """
    _check_mode(mode)
    levels = mode.levels
    maxphyaddr = mode.maxphyaddr
    nxe = mode.nxe
    nx_bit = _NX if nxe else 0
    address_mask = ((1 << maxphyaddr) - 1) & ~0xFFF
    root = cr3 & address_mask
    va_bits = 57 if levels == 5 else 48
    sign = _U64 & ~((1 << va_bits) - 1)
    sign_bit = 1 << (va_bits - 1)

    rsvd_table = {
        lv: _reserved_mask(lv, False, nxe=nxe, maxphyaddr=maxphyaddr) for lv in LEVEL_NAMES
    }
    rsvd_leaf = {lv: _reserved_mask(lv, True, nxe=nxe, maxphyaddr=maxphyaddr) for lv in (1, 2, 3)}
    addr_table = address_mask
    addr_leaf = {lv: _address_mask(lv, True, maxphyaddr) for lv in (1, 2, 3)}
    rights_bits = _RW | _US | nx_bit

    pages: dict[int, tuple[int, ...] | str] = {}
    entry_cache: dict[tuple[int, int], PageTableEntry] = {}
    # (table, level) -> its present entries when they are all clean leaves, or None
    # when the table needs the entry-by-entry walk
    leaf_tables: dict[tuple[int, int], _LeafTable | None] = {}

    def load(table: int) -> tuple[int, ...] | str:
        """The table's 512 raw entries, or why it cannot be read; read once per walk."""
        got = pages.get(table)
        if got is None:
            try:
                data = read_physical(table, PAGE_SIZE)
            except FaultError as error:
                got = error.reason
            else:
                if len(data) == PAGE_SIZE:
                    got = struct.unpack("<512Q", data)
                else:
                    got = f"the read gave {len(data)} bytes, not {PAGE_SIZE}"
            pages[table] = got
        return got

    def entry_of(raw: int, level: int, address: int, reserved: int) -> PageTableEntry:
        key = (raw, level)
        entry = entry_cache.get(key)
        if entry is None:
            entry = PageTableEntry(raw, level, address, reserved)
            entry_cache[key] = entry
        return entry

    def clean_leaves(table: int, level: int, raws: tuple[int, ...]) -> _LeafTable | None:
        key = (table, level)
        if key in leaf_tables:
            return leaf_tables[key]
        rsvd = rsvd_leaf[level]
        leaf_bits = _P | _PS if level != 1 else _P  # a PT entry is a leaf without PS
        found: _LeafTable | None = None
        if all(raw & leaf_bits == leaf_bits and not raw & rsvd for raw in raws if raw & _P):
            amask = addr_leaf[level]
            indices = [i for i, raw in enumerate(raws) if raw & _P]
            entries = [PageTableEntry(raws[i], level, raws[i] & amask, 0) for i in indices]
            rights = {raws[i] & rights_bits for i in indices}
            found = _LeafTable(indices, entries, rights.pop() if len(rights) == 1 else None)
        leaf_tables[key] = found
        return found

    leaves = 0
    entries = 0
    chunk: list[Leaf] = []

    top = load(root)
    if isinstance(top, str):
        yield (
            chunk,
            WalkProblem(
                kind="fault",
                va=0,
                level=levels,
                table_address=root,
                index=0,
                entry=None,
                reason=f"cannot read the {LEVEL_NAMES[levels]} at {root:#x} (from CR3): {top}",
            ),
        )
        return
    # Stack frames: (level, entries, next index, table VA base, table path, W, U, NX).
    stack: list[tuple[int, tuple[int, ...], int, int, tuple[int, ...], int, int, int]] = [
        (levels, top, 0, 0, (root,), _RW, _US, 0)
    ]
    while stack:
        level, table, index, base, path, w, u, nx = stack.pop()
        shift = _LEVEL_SHIFT[level]
        table_address = path[-1]
        while index < ENTRIES_PER_TABLE:
            raw = table[index]
            i = index
            index += 1
            if not raw & _P:
                continue
            va = base | (i << shift)
            if va & sign_bit:
                va |= sign
            entries += 1
            if entries > max_entries or leaves >= max_leaves:
                yield (
                    chunk,
                    WalkProblem(
                        kind="truncated",
                        va=va,
                        level=level,
                        table_address=table_address,
                        index=i,
                        entry=None,
                        reason=f"walk stopped at {va:#x}: budget of {max_leaves} leaves /"
                        f" {max_entries} entries exhausted (looping or shared tables?)",
                    ),
                )
                return
            leaf = level == 1 or (level <= 3 and raw & _PS)
            reserved = raw & (rsvd_leaf[level] if leaf else rsvd_table[level])
            if reserved:
                entry = decode_entry(raw, level, maxphyaddr=maxphyaddr, nxe=nxe)
                yield (
                    chunk,
                    WalkProblem(
                        kind="reserved",
                        va=va,
                        level=level,
                        table_address=table_address,
                        index=i,
                        entry=entry,
                        reason=f"{_entry_text(level, i, table_address + 8 * i)}: reserved bits"
                        f" {reserved:#x} set in {raw:#018x} (the CPU would raise #PF with RSVD=1)",
                    ),
                )
                chunk = []
                continue
            lw = w & raw
            lu = u & raw
            lnx = nx | (raw & nx_bit)
            if leaf:
                pa = raw & addr_leaf[level]
                leaves += 1
                chunk.append(
                    Leaf(
                        va,
                        pa,
                        LEAF_SIZES[level],
                        level,
                        entry_of(raw, level, pa, 0),
                        _PERMISSIONS[(lw >> 1, lu >> 2, 0 if lnx else 1)],
                        path,
                    )
                )
                if len(chunk) >= _CHUNK:
                    yield chunk, None
                    chunk = []
                continue
            child = raw & addr_table
            loaded = load(child)
            if isinstance(loaded, str):
                yield (
                    chunk,
                    WalkProblem(
                        kind="fault",
                        va=va,
                        level=level,
                        table_address=table_address,
                        index=i,
                        entry=decode_entry(raw, level, maxphyaddr=maxphyaddr, nxe=nxe),
                        reason=f"{_entry_text(level, i, table_address + 8 * i)} points to a"
                        f" {LEVEL_NAMES[level - 1]} at {child:#x} that cannot be read: {loaded}",
                    ),
                )
                chunk = []
                continue
            child_path = path + (child,)
            child_base = va & ~sign
            if level <= 4:
                found = clean_leaves(child, level - 1, loaded)
                count = len(found.indices) if found is not None else 0
                if (
                    found is not None
                    and entries + count <= max_entries
                    and leaves + count <= max_leaves
                ):
                    # The child is all leaves and none trips the budget: the same
                    # leaves the entry-by-entry walk below would give, in one loop.
                    entries += count
                    leaves += count
                    cl = level - 1
                    size = LEAF_SIZES[cl]
                    cs = _LEVEL_SHIFT[cl]
                    vb = child_base | sign if child_base & sign_bit else child_base
                    if found.uniform is not None:
                        p = _rights(lw, lu, lnx, found.uniform)
                        chunk += [
                            Leaf(vb | (i << cs), e.address, size, cl, e, p, child_path)
                            for i, e in zip(found.indices, found.entries, strict=True)
                        ]
                    else:
                        by_bits: dict[int, Permissions] = {}
                        for e in found.entries:
                            bits = e.raw & rights_bits
                            if bits not in by_bits:
                                by_bits[bits] = _rights(lw, lu, lnx, bits)
                        chunk += [
                            Leaf(
                                vb | (i << cs),
                                e.address,
                                size,
                                cl,
                                e,
                                by_bits[e.raw & rights_bits],
                                child_path,
                            )
                            for i, e in zip(found.indices, found.entries, strict=True)
                        ]
                    if len(chunk) >= _CHUNK:
                        yield chunk, None
                        chunk = []
                    continue
            # Resume this table after the child, then descend into the child.
            stack.append((level, table, index, base, path, w, u, nx))
            stack.append((level - 1, loaded, 0, child_base, child_path, lw, lu, lnx))
            break
    yield chunk, None


@dataclass(frozen=True, slots=True)
class AddressSpace:
    """Everything one walk found: leaves and problems in VA order, and whether it was cut."""

    cr3: int
    mode: PagingMode
    leaves: tuple[Leaf, ...]
    problems: tuple[WalkProblem, ...]
    truncated: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON shape, see ``docs/json.md``."""
        return {
            "cr3": self.cr3,
            "mode": self.mode.to_dict(),
            "leaves": [leaf.to_dict() for leaf in self.leaves],
            "problems": [problem.to_dict() for problem in self.problems],
            "truncated": self.truncated,
        }


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Hold off Python's cycle collector while a walk builds its records.

    A walk allocates two records per leaf and no cycles; with the collector
    on, an identity map of half a million leaves (OVMF's) spends more time
    in collections than in walking (1.2 s instead of 0.6 s). Collection
    resumes at the end, as it was.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def collect_address_space(
    read_physical: ReadPhysical,
    cr3: int,
    mode: PagingMode,
    *,
    max_leaves: int = 1 << 20,
    max_entries: int = 1 << 22,
) -> AddressSpace:
    """Run :func:`walk_page_tables` to the end and keep leaves and problems apart."""
    leaves: list[Leaf] = []
    problems: list[WalkProblem] = []
    with _gc_paused():
        for chunk, problem in _walk_chunks(read_physical, cr3, mode, max_leaves, max_entries):
            leaves.extend(chunk)
            if problem is not None:
                problems.append(problem)
    truncated = any(p.kind == "truncated" for p in problems)
    return AddressSpace(cr3, mode, tuple(leaves), tuple(problems), truncated)


@dataclass(frozen=True, slots=True)
class Range:
    """Adjacent leaves merged into one run, as Linux's ptdump prints them.

    ``end`` is exclusive. A range has one page size, one set of effective
    ``permissions``, one set of ``attributes`` (the leaf bits among G, PWT,
    PCD, PAT that are set, SDM names) and contiguous physical memory from
    ``phys``.
    """

    start: int
    end: int
    phys: int
    page_size: int
    permissions: Permissions
    attributes: tuple[str, ...]

    @property
    def size(self) -> int:
        """Bytes covered."""
        return self.end - self.start

    @property
    def level(self) -> int:
        """Level of the leaves (1 for 4 KiB, 2 for 2 MiB, 3 for 1 GiB)."""
        return {size: level for level, size in LEAF_SIZES.items()}[self.page_size]

    def __str__(self) -> str:
        return (
            f"{self.start:#018x}-{self.end:#018x}   {format_size(self.size):>10} "
            + self.flags_text()
        )

    def flags_text(self) -> str:
        """The ptdump flag columns: USR RW/ro PWT PCD PSE PAT GLB x/NX level."""
        p = self.permissions
        attrs = self.attributes
        return (
            ("USR " if p.user else "    ")
            + ("RW " if p.writable else "ro ")
            + ("PWT " if "PWT" in attrs else "    ")
            + ("PCD " if "PCD" in attrs else "    ")
            + ("PSE " if self.page_size > PAGE_SIZE else "    ")
            + ("PAT " if "PAT" in attrs else "    ")
            + ("GLB " if "G" in attrs else "    ")
            + ("x  " if p.executable else "NX ")
            + _LINUX_LEVEL[self.level]
        )

    def __repr__(self) -> str:
        return _repr(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON shape, see ``docs/json.md``."""
        return {
            "start": self.start,
            "end": self.end,
            "size": self.size,
            "phys": self.phys,
            "page_size": self.page_size,
            "permissions": self.permissions.to_dict(),
            "attributes": list(self.attributes),
        }


def _attributes(entry: PageTableEntry) -> tuple[str, ...]:
    return tuple(
        name
        for name, on in (("G", entry.g), ("PWT", entry.pwt), ("PCD", entry.pcd), ("PAT", entry.pat))
        if on
    )


_ATTRIBUTE_BITS = _G | _PWT | _PCD | _PS | _PAT_LARGE
"""The entry bits (with the level) that decide :func:`_attributes`."""


def coalesce_ranges(leaves: Iterable[Leaf]) -> list[Range]:
    """Merge leaves (in ascending VA order) into ranges, ptdump style.

    A new range starts at a VA gap, or where the effective permissions, the
    page size, the G/PWT/PCD/PAT attributes, or physical contiguity change.
    Non-leaf items (a :class:`WalkProblem` from the walk) are skipped.
    """
    ranges: list[Range] = []
    start = end = phys = size = next_pa = 0
    perms: Permissions | None = None
    attrs: tuple[str, ...] = ()
    # _attributes() depends on the level and five bits only: one call per distinct pair,
    # not one per leaf (an identity map has as many distinct entries as leaves)
    attr_cache: dict[int, tuple[str, ...]] = {}
    for leaf in leaves:
        if not isinstance(leaf, Leaf):
            continue
        entry = leaf.entry
        key = (entry.raw & _ATTRIBUTE_BITS) | (entry.level << 64)
        la = attr_cache.get(key)
        if la is None:
            la = _attributes(entry)
            attr_cache[key] = la
        va = leaf.va
        lp = leaf.permissions
        if (
            va == end
            and perms is not None
            and leaf.size == size
            and leaf.pa == next_pa
            and (lp is perms or lp == perms)
            and (la is attrs or la == attrs)
        ):
            end = va + size
            next_pa += size
            continue
        if perms is not None:
            ranges.append(Range(start, end, phys, size, perms, attrs))
        start, end, phys, size = va, leaf.end, leaf.pa, leaf.size
        next_pa = phys + (end - start)
        perms, attrs = lp, la
    if perms is not None:
        ranges.append(Range(start, end, phys, size, perms, attrs))
    return ranges


@dataclass(frozen=True, slots=True)
class WalkStep:
    """One level of a translation: which entry of which table was used."""

    level: int
    table_address: int
    index: int
    entry_address: int
    entry: PageTableEntry

    @property
    def level_name(self) -> str:
        """SDM name of the table (``PML4``, ``PDPT``...)."""
        return LEVEL_NAMES[self.level]

    def __str__(self) -> str:
        return f"{self.level_name}[{self.index}] at {self.entry_address:#x}: {self.entry}"

    def __repr__(self) -> str:
        return _repr(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON shape, see ``docs/json.md``."""
        return {
            "level": self.level,
            "level_name": self.level_name,
            "table_address": self.table_address,
            "index": self.index,
            "entry_address": self.entry_address,
            "entry": self.entry.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class Translation:
    """A virtual address translated, step by step, or where and why it fails.

    On success ``pa`` is the physical address, ``page_size`` the leaf size
    and ``permissions`` the effective rights; ``fault`` is None. On failure
    ``pa`` and ``permissions`` are None and ``fault`` says which entry
    stopped the walk and why; ``steps`` holds every entry read, including
    the failing one when it could be read.
    """

    va: int
    steps: tuple[WalkStep, ...]
    pa: int | None
    page_size: int
    permissions: Permissions | None
    fault: str | None

    @property
    def ok(self) -> bool:
        """Whether the address translates."""
        return self.fault is None

    def __str__(self) -> str:
        if self.fault is not None:
            return f"{self.va:#x}: {self.fault}"
        return (
            f"{self.va:#x} -> {self.pa:#x} ({format_size(self.page_size)} page, {self.permissions})"
        )

    def __repr__(self) -> str:
        return _repr(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON shape, see ``docs/json.md``."""
        return {
            "va": self.va,
            "steps": [step.to_dict() for step in self.steps],
            "pa": self.pa,
            "page_size": self.page_size,
            "permissions": None if self.permissions is None else self.permissions.to_dict(),
            "fault": self.fault,
        }


def translate(read_physical: ReadPhysical, cr3: int, mode: PagingMode, va: int) -> Translation:
    """Translate ``va`` the way the CPU walks it (SDM Vol. 3A, 4.5.4).

    Never raises for a bad address or bad tables: a non-canonical address,
    a non-present entry, reserved bits or an unreadable table end the walk
    with ``fault`` set. Raises :class:`InspectorError` only if ``mode`` is
    not long mode.
    """
    _check_mode(mode)
    levels = mode.levels
    steps: list[WalkStep] = []

    def failed(reason: str) -> Translation:
        return Translation(va, tuple(steps), None, 0, None, reason)

    if not 0 <= va <= _U64:
        return failed(f"{va:#x} is not a 64-bit address")
    if not is_canonical(va, levels):
        return failed(
            f"{va:#x} is not canonical for {levels}-level paging"
            f" (bits 63..{56 if levels == 5 else 47} must all be equal)"
        )
    table = cr3 & ((1 << mode.maxphyaddr) - 1) & ~0xFFF
    writable, user, nx = True, True, False
    for level in range(levels, 0, -1):
        index = (va >> _LEVEL_SHIFT[level]) & 0x1FF
        entry_address = table + 8 * index
        try:
            data = read_physical(entry_address, 8)
        except FaultError as error:
            return failed(f"cannot read {_entry_text(level, index, entry_address)}: {error.reason}")
        if len(data) != 8:
            return failed(
                f"reading {_entry_text(level, index, entry_address)} gave {len(data)} bytes"
            )
        entry = decode_entry(
            int.from_bytes(data, "little"), level, maxphyaddr=mode.maxphyaddr, nxe=mode.nxe
        )
        steps.append(WalkStep(level, table, index, entry_address, entry))
        where = _entry_text(level, index, entry_address)
        if not entry.present:
            return failed(f"{where} is not present")
        if entry.reserved:
            return failed(
                f"{where} has reserved bits {entry.reserved:#x} set"
                " (the CPU would raise #PF with RSVD=1)"
            )
        writable = writable and entry.rw
        user = user and entry.us
        nx = nx or (mode.nxe and entry.nx)
        if entry.is_leaf:
            size = entry.page_size
            return Translation(
                va,
                tuple(steps),
                entry.address | (va & (size - 1)),
                size,
                _permissions(int(writable), int(user), int(not nx)),
                None,
            )
        table = entry.address
    raise AssertionError("unreachable: a PT entry is always a leaf")  # pragma: no cover


def find_aliases(leaves: Iterable[Leaf], pa: int) -> list[tuple[int, Leaf]]:
    """Every virtual address that maps physical address ``pa``, with its leaf, by VA.

    This is ``ptov``: a page can be mapped many times (direct map, kernel
    text, vmalloc, espfix), and each mapping is an answer.
    """
    found = [
        (leaf.va + (pa - leaf.pa), leaf)
        for leaf in leaves
        if isinstance(leaf, Leaf) and leaf.pa <= pa < leaf.pa + leaf.size
    ]
    found.sort(key=lambda pair: pair[0])
    return found
