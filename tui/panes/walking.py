"""A pane with a walk view beside its list (Ranges, Tables): the walk of an address, ``vtop``."""

from __future__ import annotations

from typing import Any, ClassVar

from textual.message import Message

from kinspect.inspector.session import Session

from ..widgets.walk import WalkView
from .base import Pane

__all__ = ["WalkingPane"]


class WalkingPane(Pane):
    """Shows walks in its :class:`WalkView` (``WALK_VIEW``); answers ``vtop``."""

    WALK_VIEW: ClassVar[str]  # the id of the pane's WalkView
    COMMANDS = {"vtop": "command_vtop", "v": "command_vtop"}
    NEEDS_ARGUMENT = {"vtop": "an address or a symbol", "v": "an address or a symbol"}

    class Walked(Message, bubble=False):
        """The walk of ``va``; ``title`` heads it, the symbol of ``va`` ends it."""

        def __init__(
            self,
            va: int,
            translation: Any,
            title: str,
            *,
            show: bool = False,
            automatic: bool = False,
            about: str = "",
        ) -> None:
            super().__init__()
            self.va = va
            self.translation = translation
            self.title = title
            self.show = show  # asked for (vtop): show the pane
            self.automatic = automatic  # a cursor placed by a reload, not by the user
            self.about = about  # what was selected, when it is not a page (a table entry)

    #: The walk view shows what the user asked for (vtop, ptov): a reload's cursor does not
    #: replace it; the user's next cursor move does.
    pinned = False

    @property
    def walk_view(self) -> WalkView:
        return self.query_one(f"#{self.WALK_VIEW}", WalkView)

    def show_walk(
        self, va: int, *, title: str = "", automatic: bool = False, about: str = ""
    ) -> None:
        """The walk of ``va`` (a view: skipped while the kernel runs).

        ``automatic``: the cursor was placed by a reload; an asked-for result stays.
        """
        if automatic and self.pinned:
            return
        if not automatic:
            self.pinned = False
        self.read(
            "walk",
            lambda session: session.translate(va),
            lambda translation: self.Walked(
                va, translation, title, automatic=automatic, about=about
            ),
        )

    def on_walking_pane_walked(self, message: Walked) -> None:
        if message.automatic and self.pinned:
            return  # asked for while this walk was on its way
        if message.show:
            self.pinned = True
            self.kinspect.action_tab(self.NAME)  # shown, its list focused (not a hidden one)
        name = self.kinspect.symbolize(message.va)
        self.walk_view.show_walk(
            message.translation,
            title=message.title,
            extra=f"symbol: {name}" if name else "",
            about=message.about,
        )

    def command_vtop(self, text: str) -> None:
        """Translate an address or symbol; the walk goes to this pane's walk view."""
        resolve = self.kinspect.resolve
        self.pinned = True  # from now: a reload's cursor must not replace the answer

        def work(session: Session) -> tuple[int, Any]:
            va = resolve(session, text)
            return va, session.translate(va)

        self.read(
            "vtop",
            work,
            lambda result: self.Walked(result[0], result[1], f"vtop {text}", show=True),
            while_running="fail",
        )
