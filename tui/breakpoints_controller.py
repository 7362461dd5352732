"""The breakpoints list (B) and delete: what the breakpoints screen asks, run by the owner thread.

:class:`~kinspect.tui.screens.breakpoints.BreakpointsScreen` only presents and
asks (``DeleteRequested``, ``RefreshRequested``; it asks again at every stop
while it is open, so the hit counts follow the kernel); the app hands those
requests and the ``:`` line's ``breakpoints`` / ``delete`` to
:class:`BreakpointsController`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kinspect.inspector.session import Session

from .screens.breakpoints import BreakpointsScreen

if TYPE_CHECKING:
    from .app import KinspectApp

__all__ = ["BreakpointsController"]


class BreakpointsController:
    def __init__(self, app: KinspectApp) -> None:
        self.app = app

    @property
    def screen(self) -> BreakpointsScreen | None:
        for screen in self.app.screen_stack:
            if isinstance(screen, BreakpointsScreen):
                return screen
        return None

    def handle(self, request: Any) -> None:
        if isinstance(request, BreakpointsScreen.DeleteRequested):
            self.delete(request.numbers)
        elif isinstance(request, BreakpointsScreen.RefreshRequested):
            self.load()

    def open(self) -> None:
        """The breakpoints with their hit counts (``Session.breakpoints()``); d/D delete."""
        if self.screen is None:
            self.app.push_screen(BreakpointsScreen(self.app.symbolize))
        self.load()

    def stopped(self) -> None:
        """A stop: an open list is read again (the hit counts changed)."""
        if self.screen is not None:
            self.load()

    def load(self) -> None:
        def done(breakpoints: list[Any]) -> None:
            if (screen := self.screen) is not None:
                screen.show(breakpoints)

        def failed(error: BaseException) -> None:
            if (screen := self.screen) is not None:
                screen.show_error(str(error))
            self.app.report_failure(error)

        # gdb keeps the list itself: it is read while the kernel runs, without stopping it
        self.app.submit(
            "breakpoints",
            lambda session: session.breakpoints(),
            done,
            failed=failed,
            while_running="run",
        )

    def delete(self, numbers: tuple[int, ...] | None) -> None:
        """Delete these breakpoints (None: every one); the kernel is stopped first if it runs.

        The link still watches a running kernel, so the stop the deletion
        makes is shown like any other; a stopped kernel is not read again.
        """

        def work(session: Session) -> tuple[list[int], list[Any]]:
            chosen = (
                list(numbers)
                if numbers is not None
                else [bp.number for bp in session.breakpoints()]
            )
            deleted: list[int] = []
            for number in chosen:
                session.break_delete(number)
                deleted.append(number)
            return deleted, session.breakpoints()

        def done(result: tuple[list[int], list[Any]]) -> None:
            deleted, left = result
            if not deleted:
                self.app.notify("no breakpoints to delete")
            else:
                names = ", ".join(str(n) for n in deleted)
                self.app.notify(f"deleted breakpoint{'s' if len(deleted) > 1 else ''} {names}")
            if (screen := self.screen) is not None:
                screen.show(left)

        def failed(error: BaseException) -> None:
            self.app.report_failure(error)
            if self.screen is not None:
                self.load()  # some may be gone: show what is left

        self.app.submit("delete", work, done, failed=failed, while_running="run")
