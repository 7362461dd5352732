"""The breakpoints list (B, ``breakpoints``) and delete (d / D, ``delete N|all``).

On the in-memory Linux 6.1 capture (tests/tui/fakes.py), whose simulated
stub hits its lowest-numbered breakpoint on each continue and counts the
hits, as gdb does. Addresses are checked against the kallsyms text of the
capture (read here, not through our symbol table); hit counts against the
stops the app showed.
"""

from __future__ import annotations

from textual.widgets import DataTable

from kinspect.inspector.targets.base import Target
from kinspect.tui.app import make_app
from kinspect.tui.screens.breakpoints import BreakpointsScreen
from kinspect.tui.widgets.registers import RegistersView
from kinspect.tui.widgets.status import StatusLine

from .conftest import run
from .fakes import FIXTURE, MemoryTarget, memory_session

SIZE = (160, 48)

KALLSYMS = {
    name: int(address, 16)
    for address, _kind, name in (
        line.split()[:3]
        for line in (FIXTURE / "kallsyms-idt-handlers.txt").read_text().splitlines()
    )
}
FIRST, SECOND = "asm_exc_coproc_segment_overrun", "asm_exc_divide_error"


async def settle(app, pilot):
    await app.wait_idle(30)
    await pilot.pause()


async def started(app, pilot):
    await settle(app, pilot)
    assert app.stops == 1, app.errors


def rows(app) -> list[list[str]]:
    table = app.screen.query_one("#breakpoint-table", DataTable)
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def summary(app) -> str:
    return str(app.screen.query_one("#breakpoints-summary").render())


async def set_two(app, pilot):
    for name in (FIRST, SECOND):
        await pilot.press("b")
        app.query_one("#command").value += name
        await pilot.press("enter")
        await settle(app, pilot)


async def run_to_stop(app, pilot):
    stops = app.stops
    app.action_resume()
    for _ in range(300):
        await pilot.pause(0.01)
        if app.stops > stops and not app.link.pending:
            break
    await settle(app, pilot)
    assert app.stops == stops + 1, app.errors


def test_b_lists_numbers_addresses_symbols_and_hits():
    session = memory_session()

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            await pilot.press("B")
            await settle(app, pilot)
            assert isinstance(app.screen, BreakpointsScreen)
            assert rows(app) == [] and summary(app) == "no breakpoints (b sets one)"
            await pilot.press("escape")
            await set_two(app, pilot)
            await pilot.press("B")
            await settle(app, pilot)
            assert rows(app) == [
                ["1", "y", "0", f"{KALLSYMS[FIRST]:#018x}", FIRST],
                ["2", "y", "0", f"{KALLSYMS[SECOND]:#018x}", SECOND],
            ]
            # the kernel runs while the list is open: read again at each stop
            await run_to_stop(app, pilot)
            await run_to_stop(app, pilot)
            assert isinstance(app.screen, BreakpointsScreen)
            assert app.query_one(StatusLine).reason == f"breakpoint 1 at {FIRST}"
            assert [r[:3] for r in rows(app)] == [["1", "y", "2"], ["2", "y", "0"]]
            assert summary(app) == "2 breakpoints, 2 hits in all"
            # priority keys belong to the list while it is open: q closes it, not the app
            await pilot.press("q")
            await settle(app, pilot)
            assert not isinstance(app.screen, BreakpointsScreen)
            app.run_command("breakpoints")
            await settle(app, pilot)
            assert isinstance(app.screen, BreakpointsScreen) and len(rows(app)) == 2
            assert app.errors == []

    run(go())


def test_d_deletes_the_highlighted_one_and_it_is_never_hit_again():
    session = memory_session()
    target = session.target

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            await set_two(app, pilot)
            await run_to_stop(app, pilot)  # breakpoint 1
            await pilot.press("B")
            await settle(app, pilot)
            assert [r[:3] for r in rows(app)] == [["1", "y", "1"], ["2", "y", "0"]]
            stops = app.stops
            await pilot.press("d")  # the cursor is on the first row
            await settle(app, pilot)
            assert [r[0] for r in rows(app)] == ["2"]
            assert target.armed == {2: KALLSYMS[SECOND]}
            assert app.stops == stops  # a stopped kernel is not read again for a deletion
            await pilot.press("escape")
            regs = app.query_one(RegistersView)
            for expected_hits in (1, 2, 3):
                await run_to_stop(app, pilot)
                assert regs.snapshot.values["rip"] == KALLSYMS[SECOND]
                assert app.query_one(StatusLine).reason == f"breakpoint 2 at {SECOND}"
                assert target.hits == {1: 1, 2: expected_hits}
            await pilot.press("B")
            await settle(app, pilot)
            assert rows(app) == [["2", "y", "3", f"{KALLSYMS[SECOND]:#018x}", SECOND]]
            await pilot.press("D")
            await settle(app, pilot)
            assert rows(app) == [] and target.armed == {}
            assert summary(app) == "no breakpoints (b sets one)"
            assert app.errors == []

    run(go())


def test_delete_command_numbers_all_and_mistakes():
    session = memory_session()
    target = session.target

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            await set_two(app, pilot)
            app.run_command("delete 7")
            await settle(app, pilot)
            assert app.errors == ["no breakpoint number 7"]
            assert sorted(target.armed) == [1, 2]
            app.run_command("delete one")
            await settle(app, pilot)
            assert "needs breakpoint numbers or 'all'" in app.errors[-1]
            app.run_command("delete 2")
            await settle(app, pilot)
            assert sorted(target.armed) == [1]
            app.run_command("break " + SECOND)  # numbers are not reused, as in gdb
            await settle(app, pilot)
            assert target.armed == {1: KALLSYMS[FIRST], 3: KALLSYMS[SECOND]}
            app.run_command("delete all")
            await settle(app, pilot)
            assert target.armed == {}
            app.run_command("d all")
            await settle(app, pilot)
            assert len(app.errors) == 2  # nothing to delete is not a failure

    run(go())


def test_delete_while_the_kernel_runs_stops_it_and_the_stop_is_shown():
    session = memory_session()
    target = session.target

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            target.break_insert(f"*{KALLSYMS[FIRST]:#x}")
            # a remote stub that never hits it on its own while we look
            target.wait_for_stop = lambda timeout: (
                None if target.state == "running" else target.last_stop
            )
            app.action_resume()
            await settle(app, pilot)
            status = app.query_one(StatusLine)
            assert status.state == "running" and target.state == "running"
            await pilot.press("B")  # listed without stopping the kernel
            await settle(app, pilot)
            assert [r[0] for r in rows(app)] == ["1"] and target.state == "running"
            stops = app.stops
            await pilot.press("d")
            for _ in range(300):
                await pilot.pause(0.01)
                if app.stops > stops:
                    break
            await settle(app, pilot)
            assert target.armed == {} and target.state == "stopped"
            assert status.state == "stopped" and status.reason.startswith("interrupted")
            assert rows(app) == []
            assert app.errors == []

    run(go())


class CannotBreak(MemoryTarget):
    """The capture behind a target without breakpoints (the agent alone): the defaults."""

    breakpoints = Target.breakpoints
    break_delete = Target.break_delete
    description = "no-break target"


def test_a_target_that_cannot_break():
    session = memory_session()
    session.target.__class__ = CannotBreak

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            await pilot.press("B")
            await settle(app, pilot)
            assert rows(app) == [] and summary(app) == "no breakpoints (b sets one)"
            await pilot.press("escape")
            app.run_command("delete 1")
            await settle(app, pilot)
            assert app.errors == ["no-break target cannot set breakpoints"]

    run(go())
