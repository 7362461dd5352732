"""Registers [1]: general and control registers, the values that changed since the last stop."""

from __future__ import annotations

from collections.abc import Mapping

from textual.app import ComposeResult

from ..messages import StopSeen
from ..widgets.registers import RegistersView
from .base import Pane

__all__ = ["RegistersPane"]


class RegistersPane(Pane):
    NAME = "registers"
    TITLE = "Registers [1]"
    KEY = "1"
    KEY_HELP = "Regs"
    HELP = "general and control registers; yellow = changed since the last stop"
    PALETTE = ("Registers", "General and control registers, changes highlighted (1)")
    FOCUS = "#registers-view"
    STOP_ORDER = 0  # the registers came with the stop: shown first

    def __init__(self) -> None:
        super().__init__()
        self.previous: Mapping[str, int] | None = None

    def compose(self) -> ComposeResult:
        yield RegistersView(id="registers-view")

    def on_mount(self) -> None:
        self.query_one(RegistersView).symbolize = self.kinspect.symbolize

    def on_stop_seen(self, message: StopSeen) -> None:
        self.last_stop = message.stopped
        snapshot = message.stopped.snapshot
        if snapshot is None:
            return
        self.query_one(RegistersView).show(snapshot, self.previous)
        self.previous = snapshot.values
        self.read_at = message.stopped.number
        seen = message.stopped.seen_at or snapshot.taken
        self.call_after_refresh(self.kinspect.drawn, "registers", seen)

    def export_text(self) -> str:
        return self.query_one(RegistersView).export_text()
