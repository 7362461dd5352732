"""Disasm (d): the instructions around RIP (``kinspect disasm``), run to a line, break on it."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.message import Message

from kinspect.inspector.commands import CommandResult, registry
from kinspect.inspector.context import disassemble
from kinspect.inspector.disasm import Disassembly
from kinspect.inspector.errors import InspectorError
from kinspect.inspector.session import Session

from ..messages import StopSeen
from ..screens.output import OutputScreen
from ..widgets.disasm import DisasmView
from .base import Pane

__all__ = ["DisasmPane"]

#: Instructions read before and from the address shown.
BEFORE, AFTER = 10, 40


class DisasmPane(Pane):
    NAME = "disasm"
    TITLE = "Disasm (d)"
    KEY = "d"
    KEY_HELP = "Disasm"
    HELP = (
        "the instructions around RIP (=>), targets named; j/k move, u or F4 runs to the line "
        "(until), F2 or Space breaks on it, Enter follows a call or jump, Esc back"
    )
    PALETTE = ("Disassembly", "The instructions around RIP; run to a line, break on it (d)")
    FOCUS = "#disasm-view"
    REFRESH = "shown"
    STOP_ORDER = 30
    COMMANDS = {"disasm": "command_disasm"}

    class Read(Message, bubble=False):
        def __init__(self, stop: int, listing: Disassembly, rip: int | None) -> None:
            super().__init__()
            self.number = stop
            self.listing = listing
            self.rip = rip

    class Failed(Message, bubble=False):
        def __init__(self, error: BaseException) -> None:
            super().__init__()
            self.error = error

    class Resolved(Message, bubble=False):
        def __init__(self, address: int) -> None:
            super().__init__()
            self.address = address

    def __init__(self) -> None:
        super().__init__()
        self.at: int | None = None  # the address shown; None: RIP, following each stop
        self.history: list[int | None] = []  # where Esc goes back to

    def compose(self) -> ComposeResult:
        yield DisasmView(id="disasm-view")

    def on_stop_seen(self, message: StopSeen) -> None:
        self.at = None  # a stop: back to RIP
        self.history.clear()
        super().on_stop_seen(message)

    def load(self) -> None:
        stop = self.last_stop.number if self.last_stop is not None else 0
        at = self.at

        def work(session: Session) -> tuple[Disassembly, int | None]:
            rip = session.registers().get("rip")
            return disassemble(session, at, before=BEFORE, after=AFTER), rip

        self.read(
            "disassembly",
            work,
            lambda result: self.Read(stop, *result),
            failed=self.Failed,
            while_running="fail" if at is not None else "skip",
        )

    def on_disasm_pane_read(self, message: Read) -> None:
        self.read_at = message.number
        view = self.query_one(DisasmView)
        view.can_go_back = bool(self.history)
        listing = message.listing
        where = self.kinspect.symbolize(listing.at)
        note = "" if self.at is None else f"at {listing.at:#x}" + (f" <{where}>" if where else "")
        if note:
            note += "  (Esc: back)"
        view.show(listing, message.rip, note)

    def on_disasm_pane_failed(self, message: Failed) -> None:
        self.query_one(DisasmView).show_message(f"cannot disassemble: {message.error}")
        self.kinspect.report_failure(message.error)

    # -- the keys on the cursor's line -------------------------------------------------------

    @on(DisasmView.Act)
    def _act(self, event: DisasmView.Act) -> None:
        event.stop()
        if event.what == "until":
            self.kinspect.run_command(f"until {event.address:#x}")
        elif event.what == "break":
            self.kinspect.run_command(f"break {event.address:#x}")
        elif event.target is None:
            self.kinspect.report_failure(
                InspectorError(
                    f"{event.address:#x} is not a direct call or jump: nothing to follow"
                )
            )
        else:
            self.go(event.target)

    @on(DisasmView.Back)
    def _back(self, event: DisasmView.Back) -> None:
        event.stop()
        if self.history:
            self.at = self.history.pop()
            self.load()

    def go(self, address: int) -> None:
        """Show the code at ``address`` (Esc comes back)."""
        self.history.append(self.at)
        self.at = address
        self.load()

    # -- commands ---------------------------------------------------------------------------

    def command_disasm(self, argument: str) -> None:
        """``disasm``: back to RIP; ``disasm ADDR|SYM|REG``: the code there; with options
        (``disasm -n 5 ADDR``) the registry's command, its text in a screen."""
        if argument.startswith("-") or " -" in argument:
            self._registered(f"disasm {argument}")
            return
        self.kinspect.action_tab(self.NAME)
        if not argument:
            self.history.clear()
            self.at = None
            self.load()
            return
        resolve = self.kinspect.resolve
        self.read(
            "resolve",
            lambda session: resolve(session, argument),
            self.Resolved,
            while_running="fail",
        )

    def _registered(self, line: str) -> None:
        """The registry's ``disasm`` with options, its text in a screen (as the ``:`` line
        runs a registry command: tui/commands.py, which imports the panes)."""
        app = self.kinspect

        def done(result: CommandResult) -> None:
            if result.text:
                app.push_screen(OutputScreen(line, result.text))
            if result.error:
                app.report_failure(InspectorError(result.error))

        app.submit("disasm", lambda session: registry().execute(session, line), done)

    def on_disasm_pane_resolved(self, message: Resolved) -> None:
        self.go(message.address)

    def export_text(self) -> str:
        return self.query_one(DisasmView).export_text()
