"""Remaps from the TUI: what the remap screen asks for, run in the thread that owns the session.

The screen (:class:`~kinspect.tui.screens.remap.RemapScreen`) only presents
and asks (``PreviewRequested``, ``ApplyRequested``, ``UndoRequested``,
``JournalRequested``); the app hands those requests to :class:`RemapController`,
which plans (``inspector.remap.request``: the same parsing and planning as
``kinspect remap``), applies and undoes through ``Session.remapper()`` (the Remapper
``kinspect remap`` uses) and gives the results back to the screen.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kinspect.inspector.errors import InspectorError
from kinspect.inspector.remap.apply import UndoRefused
from kinspect.inspector.remap.request import parse_request, plan_request
from kinspect.inspector.session import Session

from .screens.remap import RemapScreen

if TYPE_CHECKING:
    from .app import KinspectApp

__all__ = ["RemapController"]


class RemapController:
    """Plans, applies, undoes and lists the journal for the remap screen."""

    def __init__(self, app: KinspectApp) -> None:
        self.app = app

    @property
    def screen(self) -> RemapScreen | None:
        """The remap screen, if one that can remap is open."""
        for screen in self.app.screen_stack:
            if isinstance(screen, RemapScreen) and not screen.unavailable:
                return screen
        return None

    def handle(self, request: Any) -> None:
        """One of the screen's requests."""
        if isinstance(request, RemapScreen.PreviewRequested):
            self.preview(request.action, request.fields)
        elif isinstance(request, RemapScreen.ApplyRequested):
            self.apply(request.plan)
        elif isinstance(request, RemapScreen.UndoRequested):
            self.undo(request.seqs)
        elif isinstance(request, RemapScreen.KeepRequested):
            self.keep(request.seqs)
        elif isinstance(request, RemapScreen.JournalRequested):
            self.journal()

    def preview(self, action: str, fields: Mapping[str, Any]) -> None:
        resolve = self.app.resolve

        def work(session: Session) -> Any:
            remapper = session.remapper()
            orphaned = remapper.journal.orphaned()
            if orphaned:
                raise InspectorError(
                    f"a crashed session left {len(orphaned)} open steps in "
                    f"{remapper.journal.path}: undo them (journal, Undo) first"
                )
            # the one remap dispatch, as kinspect remap ACTION --plan makes it
            request = parse_request(action, fields, lambda text: resolve(session, text))
            return plan_request(remapper, request)

        def done(plan: Any) -> None:
            if (screen := self.screen) is not None:
                screen.show_plan(plan)

        def failed(error: BaseException) -> None:
            if (screen := self.screen) is not None:
                screen.show_plan_error(str(error))
            self.app.report_failure(error)

        self.app.submit("remap plan", work, done, failed=failed)

    def apply(self, plan: Any) -> None:
        reports: list[Any] = []

        def work(session: Session) -> list[Any]:
            remapper = session.remapper()
            try:
                for step in plan.steps:
                    reports.append(remapper.run_step(step))
            finally:
                session.invalidate()  # the tables changed: read everything again
            return reports

        def done(result: list[Any]) -> None:
            if (screen := self.screen) is not None:
                screen.show_reports(result)
            ok = all(r.verified for r in result)
            self.app.notify(
                f"{len(result)} remap steps applied, "
                + ("all verified" if ok else "SOME NOT AS PLANNED"),
                severity="information" if ok else "error",
            )
            self.journal()
            self.app.action_refresh()

        def failed(error: BaseException) -> None:
            if (screen := self.screen) is not None and reports:
                screen.show_reports(reports)
            self.app.report_failure(error)
            self.journal()
            self.app.action_refresh()

        self.app.submit("remap apply", work, done, failed=failed)

    def undo(self, seqs: list[int] | None) -> None:
        def work(session: Session) -> list[Any]:
            remapper = session.remapper()
            journal = remapper.journal
            chosen = [s for s in journal.open_steps() if seqs is None or s.seq in seqs]
            # the journal names the agent's line (a stub-first session's remapper knows it)
            spec = getattr(remapper, "spec", None) or getattr(session.target, "spec", "")
            for s in chosen:
                other = journal.sessions.get(s.session, {}).get("target", spec)
                if other != spec:
                    raise InspectorError(
                        f"step #{s.seq} was applied through {other}, not {spec}: undo it there "
                        "(kinspect remap undo --force if it is the same kernel)"
                    )
            try:
                undone: list[Any] = remapper.undo(chosen)
                return undone
            finally:
                session.invalidate()

        def done(undone: list[Any]) -> None:
            text = "\n".join(f"undone: #{s.seq} {s.method} {s.description}" for s in undone)
            if (screen := self.screen) is not None:
                screen.show_result(text or "nothing to undo")
            self.app.notify(text or "nothing to undo")
            self.journal()
            if undone:
                self.app.action_refresh()

        def failed(error: BaseException) -> None:
            self.app.report_failure(error)
            if isinstance(error, UndoRefused):
                # refused before anything was undone: the journal list stays as it is
                if (screen := self.screen) is not None:
                    screen.show_undo_refused(str(error))
            else:
                self.journal()
            self.app.action_refresh()

        self.app.submit("remap undo", work, done, failed=failed)

    def keep(self, seqs: list[int]) -> None:
        """Close ``seqs`` without undoing: the changes stay (``remap journal --keep``)."""

        def work(session: Session) -> list[Any]:
            journal = session.remapper().journal
            chosen = [s for s in journal.open_steps() if s.seq in seqs]
            if chosen:
                journal.keep(chosen)
            return chosen

        def done(kept: list[Any]) -> None:
            text = "\n".join(f"kept: #{s.seq} {s.method} {s.description}" for s in kept)
            if (screen := self.screen) is not None:
                screen.show_result(text or "nothing to keep")
            self.app.notify(text or "nothing to keep")
            self.journal()

        self.app.submit("remap keep", work, done)

    def journal(self) -> None:
        def work(session: Session) -> tuple[str, list[Any]]:
            journal = session.remapper().journal
            return str(journal.path), journal.open_steps()

        def done(result: tuple[str, list[Any]]) -> None:
            if (screen := self.screen) is not None:
                screen.show_journal(*result)

        self.app.submit("remap journal", work, done)
