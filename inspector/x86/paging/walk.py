"""The page walk: every leaf mapping reachable from CR3, and every table on the way.

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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kinspect.inspector.errors import FaultError
from kinspect.inspector.x86.control import PagingMode
from kinspect.inspector.x86.paging.address import level_index, virtual_address_bits
from kinspect.inspector.x86.paging.entry import (
    _NX,
    _P,
    _PERMISSIONS,
    _PS,
    _RW,
    _U64,
    _US,
    ENTRIES_PER_TABLE,
    LEAF_SIZES,
    LEVEL_NAMES,
    LEVEL_SHIFT,
    PAGE_SIZE,
    PageTableEntry,
    Permissions,
    ReadPhysical,
    _address_mask,
    _check_mode,
    _entry_text,
    _repr,
    _reserved_mask,
    decode_entry,
    format_size,
)

__all__ = [
    "AddressSpace",
    "Leaf",
    "WalkProblem",
    "collect_address_space",
    "walk_page_tables",
    "walk_tables",
]


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
        return self.table_path[-1] + 8 * level_index(self.va, self.level)

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


_new = object.__new__
_set_va, _set_pa, _set_size, _set_level, _set_entry, _set_permissions, _set_path = (
    getattr(Leaf, name).__set__
    for name in ("va", "pa", "size", "level", "entry", "permissions", "table_path")
)
_set_raw, _set_entry_level, _set_address, _set_reserved = (
    getattr(PageTableEntry, name).__set__ for name in ("raw", "level", "address", "reserved")
)


def _leaf(
    va: int,
    pa: int,
    size: int,
    level: int,
    entry: PageTableEntry,
    permissions: Permissions,
    table_path: tuple[int, ...],
) -> Leaf:
    """``Leaf(...)``, three times faster: the walk makes one per mapped page.

    A frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``; setting the slots directly gives the same record
    (Leaf has no ``__post_init__``), and half a million of them (OVMF's map)
    cost a second less.
    """
    leaf: Leaf = _new(Leaf)
    _set_va(leaf, va)
    _set_pa(leaf, pa)
    _set_size(leaf, size)
    _set_level(leaf, level)
    _set_entry(leaf, entry)
    _set_permissions(leaf, permissions)
    _set_path(leaf, table_path)
    return leaf


def _leaf_entry(raw: int, level: int, address: int) -> PageTableEntry:
    """``PageTableEntry(raw, level, address, 0)`` the same way as :func:`_leaf`."""
    entry: PageTableEntry = _new(PageTableEntry)
    _set_raw(entry, raw)
    _set_entry_level(entry, level)
    _set_address(entry, address)
    _set_reserved(entry, 0)
    return entry


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
    va_bits = virtual_address_bits(levels)
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
            entries = [_leaf_entry(raws[i], level, raws[i] & amask) for i in indices]
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
        shift = LEVEL_SHIFT[level]
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
                    _leaf(
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
                    cs = LEVEL_SHIFT[cl]
                    vb = child_base | sign if child_base & sign_bit else child_base
                    if found.uniform is not None:
                        p = _rights(lw, lu, lnx, found.uniform)
                        chunk += [
                            _leaf(vb | (i << cs), e.address, size, cl, e, p, child_path)
                            for i, e in zip(found.indices, found.entries, strict=True)
                        ]
                    else:
                        by_bits: dict[int, Permissions] = {}
                        for e in found.entries:
                            bits = e.raw & rights_bits
                            if bits not in by_bits:
                                by_bits[bits] = _rights(lw, lu, lnx, bits)
                        chunk += [
                            _leaf(
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


def walk_tables(
    read_physical: ReadPhysical, cr3: int, mode: PagingMode
) -> Iterator[tuple[int, int]]:
    """Yield ``(level, address)`` of every page table reachable from ``cr3``, the top one first.

    This is which pages hold paging structures (what a remap must not take
    away), not what they map: each (level, table) pair is yielded and read
    once however many entries point to it, so shared and self-referencing
    tables end the walk. Entries with reserved bits are not followed (the
    CPU faults on them, as the agent's own table census skips them); a
    table that cannot be read is yielded, and not descended into. Raises
    :class:`InspectorError` only if ``mode`` is not long mode.
    """
    _check_mode(mode)
    maxphyaddr = mode.maxphyaddr
    address_mask = ((1 << maxphyaddr) - 1) & ~0xFFF
    rsvd = {
        lv: _reserved_mask(lv, False, nxe=mode.nxe, maxphyaddr=maxphyaddr) for lv in LEVEL_NAMES
    }
    pages: dict[int, tuple[int, ...] | None] = {}
    seen: set[tuple[int, int]] = set()
    stack = [(mode.levels, cr3 & address_mask)]
    while stack:
        level, table = stack.pop()
        if (level, table) in seen:
            continue
        seen.add((level, table))
        yield level, table
        if level == 1:
            continue
        if table not in pages:
            try:
                data = read_physical(table, PAGE_SIZE)
            except FaultError:
                data = b""
            pages[table] = struct.unpack("<512Q", data) if len(data) == PAGE_SIZE else None
        raws = pages[table]
        if raws is None:
            continue
        below = level - 1
        for raw in reversed(raws):  # popped in ascending order
            if raw & _P and not (level <= 3 and raw & _PS) and not raw & rsvd[level]:
                stack.append((below, raw & address_mask))
