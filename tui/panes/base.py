"""The shape of a pane: one view of the main screen, in one module.

A pane is a tab (a :class:`~textual.widgets.TabPane`) that owns everything
about its view: its widgets (``compose``), its number key and help line
(class attributes the app reads to build its bindings, the help screen and
the command palette), the ``:`` commands it answers, how it reads the target
(:meth:`Pane.read`, in the thread that owns the session) and when: at every
stop (``REFRESH = "stop"``) or only while it is shown (``"shown"``: read
when the tab is shown, again at each stop while it is). Results come back
as the pane's own typed messages, which it handles itself.

The app knows panes only through :data:`kinspect.tui.panes.PANES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from textual.binding import Binding
from textual.message import Message
from textual.widgets import TabPane

from kinspect.inspector.session import Session

from ..messages import Stop, StopSeen

if TYPE_CHECKING:
    from ..app import KinspectApp

__all__ = ["Pane"]


class Pane(TabPane):
    """One view. Subclasses set the class attributes and implement ``compose`` and ``load``."""

    NAME: ClassVar[str]  # the tab's id: "ranges" (also the export file's name)
    TITLE: ClassVar[str]  # the tab's label: "Ranges [2]"
    KEY: ClassVar[str]  # the key that shows it, anywhere: "2"
    KEY_HELP: ClassVar[str]  # that key's line in the help screen: "Ranges"
    HELP: ClassVar[str]  # what the view shows, for the help screen's list of views
    PALETTE: ClassVar[tuple[str, str]]  # the command palette's entry: (title, help)
    FOCUS: ClassVar[str | None] = None  # the widget focused when the tab is shown
    REFRESH: ClassVar[str] = "stop"  # "stop": read at every stop; "shown": only while shown
    STOP_ORDER: ClassVar[int] = 50  # lower reads first at a stop (the stack first: it is slow)
    #: Keys that work anywhere and show this pane first: (key, pane action, help).
    GLOBAL_KEYS: ClassVar[tuple[tuple[str, str, str], ...]] = ()
    #: ``:`` commands this pane answers: verb -> the name of a method taking the argument text.
    COMMANDS: ClassVar[Mapping[str, str]] = {}
    #: Verbs among them that need an argument (the error names what is missing).
    NEEDS_ARGUMENT: ClassVar[Mapping[str, str]] = {}

    def __init__(self) -> None:
        super().__init__(self.TITLE, id=self.NAME)
        self.last_stop: Stop | None = None  # the last stop seen
        self.read_at = -1  # the stop the view was last read at

    @classmethod
    def binding(cls) -> Binding:
        return Binding(cls.KEY, f"tab('{cls.NAME}')", cls.KEY_HELP, show=False, priority=True)

    @property
    def kinspect(self) -> KinspectApp:
        return self.app  # type: ignore[return-value]

    # -- what the app calls ----------------------------------------------------------------

    def on_stop_seen(self, message: StopSeen) -> None:
        self.last_stop = message.stopped
        if self.REFRESH == "stop" or self.display:
            self.load()

    def shown(self) -> None:
        """The tab was shown: a view read only while shown catches up with the last stop."""
        if (
            self.REFRESH == "shown"
            and self.last_stop is not None
            and self.read_at != self.last_stop.number
        ):
            self.load()

    def load(self) -> None:
        """Read what the view shows (in the owner thread) and show it when it comes."""

    def export_text(self) -> str:
        """The view as text, for ``e`` (export)."""
        return ""

    # -- helpers -----------------------------------------------------------------------------

    def read(
        self,
        name: str,
        work: Callable[[Session], Any],
        reply: Callable[[Any], Message],
        *,
        failed: Callable[[BaseException], Message] | None = None,
        while_running: str = "skip",
    ) -> None:
        """Run ``work(session)`` in the owner thread; its result comes back as ``reply(result)``.

        ``failed(error)`` makes the message for a failure; without it the
        failure goes to the app's one failure handler. ``while_running``:
        see :class:`~kinspect.tui.link.Job` (a view skips quietly by default:
        the next stop reads it again).
        """
        app = self.kinspect
        app.submit(
            name,
            work,
            lambda result: app.deliver(self, reply(result)),
            failed=(lambda error: app.deliver(self, failed(error))) if failed else None,
            while_running=while_running,
        )

    async def _on_message(self, message: Message) -> None:
        # A bug in a view must not end the app: the one failure handler reports it.
        try:
            await super()._on_message(message)
        except Exception as exc:  # noqa: BLE001
            self.kinspect.report_failure(exc)
