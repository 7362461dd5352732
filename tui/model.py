"""What the views show, computed from the session's records: no Textual here.

Range marks (added, removed, changed since the last stop) and the range
filters are plain functions over :class:`~inspector.x86.paging.Range`
lists, so they are tested without an app and the views stay thin. The
same goes for the EFI view's rows: each descriptor of the session's
:class:`~inspector.efi.memmap.MemoryMap`, its runtime mappings and how they
moved since the view last read them.

A Linux map has tens of thousands of ranges: the range map's rows are kept
as arrays (:class:`RangeTable`, over the walk's own
:class:`~inspector.x86.paging.RangeList`), marked, filtered and searched as
arrays, and a :class:`RangeRow` is made only for a row that is looked at
(:class:`RangeRows`). The plain functions over lists (:func:`diff_ranges`,
:func:`filter_rows`) say what the arrays must give, and tests hold them to it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar, overload

import numpy as np
import numpy.typing as npt

from kinspect.inspector.efi.memmap import (
    PAGE_SIZE,
    MemoryAttributesTable,
    MemoryDescriptor,
    MemoryMap,
    format_attributes,
)
from kinspect.inspector.formatting import format_range_lines, format_size
from kinspect.inspector.formatting import format_range_row as format_range_row_text
from kinspect.inspector.numbers import maybe_number
from kinspect.inspector.x86.paging import Range
from kinspect.inspector.x86.paging import RangeList as RangeArrays

__all__ = [
    "EfiFilter",
    "EfiRow",
    "RangeFilter",
    "RangeRow",
    "RangeRows",
    "RangeTable",
    "RangeTexts",
    "RowTexts",
    "attribute_entries_in",
    "diff_ranges",
    "efi_address_digits",
    "efi_rows",
    "efi_summary",
    "filter_efi_rows",
    "filter_rows",
    "format_efi_range",
    "format_efi_row",
    "format_mapped_at",
    "format_range_row",
    "format_range_row_fitted",
    "range_texts",
]

ADDED, REMOVED, CHANGED = "+", "-", "~"


@dataclass(frozen=True, slots=True)
class RangeRow:
    """A range and its mark since the last stop: ``""``, ``"+"``, ``"-"`` or ``"~"``."""

    range: Range
    mark: str = ""


def _same(a: Range, b: Range) -> bool:
    return (
        a.start == b.start
        and a.end == b.end
        and a.phys == b.phys
        and a.page_size == b.page_size
        and a.permissions == b.permissions
        and a.attributes == b.attributes
    )


def diff_ranges(old: Sequence[Range] | None, new: Sequence[Range]) -> list[RangeRow]:
    """The new ranges marked against the old ones, with the removed ones put back in.

    A new range identical to an old one is unmarked; one that overlaps old
    ranges but differs (permissions, attributes, frame, bounds) is ``~``;
    one over addresses nothing mapped before is ``+``. An old range that no
    new range overlaps is kept as a ``-`` row. Both lists are in VA order;
    one sweep, O(n + m). Without ``old`` (the first stop) nothing is marked.
    """
    if old is None:
        return [RangeRow(r) for r in new]
    rows: list[RangeRow] = []
    i = 0
    n_old = len(old)
    covered = [False] * n_old
    for r in new:
        while i < n_old and old[i].end <= r.start:
            i += 1
        j = i
        overlap = False
        identical = False
        while j < n_old and old[j].start < r.end:
            overlap = True
            covered[j] = True
            if _same(old[j], r):
                identical = True
            j += 1
        rows.append(RangeRow(r, "" if identical else (CHANGED if overlap else ADDED)))
    removed = [RangeRow(o, REMOVED) for o, seen in zip(old, covered, strict=True) if not seen]
    if removed:
        rows.extend(removed)
        rows.sort(key=lambda row: (row.range.start, row.mark == REMOVED))
    return rows


@dataclass(frozen=True, slots=True)
class RangeFilter:
    """The range map's filters: each flag set narrows the list (they combine with AND).

    ``text`` matches the row's text, case-insensitive; a number matches the
    ranges that contain it as a virtual address (or start with it).
    """

    user: bool = False
    kernel: bool = False
    writable: bool = False
    executable: bool = False
    wx: bool = False
    changed: bool = False
    text: str = ""

    def matches(self, row: RangeRow, text: str | None = None) -> bool:
        """``text``: the row's lower-cased text, when the caller keeps it."""
        r = row.range
        p = r.permissions
        if self.user and not p.user:
            return False
        if self.kernel and p.user:
            return False
        if self.writable and not p.writable:
            return False
        if self.executable and not p.executable:
            return False
        if self.wx and not (p.writable and p.executable):
            return False
        if self.changed and not row.mark:
            return False
        if self.text:
            number = maybe_number(self.text)
            if number is not None:
                return r.start <= number < r.end
            if text is None:
                text = format_range_row(row).lower()
            return self.text.lower() in text
        return True

    @property
    def active(self) -> bool:
        return any(
            (self.user, self.kernel, self.writable, self.executable, self.wx, self.changed)
        ) or bool(self.text)


