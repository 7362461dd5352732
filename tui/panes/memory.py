"""Memory [4]: 256 bytes as hex and ASCII at a virtual or physical address (``mem``, ``phys``)."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.message import Message

from kinspect.inspector.session import Session

from ..widgets.memory import WINDOW, HexView
from .base import Pane

__all__ = ["MemoryPane"]


class MemoryPane(Pane):
    NAME = "memory"
    TITLE = "Memory [4]"
    KEY = "4"
    KEY_HELP = "Mem"
    HELP = "16 bytes a row; qwords that point into a symbol are named on the right"
    PALETTE = ("Memory view", "The hex view; m or mem ADDR / phys PADDR chooses where (4)")
    FOCUS = "#hex"
    STOP_ORDER = 40
    COMMANDS = {"mem": "command_virtual", "x": "command_virtual", "phys": "command_physical"}
    NEEDS_ARGUMENT = {
        "mem": "an address or a symbol",
        "x": "an address or a symbol",
        "phys": "an address or a symbol",
    }

    class Read(Message, bubble=False):
        def __init__(self, address: int, space: str, data: bytes) -> None:
            super().__init__()
            self.address = address
            self.space = space
            self.data = data

    class Failed(Message, bubble=False):
        def __init__(self, address: int, space: str, error: BaseException) -> None:
            super().__init__()
            self.address = address
            self.space = space
            self.error = error

    class Resolved(Message, bubble=False):
        def __init__(self, address: int, space: str) -> None:
            super().__init__()
            self.address = address
            self.space = space

    def __init__(self) -> None:
        super().__init__()
        self.shown_at: tuple[int, str] | None = None  # (address, "virtual" | "physical")

    def compose(self) -> ComposeResult:
        yield HexView(id="hex")

    def load(self) -> None:
        if self.shown_at is not None:
            self.show_memory(*self.shown_at, while_running="skip")

    def show_memory(self, address: int, space: str, *, while_running: str = "fail") -> None:
        self.shown_at = (address, space)

        def work(session: Session) -> bytes:
            if space == "physical":
                return session.read_physical(address, WINDOW)
            return session.read_virtual(address, WINDOW)

        self.read(
            "memory",
            work,
            lambda data: self.Read(address, space, data),
            failed=lambda error: self.Failed(address, space, error),
            while_running=while_running,
        )

    def on_memory_pane_read(self, message: Read) -> None:
        symbolize = self.kinspect.symbolize
        self.query_one(HexView).show(
            message.address,
            message.space,
            message.data,
            symbolize,
            title=symbolize(message.address) or "",
        )

    def on_memory_pane_failed(self, message: Failed) -> None:
        self.query_one(HexView).show_error(message.address, message.space, str(message.error))
        self.kinspect.report_failure(message.error)

    @on(HexView.Move)
    def _move(self, event: HexView.Move) -> None:
        if self.shown_at is not None:
            address, space = self.shown_at
            self.show_memory(max(address + event.delta, 0), space)

    # -- commands ---------------------------------------------------------------------------

    def command_virtual(self, argument: str) -> None:
        self._resolve_and_show(argument, "virtual")

    def command_physical(self, argument: str) -> None:
        self._resolve_and_show(argument, "physical")

    def _resolve_and_show(self, text: str, space: str) -> None:
        resolve = self.kinspect.resolve
        self.read(
            "resolve",
            lambda session: resolve(session, text),
            lambda address: self.Resolved(address, space),
            while_running="fail",
        )

    def on_memory_pane_resolved(self, message: Resolved) -> None:
        self.kinspect.action_tab(self.NAME)
        self.show_memory(message.address, message.space)

    def export_text(self) -> str:
        return self.query_one(HexView).export_text()
