"""The coalesced range map: a virtual list that draws only the rows on screen.

A Linux guest has tens of thousands of ranges (65,000 on the captured 6.1
kernel); building a widget or a table row for each would take seconds. The
list keeps the rows as records and renders lines on demand (Textual's line
API), so a new stop or a new filter costs one list assignment.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from ..model import ADDED, CHANGED, REMOVED, RangeRow, format_range_row

__all__ = ["RangeList"]

_MARK_STYLE = {
    ADDED: Style(color="green", bold=True),
    REMOVED: Style(color="red", strike=True),
    CHANGED: Style(color="yellow", bold=True),
}
_WX_STYLE = Style(color="magenta", bold=True)
_CURSOR = Style(reverse=True)


class RangeList(ScrollView, can_focus=True):
    """Rows of :class:`RangeRow`; the cursor row is the selected range."""

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
        """The cursor moved to ``row`` (None when the list is empty)."""

        def __init__(self, range_list: RangeList, row: RangeRow | None) -> None:
            super().__init__()
            self.range_list = range_list
            self.row = row

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rows: Sequence[RangeRow] = ()
        self.cursor = 0

    # -- attributes down --------------------------------------------------------------

    def set_rows(self, rows: Sequence[RangeRow], *, keep: int | None = None) -> None:
        """Show ``rows``; keep the cursor on the range starting at ``keep`` if present."""
        self.rows = rows
        index = 0
        if keep is not None:
            index = self.index_of(keep)
        self.virtual_size = Size(110, len(rows))
        self._move(index, force=True)
        self.refresh()

    def index_of(self, address: int) -> int:
        """The row whose range contains (or first follows) ``address``."""
        lo, hi = 0, len(self.rows)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.rows[mid].range.end <= address:
                lo = mid + 1
            else:
                hi = mid
        return min(lo, max(len(self.rows) - 1, 0))

    @property
    def current(self) -> RangeRow | None:
        return self.rows[self.cursor] if 0 <= self.cursor < len(self.rows) else None

    # -- drawing ---------------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        index = y + scroll_y
        width = self.size.width
        if index >= len(self.rows):
            return Strip.blank(width, self.rich_style)
        row = self.rows[index]
        text = format_range_row(row)
        p = row.range.permissions
        style = _MARK_STYLE.get(row.mark) or (_WX_STYLE if p.writable and p.executable else None)
        base = self.rich_style
        if style is not None:
            base = base + style
        if index == self.cursor:
            base = base + _CURSOR
        strip = Strip([Segment(text.ljust(max(width + scroll_x, len(text))), base)])
        return strip.crop(scroll_x, scroll_x + width)

    def export_text(self) -> str:
        return "\n".join(format_range_row(row) for row in self.rows) + "\n"

    # -- moving ----------------------------------------------------------------------------

    def _move(self, index: int, *, force: bool = False) -> None:
        if not self.rows:
            self.cursor = 0
            self.post_message(self.Highlighted(self, None))
            return
        index = max(0, min(index, len(self.rows) - 1))
        if index == self.cursor and not force:
            return
        self.cursor = index
        height = max(self.size.height, 1)
        top = int(self.scroll_offset.y)
        if index < top:
            self.scroll_to(y=index, animate=False, immediate=True)
        elif index >= top + height:
            self.scroll_to(y=index - height + 1, animate=False, immediate=True)
        self.refresh()
        self.post_message(self.Highlighted(self, self.rows[index]))

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

    def on_click(self, event: events.Click) -> None:
        self._move(int(self.scroll_offset.y) + event.y, force=True)
