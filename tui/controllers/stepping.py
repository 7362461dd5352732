"""Stepping as debuggers do, from the TUI: ``n`` next, ``f`` finish, ``:nexti``,
``:until ADDR`` (run to cursor) and ``:watch ADDR [r|w|rw] [LEN]``.

Each starts the kernel (``Session.start_next``, ``start_finish``,
``start_until``) and returns at once: the link watches for the stop, which is
shown like a breakpoint's (status line, every view), and ``p`` interrupts one
that never gets there (an ``until`` breakpoint goes at that stop). A
watchpoint is listed with the breakpoints (B), with its hits, and deleted
like them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from kinspect.inspector.commands.stepping import parse_watch
from kinspect.inspector.errors import InspectorError
from kinspect.inspector.session import Session

from ..screens.crash import FROZEN
from ..widgets.status import StatusLine

if TYPE_CHECKING:
    from ..app import KinspectApp

__all__ = ["COMMANDS", "SteppingController"]


class SteppingController:
    """next, nexti, finish, until and watch for the app's keys and ``:`` line."""

    def __init__(self, app: KinspectApp) -> None:
        self.app = app

    def _start(self, name: str, work: Callable[[Session], Any]) -> None:
        app = self.app
        if app.frozen:
            app.report_failure(InspectorError(FROZEN))
            return

        def done(_: Any) -> None:
            status = app.query_one(StatusLine)
            if status.state != "stopped" or app.link.watching:
                status.state = "running"
                status.reason = ""

        app.submit(name, work, done, watch=True)

    def next(self, *, line: bool = True) -> None:
        """Step over one source line (``line``) or one instruction, calls included."""
        self._start("next" if line else "nexti", lambda session: session.start_next(line=line))

    def finish(self) -> None:
        """Run until the current function returns to its caller."""
        self._start("finish", lambda session: session.start_finish())

    def until(self, location: str) -> None:
        """Run until ``location`` (a symbol, an address, a register of the last stop)."""
        resolve = self.app.resolve

        def work(session: Session) -> int:
            return session.start_until(f"{resolve(session, location):#x}")

        self._start("until", work)

    def watch(self, argument: str) -> None:
        """``ADDR [r|w|rw] [LEN]``: a hardware watchpoint; ``c`` runs to its first hit."""
        words = argument.split()
        try:
            access, length = parse_watch(words[1:])
        except InspectorError as exc:
            self.app.report_failure(exc)
            return
        resolve = self.app.resolve

        def work(session: Session) -> tuple[int, int]:
            return session.watch(f"{resolve(session, words[0]):#x}", access, length or 8)

        def done(result: tuple[int, int]) -> None:
            number, address = result
            name = self.app.symbolize(address)
            where = f"{address:#x}" + (f" ({name})" if name else "")
            self.app.notify(
                f"watchpoint {number}: {access} {length or 8} bytes at {where}; "
                "c runs to its first hit"
            )
            self.app.breakpoints.stopped()  # an open list shows it

        self.app.submit("watch", work, done, while_running="run")


#: ``:`` verbs: (run(app, argument), what the argument is when one is needed)
COMMANDS: Mapping[str, tuple[Callable[[KinspectApp, str], None], str | None]] = {
    **dict.fromkeys(
        ("next", "n"), (lambda app, arg: SteppingController(app).next(line=True), None)
    ),
    **dict.fromkeys(
        ("nexti", "ni"), (lambda app, arg: SteppingController(app).next(line=False), None)
    ),
    **dict.fromkeys(("finish", "fin"), (lambda app, arg: SteppingController(app).finish(), None)),
    **dict.fromkeys(
        ("until", "u", "advance"),
        (lambda app, arg: SteppingController(app).until(arg), "an address or a symbol"),
    ),
    "watch": (
        lambda app, arg: SteppingController(app).watch(arg),
        "an address or a symbol, then r, w or rw and a length (1, 2, 4, 8)",
    ),
}