class RowTexts:
    """The lower-cased text of each row, made once per stop on the first text search."""

    def __init__(self, rows: Sequence[RangeRow]) -> None:
        self._rows = rows
        self._texts: list[str] | None = None

    def get(self) -> list[str]:
        if self._texts is None:
            self._texts = [format_range_row(row).lower() for row in self._rows]
        return self._texts


def filter_rows(
    rows: Sequence[RangeRow], flt: RangeFilter, texts: RowTexts | None = None
) -> Sequence[RangeRow]:
    """The rows ``flt`` keeps; ``texts`` (for ``rows``) saves re-formatting them.

    :class:`RangeRows` are filtered as arrays (``texts`` is not needed)."""
    if isinstance(rows, RangeRows):
        return rows.filter(flt)
    if not flt.active:
        return list(rows)
    if flt.text and maybe_number(flt.text) is None and texts is not None:
        lowered = texts.get()
        return [row for row, text in zip(rows, lowered, strict=True) if flt.matches(row, text)]
    return [row for row in rows if flt.matches(row)]


def format_range_row(row: RangeRow) -> str:
    """The ptdump columns, as ``format_ranges`` prints them, after a mark column."""
    return f"{row.mark or ' '} {format_range_row_text(row.range)}"


def format_range_row_fitted(row: RangeRow, width: int) -> str:
    """The row in ``width`` columns, the columns collapsing by priority.

    The whole row when it fits; else the end address goes, then the size;
    the mark, the start, the physical address and the flags (permissions
    first) stay to the last: an 80-column terminal shows them. Every row of
    a list collapses alike (the flags keep their columns), so the columns
    stay aligned.
    """
    full = format_range_row(row)
    if len(full) <= width:
        return full
    r = row.range
    mark = row.mark or " "
    flags = r.flags_text()
    if width >= 80:
        return f"{mark} {r.start:#018x} {format_size(r.size):>6} {r.phys:#018x} {flags}"
    return f"{mark} {r.start:#018x} {r.phys:#018x} {flags}"


# -- the range map as arrays ------------------------------------------------------------------

U64 = npt.NDArray[np.uint64]
U8 = npt.NDArray[np.uint8]
Bools = npt.NDArray[np.bool_]
Ints = npt.NDArray[np.int64]
RangeTexts = npt.NDArray[np.uint8]
"""Rows of text as bytes, one row a range, zero bytes where a row ends (:func:`range_texts`)."""

_MARKS = ("", ADDED, REMOVED, CHANGED)
"""The marks by code (:attr:`RangeTable.marks`)."""
_MARK_CODE = {mark: code for code, mark in enumerate(_MARKS)}
_MARK_CHARS = np.frombuffer(b" +-~", dtype=np.uint8)  # the mark column's character by code
_LAST_ADDRESS = (1 << 64) - 1
_BLOCK = 256  # ranges made into records together, when one of them is looked at


