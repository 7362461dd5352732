"""The coalesced range map: a virtual list that draws only the rows on screen.

A Linux guest has tens of thousands of ranges (65,000 on the captured 6.1
kernel); building a widget or a table row for each would take seconds. The
list keeps the rows as records and renders lines on demand (Textual's line
API), so a new stop or a new filter costs one list assignment.

On a kernel whose regions are known (Linux), a heading line
(``---[ direct map ]---``, as ``kinspect pt`` prints it) goes before the
first row of each region. Headings are not rows: the cursor, ``rows`` and
``current`` only know ranges, and a click on a heading selects the range
under it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from kinspect.inspector.linux.layout import RegionMap

from ..model import (
    ADDED,
    CHANGED,
    REMOVED,
    RangeFilter,
    RangeRow,
    RangeRows,
    format_range_row,
    format_range_row_fitted,
)
from .listnav import ListNav

__all__ = ["RangeList"]

FULL_ROW = 100  # the columns of a whole row (mark, start-end, size, physical, flags)
NARROWEST_ROW = 73  # mark, start, physical, flags

_MARK_STYLE = {
    ADDED: Style(color="green", bold=True),
    REMOVED: Style(color="red", strike=True),
    CHANGED: Style(color="yellow", bold=True),
}
_WX_STYLE = Style(color="magenta", bold=True)
_CURSOR = Style(reverse=True)
_HEADING_STYLE = Style(color="cyan", bold=True)


_LAST_ADDRESS = (1 << 64) - 1


def _bounds(rows: Sequence[RangeRow]) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """Each row's start and last byte, as arrays (the rows' own when they keep arrays)."""
    if isinstance(rows, RangeRows):
        return rows.starts, rows.lasts
    return (
        np.array([row.range.start for row in rows], dtype=np.uint64),
        np.array([row.range.end - 1 for row in rows], dtype=np.uint64),
    )


def format_heading(name: str) -> str:
    """ptdump's heading, as ``format_ranges_with_regions`` draws it for ``kinspect pt``."""
    return f"---[ {name} ]---"


