"""Stack [5]: the frames of the stopped CPU (``kinspect bt``), the highlighted one's source."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.message import Message

from ..widgets.stack import StackView
from .base import Pane

__all__ = ["StackPane"]


class StackPane(Pane):
    NAME = "stack"
    TITLE = "Stack [5]"
    KEY = "5"
    KEY_HELP = "Stack"
    HELP = (
        "the frames of the stopped CPU: symbol, file:line, how each frame was found, the "
        "mapping of its stack slot, interrupt frames crossed; the frame's source beside"
    )
    PALETTE = ("Stack", "The backtrace of the stopped CPU (5)")
    FOCUS = "#frames"
    STOP_ORDER = 10  # the unwinder is the slowest read: it goes first

    class Read(Message, bubble=False):
        def __init__(self, backtrace: Any, seen: float) -> None:
            super().__init__()
            self.backtrace = backtrace
            self.seen = seen

    class Failed(Message, bubble=False):
        def __init__(self, error: BaseException) -> None:
            super().__init__()
            self.error = error

    def compose(self) -> ComposeResult:
        yield StackView(id="stack-view")

    def load(self) -> None:
        seen = self.kinspect.link.stop_seen_at
        self.read(
            "stack",
            lambda session: session.backtrace(),
            lambda backtrace: self.Read(backtrace, seen),
            failed=self.Failed,
        )

    def on_stack_pane_read(self, message: Read) -> None:
        self.query_one(StackView).show(message.backtrace)
        self.call_after_refresh(self.kinspect.drawn, "stack", message.seen)

    def on_stack_pane_failed(self, message: Failed) -> None:
        self.query_one(StackView).show_error(str(message.error))
        self.kinspect.report_failure(message.error)

    def export_text(self) -> str:
        return self.query_one(StackView).export_text()
