"""Remaps from the TUI: what the remap screen asks for, run in the thread that owns the session.

The screen (:class:`~kinspect.tui.screens.remap.RemapScreen`) only presents
and asks (``PreviewRequested``, ``ApplyRequested``, ``UndoRequested``,
``JournalRequested``); the app hands those requests to :class:`RemapController`,
which plans, applies and undoes through ``Session.remapper()`` (the Remapper
``kinspect remap`` uses) and gives the results back to the screen.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from kinspect.inspector.errors import InspectorError
from kinspect.inspector.remap.apply import UndoRefused
from kinspect.inspector.session import Session

from .screens.remap import RemapScreen

if TYPE_CHECKING:
    from .app import KinspectApp

__all__ = ["RemapController", "plan_remap"]


def plan_remap(
    session: Session,
    remapper: Any,
    action: str,
    fields: Mapping[str, Any],
    resolve: Callable[[Session, str], int],
) -> Any:
    """The plan for one remap form, as ``kinspect remap ACTION --plan`` makes it."""
    from kinspect.inspector.cli_remap import parse_size
    from kinspect.inspector.efi.runtime import EFI_VA_BASE
    from kinspect.inspector.remap.plan import LEVEL_OF_SIZE, parse_flags

    def number(name: str, what: str, parse: Callable[[str], int]) -> int:
        text = str(fields.get(name, "")).strip()
        if not text:
            raise InspectorError(f"{action}: the {what} is missing")
        try:
            return parse(text)
        except InspectorError:
            raise
        except (ValueError, KeyError) as exc:
            raise InspectorError(f"{action}: {what} {text!r}: {exc}") from exc

    def address(text: str) -> int:
        return resolve(session, text)

    if action == "higher-half":
        return remapper.plan_higher_half()
    if action == "efi-runtime":
        base = number("base", "base", parse_size) if fields.get("base") else EFI_VA_BASE
        return remapper.plan_efi_runtime(base=base, drop_identity=not fields.get("keep_identity"))
    va = number("va", "virtual address", address)
    size = number("size", "size", parse_size)
    if action == "move":
        new_va = number("new_va", "new virtual address", address)
        return remapper.plan_move(va, size, new_va, drop_old=bool(fields.get("drop_old")))
    page_size = number("page_size", "page size", parse_size)
    if page_size not in LEVEL_OF_SIZE:
        raise InspectorError(f"{action}: page size must be 4k, 2m, 1g (or 512g for unmap)")
    if action == "unmap":
        return remapper.plan_unmap(va, size, page_size=page_size)
    flags = number("flags", "flags", parse_flags)
    if action == "map":
        pa = number("pa", "physical address", parse_size)
        return remapper.plan_map(va, pa, size, page_size=page_size, flags=flags)
    if action == "protect":
        return remapper.plan_protect(va, size, page_size=page_size, flags=flags)
    raise InspectorError(f"unknown remap {action!r}")


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
            return plan_remap(session, remapper, action, fields, resolve)

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
                return remapper.undo(chosen)
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

    def journal(self) -> None:
        def work(session: Session) -> tuple[str, list[Any]]:
            journal = session.remapper().journal
            return str(journal.path), journal.open_steps()

        def done(result: tuple[str, list[Any]]) -> None:
            if (screen := self.screen) is not None:
                screen.show_journal(*result)

        self.app.submit("remap journal", work, done)
