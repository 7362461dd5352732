"""The kinspect TUI: a live view of a kernel that follows it as it runs and stops.

Everything shown comes from the :class:`~inspector.session.Session` (the same
calls the CLI makes); this module only arranges it. Target I/O runs in one
thread worker that owns the session (:class:`~tui.link.Link`); results come
back as messages; every failure goes through :meth:`KinspectApp.report_failure`.

``make_app(session)`` builds the app, so tests inject an in-memory target.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Checkbox, Footer, Input, Static, TabbedContent, TabPane
from textual.worker import Worker, WorkerState

from kinspect.inspector.errors import InspectorError, TargetError
from kinspect.inspector.remap.apply import UndoRefused
from kinspect.inspector.session import Session
from kinspect.inspector.x86.paging import Range

from .link import Job, Link, RegisterSnapshot, take_register_snapshot
from .model import RangeFilter, RangeRow, RowTexts, diff_ranges, filter_rows
from .screens.breakpoints import BreakpointsScreen
from .screens.help import HelpScreen
from .screens.remap import RemapScreen
from .widgets.descriptors import DescriptorsView
from .widgets.efi import EfiMapView
from .widgets.memory import WINDOW, HexView
from .widgets.ranges import RangeList
from .widgets.registers import RegistersView
from .widgets.stack import StackView
from .widgets.status import StatusLine
from .widgets.tables import TableTree
from .widgets.walk import WalkView

__all__ = ["KinspectApp", "cpu_mode", "describe_stop", "make_app"]

_LOST = ("gone away", "lost the connection", "gdb exited", "did not answer", "not connected")


def _lost(message: str) -> bool:
    """Whether a TargetError's message says the link to the target is gone."""
    return any(word in message for word in _LOST)


def describe_stop(record: Mapping[str, Any], symbolize: Callable[[int], str | None]) -> str:
    """Why the target stopped, in a few words: ``breakpoint 1 at demo_level3``."""
    reason = str(record.get("reason", "") or "")
    frame = record.get("frame") if isinstance(record.get("frame"), Mapping) else {}
    where = ""
    addr = frame.get("addr") if frame else None
    if isinstance(addr, str):
        try:
            where = symbolize(int(addr, 16)) or addr
        except ValueError:
            where = addr
    if reason == "breakpoint-hit":
        text = f"breakpoint {record.get('bkptno', '?')}"
    elif reason == "signal-received":
        signal = record.get("signal-name", "signal")
        text = "interrupted" if signal in ("SIGINT", "0") else f"signal {signal}"
    elif reason == "end-stepping-range":
        text = "stepped"
    elif reason:
        text = reason.replace("-", " ")
    else:
        text = "stopped"
    return f"{text} at {where}" if where else text


def cpu_mode(values: Mapping[str, int], control: Any) -> str:
    """``64-bit CPL0 | 4-level paging [...]``: the CPU mode the registers imply, then paging."""
    efer = control.registers["EFER"]
    cr0 = control.registers["CR0"]
    if efer.is_set("LMA"):
        mode = "64-bit"
    elif cr0.is_set("PE"):
        mode = "protected"
    else:
        mode = "real"
    if "cs" in values and cr0.is_set("PE"):
        mode += f" CPL{values['cs'] & 3}"
    return f"{mode} | {control.paging}"