def _rights(r: Range) -> int:
    p = r.permissions
    return int(p.writable) | int(p.user) << 1 | int(p.executable) << 2


def _range_arrays(ranges: Sequence[Range]) -> tuple[U64, U64, U8]:
    """Each range's start, last byte (its end - 1: within 64 bits even for a range that
    ends at 2**64) and rights (W=1, U=2, X=4), from the walk's arrays when it has them."""
    if isinstance(ranges, RangeArrays):
        last = ranges.start + ranges.counts.astype(np.uint64) * ranges.page_size - np.uint64(1)
        return ranges.start, last, ranges.rights.astype(np.uint8)
    return (
        np.array([r.start for r in ranges], dtype=np.uint64),
        np.array([r.end - 1 for r in ranges], dtype=np.uint64),
        np.array([_rights(r) for r in ranges], dtype=np.uint8),
    )


def _comparable(old: Sequence[Range], new: Sequence[Range]) -> bool:
    """Both the walk's arrays, with attribute codes that mean the same in both."""
    return (
        isinstance(old, RangeArrays)
        and isinstance(new, RangeArrays)
        and old.attributes.dtype == np.uint8
        and new.attributes.dtype == np.uint8
    )


def _text_matrix(lines: Sequence[bytes]) -> U8:
    width = max(map(len, lines), default=0) + 1
    data = b"".join(line.ljust(width, b"\0") for line in lines)
    return np.frombuffer(data, dtype=np.uint8).reshape(len(lines), width)


def range_texts(ranges: Sequence[Range]) -> RangeTexts:
    """Each range's ptdump columns (``format_range_row`` of inspector.formatting), lower
    case, one row of bytes each (zero bytes where a row ends early).

    The walk's arrays are written by ``format_range_lines``, the same text from the
    arrays a run of rows at a time (no record made per row)."""
    if not isinstance(ranges, RangeArrays) or not len(ranges):
        return _text_matrix([format_range_row_text(r).lower().encode() for r in ranges])
    rows = "".join(format_range_lines(ranges)).lower().encode().split(b"\n")
    rows.pop()  # after the last newline
    texts = np.array(rows)
    return texts.view(np.uint8).reshape(len(rows), texts.dtype.itemsize)


Values = TypeVar("Values", bound=np.generic)


def _interleave(
    mine: npt.NDArray[Values], gone: npt.NDArray[Values], order: Ints
) -> npt.NDArray[Values]:
    """The rows' values in ``order`` (``i >= 0``: ``mine[i]``, ``i < 0``: ``gone[-i - 1]``)."""
    both = np.empty(len(order), dtype=mine.dtype)
    kept = order >= 0
    both[kept] = mine[order[kept]]
    both[~kept] = gone[-order[~kept] - 1]
    return both


