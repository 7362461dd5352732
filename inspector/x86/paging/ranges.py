"""Leaves merged into ranges, as Linux's ptdump prints them, and the reverse lookup (ptov)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

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
from kinspect.inspector.x86.paging.walk import (
    _CODE_PERMISSIONS,
    Leaf,
    LeafArrays,
    LeafSequence,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "COMPACT_MAX_GAP",
    "CompactRange",
    "Range",
    "RangeList",
    "coalesce_ranges",
    "compact_ranges",
    "find_alias_addresses",
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


_ATTRIBUTE_NAMES: tuple[tuple[str, ...], ...] = tuple(
    tuple(name for bit, name in enumerate(("G", "PWT", "PCD", "PAT")) if code >> bit & 1)
    for code in range(16)
)
"""The attributes of a range by code: G=1, PWT=2, PCD=4, PAT=8 (SDM names, this order)."""


def _attribute_codes(arrays: LeafArrays) -> npt.NDArray[np.uint8]:
    """Each leaf's G/PWT/PCD/PAT as a code (PAT is bit 7 of a PTE, bit 12 above)."""
    import numpy as np

    memo = arrays.memo.get("attributes")
    if memo is not None:
        codes: npt.NDArray[np.uint8] = memo
        return codes
    raw = arrays.raw
    one = np.uint64(1)
    code = (raw >> np.uint64(8)) & one
    code |= (raw >> np.uint64(2)) & np.uint64(0b110)  # PWT (3), PCD (4) to 1, 2
    pat = np.where(arrays.level == 1, raw >> np.uint64(7), raw >> np.uint64(12)) & one
    code |= pat << np.uint64(3)
    codes = code.astype(np.uint8)
    arrays.memo["attributes"] = codes
    return codes


