"""The crash screen: a stop that is QEMU's shutdown pause (its stub's SIGQUIT) with a
``qemu-int.log`` beside the gdb socket that ends in a triple fault shows the chain at
once (``str(Session.triple_fault(log))``, the CLI's text); continue and step refuse in
one line; Escape leaves the views as they were. ``:triple LOG`` opens it by hand.

The log is QEMU's own (tests/fixtures/qemu-int/triple-idt.log), parsed by the real
parser; the report's sentences are literal (``session.triple_fault`` replaced), since
the capture is not the demo kernel that wrote the log.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from textual.geometry import Region

from kinspect.inspector import api
from kinspect.inspector.fault import TripleFaultReport
from kinspect.inspector.targets.qemu_log import exception_chain, parse_qemu_log
from kinspect.tui.app import make_app
from kinspect.tui.screens.crash import FROZEN, CrashScreen, log_beside
from tests.integration.conftest import demo_kernel  # noqa: F401

from .conftest import run
from .fakes import memory_session

SIZE = (160, 48)
LOGS = Path(__file__).parent.parent / "fixtures" / "qemu-int"
LOG = LOGS / "triple-idt.log"

REPORT = TripleFaultReport(
    chain=exception_chain(parse_qemu_log(LOG.read_text())),  # type: ignore[arg-type]
    first_symbol="fault_triple_idt_insn",
    steps=(
        "#UD (vector 6) at RIP 0xffffffff801009cd fault_triple_idt_insn",
        "while delivering the #UD: #PF reading IDT gate 6 at 0xffffffff8017c060",
        "while delivering the #PF: #PF reading IDT gate 14 at 0xffffffff8017c0e0 -> #DF",
    ),
    reason="the #DF could not be delivered because of #PF reading IDT gate 8 at "
    "0xffffffff8017c080 (IDTR.base 0xffffffff8017c000) is not mapped",
    final_cr2=0xFFFFFFFF8017C080,
)


def test_the_report_is_built_from_qemus_own_log():
    assert [d.vector for d in REPORT.chain.deliveries] == [6, 14, 8]
    assert REPORT.chain.final == 14


def test_the_log_is_looked_for_beside_a_socket_path_only():
    assert log_beside("/tmp/kinspect-qemu-ab12/gdb.sock") == Path(
        "/tmp/kinspect-qemu-ab12/qemu-int.log"
    )
    assert log_beside("unix:/tmp/q/gdb.sock") == Path("/tmp/q/qemu-int.log")
    assert log_beside("127.0.0.1:1234") is None
    assert log_beside("| qemu-system-x86_64 -gdb stdio") is None
    assert log_beside(None) is None


async def settle(app, pilot):
    await app.wait_idle(30)
    await pilot.pause()


async def wait_for_screen(app, pilot, kind, tries=500):
    for _ in range(tries):
        await pilot.pause(0.01)
        if isinstance(app.screen, kind) and not app.link.pending:
            return app.screen
    raise AssertionError(f"no {kind.__name__} on top: {app.screen!r}, errors {app.errors}")


def shown(screen) -> str:
    """The lines the screen draws for the chain, as the terminal shows them."""
    widget = screen.query_one("#crash-text")
    return "\n".join(strip.text for strip in widget.render_lines(Region(0, 0, *widget.size)))


def paused_session(tmp_path, log=LOG):
    """The capture, stopped as QEMU's stub reports a shutdown pause, its gdb socket in
    ``tmp_path`` beside ``log`` copied there as qemu-int.log."""
    session = memory_session()
    session.target.last_stop = {"reason": "signal-received", "signal-name": "SIGQUIT"}
    session.target.endpoint = str(tmp_path / "gdb.sock")
    shutil.copy(log, tmp_path / "qemu-int.log")
    return session


def test_a_shutdown_stop_shows_the_chain_at_once_and_the_views_stay_frozen(tmp_path, monkeypatch):
    session = paused_session(tmp_path)
    asked = []

    def triple_fault(text):
        asked.append(text)
        return REPORT

    monkeypatch.setattr(session, "triple_fault", triple_fault)

    async def go():
        app = make_app(session, resume_on_exit=False)
        async with app.run_test(size=SIZE) as pilot:
            screen = await wait_for_screen(app, pilot, CrashScreen)
            assert asked == [LOG.read_text()]  # the log beside the socket, as it is
            assert screen.text == str(REPORT)
            text = shown(screen)
            assert " ".join(text.split()) == str(REPORT)  # wrapped, not cut
            assert app.errors == [] and app.frozen and app.stops == 1
            await pilot.press("escape")
            await settle(app, pilot)
            assert not isinstance(app.screen, CrashScreen)
            for key in ("c", "s"):
                await pilot.press(key)
                await settle(app, pilot)
            app.run_command("continue")
            await settle(app, pilot)
            assert app.errors == [FROZEN] * 3
            assert session.target.state == "stopped" and app.stops == 1
            app.action_refresh()  # the same pause read again: no second screen
            await settle(app, pilot)
            assert app.stops == 2 and not isinstance(app.screen, CrashScreen)
            assert len(asked) == 1

    run(go())


def test_triple_opens_it_by_hand_and_bad_logs_are_one_line(tmp_path, monkeypatch):
    session = memory_session()  # an ordinary stop: no screen, run control as usual
    monkeypatch.setattr(session, "triple_fault", lambda text: REPORT)

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            assert not app.frozen and not isinstance(app.screen, CrashScreen)
            app.run_command("triple")  # no gdb socket: nowhere to look
            app.run_command(f"triple {tmp_path / 'missing.log'}")
            app.run_command(f"triple {LOGS / 'pf-write-ro.log'}")
            await settle(app, pilot)
            assert app.errors == [
                "no qemu-int.log beside the gdb socket: give it (:triple LOG)",
                f"cannot read {tmp_path / 'missing.log'}: No such file or directory",
                f"{LOGS / 'pf-write-ro.log'} records no triple fault",
            ]
            app.run_command(f"triple {LOG}")
            screen = await wait_for_screen(app, pilot, CrashScreen)
            assert screen.text == str(REPORT)
            await pilot.press("escape")
            await settle(app, pilot)
            assert not isinstance(app.screen, CrashScreen)

    run(go())


def test_a_shutdown_without_a_log_says_so_and_freezes(tmp_path):
    session = memory_session()
    session.target.last_stop = {"reason": "signal-received", "signal-name": "SIGQUIT"}

    async def go():
        app = make_app(session, resume_on_exit=False)
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            assert app.frozen and not isinstance(app.screen, CrashScreen)
            await pilot.press("c")
            await settle(app, pilot)
            assert app.errors == [FROZEN]

    run(go())


@pytest.mark.integration
def test_the_demo_kernels_triple_fault_opens_the_crash_screen(demo_kernel):  # noqa: F811
    """``fault=triple-idt``: QEMU pauses on the triple fault, the TUI attached to it shows
    the chain from the instance's own qemu-int.log, equal to ``kinspect fault``'s text."""
    with api.launch_demo(append="fault=triple-idt", exception_log=True, stopped=True) as qemu:
        session = api.attach(qemu.gdb_endpoint, elf=demo_kernel)
        session.resume()
        record = session.wait_for_stop(90.0)
        assert record.get("signal-name") == "SIGQUIT"
        assert qemu.status()["status"] == "shutdown"
        expected = str(session.triple_fault(qemu.int_log_text()))
        assert expected.startswith("triple fault: #UD (vector 6) at RIP ")

        async def go():
            app = make_app(session, resume_on_exit=False)
            async with app.run_test(size=SIZE) as pilot:
                screen = await wait_for_screen(app, pilot, CrashScreen, tries=3000)
                assert screen.text == expected
                await pilot.press("escape")
                await pilot.press("c")
                await settle(app, pilot)
                assert app.errors == [FROZEN]
                assert qemu.status()["status"] == "shutdown"

        try:
            run(go())
        finally:
            session.close(resume=False)
