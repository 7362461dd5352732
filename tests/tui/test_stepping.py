"""Stepping, watchpoints and editing from the TUI: ``n``, ``f``, ``:nexti``, ``:until``,
``:watch``, ``:write``, ``:set``.

On the in-memory Linux 6.1 capture (tests/tui/fakes.py), whose simulated stub
reports the stop a next/finish/until started (RIP moved by a known amount)
and keeps watchpoints in its breakpoint list as gdb does. What the app shows
is checked against the fake's own registers and pages.
"""

from __future__ import annotations

from textual.widgets import DataTable, Input

from kinspect.tui.app import make_app
from kinspect.tui.screens.breakpoints import BreakpointsScreen
from kinspect.tui.screens.confirm import ConfirmScreen
from kinspect.tui.widgets.registers import RegistersView
from kinspect.tui.widgets.status import StatusLine

from .conftest import run
from .fakes import MemoryTarget, memory_session

SIZE = (160, 48)
DATA_PAGE = 0x1000000  # a page of RAM the capture lacks, added as zeros: data to write
DATA = 0xFFFF888000000000 + DATA_PAGE  # its address in Linux's direct map (nokaslr)


def data_session():
    session = memory_session()
    session.target.pages[DATA_PAGE] = bytes(4096)
    return session


async def settle(app, pilot):
    await app.wait_idle(30)
    await pilot.pause()


async def stopped_again(app, pilot, stops):
    for _ in range(500):
        await pilot.pause(0.01)
        if app.stops > stops and not app.link.pending:
            break
    await settle(app, pilot)
    assert app.stops == stops + 1, app.errors


def rip(app) -> int:
    return app.query_one(RegistersView).snapshot.values["rip"]


def test_n_steps_over_and_f_finishes_and_the_views_follow():
    session = memory_session()
    target = session.target

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            start = rip(app)
            stops = app.stops
            await pilot.press("n")
            await stopped_again(app, pilot, stops)
            assert target.started == ["next"]
            assert rip(app) == start + MemoryTarget.NEXT_LINE == target.regs["rip"]
            assert app.query_one(StatusLine).reason.startswith("stepped at ")
            stops = app.stops
            await pilot.press("f")
            await stopped_again(app, pilot, stops)
            assert target.started == ["next", "finish"]
            assert rip(app) == MemoryTarget.FINISH_TO
            assert app.query_one(StatusLine).reason.startswith("finished at ")
            stops = app.stops
            app.run_command("nexti")
            await stopped_again(app, pilot, stops)
            assert rip(app) == MemoryTarget.FINISH_TO + MemoryTarget.NEXT_INSTRUCTION
            assert app.errors == []

    run(go())


def test_n_and_f_are_typed_into_the_command_box_and_not_run_under_a_screen():
    session = memory_session()
    target = session.target

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await pilot.press("colon", "f", "n")
            await settle(app, pilot)
            assert app.query_one("#command", Input).value == "fn"
            await pilot.press("escape")
            await pilot.press("B")
            await settle(app, pilot)
            assert isinstance(app.screen, BreakpointsScreen)
            await pilot.press("n", "f")
            await settle(app, pilot)
            assert target.started == []
            assert app.errors == []

    run(go())


def test_until_runs_to_the_address_and_its_breakpoint_is_temporary():
    session = memory_session()
    target = session.target
    where = session.resolve("asm_exc_divide_error")

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            stops = app.stops
            app.run_command("until asm_exc_divide_error")
            await stopped_again(app, pilot, stops)
            assert target.started == [f"until {where:#x}"]
            assert rip(app) == where
            assert app.query_one(StatusLine).reason == "reached at asm_exc_divide_error"
            assert target.armed == {}  # nothing left armed
            app.run_command("until")
            await settle(app, pilot)
            assert app.errors[-1] == "until needs an address or a symbol"

    run(go())


def test_watch_is_listed_with_the_breakpoints_and_deleted_like_them():
    session = memory_session()
    target = session.target

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            app.run_command(f"watch {DATA:#x} rw 4")
            await settle(app, pilot)
            assert target.watches == {1: (DATA, 4, "rw")}
            app.run_command(f"watch {DATA + 2:#x} w 4")  # not aligned: refused, one line
            await settle(app, pilot)
            assert "not 4-byte aligned" in app.errors[-1]
            app.run_command(f"watch {DATA:#x} w 3")
            await settle(app, pilot)
            assert "1, 2, 4 or 8 bytes" in app.errors[-1]
            await pilot.press("B")
            await settle(app, pilot)
            table = app.screen.query_one("#breakpoint-table", DataTable)
            row = [str(c) for c in table.get_row_at(0)]
            assert row[:4] == ["1", "y", "0", "-"]
            assert row[4] == f"acc watchpoint: *(unsigned long *) {DATA:#x}"
            await pilot.press("d")
            await settle(app, pilot)
            assert target.watches == {} and table.row_count == 0

    run(go())


def test_write_asks_first_then_writes_reads_back_and_records(tmp_path, monkeypatch):
    monkeypatch.setenv("KINSPECT_WRITES_LOG", str(tmp_path / "writes.log"))
    session = data_session()
    target = session.target

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            old = target.read_virtual(DATA, 4)
            app.run_command(f"write {DATA:#x} de ad be ef")
            await settle(app, pilot)
            assert isinstance(app.screen, ConfirmScreen)
            text = str(app.screen.query_one("#confirm-question").render())
            assert f"old: {old.hex(' ')}" in text and "new: de ad be ef" in text
            await pilot.press("n")  # no: nothing written
            await settle(app, pilot)
            assert target.read_virtual(DATA, 4) == old
            app.run_command(f"write {DATA:#x} --u32 0x11223344")
            await settle(app, pilot)
            await pilot.press("y")
            await settle(app, pilot)
            assert target.read_virtual(DATA, 4) == bytes.fromhex("44332211")
            log = (tmp_path / "writes.log").read_text()
            assert '"old": "' + old.hex() + '"' in log and '"new": "44332211"' in log
            app.run_command("write 0x800000000000 00")  # non-canonical: refused before asking
            await settle(app, pilot)
            assert not isinstance(app.screen, ConfirmScreen)
            assert "non-canonical" in app.errors[-1]

    run(go())


def test_set_asks_first_then_sets_the_register_and_the_view_shows_it(tmp_path, monkeypatch):
    monkeypatch.setenv("KINSPECT_WRITES_LOG", str(tmp_path / "writes.log"))
    session = memory_session()
    target = session.target

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            app.run_command("set rax 0x1234")
            await settle(app, pilot)
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("y")
            await settle(app, pilot)
            assert target.regs["rax"] == 0x1234
            assert app.query_one(RegistersView).snapshot.values["rax"] == 0x1234
            assert '"where": "rax"' in (tmp_path / "writes.log").read_text()
            app.run_command("set nosuch 1")
            await settle(app, pilot)
            assert "no register 'nosuch'" in app.errors[-1]

    run(go())