class RangeList(Sequence[Range]):
    """Ranges as arrays, each :class:`Range` made when it is asked for.

    Reads like the list of ranges it stands for (``len``, indexing, slicing,
    iteration, equality with a list). The records, once all made, are kept.
    """

    __slots__ = ("_made", "counts", "phys", "page_size", "rights", "attributes", "start")

    def __init__(
        self,
        start: npt.NDArray[np.uint64],
        counts: npt.NDArray[np.int64],
        phys: npt.NDArray[np.uint64],
        page_size: npt.NDArray[np.uint64],
        rights: npt.NDArray[np.uint8],
        attributes: npt.NDArray[np.uint8],
    ) -> None:

        self.start = start
        self.counts = counts  # leaves in each range
        self.phys = phys
        self.page_size = page_size
        self.rights = rights  # W=1, U=2, X=4
        self.attributes = attributes  # codes of _ATTRIBUTE_NAMES
        self._made: list[Range] | None = None

    def __len__(self) -> int:
        return len(self.start)

    def records(self, first: int = 0, stop: int | None = None) -> list[Range]:
        """The ranges ``first:stop`` as records."""
        if self._made is not None:
            return self._made[first:stop]
        cut = slice(first, stop)
        names = _ATTRIBUTE_NAMES
        permissions = _CODE_PERMISSIONS
        return [
            _range(start, start + count * size, phys, size, permissions[rights], names[attributes])
            for start, count, phys, size, rights, attributes in zip(
                self.start[cut].tolist(),
                self.counts[cut].tolist(),
                self.phys[cut].tolist(),
                self.page_size[cut].tolist(),
                self.rights[cut].tolist(),
                self.attributes[cut].tolist(),
                strict=True,
            )
        ]

    def ends(self) -> list[int]:
        """Each range's end (exclusive), as Python integers (the last may be 2**64)."""
        return [
            start + count * size
            for start, count, size in zip(
                self.start.tolist(), self.counts.tolist(), self.page_size.tolist(), strict=True
            )
        ]

    @overload
    def __getitem__(self, index: int) -> Range: ...

    @overload
    def __getitem__(self, index: slice) -> list[Range]: ...

    def __getitem__(self, index: int | slice) -> Range | list[Range]:
        n = len(self.start)
        if isinstance(index, slice):
            start, stop, step = index.indices(n)
            if step == 1:
                return self.records(start, max(start, stop))
            return [self[i] for i in range(start, stop, step)]
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError("range index out of range")
        return self.records(index, index + 1)[0]

    def __iter__(self) -> Iterator[Range]:
        if self._made is None:
            self._made = self.records()
        return iter(self._made)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RangeList | list | tuple):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{len(self)} ranges>"

    @classmethod
    def from_ranges(cls, ranges: Iterable[Range]) -> RangeList:
        """Arrays of range records (the records themselves are kept)."""
        import numpy as np

        made = list(ranges)
        codes = {names: code for code, names in enumerate(_ATTRIBUTE_NAMES)}
        extra: list[tuple[str, ...]] = []
        attributes = []
        for r in made:
            code = codes.get(r.attributes)
            if code is None:  # not in SDM order: kept as given, by a code of its own
                code = codes[r.attributes] = len(_ATTRIBUTE_NAMES) + len(extra)
                extra.append(r.attributes)
            attributes.append(code)
        result = cls(
            np.array([r.start for r in made], dtype=np.uint64),
            np.array([r.size // r.page_size if r.page_size else 0 for r in made], dtype=np.int64),
            np.array([r.phys for r in made], dtype=np.uint64),
            np.array([r.page_size for r in made], dtype=np.uint64),
            np.array(
                [
                    r.permissions.writable | r.permissions.user << 1 | r.permissions.executable << 2
                    for r in made
                ],
                dtype=np.uint8,
            ),
            np.array(attributes, dtype=np.int64 if extra else np.uint8),
        )
        result._made = made
        return result


def coalesce_ranges(leaves: Iterable[Leaf]) -> RangeList:
    """Merge leaves (in ascending VA order) into ranges, ptdump style.

    A new range starts at a VA gap, or where the effective permissions, the
    page size, the G/PWT/PCD/PAT attributes, or physical contiguity change.
    Non-leaf items (a :class:`WalkProblem` from the walk) are skipped. A
    walk's leaves (:class:`LeafSequence`) are merged as arrays, at once, and
    the result kept with them; the ranges are made as they are read.
    """
    import numpy as np

    if isinstance(leaves, LeafSequence):
        arrays = leaves.arrays
        memo: RangeList | None = arrays.memo.get("ranges")
        if memo is None:
            memo = arrays.memo["ranges"] = _coalesce(arrays, _attribute_codes(arrays))
        return memo
    records = [leaf for leaf in leaves if isinstance(leaf, Leaf)]
    arrays = LeafArrays.from_leaves(records)
    cache: dict[int, int] = {}
    codes = {names: code for code, names in enumerate(_ATTRIBUTE_NAMES)}
    attributes = []
    for leaf in records:
        entry = leaf.entry
        key = (entry.raw & _ATTRIBUTE_BITS) | (entry.level << 64)
        code = cache.get(key)
        if code is None:
            code = cache[key] = codes[_attributes(entry)]
        attributes.append(code)
    return _coalesce(arrays, np.array(attributes, dtype=np.uint8))


def _coalesce(arrays: LeafArrays, attributes: npt.NDArray[np.uint8]) -> RangeList:
    import numpy as np

    va, pa, size, rights = arrays.va, arrays.pa, arrays.size, arrays.rights
    n = len(va)
    if n == 0:
        return RangeList.from_ranges([])
    if n > 1:
        same = va[1:] == va[:-1] + size[:-1]
        same &= size[1:] == size[:-1]
        same &= pa[1:] == pa[:-1] + size[:-1]
        same &= rights[1:] == rights[:-1]
        same &= attributes[1:] == attributes[:-1]
        starts = np.flatnonzero(np.concatenate(([True], ~same)))
    else:
        starts = np.zeros(1, dtype=np.intp)
    count = np.diff(np.append(starts, n))
    return RangeList(
        va[starts], count, pa[starts], size[starts], rights[starts], attributes[starts]
    )


def find_aliases(leaves: Iterable[Leaf], pa: int) -> list[tuple[int, Leaf]]:
    """Every virtual address that maps physical address ``pa``, with its leaf, by VA.

    This is ``ptov``: a page can be mapped many times (direct map, kernel
    text, vmalloc, espfix), and each mapping is an answer.
    """
    if isinstance(leaves, LeafSequence):
        arrays = leaves.arrays
        found = [
            (va, arrays.records(int(i), int(i) + 1)[0])
            for va, i in zip(*_aliases(arrays, pa), strict=True)
        ]
    else:
        found = [
            (leaf.va + (pa - leaf.pa), leaf)
            for leaf in leaves
            if isinstance(leaf, Leaf) and leaf.pa <= pa < leaf.pa + leaf.size
        ]
    found.sort(key=lambda pair: pair[0])
    return found


def find_alias_addresses(leaves: Iterable[Leaf], pa: int) -> list[int]:
    """The virtual addresses of :func:`find_aliases`, ascending, without the leaves."""
    if isinstance(leaves, LeafSequence):
        return sorted(_aliases(leaves.arrays, pa)[0])
    return [va for va, _leaf in find_aliases(leaves, pa)]


def _aliases(arrays: LeafArrays, pa: int) -> tuple[list[int], list[int]]:
    import numpy as np

    if not 0 <= pa < 1 << 64:
        return [], []
    where = np.uint64(pa)
    hits = np.flatnonzero((arrays.pa <= where) & (where < arrays.pa + arrays.size))
    vas = (arrays.va[hits] + (where - arrays.pa[hits])).tolist()
    return vas, hits.tolist()


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
    starting at or past one is not merged with a range before it). Done on the
    arrays (:class:`RangeList`), at once.
    """
    import numpy as np

    table = ranges if isinstance(ranges, RangeList) else RangeList.from_ranges(ranges)
    n = len(table)
    if n == 0:
        return []
    start, size = table.start, table.page_size
    if n > 1:
        end = start + table.counts.astype(np.uint64) * size  # only the last can wrap (2**64)
        following, before = start[1:], end[:-1]
        same = (following < before) | (following - before <= np.uint64(max(0, max_gap)))
        same &= size[1:] == size[:-1]
        same &= table.rights[1:] == table.rights[:-1]
        same &= table.attributes[1:] == table.attributes[:-1]
        stops = np.array(sorted({b for b in breaks if 0 <= b < 1 << 64}), dtype=np.uint64)
        if len(stops):
            region = np.searchsorted(stops, start, side="right")
            same &= region[1:] == region[:-1]
        firsts = np.flatnonzero(np.concatenate(([True], ~same)))
    else:
        firsts = np.zeros(1, dtype=np.intp)
    lasts = np.append(firsts[1:], n) - 1
    mapped = np.add.reduceat(table.counts.astype(np.uint64) * size, firsts).tolist()
    last_ends = [
        s + c * z
        for s, c, z in zip(
            start[lasts].tolist(), table.counts[lasts].tolist(), size[lasts].tolist(), strict=True
        )
    ]
    first_records = [table[i] for i in firsts.tolist()]
    return [
        CompactRange(_spanning(first, last_end), int(pieces), pieces_mapped)
        for first, last_end, pieces, pieces_mapped in zip(
            first_records, last_ends, (lasts - firsts + 1).tolist(), mapped, strict=True
        )
    ]


def _spanning(first: Range, end: int) -> Range:
    if end == first.end:
        return first
    return Range(first.start, end, first.phys, first.page_size, first.permissions, first.attributes)