class RangeList(ScrollView, ListNav, can_focus=True):
    """Rows of :class:`RangeRow`; the cursor row is the selected range.

    Narrower than a whole row, the columns collapse by priority
    (:func:`~kinspect.tui.model.format_range_row_fitted`): the end address
    goes first, then the size; the start, the physical address and the
    permissions stay.
    """

    NAV_WHAT = "the range map"
    OWN_SLASH = False  # the app's / opens the pane's box at once, before the next key
    BINDINGS = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump(-1)", "Last", show=False),
        Binding("enter", "select", "Walk", show=False),
    ]

    class Highlighted(Message):
        """The cursor moved to ``row`` (None when the list is empty).

        ``user``: moved by the user, not placed by new rows (a reload, a filter).
        """

        def __init__(
            self, range_list: RangeList, row: RangeRow | None, *, user: bool = True
        ) -> None:
            super().__init__()
            self.range_list = range_list
            self.row = row
            self.user = user

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: Search text to what the filter matches (a symbol or a register to its address).
        self.resolve_text: Callable[[str], str] = lambda text: text
        #: ``/``: the pane's search box, opened now (not by a message: the keys typed
        #: right after it must land in the box); None: the shared prompt.
        self.open_search: Callable[[], None] | None = None
        self.rows: Sequence[RangeRow] = ()
        self.cursor = 0
        self.headings: list[str] = []
        self.notes: Mapping[int, str] = {}
        # Screen lines: a row's index, or -(k + 1) for headings[k]; None: one line a row.
        self._lines: npt.NDArray[np.int64] | None = None
        self._line_of_row: npt.NDArray[np.int64] | None = None
        self._starts, self._lasts = _bounds(())
        self._frame_style: Style | None = None

    # -- attributes down --------------------------------------------------------------

    def set_rows(
        self,
        rows: Sequence[RangeRow],
        *,
        keep: int | None = None,
        regions: RegionMap | None = None,
        notes: Mapping[int, str] | None = None,
    ) -> None:
        """Show ``rows``; keep the cursor on the range starting at ``keep`` if present.

        ``regions``: where a heading goes (where the region changes);
        ``notes``: text after a row, by its range's start (a compact row's pieces).
        """
        self.rows = rows
        self.notes = notes or {}
        self._starts, self._lasts = _bounds(rows)
        self._layout(regions)
        index = 0
        if keep is not None:
            index = self.index_of(keep)
        self.virtual_size = Size(self._virtual_width(), self._line_count)
        self._move(index, force=True, user=False)
        self.refresh()

    def _layout(self, regions: RegionMap | None) -> None:
        """The screen lines: a heading before the first row of each region, as
        ``format_ranges_with_regions`` puts them (the region of every row at once)."""
        self.headings, self._lines, self._line_of_row = [], None, None
        if regions is None or not len(self.rows):
            return
        names = sorted({region.name for region in regions})
        name_code = np.array([names.index(region.name) for region in regions], dtype=np.int64)
        firsts = np.array([region.start for region in regions], dtype=np.uint64)
        lasts = np.array([region.end - 1 for region in regions], dtype=np.uint64)
        starts = self._starts
        at = np.searchsorted(firsts, starts, "right") - 1
        inside = (at >= 0) & (starts <= lasts[np.maximum(at, 0)])
        code = np.where(inside, name_code[np.maximum(at, 0)], -1)
        heading = (code >= 0) & (code != np.concatenate(([-1], code[:-1])))
        if not heading.any():
            return
        self.headings = [names[c] for c in code[heading].tolist()]
        line_of_row = np.arange(len(code)) + np.cumsum(heading)
        lines = np.empty(len(code) + len(self.headings), dtype=np.int64)
        lines[line_of_row] = np.arange(len(code))
        lines[line_of_row[heading] - 1] = -np.arange(1, len(self.headings) + 1)
        self._lines, self._line_of_row = lines, line_of_row

    def _virtual_width(self) -> int:
        """Wide enough for a whole row (and a compact row's note) where they are shown whole;
        narrower, the rows collapse to fit (no sideways scrolling for what is left out)."""
        return 110 if self.size.width >= FULL_ROW else NARROWEST_ROW

    def on_resize(self) -> None:
        self.virtual_size = Size(self._virtual_width(), self._line_count)

    @property
    def _line_count(self) -> int:
        return len(self.rows) if self._lines is None else len(self._lines)

    def _line_of(self, index: int) -> int:
        return index if self._line_of_row is None else int(self._line_of_row[index])

    def _row_at_line(self, line: int) -> int:
        """The row on screen line ``line`` (for a heading: the row under it)."""
        if self._lines is None:
            return line
        line = max(0, min(line, len(self._lines) - 1))
        item = int(self._lines[line])
        return item if item >= 0 else self._row_at_line(line + 1)

    def index_of(self, address: int) -> int:
        """The row whose range contains (or first follows) ``address``."""
        if not len(self.rows):
            return 0
        address = min(max(address, 0), _LAST_ADDRESS)
        at = int(np.searchsorted(self._lasts, np.uint64(address)))
        return min(at, len(self.rows) - 1)

    @property
    def current(self) -> RangeRow | None:
        return self.rows[self.cursor] if 0 <= self.cursor < len(self.rows) else None

    # -- drawing ---------------------------------------------------------------------------

    def render_lines(self, crop: Region) -> list[Strip]:
        self._frame_style = self.rich_style  # once a refresh: it walks the ancestors' styles
        try:
            return super().render_lines(crop)
        finally:
            self._frame_style = None

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        line = y + scroll_y
        width = self.size.width
        plain = self._frame_style or self.rich_style
        if line >= self._line_count:
            return Strip.blank(width, plain)
        index = line if self._lines is None else int(self._lines[line])
        if index < 0:
            text = format_heading(self.headings[-index - 1])
            strip = Strip([Segment(text.ljust(width + scroll_x), plain + _HEADING_STYLE)])
            return strip.crop(scroll_x, scroll_x + width)
        row = self.rows[index]
        text = self._text(row, width)
        p = row.range.permissions
        style = _MARK_STYLE.get(row.mark) or (_WX_STYLE if p.writable and p.executable else None)
        base = plain
        if style is not None:
            base = base + style
        if index == self.cursor:
            base = base + _CURSOR
        strip = Strip([Segment(text.ljust(max(width + scroll_x, len(text))), base)])
        return strip.crop(scroll_x, scroll_x + width)

    def _text(self, row: RangeRow, width: int | None = None) -> str:
        text = format_range_row(row) if width is None else format_range_row_fitted(row, width)
        note = self.notes.get(row.range.start) if self.notes and row.mark != REMOVED else None
        return text + note if note else text

    def export_text(self) -> str:
        if self._lines is None:
            return "\n".join(self._text(row) for row in self.rows) + "\n"
        return (
            "\n".join(
                self._text(self.rows[i]) if i >= 0 else format_heading(self.headings[-i - 1])
                for i in self._lines.tolist()
            )
            + "\n"
        )

    # -- moving ----------------------------------------------------------------------------

    def _move(self, index: int, *, force: bool = False, user: bool = True) -> None:
        if not self.rows:
            self.cursor = 0
            self.post_message(self.Highlighted(self, None, user=user))
            return
        index = max(0, min(index, len(self.rows) - 1))
        if index == self.cursor and not force:
            return
        self.cursor = index
        line = self._line_of(index)
        if line > 0 and self._lines is not None and int(self._lines[line - 1]) < 0:
            line -= 1  # the heading above the region's first row stays in view with it
        height = max(self.size.height, 1)
        top = int(self.scroll_offset.y)
        if line < top:
            self.scroll_to(y=line, animate=False, immediate=True)
        elif self._line_of(index) >= top + height:
            self.scroll_to(y=self._line_of(index) - height + 1, animate=False, immediate=True)
        self.refresh()
        self.post_message(self.Highlighted(self, self.rows[index], user=user))

    def move_to(self, address: int) -> None:
        self._move(self.index_of(address), force=True)

    def action_cursor(self, delta: int) -> None:
        self._move(self.cursor + delta)

    def action_page(self, direction: int) -> None:
        self._move(self.cursor + direction * max(self.size.height - 1, 1))

    def action_jump(self, where: int) -> None:
        self._move(len(self.rows) - 1 if where < 0 else 0)

    def action_select(self) -> None:
        self._move(self.cursor, force=True)

    # -- the shared list keys (ListNav) -------------------------------------------------------

    def nav_count(self) -> int:
        return len(self.rows)

    def nav_index(self) -> int:
        return self.cursor

    def nav_go(self, index: int) -> None:
        self._move(index, force=True)

    def nav_text(self, index: int) -> str:
        return format_range_row(self.rows[index])

    def nav_matcher(self, text: str) -> Callable[[int], bool]:
        flt = RangeFilter(text=self.resolve_text(text))
        return lambda index: flt.matches(self.rows[index])

    def _find(self, matches: Any, start: int, direction: int, *, wrap: bool) -> int | None:
        """The next match of the active search from ``start`` (as ListNav finds it), found
        among the rows' arrays at once when they are :class:`RangeRows`."""
        if not isinstance(self.rows, RangeRows):
            return super()._find(matches, start, direction, wrap=wrap)
        hits = np.flatnonzero(self.rows.keep(RangeFilter(text=self.resolve_text(self.search))))
        ahead = hits[hits >= start] if direction > 0 else hits[hits <= start][::-1]
        if len(ahead):
            return int(ahead[0])
        if wrap and len(hits):
            return int(hits[0] if direction > 0 else hits[-1])
        return None

    def action_nav_search(self) -> None:
        if self.open_search is None:
            super().action_nav_search()
        else:
            self.open_search()

    def on_click(self, event: events.Click) -> None:
        self._move(self._row_at_line(int(self.scroll_offset.y) + event.y), force=True)
