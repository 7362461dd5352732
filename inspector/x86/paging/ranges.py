"""Leaves merged into ranges, as Linux's ptdump prints them, and the reverse lookup (ptov)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kinspect.inspector.x86.paging.entry import (
    _G,
    _PAT_LARGE,
    _PCD,
    _PS,
    _PWT,
    LEAF_SIZES,
    PAGE_SIZE,
    PageTableEntry,
    Permissions,
    _repr,
    format_size,
)
from kinspect.inspector.x86.paging.walk import Leaf

__all__ = [
    "COMPACT_MAX_GAP",
    "CompactRange",
    "Range",
    "coalesce_ranges",
    "compact_ranges",
    "find_aliases",
]

_LINUX_LEVEL = {1: "pte", 2: "pmd", 3: "pud", 4: "p4d", 5: "pgd"}
"""Linux's names of the levels, as ptdump ends each line."""


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

_SET_RANGE = tuple(
    getattr(Range, name).__set__
    for name in ("start", "end", "phys", "page_size", "permissions", "attributes")
)


def _range(
    start: int,
    end: int,
    phys: int,
    page_size: int,
    permissions: Permissions,
    attributes: tuple[str, ...],
) -> Range:
    """``Range(...)`` by setting its slots: the same record (no ``__post_init__``), three
    times cheaper than the frozen dataclass's ``__init__`` (Linux's map has 65,000 ranges)."""
    made: Range = object.__new__(Range)
    start_, end_, phys_, size_, permissions_, attributes_ = _SET_RANGE
    start_(made, start)
    end_(made, end)
    phys_(made, phys)
    size_(made, page_size)
    permissions_(made, permissions)
    attributes_(made, attributes)
    return made


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
            ranges.append(_range(start, end, phys, size, perms, attrs))
        start, end, phys, size = va, leaf.end, leaf.pa, leaf.size
        next_pa = phys + (end - start)
        perms, attrs = lp, la
    if perms is not None:
        ranges.append(_range(start, end, phys, size, perms, attrs))
    return ranges


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


@dataclass(frozen=True, slots=True)
class CompactRange:
    """Neighbouring ranges with the same permissions, attributes and page size, merged
    whatever their physical addresses and the unmapped gaps between them (ptdump's rule).

    ``range`` spans the first start to the last end, with the first piece's ``phys``;
    ``pieces`` is how many exact ranges it stands for, ``mapped`` the bytes they map.
    """

    range: Range
    pieces: int
    mapped: int

    def __str__(self) -> str:
        return str(self.range)

    def to_dict(self) -> dict[str, Any]:
        """JSON shape: a range's keys, plus ``pieces`` and ``mapped``; see ``docs/json.md``."""
        return {**self.range.to_dict(), "pieces": self.pieces, "mapped": self.mapped}


#: The widest unmapped hole :func:`compact_ranges` merges across: one page table's reach.
COMPACT_MAX_GAP = 2 << 20


def compact_ranges(
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


def _spanning(first: Range, end: int) -> Range:
    if end == first.end:
        return first
    return Range(first.start, end, first.phys, first.page_size, first.permissions, first.attributes)
