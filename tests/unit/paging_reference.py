"""The walk, coalesce, ptov and compact as they were before issue 16: an oracle.

The array walk (inspector/x86/paging/walk.py) must give exactly what this
walk gives, leaf for leaf and problem for problem, on any table tree: the
property tests (test_x86_paging_arrays.py) compare the two, and
benchmarks/bench_decoders.py times both in one run. Kept verbatim from the
code path it replaced (commit 972a6ac), apart from names.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from kinspect.inspector.errors import FaultError
from kinspect.inspector.x86.control import PagingMode
from kinspect.inspector.x86.paging import Leaf, PageTableEntry, Permissions, Range, WalkProblem
from kinspect.inspector.x86.paging.address import virtual_address_bits
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
    ReadPhysical,
    _address_mask,
    _check_mode,
    _entry_text,
    _reserved_mask,
    decode_entry,
)
from kinspect.inspector.x86.paging.ranges import (
    _ATTRIBUTE_BITS,
    COMPACT_MAX_GAP,
    CompactRange,
    _attributes,
    _range,
    _spanning,
)
from kinspect.inspector.x86.paging.walk import _leaf


def _leaf_entry(raw: int, level: int, address: int) -> PageTableEntry:
    return PageTableEntry(raw, level, address, 0)


def reference_walk(
    read_physical: ReadPhysical,
    cr3: int,
    mode: PagingMode,
    *,
    max_leaves: int = 1 << 20,
    max_entries: int = 1 << 22,
) -> list[Leaf | WalkProblem]:
    """Every leaf and problem, in VA order, entry by entry."""
    out: list[Leaf | WalkProblem] = []
    for leaves, problem in _walk_chunks(read_physical, cr3, mode, max_leaves, max_entries):
        out += leaves
        if problem is not None:
            out.append(problem)
    return out


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


def reference_coalesce(leaves: Iterable[Leaf]) -> list[Range]:
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
            ranges.append(_range(start, end, phys, size, perms, attrs))
        start, end, phys, size = va, leaf.end, leaf.pa, leaf.size
        next_pa = phys + (end - start)
        perms, attrs = lp, la
    if perms is not None:
        ranges.append(_range(start, end, phys, size, perms, attrs))
    return ranges


def reference_aliases(leaves: Iterable[Leaf], pa: int) -> list[tuple[int, Leaf]]:
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


def reference_compact(
    ranges: Iterable[Range], breaks: Iterable[int] = (), *, max_gap: int = COMPACT_MAX_GAP
) -> list[CompactRange]:
    """Merge ranges (ascending) that share permissions, attributes and page size.

    Physical contiguity does not matter, nor an unmapped hole up to ``max_gap``
    bytes (guard pages, espfix's stride of 64 KiB); a wider hole separates. A
    merged range never spans an address in ``breaks`` (region boundaries: a range
    starting at or past one is not merged with a range before it).
    """
    stops = sorted(set(breaks))
    merged: list[CompactRange] = []
    first: Range | None = None
    last_end = pieces = mapped = 0
    limit = 1 << 64  # the next break after the current run's start
    for r in ranges:
        if (
            first is not None
            and r.start < limit
            and r.start - last_end <= max_gap
            and r.page_size == first.page_size
            and r.permissions == first.permissions
            and r.attributes == first.attributes
        ):
            last_end = r.end
            pieces += 1
            mapped += r.size
            continue
        if first is not None:
            merged.append(CompactRange(_spanning(first, last_end), pieces, mapped))
        first, last_end, pieces, mapped = r, r.end, 1, r.size
        limit = next((b for b in stops if b > r.start), 1 << 64)
    if first is not None:
        merged.append(CompactRange(_spanning(first, last_end), pieces, mapped))
    return merged