class KinspectApp(App[None]):
    """Registers, page tables (range map and tree), memory, run control."""

    CSS_PATH = "app.tcss"
    TITLE = "kinspect"
    AUTO_FOCUS = "#registers-view"

    BINDINGS = [
        Binding("q", "quit", "Quit", priority=True),
        Binding("c", "resume", "Continue", priority=True),
        Binding("p", "interrupt", "Stop", priority=True),
        Binding("s", "step", "Step", priority=True),
        Binding("b", "prompt('break ')", "Break", priority=True),
        Binding("B", "breakpoints", "Breakpoints", show=False, priority=True),
        Binding("v", "prompt('vtop ')", "vtop", priority=True),
        Binding("o", "prompt('ptov ')", "ptov", priority=True),
        Binding("g", "prompt('mem ')", "Memory", priority=True),
        Binding("colon", "prompt('')", "Command", show=False, priority=True),
        Binding("slash", "search", "Search", show=False, priority=True),
        Binding("1", "tab('registers')", "Regs", show=False, priority=True),
        Binding("2", "tab('ranges')", "Ranges", show=False, priority=True),
        Binding("3", "tab('tables')", "Tables", show=False, priority=True),
        Binding("4", "tab('memory')", "Mem", show=False, priority=True),
        Binding("5", "tab('stack')", "Stack", show=False, priority=True),
        Binding("6", "tab('descriptors')", "Descriptors", show=False, priority=True),
        Binding("7", "remap", "Remaps (agent)", show=False, priority=True),
        Binding("8", "tab('efi')", "EFI memory map", show=False, priority=True),
        Binding("r", "refresh", "Refresh", show=False, priority=True),
        Binding("R", "reconnect", "Reconnect", show=False, priority=True),
        Binding("e", "export_text", "Export", show=False, priority=True),
        Binding("E", "export_svg", "SVG", show=False, priority=True),
        Binding("question_mark,f1", "help", "Help", priority=True),
        Binding("escape", "unfocus", "Leave input", show=False),
    ]

    # Priority bindings act the moment the app reads the key, before it forwards
    # the next one: with keys arriving in a burst (a paste, a loaded machine,
    # tmux send-keys), "b" must have moved the focus to the command box before
    # the "d" of "demo_level3" is forwarded. check_action turns them off while
    # a text box has the focus or another screen is on top, so they type there.
    _PRIORITY = frozenset(b.action.split("(")[0] for b in BINDINGS if b.priority)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in self._PRIORITY:
            if isinstance(self.focused, Input) or len(self.screen_stack) > 1:
                return False
        return True

    class Delivered(Message):
        """A result from the owner thread, to run in the UI thread."""

        def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
            super().__init__()
            self.fn = fn
            self.args = args

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
        self.export_dir = Path(export_dir) if export_dir else Path.cwd()
        self.link = self._make_link(session)
        self._queued: deque[str] = deque()  # names of the jobs in the owner's queue, in order
        self.errors: list[str] = []  # every failure reported, for tests and the log
        self.ranges: list[Range] = []
        self.rows: list[RangeRow] = []
        self.shown_rows: list[RangeRow] = []
        self.range_filter = RangeFilter()
        self.stops = 0  # stops shown (each refreshes every view)
        self.last_latency: float | None = None  # stop seen -> registers on screen, seconds
        self.latencies: list[float] = []
        self.on_registers_drawn: Callable[[], None] | None = None  # the benchmark's hook
        self.stack_latencies: list[float] = []  # stop seen -> stack on screen, seconds
        self.on_stack_drawn: Callable[[], None] | None = None
        self._previous_ranges: list[Range] | None = None
        self._previous_values: Mapping[str, int] | None = None
        self._tree_generation = 0
        self._memory: tuple[int, str] | None = None
        self._symbols = None
        self._row_texts = RowTexts([])
        self._wx = self._marks = self._problems = 0
        self._descriptors_stop = -1
        self._efi_stop = -1

    def _make_link(self, session: Session) -> Link:
        return Link(
            session,
            deliver=self._deliver,
            on_stop=self._on_stop,
            on_error=self.report_failure,
            on_idle=self._on_idle,
            on_answer=self._on_answer,
        )

    # -- layout -------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield StatusLine(id="status")
        with TabbedContent(initial="registers", id="tabs"):
            with TabPane("Registers [1]", id="registers"):
                yield RegistersView(id="registers-view")
            with TabPane("Ranges [2]", id="ranges"):
                with Vertical():
                    with Horizontal(id="range-filters"):
                        yield Checkbox("user", id="f-user")
                        yield Checkbox("kernel", id="f-kernel")
                        yield Checkbox("writable", id="f-writable")
                        yield Checkbox("exec", id="f-executable")
                        yield Checkbox("W+X", id="f-wx")
                        yield Checkbox("changed", id="f-changed")
                        yield Input(placeholder="search: text or address", id="range-search")
                    yield Static("no ranges yet", id="range-summary")
                    with Horizontal(classes="split"):
                        yield RangeList(id="range-list")
                        with VerticalScroll(classes="walk-pane"):
                            yield WalkView(id="range-walk")
            with TabPane("Tables [3]", id="tables"):
                with Horizontal(classes="split"):
                    yield TableTree(id="table-tree")
                    with VerticalScroll(classes="walk-pane"):
                        yield WalkView(id="tree-walk")
            with TabPane("Memory [4]", id="memory"):
                yield HexView(id="hex")
            with TabPane("Stack [5]", id="stack"):
                yield StackView(id="stack-view")
            with TabPane("GDT IDT TSS [6]", id="descriptors"):
                yield DescriptorsView(id="descriptors-view")
            with TabPane("EFI [8]", id="efi"):
                yield EfiMapView(id="efi-view")
        yield Input(
            placeholder=": vtop ADDR | ptov PADDR | mem ADDR | phys PADDR | break SYM|ADDR"
            " | continue | stop | step | help",
            id="command",
            select_on_focus=False,
        )
        yield Footer()

    def on_mount(self) -> None:
        status = self.query_one(StatusLine)
        status.target = self.session.target.description
        self.query_one(RegistersView).symbolize = self.symbolize
        self._own_target()
        self._attach()

    def on_unmount(self) -> None:
        self.link.close()
        self.link.finished.wait(10)

    # -- the owner thread -----------------------------------------------------------------

    @work(thread=True, exclusive=True, exit_on_error=False, group="target", name="target")
    def _own_target(self) -> None:
        """The one thread that talks to the target, for the app's whole life."""
        self.link.run(resume_on_exit=self.resume_on_exit)

    def _deliver(self, fn: Callable[..., Any], *args: Any) -> None:
        self.post_message(self.Delivered(fn, args))  # thread-safe, never blocks

    def on_kinspect_app_delivered(self, message: Delivered) -> None:
        try:
            message.fn(*message.args)
        except Exception as exc:  # noqa: BLE001 - a bug in a view must not end the app
            self.report_failure(exc)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR and event.worker.error is not None:
            self.report_failure(event.worker.error)
            self.query_one(StatusLine).health = "target thread ended: R reconnects"

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
        comes (see :class:`~tui.link.Job`).
        """
        self._queued.append(name)
        self.query_one(StatusLine).busy = self._queued[0]
        self.link.submit(Job(name, work, done, failed, watch, while_running))

    def _on_answer(self, job: Job) -> None:
        """A job was answered: the status line names the one now being read."""
        if self._queued:
            self._queued.popleft()
        self.query_one(StatusLine).busy = self._queued[0] if self._queued else ""

    def _on_idle(self) -> None:
        self._queued.clear()
        self.query_one(StatusLine).busy = ""

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until every submitted job was answered (tests, the benchmark)."""
        import asyncio

        deadline = time.monotonic() + timeout
        while self.link.pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.link.pending} target jobs still pending")
            await asyncio.sleep(0.01)

    # -- the one failure handler ------------------------------------------------------------

    def report_failure(self, error: BaseException) -> None:
        """Every failure ends here: a notification and, for a lost target, the status line."""
        if isinstance(error, InspectorError):
            message = str(error)
        else:
            message = f"internal error: {type(error).__name__}: {error}"
            self.log.error(message)
        self.errors.append(message)
        status = self.query_one(StatusLine)
        if isinstance(error, TargetError) and _lost(message):
            status.health = "connection lost: R reconnects"
            status.state = "exited"
            self.link.watching = False
        self.notify(message, title="kinspect", severity="error", timeout=8)

    # -- stops ------------------------------------------------------------------------------------

    def _attach(self) -> None:
        def work(session: Session) -> tuple[Mapping[str, Any], RegisterSnapshot]:
            session.invalidate()  # read everything again
            session.stop()
            _ = session.symbols  # load the ELF here, not in the UI thread
            return dict(session.last_stop) or {"reason": "attached"}, take_register_snapshot(
                session
            )

        self.submit("attach", work, lambda result: self._on_stop(*result), while_running="run")

    def _on_stop(self, record: Mapping[str, Any], snapshot: RegisterSnapshot | None) -> None:
        """A stop: registers first (already read), then the slower views."""
        self._symbols = self.session.symbols
        status = self.query_one(StatusLine)
        status.state = "stopped"
        status.health = "ok"
        status.reason = describe_stop(record, self.symbolize)
        if snapshot is not None:
            if snapshot.control is not None:
                status.mode = cpu_mode(snapshot.values, snapshot.control)
            self.query_one(RegistersView).show(snapshot, self._previous_values)
            self._previous_values = snapshot.values
            seen = self.link.stop_seen_at or snapshot.taken
            self.call_after_refresh(self._record_latency, seen)
        self.stops += 1
        self._load_stack()
        self._load_ranges()
        self._load_tree()
        if self._memory is not None:
            self.show_memory(*self._memory, while_running="skip")
        if self.query_one(TabbedContent).active == "descriptors":
            self._load_descriptors()
        if self.query_one(TabbedContent).active == "efi":
            self._load_efi()
        if self._breakpoints_screen() is not None:
            self._load_breakpoints()  # the hit counts changed

    def _record_latency(self, seen: float) -> None:
        """Runs once the screen showing the new registers was drawn."""
        self.last_latency = time.perf_counter() - seen
        self.latencies.append(self.last_latency)
        if self.on_registers_drawn is not None:
            self.on_registers_drawn()

    def _load_stack(self) -> None:
        seen = self.link.stop_seen_at

        def done(backtrace) -> None:
            self.query_one(StackView).show(backtrace)
            self.call_after_refresh(self._record_stack_latency, seen)

        def failed(error: BaseException) -> None:
            self.query_one(StackView).show_error(str(error))
            self.report_failure(error)

        self.submit(
            "stack", lambda session: session.backtrace(), done, failed=failed, while_running="skip"
        )

    def _record_stack_latency(self, seen: float) -> None:
        """Runs once the screen showing the new stack was drawn."""
        if seen:
            self.stack_latencies.append(time.perf_counter() - seen)
        if self.on_stack_drawn is not None:
            self.on_stack_drawn()

    def _load_descriptors(self) -> None:
        stop = self.stops

        def work(session: Session) -> tuple[dict[str, str], dict[str, str]]:
            tables: dict[str, str] = {}
            errors: dict[str, str] = {}
            readers = {
                "GDT": session.gdt,
                "LDT": session.ldt,
                "IDT": session.idt,
                "TSS": session.tss,
            }
            for name, read in readers.items():
                try:
                    value = read()
                except InspectorError as exc:
                    errors[name] = str(exc)
                else:
                    tables[name] = str(value) if value is not None else "none (LDTR is null)"
            return tables, errors

        def done(result: tuple[dict[str, str], dict[str, str]]) -> None:
            self._descriptors_stop = stop
            self.query_one(DescriptorsView).show(*result)

        self.submit("descriptors", work, done, while_running="skip")

    def _load_efi(self) -> None:
        """The UEFI memory map and where its runtime regions are mapped, as ``kinspect efi-map``.

        Read when the tab is shown and at each stop while it is: the map does
        not change after ExitBootServices, the mappings do when the kernel
        remaps its runtime regions. A kernel that did not boot through UEFI
        is a line in the view, not a failure.
        """
        stop = self.stops

        def work(session: Session) -> tuple[Any, Any]:
            memory_map = session.efi_memory_map()
            try:
                attributes = session.efi_memory_attributes()
            except InspectorError as exc:  # the map is still worth showing
                attributes = str(exc)
            return memory_map, attributes

        def done(result: tuple[Any, Any]) -> None:
            self._efi_stop = stop
            self.query_one(EfiMapView).show(*result, stop=stop)

        def failed(error: BaseException) -> None:
            self._efi_stop = stop
            view = self.query_one(EfiMapView)
            if isinstance(error, InspectorError):
                view.show_error(str(error))
                if isinstance(error, TargetError) and _lost(str(error)):
                    self.report_failure(error)  # the status line must say so too
            else:
                view.show_error(f"internal error: {type(error).__name__}: {error}")
                self.report_failure(error)

        self.submit("efi map", work, done, failed=failed, while_running="skip")

    @on(TabbedContent.TabActivated)
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id == "descriptors" and self._descriptors_stop != self.stops and self.stops:
            self._load_descriptors()
        if event.pane.id == "efi" and self._efi_stop != self.stops and self.stops:
            self._load_efi()

    def _load_ranges(self) -> None:
        def work(session: Session) -> tuple[list[Range], int]:
            ranges = session.ranges()
            return ranges, len(session.address_space().problems)

        self.submit("ranges", work, self._show_ranges, while_running="skip")

    def _show_ranges(self, result: tuple[list[Range], int]) -> None:
        ranges, problems = result
        self.ranges = ranges
        self.rows = diff_ranges(self._previous_ranges, ranges)
        self._previous_ranges = ranges
        self._problems = problems
        self._row_texts = RowTexts(self.rows)
        self._wx = sum(1 for r in ranges if r.permissions.writable and r.permissions.executable)
        self._marks = sum(1 for row in self.rows if row.mark)
        self._apply_filter()

    def _load_tree(self) -> None:
        def work(session: Session) -> tuple[int, int]:
            return session.root_table(), session.paging_mode().levels

        def done(result: tuple[int, int]) -> None:
            self._tree_generation += 1
            tree = self.query_one(TableTree)
            tree.reset(*result)
            tree.root.expand()

        self.submit("tree", work, done, while_running="skip")

    # -- range map --------------------------------------------------------------------------

    @on(Checkbox.Changed)
    def _flag_changed(self, event: Checkbox.Changed) -> None:
        self._filters_changed()

    @on(Input.Changed, "#range-search")
    def _search_changed(self, event: Input.Changed) -> None:
        self._filters_changed()

    def _filters_changed(self) -> None:
        def flag(name: str) -> bool:
            return self.query_one(f"#f-{name}", Checkbox).value

        self.range_filter = RangeFilter(
            user=flag("user"),
            kernel=flag("kernel"),
            writable=flag("writable"),
            executable=flag("executable"),
            wx=flag("wx"),
            changed=flag("changed"),
            text=self.query_one("#range-search", Input).value.strip(),
        )
        self._apply_filter()

    def _apply_filter(self) -> None:
        view = self.query_one(RangeList)
        keep = view.current.range.start if view.current else None
        self.shown_rows = filter_rows(self.rows, self.range_filter, self._row_texts)
        view.set_rows(self.shown_rows, keep=keep)
        self.query_one("#range-summary", Static).update(
            f"{len(self.shown_rows)} of {len(self.rows)} rows shown | {len(self.ranges)} ranges"
            f" | W+X {self._wx} | changed since last stop {self._marks}"
            f" | walk problems {self._problems}"
        )

    @on(RangeList.Highlighted)
    def _range_highlighted(self, event: RangeList.Highlighted) -> None:
        if event.row is not None:
            r = event.row.range
            self.show_walk(r.start, "range-walk", title=f"walk of {r.start:#x} (range start)")

    def show_walk(self, va: int, view_id: str, *, title: str = "") -> None:
        def done(translation) -> None:
            name = self.symbolize(va)
            extra = f"symbol: {name}" if name else ""
            self.query_one(f"#{view_id}", WalkView).show_walk(translation, title=title, extra=extra)

        self.submit("walk", lambda session: session.translate(va), done, while_running="skip")

    # -- tree ----------------------------------------------------------------------------------

    @on(TableTree.Load)
    def _load_table(self, event: TableTree.Load) -> None:
        node = event.node
        spot = node.data
        generation = self._tree_generation

        def done(entries) -> None:
            if generation == self._tree_generation:
                event.tree.fill(node, entries)

        self.submit(
            "table",
            lambda session: session.page_table(spot.table, spot.level),
            done,
            while_running="skip",
        )

    @on(TableTree.EntryHighlighted)
    def _entry_highlighted(self, event: TableTree.EntryHighlighted) -> None:
        spot = event.spot
        self.show_walk(spot.va, "tree-walk", title=f"walk of {spot.va:#x}")

    # -- memory ----------------------------------------------------------------------------------

    def show_memory(self, address: int, space: str, *, while_running: str = "fail") -> None:
        self._memory = (address, space)

        def work(session: Session) -> bytes:
            if space == "physical":
                return session.read_physical(address, WINDOW)
            return session.read_virtual(address, WINDOW)

        def done(data: bytes) -> None:
            self.query_one(HexView).show(
                address, space, data, self.symbolize, title=self.symbolize(address) or ""
            )

        def failed(error: BaseException) -> None:
            self.query_one(HexView).show_error(address, space, str(error))
            self.report_failure(error)

        self.submit("memory", work, done, failed=failed, while_running=while_running)

    @on(HexView.Move)
    def _memory_move(self, event: HexView.Move) -> None:
        if self._memory is not None:
            address, space = self._memory
            self.show_memory(max(address + event.delta, 0), space)

    def resolve(self, session: Session, text: str) -> int:
        """A number, a symbol, or a register of the last stop (``rsp``, ``$rip``)."""
        values = self._previous_values or {}
        name = text.strip().lstrip("$").lower()
        if name in values and name not in ("cs", "ds", "es", "fs", "gs", "ss"):
            return values[name]
        return session.resolve(text)

    # -- symbols -------------------------------------------------------------------------------

    def symbolize(self, address: int) -> str | None:
        """``name+0x12`` when ``address`` falls inside a symbol (loaded in the owner thread)."""
        symbols = self._symbols
        if symbols is None:
            return None
        found = symbols.symbolize(address)
        if found is None:
            return None
        symbol, offset = found
        if symbol.size == 0 and offset > 0x100:
            return None
        return f"{symbol.name}+{offset:#x}" if offset else symbol.name

    # -- run control --------------------------------------------------------------------------

    def action_resume(self) -> None:
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
        self.submit("step", lambda session: session.step_instruction(), watch=True)

    def set_breakpoint(self, location: str) -> None:
        def done(result: tuple[int, int]) -> None:
            number, address = result
            name = self.symbolize(address)
            self.notify(f"breakpoint {number} at {address:#x}" + (f" ({name})" if name else ""))

        def work(session: Session) -> tuple[int, int]:
            return session.break_insert(f"{self.resolve(session, location):#x}")

        self.submit("break", work, done, watch=True, while_running="run")

    # -- breakpoints: the list (B) and delete ---------------------------------------------

    def action_breakpoints(self) -> None:
        """The breakpoints with their hit counts (``Session.breakpoints()``); d/D delete."""
        if self._breakpoints_screen() is None:
            self.push_screen(BreakpointsScreen(self.symbolize))
        self._load_breakpoints()

    def _breakpoints_screen(self) -> BreakpointsScreen | None:
        for screen in self.screen_stack:
            if isinstance(screen, BreakpointsScreen):
                return screen
        return None

    def _load_breakpoints(self) -> None:
        def done(breakpoints: list[Any]) -> None:
            if (screen := self._breakpoints_screen()) is not None:
                screen.show(breakpoints)

        def failed(error: BaseException) -> None:
            if (screen := self._breakpoints_screen()) is not None:
                screen.show_error(str(error))
            self.report_failure(error)

        # gdb keeps the list itself: it is read while the kernel runs, without stopping it
        self.submit(
            "breakpoints",
            lambda session: session.breakpoints(),
            done,
            failed=failed,
            while_running="run",
        )

    def delete_breakpoints(self, numbers: tuple[int, ...] | None) -> None:
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
                self.notify("no breakpoints to delete")
            else:
                names = ", ".join(str(n) for n in deleted)
                self.notify(f"deleted breakpoint{'s' if len(deleted) > 1 else ''} {names}")
            if (screen := self._breakpoints_screen()) is not None:
                screen.show(left)

        def failed(error: BaseException) -> None:
            self.report_failure(error)
            if self._breakpoints_screen() is not None:
                self._load_breakpoints()  # some may be gone: show what is left

        self.submit("delete", work, done, failed=failed, while_running="run")

    @on(BreakpointsScreen.DeleteRequested)
    def _breakpoints_delete(self, event: BreakpointsScreen.DeleteRequested) -> None:
        self.delete_breakpoints(event.numbers)

    @on(BreakpointsScreen.RefreshRequested)
    def _breakpoints_refresh(self, event: BreakpointsScreen.RefreshRequested) -> None:
        self._load_breakpoints()

    def action_refresh(self) -> None:
        self._attach()

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
            self.query_one(StatusLine).target = self.session.target.description
            self.notify("reconnected")
            self._on_stop(record, snapshot)

        self.submit("reconnect", work, done, while_running="run")

    # -- commands --------------------------------------------------------------------------------

    def action_prompt(self, prefix: str) -> None:
        command = self.query_one("#command", Input)
        command.value = prefix
        command.cursor_position = len(prefix)
        self.set_focus(command)  # now, not later: keys already queued must land in it

    def action_search(self) -> None:
        self.action_tab("ranges")
        self.set_focus(self.query_one("#range-search", Input))

    def action_tab(self, name: str) -> None:
        self.query_one(TabbedContent).active = name
        focus = {
            "ranges": "#range-list",
            "tables": "#table-tree",
            "memory": "#hex",
            "stack": "#frames",
            "descriptors": "#descriptors-view",
            "efi": "#efi-table",
        }.get(name)
        if focus is not None:
            self.set_focus(self.query_one(focus))

    def action_unfocus(self) -> None:
        self.set_focus(None)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.BINDINGS))

    @on(Input.Submitted, "#command")
    def _command_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        event.input.value = ""
        if text:
            self.run_command(text)
        self.set_focus(None)

    def run_command(self, text: str) -> None:
        """One command line: the same verbs as the CLI, and run control."""
        verb, _, arg = text.partition(" ")
        verb = verb.lower()
        arg = arg.strip()
        needs_arg = {"vtop", "v", "ptov", "mem", "x", "phys", "break", "b"}
        if verb in needs_arg and not arg:
            self.report_failure(InspectorError(f"{verb} needs an address or a symbol"))
            return
        if verb in ("delete", "d"):
            words = arg.replace(",", " ").split()
            if words == ["all"]:
                self.delete_breakpoints(None)
            elif words and all(w.isdigit() for w in words):
                self.delete_breakpoints(tuple(int(w) for w in words))
            else:
                self.report_failure(
                    InspectorError(
                        f"{verb} needs breakpoint numbers or 'all' (breakpoints lists them)"
                    )
                )
            return
        if verb in ("vtop", "v"):
            self.vtop(arg)
        elif verb == "ptov":
            self.ptov(arg)
        elif verb in ("mem", "x", "phys"):
            space = "physical" if verb == "phys" else "virtual"
            self.submit(
                "resolve",
                lambda session: self.resolve(session, arg),
                lambda address: (self.action_tab("memory"), self.show_memory(address, space)),
            )
        elif verb in ("break", "b"):
            self.set_breakpoint(arg)
        elif verb in ("breakpoints", "bl"):
            self.action_breakpoints()
        elif verb in ("continue", "c"):
            self.action_resume()
        elif verb in ("stop", "interrupt"):
            self.action_interrupt()
        elif verb in ("step", "si", "stepi"):
            self.action_step()
        elif verb == "refresh":
            self.action_refresh()
        elif verb == "reconnect":
            self.action_reconnect()
        elif verb == "export":
            self.action_export_text()
        elif verb == "svg":
            self.action_export_svg()
        elif verb == "help":
            self.action_help()
        elif verb == "remap":
            self.action_remap()
        elif verb == "efi":
            self.action_tab("efi")
        else:
            self.report_failure(InspectorError(f"unknown command {verb!r} (try help)"))

    def vtop(self, text: str) -> None:
        """Translate an address or symbol; the walk goes to the range map's walk pane."""

        def work(session: Session):
            va = self.resolve(session, text)
            return va, session.translate(va)

        def done(result) -> None:
            va, translation = result
            if self.query_one(TabbedContent).active not in ("ranges", "tables"):
                self.query_one(TabbedContent).active = "ranges"
            view_id = (
                "tree-walk" if self.query_one(TabbedContent).active == "tables" else "range-walk"
            )
            name = self.symbolize(va)
            self.query_one(f"#{view_id}", WalkView).show_walk(
                translation, title=f"vtop {text}", extra=f"symbol: {name}" if name else ""
            )

        self.submit("vtop", work, done)

    def ptov(self, text: str) -> None:
        def work(session: Session):
            pa = self.resolve(session, text)
            return pa, session.aliases(pa)

        def done(result) -> None:
            pa, aliases = result
            if not aliases:
                lines = [f"no virtual address maps physical {pa:#x}"]
            else:
                lines = [f"{len(aliases)} virtual addresses map physical {pa:#x}:"]
                for va in aliases[:200]:
                    name = self.symbolize(va)
                    lines.append(f"  {va:#018x}" + (f"  {name}" if name else ""))
                if len(aliases) > 200:
                    lines.append(f"  ... and {len(aliases) - 200} more")
            self.query_one(TabbedContent).active = "ranges"
            self.query_one("#range-walk", WalkView).show_text("\n".join(lines))

        self.submit("ptov", work, done)

    # -- export ----------------------------------------------------------------------------------

    def current_view_text(self) -> str:
        active = self.query_one(TabbedContent).active
        status = self.query_one(StatusLine).export_text()
        if active == "registers":
            body = self.query_one(RegistersView).export_text()
        elif active == "ranges":
            body = (
                str(self.query_one("#range-summary", Static).render())
                + "\n"
                + self.query_one(RangeList).export_text()
                + "\n"
                + self.query_one("#range-walk", WalkView).export_text()
            )
        elif active == "tables":
            body = self.query_one(TableTree).export_text() + "\n"
            body += self.query_one("#tree-walk", WalkView).export_text()
        elif active == "stack":
            body = self.query_one(StackView).export_text()
        elif active == "descriptors":
            body = self.query_one(DescriptorsView).export_text()
        elif active == "efi":
            body = self.query_one(EfiMapView).export_text()
        else:
            body = self.query_one(HexView).export_text()
        return f"{status}\n\n{body}"

    def action_export_text(self) -> None:
        active = self.query_one(TabbedContent).active
        path = self.export_dir / f"kinspect-{active}-{time.strftime('%Y%m%d-%H%M%S')}.txt"
        try:
            path.write_text(self.current_view_text())
        except OSError as exc:
            self.report_failure(InspectorError(f"cannot write {path}: {exc.strerror}"))
            return
        self.notify(f"saved {path}")

    def action_export_svg(self) -> None:
        active = self.query_one(TabbedContent).active
        name = f"kinspect-{active}-{time.strftime('%Y%m%d-%H%M%S')}.svg"
        try:
            path = self.save_screenshot(name, str(self.export_dir))
        except OSError as exc:
            self.report_failure(InspectorError(f"cannot write {name}: {exc.strerror}"))
            return
        self.notify(f"saved {path}")

    # -- remaps (through the agent) ---------------------------------------------------------

    def action_remap(self) -> None:
        """The remap screen: forms, the plan before anything is written, the journal."""
        self.push_screen(RemapScreen(self.session.remap_unavailable))

    def _remap_screen(self) -> RemapScreen | None:
        for screen in self.screen_stack:
            if isinstance(screen, RemapScreen) and not screen.unavailable:
                return screen
        return None

    @on(RemapScreen.PreviewRequested)
    def _remap_preview(self, event: RemapScreen.PreviewRequested) -> None:
        action, fields = event.action, event.fields

        def work(session: Session):
            remapper = session.remapper()
            orphaned = remapper.journal.orphaned()
            if orphaned:
                raise InspectorError(
                    f"a crashed session left {len(orphaned)} open steps in "
                    f"{remapper.journal.path}: undo them (journal, Undo) first"
                )
            return plan_remap(session, remapper, action, fields, self.resolve)

        def done(plan) -> None:
            if (screen := self._remap_screen()) is not None:
                screen.show_plan(plan)

        def failed(error: BaseException) -> None:
            if (screen := self._remap_screen()) is not None:
                screen.show_plan_error(str(error))
            self.report_failure(error)

        self.submit("remap plan", work, done, failed=failed)

    @on(RemapScreen.ApplyRequested)
    def _remap_apply(self, event: RemapScreen.ApplyRequested) -> None:
        plan = event.plan
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
            if (screen := self._remap_screen()) is not None:
                screen.show_reports(result)
            ok = all(r.verified for r in result)
            self.notify(
                f"{len(result)} remap steps applied, "
                + ("all verified" if ok else "SOME NOT AS PLANNED"),
                severity="information" if ok else "error",
            )
            self._remap_journal()
            self._attach()

        def failed(error: BaseException) -> None:
            if (screen := self._remap_screen()) is not None and reports:
                screen.show_reports(reports)
            self.report_failure(error)
            self._remap_journal()
            self._attach()

        self.submit("remap apply", work, done, failed=failed)

    @on(RemapScreen.UndoRequested)
    def _remap_undo(self, event: RemapScreen.UndoRequested) -> None:
        seqs = event.seqs

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
            if (screen := self._remap_screen()) is not None:
                screen.show_result(text or "nothing to undo")
            self.notify(text or "nothing to undo")
            self._remap_journal()
            if undone:
                self._attach()

        def failed(error: BaseException) -> None:
            self.report_failure(error)
            if isinstance(error, UndoRefused):
                # refused before anything was undone: the journal list stays as it is
                if (screen := self._remap_screen()) is not None:
                    screen.show_undo_refused(str(error))
            else:
                self._remap_journal()
            self._attach()

        self.submit("remap undo", work, done, failed=failed)

    @on(RemapScreen.JournalRequested)
    def _remap_journal_requested(self, event: RemapScreen.JournalRequested) -> None:
        self._remap_journal()

    def _remap_journal(self) -> None:
        def work(session: Session) -> tuple[str, list[Any]]:
            journal = session.remapper().journal
            return str(journal.path), journal.open_steps()

        def done(result: tuple[str, list[Any]]) -> None:
            if (screen := self._remap_screen()) is not None:
                screen.show_journal(*result)

        self.submit("remap journal", work, done)

    # -- command palette -------------------------------------------------------------------------

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Continue", "Let the kernel run (c)", self.action_resume)
        yield SystemCommand("Stop", "Interrupt the kernel (p)", self.action_interrupt)
        yield SystemCommand("Single step", "Execute one instruction (s)", self.action_step)
        yield SystemCommand(
            "Breakpoint", "Break on a symbol or address (b)", lambda: self.action_prompt("break ")
        )
        yield SystemCommand(
            "Breakpoints",
            "The breakpoints with their hit counts; delete one or all (B)",
            self.action_breakpoints,
        )
        yield SystemCommand(
            "vtop", "Translate a virtual address (v)", lambda: self.action_prompt("vtop ")
        )
        yield SystemCommand(
            "ptov", "Virtual aliases of a physical address (o)", lambda: self.action_prompt("ptov ")
        )
        yield SystemCommand(
            "Memory", "Hex view at an address (g)", lambda: self.action_prompt("mem ")
        )
        yield SystemCommand("Refresh", "Read everything again (r)", self.action_refresh)
        yield SystemCommand("Reconnect", "Attach to the target again (R)", self.action_reconnect)
        yield SystemCommand(
            "Export text", "Save the current view as text (e)", self.action_export_text
        )
        yield SystemCommand("Export SVG", "Save the screen as SVG (E)", self.action_export_svg)
        yield SystemCommand(
            "Remap",
            "Map, unmap, protect, move, higher-half, efi-runtime (agent); journal, undo (7)",
            self.action_remap,
        )
        yield SystemCommand("Remap journal", "Open remap steps, undo (7)", self.action_remap)
        yield SystemCommand(
            "EFI memory map",
            "The UEFI memory map; where its runtime regions are mapped now (8)",
            lambda: self.action_tab("efi"),
        )
        yield SystemCommand("Help", "Keys and commands (?)", self.action_help)


def plan_remap(
    session: Session,
    remapper: Any,
    action: str,
    fields: Mapping[str, Any],
    resolve: Callable[[Session, str], int],
):
    """The plan for one remap form, as ``kinspect remap ACTION --plan`` makes it."""
    from kinspect.inspector.efi.runtime import EFI_VA_BASE
    from kinspect.inspector.numbers import parse_size
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
