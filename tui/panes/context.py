"""Context [0]: registers, code around RIP, the stack telescope and the frames on one screen.

pwndbg's context, as a view of its own: each part is the same call its own
view and the CLI make (``disasm``, ``telescope``, ``bt``); read when shown,
again at each stop while it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from textual.app import ComposeResult
from textual.message import Message

from kinspect.inspector.context import disassemble, telescope
from kinspect.inspector.errors import InspectorError, TargetLost
from kinspect.inspector.session import Session

from ..messages import StopSeen
from ..widgets.context import ContextData, ContextView
from .base import Pane

__all__ = ["ContextPane"]

#: What is read for the page (the layout cuts what does not fit).
BEFORE, AFTER, SLOTS = 8, 32, 24


class ContextPane(Pane):
    NAME = "context"
    TITLE = "Context [0]"
    KEY = "0"
    KEY_HELP = "Context"
    HELP = (
        "registers, the code around RIP, the stack telescope and the frames on one screen "
        "(pwndbg's context); side by side from 160x40, stacked below"
    )
    PALETTE = ("Context", "Registers, code, stack and frames on one screen (0)")
    FOCUS = "#context-view"
    REFRESH = "shown"
    STOP_ORDER = 60

    class Read(Message, bubble=False):
        def __init__(self, stop: int, parts: dict[str, Any]) -> None:
            super().__init__()
            self.number = stop
            self.parts = parts

    def __init__(self) -> None:
        super().__init__()
        self.previous: Mapping[str, int] | None = None  # the registers of the stop before
        self.values: Mapping[str, int] = {}

    def compose(self) -> ComposeResult:
        yield ContextView(id="context-view")

    def on_stop_seen(self, message: StopSeen) -> None:
        snapshot = message.stopped.snapshot
        if snapshot is not None:
            self.previous, self.values = (self.values or None), snapshot.values
        super().on_stop_seen(message)

    def load(self) -> None:
        stop = self.last_stop.number if self.last_stop is not None else 0

        def work(session: Session) -> dict[str, Any]:
            parts: dict[str, Any] = {}
            for name, read in (
                ("disassembly", lambda: disassemble(session, before=BEFORE, after=AFTER)),
                ("telescope", lambda: telescope(session, None, SLOTS)),
                ("backtrace", session.backtrace),
            ):
                try:
                    parts[name] = read()
                except TargetLost:
                    raise
                except InspectorError as exc:
                    parts[f"{name}_error"] = str(exc)
            return parts

        self.read("context", work, lambda parts: self.Read(stop, parts))

    def on_context_pane_read(self, message: Read) -> None:
        self.read_at = message.number
        values = self.values
        previous = self.previous
        changed = frozenset(
            k for k, v in values.items() if previous is not None and previous.get(k) != v
        )
        rip = values.get("rip")
        data = ContextData(
            registers=values,
            changed=changed,
            rip_symbol=self.kinspect.symbolize(rip) if rip is not None else None,
            **message.parts,
        )
        self.query_one(ContextView).show(data)

    def export_text(self) -> str:
        return self.query_one(ContextView).export_text()
