"""What the views show, computed from the session's records: no Textual here.

Range marks (added, removed, changed since the last stop) and the range
filters are plain functions over :class:`~inspector.x86.paging.Range`
lists, so they are tested without an app and the views stay thin. The
same goes for the EFI view's rows: each descriptor of the session's
:class:`~inspector.efi.memmap.MemoryMap`, its runtime mappings and how they
moved since the view last read them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kinspect.inspector.efi.memmap import (
    PAGE_SIZE,
    MemoryAttributesTable,
    MemoryDescriptor,
    MemoryMap,
    format_attributes,
)
from kinspect.inspector.formatting import format_range_row as format_range_row_text
from kinspect.inspector.formatting import format_size
from kinspect.inspector.numbers import maybe_number
from kinspect.inspector.x86.paging import Range

__all__ = [
    "EfiFilter",
    "EfiRow",
    "RangeFilter",
    "RangeRow",
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
) -> list[RangeRow]:
    """The rows ``flt`` keeps; ``texts`` (for ``rows``) saves re-formatting them."""
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
