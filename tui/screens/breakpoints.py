"""The breakpoints (B): each one's number, address, where it is and how often it was hit.

The screen only presents and asks: it posts what the user wants
(:class:`BreakpointsScreen.DeleteRequested`, ``RefreshRequested``) and the
app runs it in the thread that owns the session (``Session.breakpoints()``,
``Session.break_delete()``), then hands the list back with
:meth:`BreakpointsScreen.show`. The app reads the list again at every stop
while the screen is open, so the hit counts follow the kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from kinspect.inspector.targets.base import Breakpoint

from ..widgets.listnav import NavTable

__all__ = ["BreakpointsScreen", "breakpoint_row"]

COLUMNS = ("Num", "Enb", "Hits", "Address", "Where")

HINT = "d / Delete: delete the highlighted one | D: delete all | r: read again | Escape: close"


def breakpoint_row(
    breakpoint: Breakpoint, symbolize: Callable[[int], str | None]
) -> tuple[str, str, str, str, str]:
    """The cells of one row: where is the debugger's text, or our symbol for a bare address."""
    address = f"{breakpoint.address:#018x}" if breakpoint.address is not None else "-"
    where = breakpoint.location
    if breakpoint.address is not None and (not where or where.startswith("*")):
        where = symbolize(breakpoint.address) or where
    if breakpoint.kind != "breakpoint":
        where = f"{breakpoint.kind}: {where}"
    return (
        str(breakpoint.number),
        "y" if breakpoint.enabled else "n",
        str(breakpoint.hits),
        address,
        where,
    )


class BreakpointsScreen(ModalScreen[None]):
    """The breakpoints as a table; delete one or all of them."""

    BINDINGS = [
        Binding("escape,q,B", "dismiss", "Close"),
        Binding("d,delete", "delete", "Delete"),
        Binding("D", "delete_all", "Delete all"),
        Binding("r", "refresh", "Read again"),
    ]

    class DeleteRequested(Message):
        """Delete these breakpoints (None: all of them)."""

        def __init__(self, numbers: tuple[int, ...] | None) -> None:
            super().__init__()
            self.numbers = numbers

    class RefreshRequested(Message):
        """Read the list again."""

    def __init__(self, symbolize: Callable[[int], str | None]) -> None:
        super().__init__()
        self.symbolize = symbolize
        self.breakpoints: list[Breakpoint] = []
        self.loaded = False  # a list arrived at least once

    def compose(self) -> ComposeResult:
        with Vertical(id="breakpoints-body"):
            yield Static(Text("Breakpoints", style="bold"), id="breakpoints-title")
            table = NavTable(id="breakpoint-table", cursor_type="row")
            table.add_columns(*COLUMNS)
            yield table
            yield Static("reading...", id="breakpoints-summary")
            yield Static(HINT, id="breakpoints-hint")

    # -- attributes down -----------------------------------------------------------------

    def show(self, breakpoints: Sequence[Breakpoint]) -> None:
        """The list as the session gave it; the cursor stays on its breakpoint when it can."""
        table = self.query_one(DataTable)
        keep = self.highlighted
        self.breakpoints = list(breakpoints)
        self.loaded = True
        table.clear()
        for bp in self.breakpoints:
            table.add_row(*breakpoint_row(bp, self.symbolize), key=str(bp.number))
        numbers = [bp.number for bp in self.breakpoints]
        if keep is not None and keep.number in numbers:
            table.move_cursor(row=numbers.index(keep.number))
        if not self.breakpoints:
            summary = "no breakpoints (b sets one)"
        else:
            hits = sum(bp.hits for bp in self.breakpoints)
            count = len(self.breakpoints)
            summary = (
                f"{count} breakpoint{'s' if count != 1 else ''}, "
                f"{hits} hit{'s' if hits != 1 else ''} in all"
            )
        self.query_one("#breakpoints-summary", Static).update(summary)

    def show_error(self, message: str) -> None:
        self.query_one("#breakpoints-summary", Static).update(Text(message, style="bold red"))

    @property
    def highlighted(self) -> Breakpoint | None:
        table = self.query_one(DataTable)
        if not self.breakpoints or not 0 <= table.cursor_row < len(self.breakpoints):
            return None
        return self.breakpoints[table.cursor_row]

    # -- messages up -----------------------------------------------------------------------

    def action_delete(self) -> None:
        bp = self.highlighted
        if bp is not None:
            self.post_message(self.DeleteRequested((bp.number,)))

    def action_delete_all(self) -> None:
        if self.breakpoints:
            self.post_message(self.DeleteRequested(None))

    def action_refresh(self) -> None:
        self.post_message(self.RefreshRequested())
