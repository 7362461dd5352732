"""Fault [9]: the exception the CPU is in, as ``kinspect fault`` explains it.

At every stop the pane asks whether the CPU stopped at an IDT handler's first
instruction (a catchpoint, or a breakpoint on a handler): the registers and
the IDT's handlers, which a stop reads anyway, and 48 bytes of stack. Only
then does it ask :meth:`Session.fault` for the report (the backtrace that
``fault`` falls back to is not read at every stop), and it shows the report's
own text, so the pane and the CLI cannot disagree. A stop in an exception
shows this pane at once.

Its tab is hidden until then (or until its key shows it): a kernel that never
faults keeps the tab bar it had.
"""

from __future__ import annotations

from textual import events
from textual.app import ComposeResult
from textual.message import Message
from textual.widgets import TabbedContent

from kinspect.inspector.errors import InspectorError
from kinspect.inspector.fault import exception_at_stop
from kinspect.inspector.session import Session

from ..widgets.fault import FaultView
from .base import Pane

__all__ = ["FaultPane", "read_fault"]


def read_fault(session: Session) -> tuple[str | None, str | None]:
    """(the text of ``kinspect fault``, None) when the CPU is at a handler's entry;
    (None, why not) when it is there but the exception cannot be read; (None, None) else."""
    try:
        if exception_at_stop(session) is None:
            return None, None
        return str(session.fault()), None
    except InspectorError as exc:
        return None, f"at an IDT handler's entry, but the exception cannot be read: {exc}"


class FaultPane(Pane):
    NAME = "fault"
    TITLE = "Fault [9]"
    KEY = "9"
    KEY_HELP = "Fault"
    HELP = (
        "the exception the CPU stopped in (at a handler's entry: :catch 14), as kinspect "
        "fault explains it; shown at once when a stop lands in one"
    )
    PALETTE = ("Fault", "Why the CPU took the exception it is in (9)")
    FOCUS = "#fault-view"
    STOP_ORDER = 20  # before the slow views: it may switch the tab

    class Read(Message, bubble=False):
        def __init__(self, stop: int, text: str | None, error: str | None) -> None:
            super().__init__()
            self.at_stop = stop
            self.text = text
            self.error = error

    def compose(self) -> ComposeResult:
        yield FaultView(id="fault-view")

    def on_mount(self) -> None:
        self.call_after_refresh(self._tabs().hide_tab, self.NAME)

    def on_show(self, event: events.Show) -> None:
        self._tabs().show_tab(self.NAME)  # shown by its key, the palette or a fault

    def _tabs(self) -> TabbedContent:
        return next(node for node in self.ancestors if isinstance(node, TabbedContent))

    def load(self) -> None:
        stop = self.last_stop.number if self.last_stop is not None else 0
        self.read("fault", read_fault, lambda result: self.Read(stop, *result))

    def on_fault_pane_read(self, message: Read) -> None:
        self.read_at = message.at_stop
        self.query_one(FaultView).show(message.text, message.error)
        if message.text is not None and not self.display:
            self.kinspect.action_tab(self.NAME)

    def export_text(self) -> str:
        return self.query_one(FaultView).export_text()
