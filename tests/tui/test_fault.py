"""The fault pane (9): ``:catch 14`` on the in-memory capture, the stop at the #PF handler's
entry, the report on screen with the CLI's own text, and the tab shown at once.

The capture's IDT names the real handler of vector 14; the simulated stub stops
there on continue (its breakpoint), so :func:`exception_at_stop` really finds the
CPU at a handler's entry. The report itself is one built from literal values
(``session.fault`` replaced), so the text on screen is known in advance.
"""

from __future__ import annotations

import asyncio
import subprocess

import pytest
from textual.widgets import TabbedContent

from kinspect.inspector import api
from kinspect.inspector.fault import ExceptionContext, FaultReport, exception_at_stop
from kinspect.inspector.targets.qemu_log import last_delivery, parse_qemu_log
from kinspect.inspector.x86.exceptions import PageFaultCause, decode_error_code
from kinspect.tui.app import make_app
from kinspect.tui.panes.fault import FaultPane
from kinspect.tui.widgets.fault import NONE, FaultView
from kinspect.tui.widgets.text import render_plain
from tests.integration.conftest import demo_kernel  # noqa: F401

from .conftest import run
from .fakes import memory_session

SIZE = (160, 48)

REPORT = FaultReport(
    context=ExceptionContext(
        vector=14,
        error_code=0x3,
        rip=0xFFFFFFFF81000123,
        cs=0x10,
        rflags=0x46,
        rsp=0xFFFFC90000013F00,
        ss=0x18,
        cr2=0xFFFFFFFF82000000,
        source="stopped at the handler's entry 0xffffffff81a00b20",
    ),
    error=decode_error_code(14, 0x3),
    rip_symbol="demo_write_ro+0x13 at demo.c:42",
    cr2_symbol="demo_ro_page",
    walk=None,
    page_fault=PageFaultCause("write-read-only", None, "a write to a read-only page (CR0.WP)"),
    selector=None,
    stack=None,
)


async def settle(app, pilot):
    await app.wait_idle(30)
    await pilot.pause()


def body(app) -> str:
    return render_plain(app.query_one("#fault-body").render(), 200)


def test_catch_14_stops_at_the_handler_and_the_fault_pane_shows_the_report(monkeypatch):
    session = memory_session()
    # The capture keeps no stack page: give it one holding the frame the CPU pushed
    # (error code, RIP, CS, RFLAGS, RSP, SS), where the capture's RSP points.
    stack = session.translate(session.registers()["rsp"]).pa
    c = REPORT.context
    frame = b"".join(
        v.to_bytes(8, "little") for v in (c.error_code, c.rip, c.cs, c.rflags, c.rsp, c.ss)
    )
    page = bytearray(4096)
    page[stack & 0xFFF : (stack & 0xFFF) + len(frame)] = frame
    session.target.pages[stack & ~0xFFF] = bytes(page)
    asked = []

    def fault(**kwargs):
        asked.append(kwargs)
        return REPORT

    monkeypatch.setattr(session, "fault", fault)

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            assert app.stops == 1, app.errors
            tabs = app.query_one(TabbedContent)
            assert tabs.active == "registers"
            assert app.query_one(FaultView).text == NONE  # the capture is not in a handler
            assert asked == []  # and the full report was not asked for
            handler = next(e.gate.offset for e in session.idt().entries if e.gate.vector == 14)
            app.run_command("catch 14")
            for _ in range(500):
                await pilot.pause(0.01)
                if app.stops == 2 and not app.link.pending:
                    break
            await settle(app, pilot)
            assert app.errors == []
            assert app.stops == 2
            assert session.registers()["rip"] == handler
            assert tabs.active == FaultPane.NAME
            assert app.query_one(FaultView).text == str(REPORT)
            shown = body(app)
            for line in str(REPORT).splitlines():
                assert line.strip() in shown
            assert "cause: a write to a read-only page (CR0.WP)" in shown
            assert asked == [{}]
            found = exception_at_stop(session)  # what the pane asked first: the pushed frame
            assert (found.vector, found.error_code, found.rip, found.rsp) == (14, 3, c.rip, c.rsp)
            # a step off the handler's entry: no exception any more, the pane says so
            await pilot.press("s")
            for _ in range(300):
                await pilot.pause(0.01)
                if app.stops == 3 and not app.link.pending:
                    break
            await settle(app, pilot)
            assert app.query_one(FaultView).text == NONE
            assert asked == [{}]

    run(go())


