"""What the views show, computed from the session's records: no Textual here.

Range marks (added, removed, changed since the last stop) and the range
filters are plain functions over :class:`~inspector.x86.paging.Range`
lists, so they are tested without an app and the views stay thin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from inspector.formatting import format_size
from inspector.x86.paging import Range

__all__ = [
    "RangeFilter",
    "RangeRow",
    "RowTexts",
    "diff_ranges",
    "filter_rows",
    "format_range_row",
    "parse_number",
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


def parse_number(text: str) -> int | None:
    text = text.strip().replace("_", "")
    try:
        return int(text, 16) if text.lower().startswith("0x") else int(text, 0)
    except ValueError:
        return None


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
            number = parse_number(self.text)
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
) -> list[RangeRow]:
    """The rows ``flt`` keeps; ``texts`` (for ``rows``) saves re-formatting them."""
    if not flt.active:
        return list(rows)
    if flt.text and parse_number(flt.text) is None and texts is not None:
        lowered = texts.get()
        return [row for row, text in zip(rows, lowered, strict=True) if flt.matches(row, text)]
    return [row for row in rows if flt.matches(row)]


def format_range_row(row: RangeRow) -> str:
    """The ptdump columns, as ``format_ranges`` prints them, after a mark column."""
    r = row.range
    return (
        f"{row.mark or ' '} {r.start:#018x}-{r.end:#018x} {format_size(r.size):>6}  "
        f"{r.phys:#018x} {r.flags_text()}"
    )
