"""Tasks [T]: every Linux task (``kinspect tasks``); the selected one's stack and address space.

The list is :meth:`Session.tasks`, the same call as ``kinspect tasks``: pid,
tgid, ps's state letter, CPU, kernel threads in brackets, the task_struct and
the physical root of the task's ``mm->pgd``; the CPUs' idle tasks (pid 0, on
no list) first. Enter on a task (or ``:tasks PID``) reads its stack,
:meth:`Session.task_backtrace` as ``kinspect bt --task PID`` prints it, and
its address space, :meth:`Session.task_address_spaces` as ``kinspect pt
--task PID`` walks it, shown compact (ptdump's merge, ``pt --compact``) under
Linux's region headings; under PTI the user-space copy below the kernel's,
labelled. Read when the tab is shown and again at each stop while it is (the
selected task's stack and tables too).

Its tab is hidden until the kernel is recognized as Linux (asked at the first
stop: :meth:`Session.kernel`, which the range map's regions have read already)
or its key shows it. On a kernel that is not Linux (the demo kernel),
or without the kernel's types, the view is one line saying why: no error is
reported for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Static, TabbedContent

from kinspect.inspector.commands.paging import format_ranges_with_regions
from kinspect.inspector.errors import InspectorError, TargetLost
from kinspect.inspector.linux.tasks import Task, TaskList
from kinspect.inspector.session import Session
from kinspect.inspector.unwind import Backtrace
from kinspect.inspector.x86.paging import AddressSpace, CompactRange, coalesce_ranges
from kinspect.inspector.x86.paging.ranges import compact_ranges

from ..messages import StopSeen
from ..widgets.listnav import NavTable
from .base import Pane

__all__ = ["AddressSpaceCopy", "TaskDetail", "TasksPane", "read_task_detail", "read_tasks"]

COLUMNS = ("PID", "TGID", "S", "CPU", "task_struct", "PGD (phys)", "COMM")


@dataclass(frozen=True, slots=True)
class AddressSpaceCopy:
    """One copy of a task's tables (under PTI: the kernel's, then the user-space one)."""

    title: str
    space: AddressSpace
    ranges: int  # exact ranges (pt --task)
    rows: tuple[CompactRange, ...]  # merged as pt --compact merges them
    regions: tuple[str | None, ...]  # each row's region (ptdump's name), or None


@dataclass(frozen=True, slots=True)
class TaskDetail:
    """A task's stack and address space, each with why it could not be read."""

    task: Task
    backtrace: Backtrace | None
    stack_error: str | None
    copies: tuple[AddressSpaceCopy, ...]
    space_error: str | None


def read_tasks(session: Session) -> TaskList:
    return session.tasks()


def is_linux(session: Session) -> bool:
    """Whether the kernel was recognized as Linux (kept once it is: no second decode)."""
    try:
        session.kernel()
    except TargetLost:
        raise
    except InspectorError:
        return False
    return True


def _copy(session: Session, title: str, space: AddressSpace) -> AddressSpaceCopy:
    regions = session.regions()
    exact = coalesce_ranges(space.leaves)
    rows = compact_ranges(exact, regions.boundaries() if regions else ())
    names = tuple(regions.name_of(r.range.start) if regions else None for r in rows)
    return AddressSpaceCopy(title, space, len(exact), tuple(rows), names)


def read_task_detail(session: Session, pid: int) -> TaskDetail:
    """What ``bt --task PID`` and ``pt --task PID`` read, for the task's two panes."""
    backtrace = stack_error = space_error = None
    copies: list[AddressSpaceCopy] = []
    try:
        backtrace = session.task_backtrace(pid)
    except TargetLost:
        raise
    except InspectorError as exc:
        stack_error = str(exc)
    try:
        task, space, user = session.task_address_spaces(pid)
    except TargetLost:
        raise
    except InspectorError as exc:
        from kinspect.inspector.linux.tasks import find_task

        task = find_task(session.tasks(), pid)
        space_error = str(exc)
    else:
        pti = " (PTI: the kernel's copy)" if user is not None else ""
        copies.append(
            _copy(session, f"mm->pgd at physical {space.cr3:#x}  {space.mode}{pti}", space)
        )
        if user is not None:
            title = f"PTI: the user-space copy at physical {user.cr3:#x} (CR3 in user mode)"
            copies.append(_copy(session, title, user))
    return TaskDetail(task, backtrace, stack_error, tuple(copies), space_error)


def format_task_cells(task: Task) -> tuple[str, ...]:
    """A row as ``kinspect tasks`` prints it (kernel threads in brackets)."""
    comm = f"[{task.comm}]" if task.kernel_thread else task.comm
    mark = "".join(f" <- current on CPU {cpu}" for cpu in task.current_on)
    pgd = f"{task.pgd_physical:#x}" if task.pgd_physical is not None else "-"
    return (
        str(task.pid),
        str(task.tgid),
        task.state,
        str(task.cpu),
        f"{task.address:#018x}",
        pgd,
        comm + mark,
    )


