"""The CPU selector: the status line's CPU and per-CPU states, [ ] and :cpu N, a stop on
another CPU, on the capture shown as four CPUs (tests/tui/fakes.py's SmpMemoryTarget).

Each CPU's state is checked against an independent Session over the same target
class, and each CPU's registers against the fake's own per-CPU values."""

from __future__ import annotations

from kinspect.inspector.session import Session
from kinspect.tui.app import make_app
from kinspect.tui.widgets.registers import RegistersView
from kinspect.tui.widgets.status import StatusLine

from .conftest import run
from .fakes import REGISTERS, SmpMemoryTarget, capture_symbols, smp_session

SIZE = (160, 48)
HALTED = (1, 3)


async def settle(app, pilot, stops: int) -> None:
    """Wait for the ``stops``-th stop to be shown and every read it caused answered."""
    for _ in range(500):
        await pilot.pause(0.01)
        if app.stops >= stops and not app.link.pending:
            break
    await app.wait_idle(30)
    await pilot.pause()
    assert app.stops == stops, app.errors


def status_text(app) -> str:
    return app.query_one(StatusLine).export_text()


def test_status_line_shows_the_selected_cpu_and_every_cpus_state():
    truth = Session(SmpMemoryTarget(4, halted=HALTED))
    letters = " ".join({"halted": "H", "stopped": "S"}[c.state] for c in truth.cpus())
    assert letters == "S H S H"

    async def go():
        app = make_app(smp_session(4, halted=HALTED))
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot, 1)
            assert f"CPU 0/4 ({letters})" in status_text(app)
            assert [c.index for c in app.cpus] == [0, 1, 2, 3]
            assert app.errors == []

    run(go())


def test_keys_and_the_command_select_a_cpu_and_every_view_reads_it():
    async def go():
        session = smp_session(4, halted=HALTED)
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot, 1)
            await pilot.press("right_square_bracket")
            await settle(app, pilot, 2)
            regs = app.query_one(RegistersView).snapshot.values
            assert (regs["rip"], regs["rax"]) == (REGISTERS["rip"] + 1, 1)
            assert session.cpu == 1 and "CPU 1/4 (S H S H)" in status_text(app)
            await pilot.press("left_square_bracket", "left_square_bracket")  # wraps to CPU 3
            await settle(app, pilot, 4)
            assert session.cpu == 3 and "CPU 3/4" in status_text(app)
            assert app.query_one(RegistersView).snapshot.values["rax"] == 3
            app.run_command("cpu 2")
            await settle(app, pilot, 5)
            assert session.cpu == 2 and "CPU 2/4" in status_text(app)
            assert app.query_one(RegistersView).snapshot.values["rip"] == REGISTERS["rip"] + 2
            assert app.errors == []
            for line, error in (
                ("cpu 9", "there is no CPU 9: this target has CPUs 0-3"),
                ("cpu one", "cpu needs a CPU number (cpus lists them)"),
                ("cpu", "cpu needs a CPU number (cpus lists them)"),
            ):
                app.run_command(line)
                await app.wait_idle()
                await pilot.pause()
                assert app.errors[-1] == error
            assert session.cpu == 2 and app.stops == 5

    run(go())


def test_a_breakpoint_on_another_cpu_is_named_and_followed():
    address = REGISTERS["rip"] + 0x40
    session = smp_session(4, hit_cpu=2)
    session.target.break_insert(f"*{address:#x}")

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot, 1)
            assert "CPU 0/4" in status_text(app)
            await pilot.press("c")
            await settle(app, pilot, 2)
            text = status_text(app)
            assert "breakpoint 1" in text and "CPU 2/4 (S S S S)" in text, text
            assert "stopped on CPU" not in text
            assert app.query_one(RegistersView).snapshot.values["rip"] == address
            app.run_command("cpu 0")
            await settle(app, pilot, 3)
            text = status_text(app)
            assert "CPU 0/4" in text and "stopped on CPU 2" in text, text
            assert "breakpoint 1" in text  # still the stop's reason
            await pilot.press("c")  # the breakpoint again, on CPU 2: followed
            for _ in range(500):
                await pilot.pause(0.01)
                if app.stops == 4:
                    break
            await app.wait_idle(30)
            await pilot.pause()
            assert "CPU 2/4" in status_text(app) and session.cpu == 2

    run(go())


def test_cpu_selection_while_running_and_on_one_cpu_say_why_not():
    async def go():
        app = make_app(smp_session(2))
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot, 1)
            await pilot.press("c")  # no breakpoint: it runs
            for _ in range(200):
                await pilot.pause(0.01)
                if app.query_one(StatusLine).state == "running":
                    break
            assert "CPU 0/2" in status_text(app) and "(S S)" not in status_text(app)
            app.run_command("cpu 1")
            await pilot.pause(0.3)
            assert "running" in app.errors[-1], app.errors
            assert app.stops == 1

    run(go())

    async def one():
        session = Session(SmpMemoryTarget(1))
        session._symbols = capture_symbols()
        read = session.cpus
        calls = []
        session.cpus = lambda **options: calls.append(1) or read(**options)
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot, 1)
            assert "CPU" not in status_text(app)  # one CPU: the status line is as before
            await pilot.press("right_square_bracket")
            await pilot.pause()
            assert app.errors == ["this target shows one CPU: nothing to select"]
            app.run_command("refresh")
            await settle(app, pilot, 2)
            assert len(app.cpus) == 1 and len(calls) == 1  # read once, not at every stop

    run(one())
