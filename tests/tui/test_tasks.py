"""The tasks pane (T) on the Linux 6.1 capture with a task list of its own.

The capture holds page tables and registers but too few symbols to be recognized
as Linux, so ``Session.tasks`` is given a list (``tasks_session``): a user task
running on CPU 0 whose ``mm->pgd`` is the capture's CR3, and a kernel thread.
Everything else is the real Session's: the running task's stack is the CPU's
(``task_backtrace``), its tables are walked from that root
(``task_address_spaces``), the kernel thread has no mm, and its saved context
needs types the capture has not. What the pane shows is compared with
``kinspect tasks``, ``bt`` and ``pt --compact`` as the CLI renders them on an
independent session over the same bytes.
"""

from __future__ import annotations

import asyncio
import time

from textual.widgets import TabbedContent

from kinspect.inspector.commands import registry
from kinspect.inspector.commands.paging import render_pt
from kinspect.inspector.linux.tasks import Task, TaskList
from kinspect.inspector.session import Session
from kinspect.tui.app import make_app
from kinspect.tui.panes.tasks import TasksPane, TasksView, TaskTable, format_task_cells

from .conftest import run
from .fakes import CR3, memory_session, regions_session
from .test_app import SIZE, started

USER = Task(
    address=0xFFFF888003A48000, pid=84, tgid=84, comm="sleep", state="R", state_value=0,
    cpu=0, kernel_thread=False, mm=0xFFFF888003B00000, pgd=0xFFFF888000000000 + CR3,
    pgd_physical=CR3, current_on=(0,),
)  # fmt: skip
KTHREAD = Task(
    address=0xFFFF888003A4C000, pid=2, tgid=2, comm="kthreadd", state="S", state_value=1,
    cpu=0, kernel_thread=True, mm=0, pgd=None, pgd_physical=None,
)  # fmt: skip
INIT = Task(
    address=0xFFFF888003A40000, pid=1, tgid=1, comm="init", state="S", state_value=1,
    cpu=0, kernel_thread=False, mm=0xFFFF888003B40000, pgd=None, pgd_physical=None,
)  # fmt: skip
TASKS = TaskList((INIT, KTHREAD, USER), (USER,))


def tasks_session(session: Session | None = None) -> Session:
    """The capture with a task list, recognized as Linux (its regions, its kernel)."""
    session = regions_session(session)
    session.tasks = lambda: TASKS  # type: ignore[method-assign]
    session.kernel = lambda: None  # type: ignore[method-assign, assignment, return-value]
    return session


def cells(app) -> list[tuple[str, ...]]:
    table = app.query_one(TaskTable)
    return [tuple(str(c) for c in table.get_row_at(i)) for i in range(table.row_count)]


def text_of(app, selector: str) -> str:
    return str(app.query_one(selector).render())


def tab_shown(app) -> bool:
    return app.query_one(TabbedContent).get_tab("tasks").display


async def settle(app, pilot, until=lambda: True, timeout=20.0):
    """Wait until the app is idle and ``until()`` holds (a key's events may queue a read
    after the app looked idle)."""
    deadline = time.monotonic() + timeout
    while True:
        await app.wait_idle()
        await pilot.pause()
        if until() and not app.link.pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError("the tasks pane did not show what was awaited")
        await asyncio.sleep(0.02)


def test_t_lists_every_task_and_enter_shows_its_stack_and_address_space():
    truth = tasks_session(memory_session())

    async def go():
        app = make_app(tasks_session())
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            pane = app.query_one(TasksPane)
            assert pane.read_at == -1  # read only when shown
            assert tab_shown(app)  # a Linux kernel: the tab is there
            await pilot.press("T")
            await settle(app, pilot, lambda: app.query_one(TaskTable).row_count)
            assert app.active_pane is pane and app.query_one(TaskTable).has_focus
            assert cells(app) == [format_task_cells(t) for t in TASKS.tasks]
            assert cells(app)[1][-1] == "[kthreadd]"
            assert cells(app)[2][-1] == "sleep <- current on CPU 0"
            summary = text_of(app, "#tasks-summary")
            assert summary.startswith("3 tasks | CPU 0: sleep (pid 84)")
            # the rows are what kinspect tasks prints
            listed = registry().execute(truth, "tasks").text.splitlines()
            for task in TASKS.tasks:
                row = next(line for line in listed if line.split()[0] == str(task.pid))
                assert tuple(row.split()[:6]) == format_task_cells(task)[:6]

            await pilot.press("j", "j", "enter")
            await settle(app, pilot, lambda: "(sleep)" in text_of(app, "#task-stack"))
            stack = text_of(app, "#task-stack")
            assert stack == f"task 84 (sleep) at {USER.address:#x}\n" + (
                registry().execute(truth, "bt").text
            )
            space = text_of(app, "#task-space")
            title, *table = space.splitlines()
            assert title == f"mm->pgd at physical {CR3:#x}  {truth.paging_mode()}"
            # the compact map under its region headings, as pt --compact prints it
            cli = render_pt(truth, compact=True).splitlines()
            assert table == cli[1:]
            assert "---[ direct map ]---" in table
            assert app.errors == []

            # a kernel thread: no mm; its saved context needs types the capture has not
            await pilot.press("k", "enter")
            await settle(app, pilot, lambda: "kthreadd" in text_of(app, "#task-stack"))
            assert text_of(app, "#task-space") == (
                "task 2 (kthreadd) is a kernel thread: it has no mm of its own"
            )
            assert text_of(app, "#task-stack").splitlines()[1].startswith("no types: ")
            assert app.errors == []

            exported = app.current_view_text()
            assert str(TASKS) in exported and "task 2 (kthreadd): address space" in exported

    run(go())