def format_address_space(detail: TaskDetail) -> str:
    """The task's tables as ``pt --task PID --compact`` would show them: each copy's
    title, its merged rows under region headings, and how many leaves and ranges."""
    if detail.space_error is not None:
        return detail.space_error
    parts = []
    for copy in detail.copies:
        lines = [copy.title]
        lines.append(format_ranges_with_regions(list(copy.rows), list(copy.regions)))
        lines.append(
            f"{len(copy.space.leaves)} leaves in {copy.ranges} ranges, "
            f"{len(copy.rows)} rows compacted"
        )
        lines.extend(f"problem: {problem}" for problem in copy.space.problems)
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


class TaskTable(NavTable):
    """The tasks, one a row, with the keys every list has (j k g G / n N Esc)."""

    NAV_WHAT = "the tasks"


class TasksView(Vertical):
    """The task list on top; the selected task's stack and address space below."""

    DEFAULT_CSS = """
    TasksView #tasks-summary { height: 1; }
    TasksView #tasks-table { height: 1fr; }
    TasksView #task-detail { height: 1fr; }
    TasksView .task-part { width: 1fr; border: round $primary-darken-2; }
    TasksView.-unavailable #tasks-table, TasksView.-unavailable #task-detail { display: none; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.found: TaskList | None = None
        self.rows: list[Task] = []  # in table order
        self.detail: TaskDetail | None = None
        self.error: str | None = None

    def compose(self) -> ComposeResult:
        yield Static("no tasks read yet", id="tasks-summary")
        table = TaskTable(id="tasks-table", cursor_type="row")
        table.add_columns(*COLUMNS)
        yield table
        with Horizontal(id="task-detail"):
            with VerticalScroll(classes="task-part", id="task-stack-pane"):
                yield Static("Enter on a task: its stack (bt --task PID)", id="task-stack")
            with VerticalScroll(classes="task-part", id="task-space-pane"):
                yield Static("Enter on a task: its address space (pt --task PID)", id="task-space")

    def on_mount(self) -> None:
        self.query_one("#task-stack-pane").border_title = "stack"
        self.query_one("#task-space-pane").border_title = "address space"

    # -- attributes down ----------------------------------------------------------------

    def show(self, found: TaskList) -> None:
        self.found = found
        self.error = None
        self.remove_class("-unavailable")
        table = self.query_one(TaskTable)
        keep = self.current.pid if self.current is not None else None
        listed = {task.address for task in found.tasks}
        idle = [task for task in found.current if task.address not in listed]
        self.rows = [*dict((task.address, task) for task in idle).values(), *found.tasks]
        table.clear()
        for task in self.rows:
            table.add_row(*format_task_cells(task), key=f"{task.address:x}")
        if keep is not None:
            self.select_pid(keep)
        summary = f"{len(found.tasks)} tasks"
        summary += "".join(
            f" | CPU {cpu}: {task.comm} (pid {task.pid})" for cpu, task in enumerate(found.current)
        )
        if found.problem:
            summary += f" | the list ends early: {found.problem}"
        self.query_one("#tasks-summary", Static).update(
            Text(summary + " | Enter: stack and address space", no_wrap=True, overflow="ellipsis")
        )

    def show_error(self, message: str) -> None:
        """No tasks: one line saying why (not Linux, no types)."""
        self.found = None
        self.rows = []
        self.detail = None
        self.error = message
        self.add_class("-unavailable")
        self.query_one(TaskTable).clear()
        self.query_one("#tasks-summary", Static).update(
            Text(f"no tasks: {message}", style="bold red", no_wrap=True, overflow="ellipsis")
        )

    def show_detail(self, detail: TaskDetail) -> None:
        self.detail = detail
        task = detail.task
        head = f"task {task.pid} ({task.comm}) at {task.address:#x}"
        if detail.backtrace is not None:
            stack = Text(f"{head}\n{detail.backtrace}")
        else:
            stack = Text(f"{head}\n{detail.stack_error}", style="red")
        self.query_one("#task-stack", Static).update(stack)
        space = format_address_space(detail)
        style = "red" if detail.space_error is not None else ""
        self.query_one("#task-space", Static).update(Text(space, style=style, no_wrap=True))

    @property
    def current(self) -> Task | None:
        table = self.query_one(TaskTable)
        if not self.rows or not 0 <= table.cursor_row < len(self.rows):
            return None
        return self.rows[table.cursor_row]

    def select_pid(self, pid: int) -> Task | None:
        """Move the cursor to task ``pid``; None when it is not listed."""
        for index, task in enumerate(self.rows):
            if task.pid == pid:
                self.query_one(TaskTable).move_cursor(row=index)
                return task
        return None

    def export_text(self) -> str:
        if self.error is not None:
            return f"no tasks: {self.error}\n"
        if self.found is None:
            return "no tasks read yet\n"
        text = str(self.found) + "\n"
        if self.detail is not None:
            task = self.detail.task
            stack = self.detail.backtrace or self.detail.stack_error
            text += f"\ntask {task.pid} ({task.comm}): stack\n{stack}\n"
            text += f"\ntask {task.pid} ({task.comm}): address space\n"
            text += format_address_space(self.detail) + "\n"
        return text


class TasksPane(Pane):
    NAME = "tasks"
    TITLE = "Tasks [T]"
    KEY = "T"
    KEY_HELP = "Tasks"
    HELP = (
        "every Linux task (kinspect tasks): pid, state, CPU, kernel threads in brackets, "
        "the page-table root; Enter (or :tasks PID) shows the task's stack (bt --task) "
        "and address space (pt --task, compact; under PTI the user copy labelled)"
    )
    PALETTE = ("Tasks", "The Linux tasks; a task's stack and address space (T)")
    FOCUS = "#tasks-table"
    REFRESH = "shown"
    STOP_ORDER = 80
    COMMANDS = {"tasks": "command_tasks"}

    class Read(Message, bubble=False):
        def __init__(self, stop: int, found: TaskList) -> None:
            super().__init__()
            self.at_stop = stop
            self.found = found

    class DetailRead(Message, bubble=False):
        def __init__(self, detail: TaskDetail) -> None:
            super().__init__()
            self.detail = detail

    class Failed(Message, bubble=False):
        def __init__(self, stop: int, error: BaseException) -> None:
            super().__init__()
            self.at_stop = stop
            self.error = error

    class Recognized(Message, bubble=False):
        def __init__(self, linux: bool) -> None:
            super().__init__()
            self.linux = linux

    def __init__(self) -> None:
        super().__init__()
        self.selected: int | None = None  # the pid whose stack and tables are shown
        self.linux = False  # recognized as Linux: the tab is shown
        self.asked = False  # whether the kernel is Linux (asked at the first stop)

    def compose(self) -> ComposeResult:
        yield TasksView(id="tasks-view")

    def on_mount(self) -> None:
        self.call_after_refresh(self._tabs().hide_tab, self.NAME)

    def on_show(self, event: events.Show) -> None:
        self._tabs().show_tab(self.NAME)  # shown by its key, :tasks or the palette

    def _tabs(self) -> TabbedContent:
        return next(node for node in self.ancestors if isinstance(node, TabbedContent))

    def on_stop_seen(self, message: StopSeen) -> None:
        # Pane.on_stop_seen runs as well (Textual calls the handler of each class).
        # Asked at the first stop only: not a job more at every stop of a kernel that
        # is not Linux (T shows the tab there, saying why it is empty).
        if not self.asked:
            self.asked = True
            self.read("linux?", is_linux, self.Recognized)

    def on_tasks_pane_recognized(self, message: Recognized) -> None:
        if message.linux and not self.linux:
            self.linux = True
            self._tabs().show_tab(self.NAME)

    def load(self) -> None:
        stop = self.last_stop.number if self.last_stop is not None else 0
        self.read(
            "tasks",
            read_tasks,
            lambda found: self.Read(stop, found),
            failed=lambda error: self.Failed(stop, error),
        )

    def on_tasks_pane_read(self, message: Read) -> None:
        self.read_at = message.at_stop
        view = self.query_one(TasksView)
        view.show(message.found)
        if self.selected is not None:
            if view.select_pid(self.selected) is not None:
                self.read_detail(self.selected)  # its stack moved since
            else:
                self.selected = None  # it exited

    def on_tasks_pane_failed(self, message: Failed) -> None:
        self.read_at = message.at_stop
        error = message.error
        view = self.query_one(TasksView)
        if isinstance(error, InspectorError):
            view.show_error(str(error))  # not Linux, no types: what the view says, no more
            if isinstance(error, TargetLost):
                self.kinspect.report_failure(error)
        else:
            view.show_error(f"internal error: {type(error).__name__}: {error}")
            self.kinspect.report_failure(error)

    @on(DataTable.RowSelected, "#tasks-table")
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        task = self.query_one(TasksView).current
        if task is not None:
            self.selected = task.pid
            self.read_detail(task.pid)

    def read_detail(self, pid: int) -> None:
        self.read(
            f"task {pid}",
            lambda session: read_task_detail(session, pid),
            self.DetailRead,
        )

    def on_tasks_pane_detail_read(self, message: DetailRead) -> None:
        if message.detail.task.pid == self.selected:
            self.query_one(TasksView).show_detail(message.detail)

    def command_tasks(self, argument: str) -> None:
        """``:tasks`` shows the list; ``:tasks PID`` selects that task."""
        self.kinspect.action_tab(self.NAME)
        if not argument:
            return
        try:
            pid = int(argument, 0)
        except ValueError:
            self.kinspect.report_failure(InspectorError(f"tasks: {argument!r} is not a PID"))
            return
        view = self.query_one(TasksView)
        if view.found is not None and view.select_pid(pid) is None:
            self.kinspect.report_failure(
                InspectorError(f"no task with PID {pid} on the kernel's task list")
            )
            return
        self.selected = pid  # selected now, or when the list comes
        if view.found is not None:
            self.read_detail(pid)

    def export_text(self) -> str:
        return self.query_one(TasksView).export_text()
