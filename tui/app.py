"""The kinspect TUI: a live view of a kernel that follows it as it runs and stops.

The app keeps the lifecycle, the link to the target, the one failure handler
and the global keys. Each view is a pane (:mod:`kinspect.tui.panes`) that
reads what it shows and handles its own results; the remap screen and the
breakpoints list have controllers beside them; the ``:`` line is
:mod:`kinspect.tui.commands`. Target I/O runs in one thread worker that owns
the session (:class:`~kinspect.tui.link.Link`).

``make_app(session)`` builds the app, so tests inject an in-memory target.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from textual import events, on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Input, TabbedContent
from textual.worker import Worker, WorkerState

from kinspect.inspector.cpus import CpuState
from kinspect.inspector.errors import InspectorError, TargetLost
from kinspect.inspector.numbers import maybe_number
from kinspect.inspector.session import Session

from .breakpoints_controller import BreakpointsController
from .commands import palette, run_command
from .controllers.stepping import SteppingController
from .link import Job, Link, RegisterSnapshot, take_register_snapshot
from .messages import Stop, StopSeen
from .panes import PANES, Pane
from .panes.ranges import RangesPane
from .remap_controller import RemapController
from .screens.breakpoints import BreakpointsScreen
from .screens.crash import FROZEN, stopped
from .screens.help import HelpScreen, key_sections
from .screens.remap import RemapScreen
from .stops import cpu_mode, describe_stop
from .widgets.listnav import ListNav
from .widgets.prompt import PromptInput
from .widgets.status import StatusLine

__all__ = ["KinspectApp", "cpu_mode", "default_export_dir", "describe_stop", "make_app"]


def _key_bindings() -> list[BindingType]:
    """The global keys: run control and prompts, then the panes' keys, then the rest."""
    panes = [
        Binding(key, f"pane('{pane.NAME}', '{action}')", text, show=False, priority=True)
        for pane in PANES
        for key, action, text in pane.GLOBAL_KEYS
    ]
    tabs = [pane.binding() for pane in PANES]
    tabs.append(Binding("7", "remap", "Remaps (agent)", show=False, priority=True))
    return [
        Binding("q", "quit", "Quit", priority=True),
        Binding("c", "resume", "Continue", priority=True),
        Binding("p", "interrupt", "Stop", priority=True),
        Binding("s", "step", "Step", priority=True),
        # not priority: a list with an active search takes n (next match) first
        Binding("n", "next", "Next (step over)", show=False),
        Binding("f", "finish", "Finish", show=False),
        Binding("b", "prompt('break ')", "Break", priority=True),
        Binding("B", "breakpoints", "Breakpoints", show=False, priority=True),
        Binding("v", "prompt('vtop ')", "vtop", priority=True),
        Binding("o", "prompt('ptov ')", "ptov", priority=True),
        Binding("m", "prompt('mem ')", "Memory", priority=True),
        Binding("colon", "prompt('')", "Command", show=False, priority=True),
        Binding("left_square_bracket", "cpu(-1)", "Previous CPU", show=False, priority=True),
        Binding("right_square_bracket", "cpu(1)", "Next CPU", show=False, priority=True),
        *panes,
        *sorted(tabs, key=lambda binding: binding.key),
        Binding("r", "refresh", "Refresh", show=False, priority=True),
        Binding("R", "reconnect", "Reconnect", show=False, priority=True),
        Binding("e", "export_text", "Export", show=False, priority=True),
        Binding("E", "export_svg", "SVG", show=False, priority=True),
        Binding("question_mark,f1", "help", "Help", priority=True),
        Binding("escape", "unfocus", "Back to the list", show=False),
    ]