def test_catch_needs_a_vector_and_says_so_in_one_line():
    async def go():
        app = make_app(memory_session())
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            app.run_command("catch")
            app.run_command("catch page")
            app.run_command("catch 300")
            await settle(app, pilot)
            messages = [str(e) for e in app.errors]
            assert messages == [
                "catch needs a vector (14, 0xe) or 'all'",
                "'page' is not a vector (0..255, or 'all')",
                "a vector is 0..255, not 300",
            ]
            assert app.stops == 1

    run(go())


def test_a_handler_whose_frame_cannot_be_read_is_said_in_the_pane_without_switching():
    """The capture keeps no stack page: at the handler's entry the frame is out of reach."""
    session = memory_session()

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            app.run_command("catch 14")
            for _ in range(500):
                await pilot.pause(0.01)
                if app.stops == 2 and not app.link.pending:
                    break
            await settle(app, pilot)
            assert app.stops == 2 and app.errors == []
            assert app.query_one(TabbedContent).active == "registers"
            text = app.query_one(FaultView).text
            assert text.startswith("at an IDT handler's entry, but the exception cannot be read:")
            assert "not in the capture" in text

    run(go())


@pytest.mark.integration
def test_catch_14_in_the_tui_on_the_demo_kernels_write_to_a_read_only_page(demo_kernel):  # noqa: F811
    """``fault=pf-write-ro``: ``:catch 14`` in the TUI, the fault pane shown with the #PF
    explained; RIP, CR2 and the error code are QEMU's (its ``-d int`` log) and nm's."""
    nm = {
        parts[2]: int(parts[0], 16)
        for parts in (
            line.split()
            for line in subprocess.run(
                ["nm", demo_kernel], capture_output=True, text=True, check=True
            ).stdout.splitlines()
        )
        if len(parts) == 3
    }
    with api.launch_demo(append="fault=pf-write-ro", exception_log=True, stopped=True) as qemu:
        session = api.attach(qemu.gdb_endpoint, elf=demo_kernel)
        session.break_insert("pic_init")  # the IDT is loaded by then
        session.resume()
        session.wait_for_stop(90.0)
        for bp in session.breakpoints():
            session.break_delete(bp.number)

        async def go():
            app = make_app(session, resume_on_exit=False)  # the CPU stays at the handler
            async with app.run_test(size=SIZE) as pilot:
                view = app.query_one(FaultView)
                for _ in range(3000):
                    await pilot.pause(0.02)
                    if app.stops == 1 and not app.link.pending:
                        break
                assert app.stops == 1, app.errors
                assert view.text == NONE
                app.run_command("catch 14")
                for _ in range(6000):  # 120 s: TCG under load
                    await pilot.pause(0.02)
                    if "write to a read-only page" in view.text:
                        break
                assert "write to a read-only page" in view.text, (app.errors, view.text)
                await pilot.pause()
                assert app.query_one(TabbedContent).active == FaultPane.NAME
                assert "write to a read-only page" in body(app)
                cli = []  # the CLI's text at the same stop, asked in the thread that owns it
                app.submit("fault", lambda owned: str(owned.fault()), cli.append)
                await app.wait_idle(60)
                await pilot.pause()
                assert cli == [view.text], app.errors
                serial = qemu.wait_for_serial("kinspect-demo: fault=pf-write-ro:", timeout=10)
                assert "EXCEPTION" not in serial  # stopped before the handler ran
                return view.text

        try:
            text = asyncio.run(asyncio.wait_for(go(), 200))  # the waits are 60 s and 120 s
            logged = last_delivery(parse_qemu_log(qemu.int_log_text()))
            assert (logged.vector, logged.error_code) == (14, 0x3)
            assert logged.rip == nm["fault_pf_write_ro_insn"]
            assert logged.cr2 == nm["fault_demo_readonly"]
            assert text.splitlines()[0].startswith("#PF")
            assert f"RIP {logged.cs:#06x}:{logged.rip:#018x}" in text
            assert f"CR2 {logged.cr2:#018x}" in text
        finally:
            session.close(resume=False)
