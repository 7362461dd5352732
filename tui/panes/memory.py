"""Memory [4]: the stack telescope at RSP (``kinspect telescope``) until an address is asked
for, then 256 bytes as hex and ASCII at it (``mem``, ``phys``); ``t`` switches between them.

A window that runs into a page that cannot be read shows what was read and
where reading stopped (the page's first address), not an error instead.
"""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message

from kinspect.inspector.context import telescope
from kinspect.inspector.errors import InspectorError
from kinspect.inspector.readable import Readable, read_readable
from kinspect.inspector.session import Session
from kinspect.inspector.telescope import Telescope

from ..messages import StopSeen
from ..widgets.memory import WINDOW, HexView
from ..widgets.telescope import SLOTS, TelescopeView
from .base import Pane

__all__ = ["MemoryPane"]


class MemoryPane(Pane):
    NAME = "memory"
    TITLE = "Memory [4]"
    KEY = "4"
    KEY_HELP = "Mem"
    HELP = (
        "the stack telescope at RSP (each slot named, its mapping, what it points to); "
        "mem ADDR / phys PADDR: 16 bytes a row, qwords that point into a symbol named; "
        "t switches telescope / hex"
    )
    PALETTE = (
        "Memory view",
        "The stack telescope at RSP; m or mem ADDR / phys PADDR for hex; t switches (4)",
    )
    FOCUS = "#telescope"
    STOP_ORDER = 40
    COMMANDS = {"mem": "command_virtual", "x": "command_virtual", "phys": "command_physical"}
    BINDINGS = [Binding("t", "switch", "Telescope / hex", show=False)]
    NEEDS_ARGUMENT = {
        "mem": "an address or a symbol",
        "x": "an address or a symbol",
        "phys": "an address or a symbol",
    }

    class Read(Message, bubble=False):
        def __init__(self, address: int, space: str, read: Readable) -> None:
            super().__init__()
            self.address = address
            self.space = space
            self.data = read.data
            self.unreadable = read.describe_unreadable()

    class TelescopeRead(Message, bubble=False):
        def __init__(self, stop: int, telescope: Telescope) -> None:
            super().__init__()
            self.number = stop
            self.telescope = telescope

    class TelescopeFailed(Message, bubble=False):
        def __init__(self, error: BaseException) -> None:
            super().__init__()
            self.error = error

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
        self.mode = "telescope"  # or "hex"
        self.telescope_at: int | None = None  # None: RSP, following each stop
        self.FOCUS = "#telescope"  # type: ignore[misc]  # the view shown has the focus

    def compose(self) -> ComposeResult:
        yield TelescopeView(id="telescope")
        yield HexView(id="hex")

    def on_mount(self) -> None:
        self.query_one(HexView).display = False

    def on_stop_seen(self, message: StopSeen) -> None:
        self.telescope_at = None  # a stop: the telescope goes back to RSP
        super().on_stop_seen(message)

    def shown(self) -> None:
        if self.last_stop is not None and self.read_at != self.last_stop.number:
            self.load()

    def load(self) -> None:
        if self.mode == "telescope":
            if self.display:  # read while shown (shown() catches up)
                self.show_telescope(while_running="skip")
        elif self.shown_at is not None:
            self.read_at = self.last_stop.number if self.last_stop is not None else 0
            self.show_memory(*self.shown_at, while_running="skip")

    def _switch(self, mode: str) -> None:
        self.mode = mode
        self.query_one(TelescopeView).display = mode == "telescope"
        self.query_one(HexView).display = mode == "hex"
        self.FOCUS = "#telescope" if mode == "telescope" else "#hex"  # type: ignore[misc]
        if self.display:
            self.app.set_focus(self.query_one(self.FOCUS))

    def show_telescope(self, address: int | None = None, *, while_running: str = "skip") -> None:
        """The telescope at ``address`` (default: where it is, RSP after a stop)."""
        if address is not None:
            self.telescope_at = address
        self._switch("telescope")
        at = self.telescope_at
        stop = self.last_stop.number if self.last_stop is not None else 0
        self.read_at = stop
        self.read(
            "telescope",
            lambda session: telescope(session, at, SLOTS),
            lambda found: self.TelescopeRead(stop, found),
            failed=self.TelescopeFailed,
            while_running=while_running,
        )

    def on_memory_pane_telescope_read(self, message: TelescopeRead) -> None:
        found = message.telescope
        where = self.kinspect.symbolize(found.address)
        rsp = [s for s in found.slots[:1] if "rsp" in s.registers]
        title = f"stack telescope at {found.address:#x}" + (" (RSP)" if rsp else "")
        if where:
            title += f" <{where}>"
        self.query_one(TelescopeView).show(found, title)

    def on_memory_pane_telescope_failed(self, message: TelescopeFailed) -> None:
        self.query_one(TelescopeView).show_error(f"cannot read the stack: {message.error}")
        self.kinspect.report_failure(message.error)

    @on(TelescopeView.Move)
    def _move_telescope(self, event: TelescopeView.Move) -> None:
        view = self.query_one(TelescopeView)
        if view.telescope is not None:
            self.show_telescope(max(view.telescope.address + event.delta, 0), while_running="fail")

    def action_switch(self) -> None:
        """t: telescope <-> hex, at the same address (virtual)."""
        if self.mode == "telescope":
            view = self.query_one(TelescopeView)
            if view.telescope is not None:
                self.show_memory(view.telescope.address, "virtual")
            elif self.shown_at is not None:
                self.show_memory(*self.shown_at)
        else:
            at = self.shown_at
            address = at[0] & ~7 if at is not None and at[1] == "virtual" else None
            self.show_telescope(address, while_running="fail")

    def show_memory(self, address: int, space: str, *, while_running: str = "fail") -> None:
        self.shown_at = (address, space)
        self._switch("hex")

        def work(session: Session) -> Readable:
            if space == "physical":
                return read_readable(session.read_physical, address, WINDOW)
            return read_readable(session.read_virtual, address, WINDOW)

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
            unreadable=message.unreadable,
        )
        if not message.data:  # nothing at all could be read there: say it once
            self.kinspect.report_failure(InspectorError(message.unreadable))

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