class KinspectApp(App[None]):
    """Registers, page tables (range map and tree), memory, run control."""

    CSS_PATH = "app.tcss"
    TITLE = "kinspect"
    AUTO_FOCUS = PANES[0].FOCUS
    BINDINGS = _key_bindings()

    # Priority bindings act the moment the app reads the key, before it forwards
    # the next one: with keys arriving in a burst (a paste, a loaded machine,
    # tmux send-keys), "b" must have moved the focus to the command box before
    # the "d" of "demo_level3" is forwarded. check_action turns them off while
    # a text box has the focus or another screen is on top, so they type there.
    #
    # A list's own keys come first: a priority key that the focused list takes
    # (its j k g G /, and n N while it has a search: ListNav.claims) steps aside
    # for it, so an app key on n (step over) works everywhere but in a search.

    _priority_by_action: dict[str, set[str]] | None = None  # made on first use
    #: run control that is not a priority key: never from under another screen or a text box
    _RUN_CONTROL = frozenset({"next", "finish"})

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        keys = self._priority_keys().get(action)
        if keys is not None or action in self._RUN_CONTROL:
            if isinstance(self.focused, Input) or len(self.screen_stack) > 1:
                return False
            focused = self.focused
            if keys and isinstance(focused, ListNav) and any(focused.claims(key) for key in keys):
                return False
        return True

    def _priority_keys(self) -> dict[str, set[str]]:
        """The keys of each priority binding, by action name (the bindings as they are now)."""
        if self._priority_by_action is None:
            found: dict[str, set[str]] = {}
            for key, bindings in self._bindings.key_to_bindings.items():
                for binding in bindings:
                    if binding.priority:
                        found.setdefault(binding.action.split("(")[0], set()).add(key)
            self._priority_by_action = found
        return self._priority_by_action

    def __init__(
        self,
        session: Session,
        *,
        connect: Callable[[], Session] | None = None,
        resume_on_exit: bool = True,
        export_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.session = session
        self._connect = connect
        self.resume_on_exit = resume_on_exit
        self.export_dir = Path(export_dir) if export_dir else default_export_dir()
        self.link = self._make_link(session)
        self._queued: deque[str] = deque()  # names of the jobs in the owner's queue, in order
        self.errors: list[str] = []  # every failure reported, for tests and the log
        self.stops = 0  # stops shown (each refreshes every view)
        self.last_latency: float | None = None  # stop seen -> registers on screen, seconds
        self.latencies: list[float] = []
        self.on_registers_drawn: Callable[[], None] | None = None  # the benchmark's hook
        self.stack_latencies: list[float] = []  # stop seen -> stack on screen, seconds
        self.on_stack_drawn: Callable[[], None] | None = None
        self._values: Mapping[str, int] = {}  # the registers of the last stop
        self._symbols: Any = None
        self.cpus: list[CpuState] = []  # every CPU as read at the last stop
        self.remaps: RemapController = RemapController(self)
        self.breakpoints: BreakpointsController = BreakpointsController(self)
        self.frozen = False  # QEMU paused on a triple fault: the kernel cannot run again

    def _make_link(self, session: Session) -> Link:
        return Link(
            session,
            deliver=self.call_later,  # thread-safe, never blocks the owner thread
            on_stop=self._on_stop,
            on_error=self.report_failure,
            on_idle=self._on_idle,
            on_answer=self._on_answer,
        )

    # -- layout and lifecycle ---------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield StatusLine(id="status")
        with TabbedContent(initial=PANES[0].NAME, id="tabs"):
            for pane in PANES:
                yield pane()
        yield PromptInput(
            placeholder=": vtop ADDR | ptov PADDR | mem ADDR | phys PADDR | break SYM|ADDR"
            " | continue | stop | step | help",
            id="command",
            select_on_focus=False,
        )
        yield Footer()

    @property
    def panes(self) -> list[Pane]:
        return list(self.query(Pane))

    @property
    def active_pane(self) -> Pane:
        return self.query_one(f"#{self.query_one(TabbedContent).active}", Pane)

    #: Narrower than this, lists go above their detail and the filter boxes give way to keys.
    NARROW = 100

    def on_resize(self, event: events.Resize) -> None:
        self.set_class(event.size.width < self.NARROW, "-narrow")

    def on_mount(self) -> None:
        self.set_class(self.size.width < self.NARROW, "-narrow")
        self.query_one(StatusLine).target = self.session.target.description
        self._own_target()
        self._attach_target()

    def on_unmount(self) -> None:
        self.link.close()
        gc.unfreeze()  # the app is going: what the first stop froze can be collected again
        self.link.finished.wait(10)

    # -- the link: the owner thread and its jobs ----------------------------------------------

    @work(thread=True, exclusive=True, exit_on_error=False, group="target", name="target")
    def _own_target(self) -> None:
        """The one thread that talks to the target, for the app's whole life."""
        self.link.run(resume_on_exit=self.resume_on_exit)

    def submit(
        self,
        name: str,
        work: Callable[[Session], Any],
        done: Callable[[Any], None] | None = None,
        *,
        failed: Callable[[BaseException], None] | None = None,
        watch: bool = False,
        while_running: str = "fail",
    ) -> None:
        """Queue target I/O for the owner thread; ``done(result)`` runs back here.

        ``while_running``: what to do if the kernel runs when the job's turn
        comes (see :class:`~kinspect.tui.link.Job`).
        """
        self._queued.append(name)
        self.query_one(StatusLine).busy = self._queued[0]
        self.link.submit(Job(name, work, done, failed, watch, while_running))

    def deliver(self, to: Widget, message: Message) -> None:
        """Post a result to a pane; it counts as pending until the pane has handled it.

        So ``link.pending`` is 0 only when every answer was shown and every read
        a pane asked for in return was submitted (tests and the benchmark wait on it).
        """
        self.link.pending += 1
        link = self.link
        if not (to.post_message(message) and to.call_later(self._handled, link)):
            self._handled(link)

    def _handled(self, link: Link) -> None:
        link.pending -= 1
        if link is self.link and not link.pending:
            self._on_idle()

    def _on_answer(self, job: Job) -> None:
        """A job was answered: the status line names the one now being read."""
        if self._queued:
            self._queued.popleft()
        self.query_one(StatusLine).busy = self._queued[0] if self._queued else ""

    def _on_idle(self) -> None:
        self._queued.clear()
        self.query_one(StatusLine).busy = ""

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until every submitted job was answered and shown (tests, the benchmark)."""
        deadline = time.monotonic() + timeout
        while self.link.pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.link.pending} target jobs still pending")
            await asyncio.sleep(0.01)

    def _attach_target(self) -> None:
        def work(session: Session) -> tuple[Mapping[str, Any], RegisterSnapshot]:
            session.invalidate()  # read everything again
            session.stop()
            _ = session.symbols  # load the ELF here, not in the UI thread
            record = dict(session.last_stop) or {"reason": "attached"}
            return record, take_register_snapshot(session)

        self.submit("attach", work, lambda result: self._on_stop(*result), while_running="run")

    def _on_stop(
        self, record: Mapping[str, Any], snapshot: RegisterSnapshot | None, cpu: int | None = None
    ) -> None:
        """A stop: the status line, then every pane and screen is told (registers first).

        ``cpu``: the CPU selected since (``select_cpu``); else the stop's own CPU."""
        self._symbols = self.session.symbols
        status = self.query_one(StatusLine)
        status.state = "stopped"
        status.health = "ok"
        status.reason = describe_stop(record, self.symbolize)
        stop_cpu = record.get("cpu")
        status.stop_cpu = stop_cpu if isinstance(stop_cpu, int) else None
        if cpu is not None or status.stop_cpu is not None:
            status.cpu = cpu if cpu is not None else status.stop_cpu
        self._read_cpus()
        if snapshot is not None:
            if snapshot.control is not None:
                status.mode = cpu_mode(snapshot.values, snapshot.control)
            self._values = snapshot.values
        self.stops += 1
        if self.stops == 1:
            # What the app is made of (widgets, styles, modules: ~100,000 objects) lives as
            # long as the app: kept out of the collector's full passes, which took 100-200 ms
            # each on a loaded machine, a stall in the middle of scrolling (issue 16); back
            # in them when the app goes (on_unmount). Collected first, once: garbage frozen
            # would never be freed.
            gc.collect()
            gc.freeze()
        stop = Stop(self.stops, record, snapshot, self.link.stop_seen_at)
        for pane in sorted(self.panes, key=lambda pane: pane.STOP_ORDER):
            self.deliver(pane, StopSeen(stop))
        self.breakpoints.stopped()
        self.frozen = stopped(self, record)

    def _read_cpus(self) -> None:
        """Every CPU's state for the status line, once per stop (a register read per CPU);
        not again on a target that showed one CPU."""
        if len(self.cpus) == 1:
            return

        def done(cpus: list[CpuState]) -> None:
            self.cpus = cpus
            status = self.query_one(StatusLine)
            status.cpus = tuple((cpu.index, cpu.state) for cpu in cpus)
            status.cpu = next((cpu.index for cpu in cpus if cpu.selected), status.cpu)

        self.submit("cpus", lambda session: session.cpus(), done, while_running="skip")

    def select_cpu(self, index: int) -> None:
        """Read CPU ``index`` from now on: every view reads again, as after a stop."""

        def work(session: Session) -> tuple[Mapping[str, Any], RegisterSnapshot]:
            session.select_cpu(index)
            return dict(session.last_stop), take_register_snapshot(session)

        def done(result: tuple[Mapping[str, Any], RegisterSnapshot]) -> None:
            self._on_stop(*result, cpu=index)

        self.submit(f"CPU {index}", work, done)

    def action_cpu(self, step: int) -> None:
        """The previous (-1) or next (1) CPU, around the ones read at the last stop."""
        indices = [cpu.index for cpu in self.cpus]
        if len(indices) < 2:
            self.report_failure(InspectorError("this target shows one CPU: nothing to select"))
            return
        current = self.query_one(StatusLine).cpu
        at = indices.index(current) if current in indices else 0
        self.select_cpu(indices[(at + step) % len(indices)])

    def drawn(self, what: str, seen: float) -> None:
        """A pane drew what a stop changed: the latency, for the benchmark."""
        if what == "registers":
            self.last_latency = time.perf_counter() - seen
            self.latencies.append(self.last_latency)
            if self.on_registers_drawn is not None:
                self.on_registers_drawn()
        else:
            if seen:
                self.stack_latencies.append(time.perf_counter() - seen)
            if self.on_stack_drawn is not None:
                self.on_stack_drawn()

    def action_refresh(self) -> None:
        self._attach_target()

    def action_reconnect(self) -> None:
        if self._connect is None:
            self.report_failure(InspectorError("this session has no way to reconnect"))
            return
        connect = self._connect
        if self.link.finished.is_set():  # the owner thread ended: start another
            self.link = self._make_link(self.session)
            self._queued.clear()
            self._own_target()
        link = self.link
        self.query_one(StatusLine).state = "connecting"

        def work(old: Session) -> tuple[Session, Mapping[str, Any], RegisterSnapshot]:
            try:
                old.close(resume=False)
            except Exception:  # noqa: BLE001 - it is gone already
                pass
            new = connect()
            link.session = new
            new.stop()
            _ = new.symbols
            return new, dict(new.last_stop) or {"reason": "attached"}, take_register_snapshot(new)

        def done(result: tuple[Session, Mapping[str, Any], RegisterSnapshot]) -> None:
            self.session, record, snapshot = result
            self.cpus = []  # another target: read its CPUs again
            self.query_one(StatusLine).target = self.session.target.description
            self.notify("reconnected")
            self._on_stop(record, snapshot)

        def failed(error: BaseException) -> None:
            status = self.query_one(StatusLine)
            status.state = "exited"  # not CONNECTING: nothing is being connected any more
            status.health = "not connected: R tries again"
            self.report_failure(error)

        self.submit("reconnect", work, done, failed=failed, while_running="run")

    # -- the one failure handler --------------------------------------------------------------

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR and event.worker.error is not None:
            self.report_failure(event.worker.error)
            self.query_one(StatusLine).health = "target thread ended: R reconnects"

    def report_failure(self, error: BaseException) -> None:
        """Every failure ends here: a notification and, for a lost link, the status line."""
        if isinstance(error, InspectorError):
            message = str(error)
        else:
            message = f"internal error: {type(error).__name__}: {error}"
            self.log.error(message)
        self.errors.append(message)
        if isinstance(error, TargetLost):
            status = self.query_one(StatusLine)
            status.health = "connection lost: R reconnects"
            status.state = "exited"
            self.link.watching = False
        self.notify(message, title="kinspect", severity="error", timeout=8)

    # -- what panes ask of the app --------------------------------------------------------------

    def resolve(self, session: Session, text: str) -> int:
        """A number, a symbol, or a register of the last stop (``rsp``, ``$rip``)."""
        name = text.strip().lstrip("$").lower()
        if name in self._values and name not in ("cs", "ds", "es", "fs", "gs", "ss"):
            return self._values[name]
        return session.resolve(text)

    def lookup(self, text: str) -> int | None:
        """An address from text without asking the target: a number, a register of the last
        stop, a symbol; None for anything else (the range search matches it as text)."""
        number = maybe_number(text)
        if number is not None:
            return number
        name = text.strip().lstrip("$").lower()
        if name in self._values and name not in ("cs", "ds", "es", "fs", "gs", "ss"):
            return self._values[name]
        symbols = self._symbols
        return symbols.lookup(text.strip()) if symbols is not None else None

    def symbolize(self, address: int) -> str | None:
        """``name+0x12`` when ``address`` falls inside a symbol (loaded in the owner thread)."""
        symbols = self._symbols
        return symbols.name_of(address) if symbols is not None else None

    # the range map's state, as tests and the benchmark read it
    @property
    def ranges(self) -> Sequence[Any]:
        return self.query_one(RangesPane).ranges

    @property
    def rows(self) -> Sequence[Any]:
        return self.query_one(RangesPane).rows

    @property
    def shown_rows(self) -> Sequence[Any]:
        return self.query_one(RangesPane).shown_rows

    @property
    def range_filter(self) -> Any:
        return self.query_one(RangesPane).range_filter

    def show_pane(self, name: str) -> None:
        self.query_one(TabbedContent).active = name

    def show_walk(self, va: int, view_id: str, *, title: str = "") -> None:
        """The walk of ``va`` in the walk view ``view_id`` (skipped while the kernel runs)."""
        view = self.query_one(f"#{view_id}")
        pane = next(node for node in view.ancestors if isinstance(node, Pane))
        pane.show_walk(va, title=title)  # type: ignore[attr-defined]

    # -- global keys ----------------------------------------------------------------------------

    def action_resume(self) -> None:
        if self.frozen:
            self.report_failure(InspectorError(FROZEN))
            return

        def done(_: None) -> None:
            status = self.query_one(StatusLine)
            status.state = "running"
            status.reason = ""

        self.submit(
            "continue", lambda session: session.resume(), done, watch=True, while_running="run"
        )

    def action_interrupt(self) -> None:
        self.submit("stop", lambda session: session.stop(), watch=True, while_running="run")

    def action_step(self) -> None:
        if self.frozen:
            self.report_failure(InspectorError(FROZEN))
            return
        self.submit("step", lambda session: session.step_instruction(), watch=True)

    def action_next(self) -> None:
        SteppingController(self).next(line=True)

    def action_finish(self) -> None:
        SteppingController(self).finish()

    def set_breakpoint(self, location: str) -> None:
        def done(result: tuple[int, int]) -> None:
            number, address = result
            name = self.symbolize(address)
            self.notify(f"breakpoint {number} at {address:#x}" + (f" ({name})" if name else ""))

        def work(session: Session) -> tuple[int, int]:
            return session.break_insert(f"{self.resolve(session, location):#x}")

        self.submit("break", work, done, watch=True, while_running="run")

    def action_breakpoints(self) -> None:
        self.breakpoints.open()

    def action_remap(self) -> None:
        """The remap screen: forms, the plan before anything is written, the journal."""
        self.push_screen(RemapScreen(self.session.remap_unavailable))

    @on(BreakpointsScreen.DeleteRequested)
    @on(BreakpointsScreen.RefreshRequested)
    def _breakpoints_request(self, request: Message) -> None:
        self.breakpoints.handle(request)

    @on(RemapScreen.PreviewRequested)
    @on(RemapScreen.ApplyRequested)
    @on(RemapScreen.UndoRequested)
    @on(RemapScreen.KeepRequested)
    @on(RemapScreen.JournalRequested)
    def _remap_request(self, request: Message) -> None:
        self.remaps.handle(request)

    def action_prompt(self, prefix: str) -> None:
        command = self.query_one("#command", PromptInput)
        command.value = prefix
        command.cursor_position = len(prefix)
        command.open()  # now, not later: keys already queued must land in it

    def action_tab(self, name: str) -> None:
        self.show_pane(name)
        focus = self.query_one(f"#{name}", Pane).FOCUS
        if focus is not None:
            self.set_focus(self.query_one(focus))

    def action_pane(self, name: str, action: str) -> None:
        """A pane's global key: show the pane, then run its action."""
        getattr(self.query_one(f"#{name}", Pane), f"action_{action}")()

    @on(TabbedContent.TabActivated)
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if isinstance(event.pane, Pane) and self.stops:
            event.pane.shown()

    def action_unfocus(self) -> None:
        """Esc: back to the shown view's list (never nothing focused: the arrows must work)."""
        focus = self.active_pane.FOCUS
        self.set_focus(self.active_pane.query_one(focus) if focus else None)

    @on(PromptInput.Cancelled, "#command")
    def _command_cancelled(self, event: PromptInput.Cancelled) -> None:
        event.prompt.value = ""
        self.action_unfocus()

    def action_help(self) -> None:
        self.push_screen(HelpScreen(key_sections(self), [(p.KEY, p.TITLE, p.HELP) for p in PANES]))

    @on(Input.Submitted, "#command")
    def _command_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        event.input.value = ""
        self.action_unfocus()
        if text:
            self.run_command(text)

    def run_command(self, text: str) -> None:
        """One command line (:mod:`kinspect.tui.commands`)."""
        run_command(self, text)

    def current_view_text(self) -> str:
        status = self.query_one(StatusLine).export_text()
        return f"{status}\n\n{self.active_pane.export_text()}"

    def _export_path(self, directory: str, suffix: str) -> Path | None:
        """Where an export goes: ``directory`` if given (and it becomes the directory of the
        exports that follow), else the export directory; made if missing. None: reported."""
        if directory:
            self.export_dir = Path(directory).expanduser()
        folder = self.export_dir.resolve()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self.report_failure(InspectorError(f"cannot make {folder}: {exc.strerror}"))
            return None
        active = self.query_one(TabbedContent).active
        return folder / f"kinspect-{active}-{time.strftime('%Y%m%d-%H%M%S')}.{suffix}"

    def action_export_text(self, directory: str = "") -> None:
        path = self._export_path(directory, "txt")
        if path is None:
            return
        try:
            path.write_text(self.current_view_text())
        except OSError as exc:
            self.report_failure(InspectorError(f"cannot write {path}: {exc.strerror}"))
            return
        self.notify(f"saved {path}")

    def action_export_svg(self, directory: str = "") -> None:
        path = self._export_path(directory, "svg")
        if path is None:
            return
        try:
            saved = self.save_screenshot(path.name, str(path.parent))
        except OSError as exc:
            self.report_failure(InspectorError(f"cannot write {path}: {exc.strerror}"))
            return
        self.notify(f"saved {Path(saved).resolve()}")

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield from palette(self)


def default_export_dir() -> Path:
    """The user's state directory (``$XDG_STATE_HOME/kinspect/exports``, by default
    ``~/.local/state/kinspect/exports``): never the directory kinspect was started in."""
    state = os.environ.get("XDG_STATE_HOME", "")
    base = Path(state) if state and Path(state).is_absolute() else Path.home() / ".local" / "state"
    return base / "kinspect" / "exports"


def make_app(
    session: Session,
    *,
    connect: Callable[[], Session] | None = None,
    resume_on_exit: bool = True,
    export_dir: str | Path | None = None,
) -> KinspectApp:
    """The TUI on ``session``; ``connect`` makes a new session for reconnecting."""
    return KinspectApp(
        session, connect=connect, resume_on_exit=resume_on_exit, export_dir=export_dir
    )