class RangeTable:
    """The range map's rows at one stop, as arrays.

    ``walked``: the ranges of this stop (what the next stop is marked
    against). The rows are ``ranges`` (the walked ones, or rows made by
    :func:`diff_ranges`) with ``removed`` (ranges gone since the previous
    stop) put back in VA order: ``order`` says which is where (``None``:
    no removed rows; ``i >= 0``: ``ranges[i]``; ``i < 0``: ``removed[-i - 1]``).
    Per row: ``marks`` (codes of ``""``, ``+``, ``-``, ``~``), ``start``,
    ``last`` (the last byte) and ``rights`` (W=1, U=2, X=4). The rows' text
    (for a text search) is made on the first search and kept for the next
    stop's table when its ranges are the same.
    """

    __slots__ = (
        "_blocks",
        "_found",
        "_range_texts",
        "_rows",
        "_texts",
        "last",
        "marks",
        "order",
        "ranges",
        "removed",
        "rights",
        "start",
        "walked",
    )

    def __init__(
        self,
        ranges: Sequence[Range],
        marks: U8 | None = None,
        *,
        removed: Sequence[Range] = (),
        order: Ints | None = None,
        walked: Sequence[Range] | None = None,
    ) -> None:
        self.ranges = ranges
        self.removed = list(removed)
        self.order = order
        self.walked = ranges if walked is None else walked
        count = len(ranges) + len(self.removed)
        self.marks: U8 = np.zeros(count, dtype=np.uint8) if marks is None else marks
        start, last, rights = _range_arrays(ranges)
        if order is not None:
            gone_start, gone_last, gone_rights = _range_arrays(self.removed)
            start = _interleave(start, gone_start, order)
            last = _interleave(last, gone_last, order)
            rights = _interleave(rights, gone_rights, order)
        self.start: U64 = start
        self.last: U64 = last
        self.rights: U8 = rights
        self._rows: dict[int, RangeRow] = {}
        self._blocks: dict[int, list[Range]] = {}
        self._range_texts: U8 | None = None
        self._texts: npt.NDArray[np.bytes_] | None = None
        self._found: tuple[str, Bools] | None = None

    @classmethod
    def marked(
        cls, previous: RangeTable | None, ranges: Sequence[Range], texts: RangeTexts | None = None
    ) -> RangeTable:
        """``ranges`` marked against the ranges ``previous`` was made for, as
        :func:`diff_ranges` marks them (nothing marked without ``previous``).

        Unchanged ranges (the walk's very arrays, which a walk gives again when no
        table changed, or equal ranges) with nothing marked before give ``previous``
        itself: nothing to do at such a stop. ``texts``: :func:`range_texts` of
        ``ranges``, when it was made already (away from the UI thread).
        """
        table = cls._marked(previous, ranges)
        if texts is not None and table.ranges is ranges and table._range_texts is None:
            table._range_texts = texts
        return table

    @classmethod
    def _marked(cls, previous: RangeTable | None, ranges: Sequence[Range]) -> RangeTable:
        if previous is None:
            return cls(ranges)
        old = previous.walked
        unmarked = previous.order is None and not previous.marks.any()
        if ranges is old or (
            not isinstance(ranges, RangeArrays)
            and not isinstance(old, RangeArrays)
            and len(ranges) == len(old)
            and all(a == b for a, b in zip(ranges, old, strict=True))
        ):
            if unmarked:
                return previous
            table = cls(ranges)
            if ranges is old and previous.ranges is old:
                table._range_texts = previous._range_texts
            return table
        if _comparable(old, ranges):
            assert isinstance(old, RangeArrays) and isinstance(ranges, RangeArrays)
            return cls._diffed(old, ranges)
        rows = diff_ranges(old, ranges)
        return cls(
            [row.range for row in rows],
            np.array([_MARK_CODE[row.mark] for row in rows], dtype=np.uint8),
            walked=ranges,
        )

    @classmethod
    def _diffed(cls, old: RangeArrays, new: RangeArrays) -> RangeTable:
        """:func:`diff_ranges` on the walk's arrays: each new range's overlaps found by
        binary search over the old ones (both are sorted and disjoint)."""
        old_start, old_last, _ = _range_arrays(old)
        new_start, new_last, _ = _range_arrays(new)
        n, m = len(new_start), len(old_start)
        if not m:
            return cls(new, np.full(n, _MARK_CODE[ADDED], dtype=np.uint8))
        first = np.searchsorted(old_last, new_start, "left")  # the first old one ending after
        stop = np.searchsorted(old_start, new_last, "right")  # past the last starting before
        k = np.minimum(np.searchsorted(old_start, new_start, "left"), m - 1)
        same = (
            (old_start[k] == new_start)
            & (old_last[k] == new_last)
            & (old.phys[k] == new.phys)
            & (old.page_size[k] == new.page_size)
            & (old.rights[k] == new.rights)
            & (old.attributes[k] == new.attributes)
        )
        marks = np.where(
            same, 0, np.where(stop > first, _MARK_CODE[CHANGED], _MARK_CODE[ADDED])
        ).astype(np.uint8)
        if n:
            a = np.minimum(np.searchsorted(new_last, old_start, "left"), n - 1)
            covered = (new_last[a] >= old_start) & (new_start[a] <= old_last)
            gone = np.flatnonzero(~covered)
        else:
            gone = np.arange(m)
        if not len(gone):
            return cls(new, marks)
        at = np.searchsorted(new_start, old_start[gone], "right") + np.arange(len(gone))
        is_gone = np.zeros(n + len(gone), dtype=np.bool_)
        is_gone[at] = True
        order = np.empty(n + len(gone), dtype=np.int64)
        order[~is_gone] = np.arange(n)
        order[is_gone] = -np.arange(1, len(gone) + 1)
        all_marks = np.empty(n + len(gone), dtype=np.uint8)
        all_marks[~is_gone] = marks
        all_marks[is_gone] = _MARK_CODE[REMOVED]
        removed = [old[i] for i in gone.tolist()]
        return cls(new, all_marks, removed=removed, order=order)

    def __len__(self) -> int:
        return len(self.marks)

    def range(self, i: int) -> Range:
        """The range of row ``i``."""
        if self.order is not None:
            at = int(self.order[i])
            if at < 0:
                return self.removed[-at - 1]
            i = at
        if not isinstance(self.ranges, RangeArrays):
            return self.ranges[i]
        block = self._blocks.get(i // _BLOCK)
        if block is None:
            first = i - i % _BLOCK
            block = self._blocks[i // _BLOCK] = self.ranges.records(first, first + _BLOCK)
        return block[i % _BLOCK]

    def row(self, i: int) -> RangeRow:
        """Row ``i`` as a record (made once)."""
        row = self._rows.get(i)
        if row is None:
            row = self._rows[i] = RangeRow(self.range(i), _MARKS[self.marks[i]])
        return row

    @property
    def changed(self) -> int:
        """Rows marked."""
        return int(np.count_nonzero(self.marks))

    def count_wx(self) -> int:
        """Walked ranges both writable and executable (removed rows are not counted)."""
        rights = _range_arrays(self.walked)[2]
        return int(np.count_nonzero((rights & 5) == 5))

    def texts(self) -> npt.NDArray[np.bytes_]:
        """Each row's lower-cased text, as :func:`format_range_row` (mark first)."""
        if self._texts is None:
            if self._range_texts is None:
                self._range_texts = range_texts(self.ranges)
            mine = self._range_texts
            gone = range_texts(self.removed)
            width = max(mine.shape[1], gone.shape[1]) + 2
            out = np.zeros((len(self), width), dtype=np.uint8)
            out[:, 0] = _MARK_CHARS[self.marks]
            out[:, 1] = ord(" ")
            if self.order is None:
                out[:, 2 : 2 + mine.shape[1]] = mine
            else:
                kept = self.order >= 0
                out[kept, 2 : 2 + mine.shape[1]] = mine[self.order[kept]]
                out[~kept, 2 : 2 + gone.shape[1]] = gone[-self.order[~kept] - 1]
            self._texts = out.view(f"S{width}").ravel()
        return self._texts

    def keep(self, flt: RangeFilter) -> Bools:
        """Which rows ``flt`` keeps (:meth:`RangeFilter.matches` on every row, at once)."""
        keep = np.ones(len(self), dtype=np.bool_)
        rights = self.rights
        if flt.user:
            keep &= (rights & 2) != 0
        if flt.kernel:
            keep &= (rights & 2) == 0
        if flt.writable:
            keep &= (rights & 1) != 0
        if flt.executable:
            keep &= (rights & 4) != 0
        if flt.wx:
            keep &= (rights & 5) == 5
        if flt.changed:
            keep &= self.marks != 0
        if flt.text:
            keep &= self._matching(flt.text)
        return keep

    def _matching(self, text: str) -> Bools:
        if self._found is not None and self._found[0] == text:
            return self._found[1]
        number = maybe_number(text)
        if number is None:
            found = np.char.find(self.texts(), text.lower().encode()) >= 0
        elif 0 <= number <= _LAST_ADDRESS:
            at = np.uint64(number)
            found = (self.start <= at) & (at <= self.last)
        else:
            found = np.zeros(len(self), dtype=np.bool_)
        self._found = (text, found)
        return found


class RangeRows(Sequence[RangeRow]):
    """Rows of a :class:`RangeTable` in order: all of them, or those at ``positions`` (the
    ones a filter keeps). A :class:`RangeRow` is made when a row is looked at, so a
    list of 65,000 rows costs its arrays only. Equal to a list of the same rows."""

    __slots__ = ("positions", "table")

    def __init__(self, table: RangeTable, positions: Ints | None = None) -> None:
        self.table = table
        self.positions = positions

    def __len__(self) -> int:
        return len(self.table) if self.positions is None else len(self.positions)

    @overload
    def __getitem__(self, i: int) -> RangeRow: ...

    @overload
    def __getitem__(self, i: slice) -> list[RangeRow]: ...

    def __getitem__(self, i: int | slice) -> RangeRow | list[RangeRow]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("row index out of range")
        return self.table.row(i if self.positions is None else int(self.positions[i]))

    def __iter__(self) -> Iterator[RangeRow]:
        row = self.table.row
        for i in range(len(self.table)) if self.positions is None else self.positions.tolist():
            yield row(i)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{len(self)} range rows>"

    def _pick(self, values: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
        return values if self.positions is None else values[self.positions]

    @property
    def starts(self) -> U64:
        return self._pick(self.table.start)  # type: ignore[return-value]

    @property
    def lasts(self) -> U64:
        return self._pick(self.table.last)  # type: ignore[return-value]

    def keep(self, flt: RangeFilter) -> Bools:
        """Which of these rows ``flt`` keeps."""
        return self._pick(self.table.keep(flt))  # type: ignore[return-value]

    def filter(self, flt: RangeFilter) -> RangeRows:
        """The rows ``flt`` keeps (these rows themselves when it keeps all)."""
        if not flt.active:
            return self
        keep = self.table.keep(flt)
        if self.positions is None:
            return RangeRows(self.table, np.flatnonzero(keep))
        return RangeRows(self.table, self.positions[keep[self.positions]])

    def index_of(self, address: int) -> int:
        """The row whose range contains (or first follows) ``address``; 0 with no rows."""
        if not len(self):
            return 0
        at = int(np.searchsorted(self.lasts, np.uint64(min(max(address, 0), _LAST_ADDRESS))))
        return min(at, len(self) - 1)


# -- the UEFI memory map (the EFI view) ------------------------------------------------------

NOT_MAPPED = "not mapped"


@dataclass(frozen=True, slots=True)
class EfiRow:
    """One EFI_MEMORY_DESCRIPTOR as the EFI view lists it.

    ``mapped_at``: for a runtime region, the virtual addresses that map its
    first page now (the session's ``MemoryMap.mapped_at``). ``mark``: how
    they moved since the view last read the map: ``+`` mapped where it was
    not, ``-`` no longer mapped, ``~`` mapped elsewhere, ``""`` the same.
    """

    descriptor: MemoryDescriptor
    mapped_at: tuple[int, ...] = ()
    mark: str = ""

    @property
    def runtime(self) -> bool:
        return self.descriptor.runtime


def _mapping_mark(old: tuple[int, ...], new: tuple[int, ...]) -> str:
    if old == new:
        return ""
    if not old:
        return ADDED
    if not new:
        return REMOVED
    return CHANGED


def efi_rows(memory_map: MemoryMap, previous: MemoryMap | None = None) -> list[EfiRow]:
    """Every descriptor, in the map's order, runtime ones with their mappings.

    Marks compare with ``previous`` (the map the view showed before) only
    when it holds the same descriptors: the map itself never changes after
    ExitBootServices, so a different one is another kernel (a reconnect),
    and nothing is marked.
    """
    same = previous is not None and previous.descriptors == memory_map.descriptors
    rows = []
    for d in memory_map.descriptors:
        if not d.runtime:
            rows.append(EfiRow(d))
            continue
        now = tuple(memory_map.mapped_at.get(d.index, ()))
        mark = (
            _mapping_mark(tuple(previous.mapped_at.get(d.index, ())), now)
            if same and previous is not None
            else ""
        )
        rows.append(EfiRow(d, now, mark))
    return rows


@dataclass(frozen=True, slots=True)
class EfiFilter:
    """The EFI view's filters (AND): runtime regions only, mappings changed only."""

    runtime: bool = False
    changed: bool = False

    def matches(self, row: EfiRow) -> bool:
        if self.runtime and not row.runtime:
            return False
        return not (self.changed and not row.mark)


def filter_efi_rows(rows: Sequence[EfiRow], flt: EfiFilter) -> list[EfiRow]:
    return [row for row in rows if flt.matches(row)]


def efi_address_digits(descriptors: Sequence[MemoryDescriptor]) -> int:
    """Hex digits for physical addresses: enough for the map's highest, at least 8."""
    highest = max((d.physical_end - 1 for d in descriptors), default=0)
    return max(8, len(f"{highest:x}"))


def format_efi_range(d: MemoryDescriptor, digits: int = 16) -> str:
    """``0x0f5ec000-0x0f6ebfff``: first and last byte, as the kernel's ``[mem ...]`` lines."""
    width = digits + 2
    return f"{d.physical_start:#0{width}x}-{max(d.physical_end - 1, d.physical_start):#0{width}x}"


def format_mapped_at(mapped_at: Sequence[int], limit: int | None = None) -> str:
    """``0xf5ec000, 0xffff88800f5ec000``, ``... (+3)`` past ``limit``, or ``not mapped``."""
    if not mapped_at:
        return NOT_MAPPED
    shown = mapped_at if limit is None else mapped_at[:limit]
    text = ", ".join(f"{va:#x}" for va in shown)
    if len(mapped_at) > len(shown):
        text += f" (+{len(mapped_at) - len(shown)})"
    return text


def format_efi_row(row: EfiRow, digits: int = 16, limit: int | None = None) -> str:
    """One line: mark, index, type, physical range, pages, attributes, and where it is mapped."""
    d = row.descriptor
    line = (
        f"{row.mark or ' '} {d.index:4} {d.type_name:<23} {format_efi_range(d, digits)} "
        f"{d.number_of_pages:>8}  {format_attributes(d.attribute)}"
    )
    if row.runtime:
        line += f"  {format_mapped_at(row.mapped_at, limit)}"
    return line


def attribute_entries_in(
    attributes: MemoryAttributesTable | None, d: MemoryDescriptor
) -> list[MemoryDescriptor]:
    """The memory attributes table's entries (RO/XP splits) that lie inside ``d``."""
    if attributes is None:
        return []
    return [
        e
        for e in attributes.entries
        if d.physical_start <= e.physical_start and e.physical_end <= d.physical_end
    ]


def efi_summary(
    memory_map: MemoryMap,
    attributes: MemoryAttributesTable | str | None,
    rows: Sequence[EfiRow],
    since: int | None = None,
) -> str:
    """The summary line: descriptors and stride, runtime regions and pages, how many mapped.

    ``attributes``: the table, None when the kernel kept none, or why it
    could not be read. ``since``: the stop the marks compare with.
    """
    runtime = [row for row in rows if row.runtime]
    mapped = sum(1 for row in runtime if row.mapped_at)
    pages = sum(row.descriptor.number_of_pages for row in runtime)
    if attributes is None:
        table = "no memory attributes table"
    elif isinstance(attributes, str):
        table = f"memory attributes table: {attributes}"
    else:
        table = f"memory attributes table: {len(attributes.entries)} entries"
    text = (
        f"{len(memory_map.descriptors)} descriptors, {memory_map.descriptor_size} bytes apart"
        f" (version {memory_map.descriptor_version}) | {len(runtime)} runtime regions,"
        f" {pages} pages ({format_size(pages * PAGE_SIZE)}): {mapped} mapped,"
        f" {len(runtime) - mapped} not mapped | {table}"
    )
    if since is not None:
        text += f" | mappings changed since stop {since}: {sum(1 for row in rows if row.mark)}"
    return text