def test_tasks_command_selects_a_pid_and_refuses_bad_ones():
    async def go():
        app = make_app(tasks_session())
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            app.run_command("tasks 84")  # from another tab, before the list was read
            await settle(app, pilot, lambda: "(sleep)" in text_of(app, "#task-stack"))
            assert app.active_pane is app.query_one(TasksPane)
            view = app.query_one(TasksView)
            assert view.current == USER
            assert text_of(app, "#task-stack").startswith("task 84 (sleep)")
            app.run_command("tasks 2")
            await settle(app, pilot, lambda: "kthreadd" in text_of(app, "#task-stack"))
            assert view.current == KTHREAD and "kernel thread" in text_of(app, "#task-space")
            app.run_command("tasks one")
            app.run_command("tasks 99999")
            await settle(app, pilot)
            assert app.errors == [
                "tasks: 'one' is not a PID",
                "no task with PID 99999 on the kernel's task list",
            ]
            assert view.current == KTHREAD  # unchanged

    run(go())


def test_the_selected_task_is_read_again_at_a_stop_while_shown():
    async def go():
        app = make_app(tasks_session())
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            app.run_command("tasks 84")
            await settle(app, pilot, lambda: "(sleep)" in text_of(app, "#task-stack"))
            pane = app.query_one(TasksPane)
            reads = []
            original = pane.read_detail
            pane.read_detail = lambda pid: (reads.append(pid), original(pid))  # type: ignore[method-assign]
            await pilot.press("r")
            await settle(app, pilot, lambda: reads and pane.read_at == 2)
            assert pane.read_at == app.stops == 2 and reads == [84]
            assert app.query_one(TasksView).current == USER
            assert app.errors == []

    run(go())


def test_a_kernel_that_is_not_linux_is_one_line_and_no_error():
    truth = memory_session()
    try:
        truth.kernel()
    except Exception as exc:  # noqa: BLE001 - the capture is not recognized: its reason
        reason = str(exc)
    else:
        raise AssertionError("the capture was recognized as Linux")

    async def go():
        app = make_app(memory_session())
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            assert not tab_shown(app)  # the demo kernel's tab bar stays as it was
            await pilot.press("T")
            await settle(app, pilot, lambda: "no tasks" in text_of(app, "#tasks-summary"))
            assert tab_shown(app)  # asked for: shown, saying why it is empty
            assert text_of(app, "#tasks-summary") == f"no tasks: {reason}"
            assert app.query_one(TaskTable).row_count == 0
            assert not app.query_one("#task-detail").display
            await pilot.press("r")  # again at the next stop: still one line, still no error
            await settle(app, pilot, lambda: app.query_one(TasksPane).read_at == 2)
            assert text_of(app, "#tasks-summary") == f"no tasks: {reason}"
            assert app.errors == []
            assert app.current_view_text().endswith(f"no tasks: {reason}\n")

    run(go())


def test_list_keys_in_the_tasks():
    """j k g G / n N Esc in the task list, as in every list (tui/widgets/listnav.py)."""
    from kinspect.tui.widgets.listnav import SearchPrompt

    from .test_navigation import type_search

    async def go():
        app = make_app(tasks_session())
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            await pilot.press("T")
            await settle(app, pilot, lambda: app.query_one(TaskTable).row_count)
            table = app.query_one(TaskTable)
            assert app.focused is table and table.row_count == 3
            await pilot.press("G")
            assert table.cursor_row == 2
            await pilot.press("g", "j")
            assert table.cursor_row == 1
            await pilot.press("k")
            assert table.cursor_row == 0
            await pilot.press("slash")
            assert isinstance(app.screen, SearchPrompt)
            await type_search(pilot, "kthreadd")
            await pilot.press("enter")
            await pilot.pause()
            assert app.focused is table and table.cursor_row == 1
            await pilot.press("n")  # one match: n stays on it
            assert table.cursor_row == 1
            await pilot.press("escape")
            assert table.search == "" and app.focused is table

    run(go())
