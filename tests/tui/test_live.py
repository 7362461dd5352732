"""The TUI on the real demo kernel in QEMU: break, continue, step, stop, as a person would.

The truth for addresses is binutils' ``nm`` on the same ELF (not our own
ELF reader); registers are compared with what GDB itself reports.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kinspect.inspector import api
from kinspect.tui.app import make_app
from kinspect.tui.widgets.ranges import RangeList
from kinspect.tui.widgets.registers import RegistersView
from kinspect.tui.widgets.stack import StackView
from kinspect.tui.widgets.status import StatusLine
from tests.integration.conftest import demo_kernel, qemu  # noqa: F401

from .conftest import run

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


async def until(pilot, condition, timeout=30.0, what=""):
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await pilot.pause(0.02)
    app = pilot.app
    raise AssertionError(
        f"timed out waiting for {what}: errors {app.errors}, link pending {app.link.pending},"
        f" watching {app.link.watching}, stops {app.stops},"
        f" status {app.query_one(StatusLine).state} {app.query_one(StatusLine).reason!r}"
        f" records {getattr(app, 'stop_records', None)}"
    )


def nm_address(elf: str, name: str) -> int:
    out = subprocess.run(["nm", elf], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == name:
            return int(parts[0], 16)
    raise AssertionError(f"nm does not list {name}")


def test_breakpoint_continue_step_stop_on_the_demo_kernel(qemu, demo_kernel):  # noqa: F811
    level3 = nm_address(demo_kernel, "demo_level3")
    session = api.attach(qemu.gdb_endpoint, elf=demo_kernel)

    async def go():
        app = make_app(session)
        records = app.stop_records = []
        original = app._on_stop

        def on_stop(record, snapshot):
            records.append(dict(record))
            original(record, snapshot)

        app.link._on_stop = on_stop
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, lambda: app.stops == 1 and not app.link.pending, what="attach")
            regs = app.query_one(RegistersView)
            status = app.query_one(StatusLine)
            assert status.state == "stopped" and "QEMU" in status.target
            assert len(app.query_one(RangeList).rows) == len(app.ranges) > 0

            await pilot.press("c")
            await until(pilot, lambda: status.state == "running", what="running")
            await pilot.press("p")
            await until(pilot, lambda: app.stops == 2, what="the interrupt")
            assert status.state == "stopped" and status.reason.startswith("interrupted")

            await pilot.press("b")
            app.query_one("#command").value += "demo_level3"
            await pilot.press("enter")
            await until(pilot, lambda: not app.link.pending, what="breakpoint")
            assert app.errors == []

            await pilot.press("c")
            await until(
                pilot,
                lambda: regs.snapshot.values.get("rip") == level3 and status.state == "stopped",
                what="the breakpoint",
            )
            assert status.reason == "breakpoint 1 at demo_level3"
            await until(pilot, lambda: not app.link.pending, what="the views")
            frames = app.query_one(StackView).backtrace.frames
            assert [f.symbol for f in frames[:4]] == [
                "demo_level3",
                "demo_level2",
                "demo_level1",
                "demo_work",
            ]
            assert frames[0].line is not None and frames[0].line.file.endswith("work.c")
            assert "rip" in regs.changed
            # what GDB itself says about the registers at this stop
            gdb_rip = session.target._mi.command("-data-evaluate-expression $pc").payload["value"]
            assert hex(level3) in gdb_rip
            assert regs.snapshot.values["rsp"] == int(
                session.target._mi.command("-data-evaluate-expression (long)$rsp").payload["value"]
            ) & ((1 << 64) - 1)

            generation = regs.generation
            await pilot.press("s")
            await until(pilot, lambda: regs.generation > generation, what="the step")
            assert status.reason.startswith("stepped")
            assert regs.snapshot.values["rip"] != level3
            assert regs.changed >= {"rip"}

            await pilot.press("c")
            await until(
                pilot,
                lambda: status.state == "stopped" and regs.generation > generation + 1,
                what="the breakpoint again",
            )
            assert regs.snapshot.values["rip"] == level3
            await until(pilot, lambda: not app.link.pending, what="views")
            assert app.errors == []
            assert app.last_latency is not None and app.last_latency < 1.0

    try:
        run(go())
    finally:
        session.close()


def test_the_breakpoints_list_and_delete_on_the_demo_kernel(qemu, demo_kernel):  # noqa: F811
    """B on QEMU's stub: addresses as nm gives them, hits as the stops came, d deletes for good."""
    from textual.widgets import DataTable

    from kinspect.tui.screens.breakpoints import BreakpointsScreen

    work, level3 = nm_address(demo_kernel, "demo_work"), nm_address(demo_kernel, "demo_level3")
    session = api.attach(qemu.gdb_endpoint, elf=demo_kernel)

    async def go():
        app = make_app(session)
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, lambda: app.stops == 1 and not app.link.pending, what="attach")
            status = app.query_one(StatusLine)
            regs = app.query_one(RegistersView)
            for name in ("demo_work", "demo_level3"):
                app.run_command(f"break {name}")
                await until(pilot, lambda: not app.link.pending, what=f"break {name}")

            def rows():
                table = app.screen.query_one("#breakpoint-table", DataTable)
                return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]

            await pilot.press("B")
            await until(pilot, lambda: app.screen.loaded and not app.link.pending, what="the list")
            assert isinstance(app.screen, BreakpointsScreen)
            listed = rows()
            assert [r[:4] for r in listed] == [
                ["1", "y", "0", f"{work:#018x}"],
                ["2", "y", "0", f"{level3:#018x}"],
            ]
            assert listed[0][4].startswith("demo_work at ") and "work.c:" in listed[0][4]
            await pilot.press("escape")

            async def run_to_stop():
                stops = app.stops
                await pilot.press("c")
                await until(
                    pilot,
                    lambda: (
                        app.stops > stops and status.state == "stopped" and not app.link.pending
                    ),
                    what="a breakpoint",
                )
                return status.reason, regs.snapshot.values["rip"]

            hits = {"1": 0, "2": 0}
            while True:  # attached anywhere: run until demo_work's breakpoint
                reason, rip = await run_to_stop()
                number = reason.split()[1]
                hits[number] += 1
                assert rip == {"1": work, "2": level3}[number]
                if number == "1":
                    break
            await pilot.press("B")
            await until(pilot, lambda: app.screen.loaded and not app.link.pending, what="the list")
            assert [(r[0], r[2]) for r in rows()] == [("1", str(hits["1"])), ("2", str(hits["2"]))]
            await pilot.press("d")  # the cursor is on demo_work's
            await until(pilot, lambda: len(rows()) == 1 and not app.link.pending, what="delete")
            assert rows()[0][0] == "2"
            await pilot.press("escape")
            for _ in range(3):  # demo_work runs again each time; only demo_level3 stops
                reason, rip = await run_to_stop()
                assert reason == "breakpoint 2 at demo_level3" and rip == level3
            hits["2"] += 3
            await pilot.press("B")
            await until(pilot, lambda: app.screen.loaded and not app.link.pending, what="the list")
            assert [(r[0], r[2]) for r in rows()] == [("2", str(hits["2"]))]
            assert app.errors == []

    try:
        run(go())
    finally:
        session.close()


def test_a_kernel_that_dies_is_a_notification_and_reconnect_says_why_it_fails(demo_kernel):  # noqa: F811
    own = api.launch_demo()  # this test kills its QEMU
    session = api.attach(own.gdb_endpoint, elf=demo_kernel)

    def connect():
        return api.attach(own.gdb_endpoint, elf=demo_kernel, timeout=3)

    async def go():
        app = make_app(session, connect=connect)
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, lambda: app.stops == 1 and not app.link.pending, what="attach")
            status = app.query_one(StatusLine)
            await pilot.press("c")
            await until(pilot, lambda: status.state == "running", what="running")
            own.stop()  # the machine goes away under the running kernel
            await until(pilot, lambda: app.errors, what="the failure")
            assert status.state == "exited" and "R reconnects" in status.health, app.errors
            assert any(n.severity == "error" for n in app._notifications)
            await pilot.press("R")
            await until(pilot, lambda: len(app.errors) >= 2, what="the reconnect failure")
            assert "cannot attach" in app.errors[-1]
            assert app.is_running

    try:
        run(go())
    finally:
        own.stop()
        session.close()


def test_the_tui_through_the_agent_alone(qemu, demo_kernel):  # noqa: F811
    """No gdb: the in-kernel agent on the serial line reads, stops and resumes the kernel."""
    session = api.attach_agent(f"unix:{qemu.serial_socket}", elf=demo_kernel)

    async def go():
        app = make_app(session)
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, lambda: app.stops == 1 and not app.link.pending, what="attach")
            status = app.query_one(StatusLine)
            regs = app.query_one(RegistersView)
            assert "agent" in status.target and status.state == "stopped"
            assert regs.snapshot.control is not None and "4-level" in status.mode
            assert len(app.ranges) > 0
            await pilot.press("c")
            await until(pilot, lambda: status.state == "running", what="running")
            await pilot.press("p")
            await until(pilot, lambda: app.stops == 2 and not app.link.pending, what="the stop")
            assert status.state == "stopped"
            assert app.errors == []

    try:
        run(go())
    finally:
        session.close()


def test_a_remap_while_the_kernel_runs_is_marked_at_the_next_stop(qemu, demo_kernel, tmp_path):  # noqa: F811
    """The agent maps a page between two stops (kinspect remap); the range map marks it +,
    and after the undo, the same range comes back marked - (removed)."""
    spare = 0xFFFFD00000000000  # nothing is mapped there in the demo kernel
    journal = str(tmp_path / "journal.jsonl")
    session = api.attach(qemu.gdb_endpoint, elf=demo_kernel)

    def remap(*args: str) -> None:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "kinspect.inspector.cli",
                "--agent",
                qemu.agent_endpoint,
                "remap",
                *args,
                "--journal",
                journal,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, done.stderr

    async def go():
        app = make_app(session)
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, lambda: app.stops == 1 and not app.link.pending, what="attach")
            status = app.query_one(StatusLine)
            assert not any(r.start <= spare < r.end for r in app.ranges)
            for step, (args, mark) in enumerate(
                ((("map", hex(spare), "0x500000", "0x1000", "--yes"), "+"), (("undo",), "-")),
                start=2,
            ):
                await pilot.press("c")
                await until(pilot, lambda: status.state == "running", what="running")
                await asyncio.to_thread(remap, *args)
                await pilot.press("p")
                await until(
                    pilot, lambda s=step: app.stops == s and not app.link.pending, what="the stop"
                )
                marked = [row for row in app.rows if row.mark]
                assert [(row.mark, row.range.start, row.range.size) for row in marked] == [
                    (mark, spare, 0x1000)
                ], marked
                if mark == "+":
                    assert marked[0].range.phys == 0x500000
            assert app.errors == []

    try:
        run(go())
    finally:
        session.close()


def test_the_remap_screen_maps_verifies_and_undoes(qemu, demo_kernel, tmp_path, monkeypatch):  # noqa: F811
    """The remap screen (7) through the agent: fill the map form, preview the plan, apply
    (F2), read the verification; the range map marks the page +; undo from the journal
    and it is marked - (gone)."""
    from textual.widgets import Button, Static

    from kinspect.tui.screens.remap import RemapScreen

    spare = 0xFFFFD00000000000  # nothing is mapped there in the demo kernel
    monkeypatch.setenv("KINSPECT_REMAP_JOURNAL", str(tmp_path / "journal.jsonl"))
    session = api.attach_agent(qemu.agent_endpoint, elf=demo_kernel)

    async def go():
        app = make_app(session)
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, lambda: app.stops == 1 and not app.link.pending, what="attach")
            assert not any(r.start <= spare < r.end for r in app.ranges)
            await pilot.press("7")
            await until(
                pilot,
                lambda: isinstance(app.screen, RemapScreen) and not app.link.pending,
                what="the remap screen",
            )
            screen = app.screen
            await pilot.press(*hex(spare))  # the map form's VA has the focus
            await pilot.press("tab", *"0x500000")  # PA; size 0x1000, 4k pages, rw,nx as given
            await pilot.press("enter")
            await until(pilot, lambda: screen.plan is not None, what="the plan")
            plan = str(screen.query_one("#remap-plan", Static).render())
            assert f"map 0x1000 bytes at {spare:#x} -> 0x500000" in plan, plan
            assert "REFUSED" not in plan and not screen.query_one("#apply", Button).disabled
            assert not any(r.start <= spare < r.end for r in session.ranges())  # not yet
            await pilot.press("f2")
            await until(pilot, lambda: app.stops == 2 and not app.link.pending, what="apply")
            result = str(screen.query_one("#remap-result", Static).render())
            assert f"verified {spare:#018x}-{spare + 0x1000:#018x} -> 0x500000 RW NX" in result
            assert "all verified by a fresh walk" in result, result
            marked = [
                (row.mark, row.range.start, row.range.size, row.range.phys)
                for row in app.rows
                if row.mark
            ]
            assert marked == [("+", spare, 0x1000, 0x500000)]
            assert len(screen.steps) == 1 and screen.steps[0].method == "map"
            await pilot.press("escape")
            await pilot.press("2")
            await pilot.pause()
            assert app.query_one(RangeList).has_focus
            await pilot.press("7")
            await until(
                pilot,
                lambda: isinstance(app.screen, RemapScreen) and not app.link.pending,
                what="the remap screen again",
            )
            screen = app.screen
            assert [s.method for s in screen.steps] == ["map"]
            await pilot.click("#undo-one")
            await until(pilot, lambda: app.stops == 3 and not app.link.pending, what="undo")
            assert "undone: #" in str(screen.query_one("#remap-result", Static).render())
            assert screen.steps == []
            marked = [(row.mark, row.range.start, row.range.size) for row in app.rows if row.mark]
            assert marked == [("-", spare, 0x1000)]
            assert not any(r.start <= spare < r.end for r in app.ranges)
            assert app.errors == []

    try:
        run(go())
    finally:
        session.close()


def test_remaps_in_the_demo_session_gdb_and_agent(qemu, demo_kernel, tmp_path, monkeypatch):  # noqa: F811
    """As ``kinspect demo`` attaches: the gdb stub first, the agent beside it on COM1.
    The remap screen maps a page through the agent (the kernel runs for its requests),
    the stub's walk verifies it, the range map marks it +, the undo takes it away (-);
    the kernel is stopped by the stub again after each, and run control still works."""
    from textual.widgets import Static

    from kinspect.tui.screens.remap import RemapScreen

    spare = 0xFFFFD00000000000  # nothing is mapped there in the demo kernel
    monkeypatch.setenv("KINSPECT_REMAP_JOURNAL", str(tmp_path / "journal.jsonl"))
    session = api.attach_with_agent(qemu.gdb_endpoint, qemu.agent_endpoint, elf=demo_kernel)
    stub_walks = []
    fresh = session._fresh_ranges

    def counted():
        stub_walks.append(session.target.stub.state)  # the stub stopped the CPU to walk
        return fresh()

    monkeypatch.setattr(session, "_fresh_ranges", counted)

    async def go():
        app = make_app(session)
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, lambda: app.stops == 1 and not app.link.pending, what="attach")
            status = app.query_one(StatusLine)
            assert status.state == "stopped" and "QEMU" in status.target
            assert "agent" in status.target
            rip = app.query_one(RegistersView).snapshot.values["rip"]
            assert not any(r.start <= spare < r.end for r in app.ranges)
            await pilot.press("7")
            await until(
                pilot,
                lambda: isinstance(app.screen, RemapScreen) and not app.link.pending,
                what="the remap screen",
            )
            screen = app.screen
            assert not screen.unavailable
            await pilot.press(*hex(spare))
            await pilot.press("tab", *"0x500000")
            await pilot.press("enter")
            await until(pilot, lambda: screen.plan is not None, what="the plan")
            plan = str(screen.query_one("#remap-plan", Static).render())
            assert f"map 0x1000 bytes at {spare:#x} -> 0x500000" in plan, plan
            assert "REFUSED" not in plan
            assert session.target.stub.state == "stopped"  # the turn ended stopped, as it began
            await pilot.press("f2")
            await until(pilot, lambda: app.stops == 2 and not app.link.pending, what="apply")
            result = str(screen.query_one("#remap-result", Static).render())
            assert f"verified {spare:#018x}-{spare + 0x1000:#018x} -> 0x500000 RW NX" in result
            assert "all verified by a fresh walk" in result, result
            assert stub_walks == ["stopped"]  # verified by the stub's walk, once
            assert status.state == "stopped" and session.target.stub.state == "stopped"
            marked = [
                (row.mark, row.range.start, row.range.size, row.range.phys)
                for row in app.rows
                if row.mark
            ]
            assert marked == [("+", spare, 0x1000, 0x500000)]
            # the stub reads the new page's entry too
            assert session.translate(spare).pa == 0x500000
            await pilot.click("#undo-one")
            await until(pilot, lambda: app.stops == 3 and not app.link.pending, what="undo")
            assert "undone: #" in str(screen.query_one("#remap-result", Static).render())
            assert screen.steps == []
            marked = [(row.mark, row.range.start, row.range.size) for row in app.rows if row.mark]
            assert marked == [("-", spare, 0x1000)]
            await pilot.press("escape")
            # run control is the stub's as before
            await pilot.press("c")
            await until(pilot, lambda: status.state == "running", what="running")
            await pilot.press("p")
            await until(pilot, lambda: app.stops == 4 and not app.link.pending, what="the stop")
            assert status.state == "stopped" and status.reason.startswith("interrupted")
            assert app.query_one(RegistersView).snapshot.values["rip"] != 0 and rip != 0
            assert app.query_one(StackView).backtrace.frames  # the stub's stack, unwound
            assert app.errors == []

    try:
        run(go())
    finally:
        session.close()


def test_the_efi_view_says_in_one_line_that_the_pvh_kernel_has_no_uefi_map(qemu, demo_kernel):  # noqa: F811
    from kinspect.tui.widgets.efi import EfiMapView

    session = api.attach(qemu.gdb_endpoint, elf=demo_kernel)

    async def go():
        app = make_app(session)
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, lambda: app.stops == 1 and not app.link.pending, what="attach")
            view = app.query_one(EfiMapView)
            await pilot.press("8")
            await until(pilot, lambda: view.error is not None, what="the EFI view")
            assert view.summary.startswith("no UEFI memory map: ")
            assert "did not boot through UEFI" in view.summary and "\n" not in view.summary
            assert app.errors == []

    try:
        run(go())
    finally:
        session.close()


def test_the_efi_view_on_the_demo_kernel_booted_through_uefi(demo_kernel):  # noqa: F811
    """One OVMF boot: the rows are the map the kernel printed, QEMU translates every mapping.

    Whether the kernel maps its runtime regions (its direct map leaves them
    out; the identity map or a remap for SetVirtualAddressMap may map them)
    is the kernel's business: every address shown must map the region, and
    a region shown "not mapped" must not be mapped where a kernel would.
    """
    DIRECT_MAP = 0xFFFF888000000000
    import re

    from kinspect.tui.model import format_mapped_at
    from kinspect.tui.widgets.efi import SHOWN_MAPPINGS, EfiMapView
    from tests.integration.test_paging_vs_qemu import gva2gpa

    if not api.DEMO_UEFI.is_file():
        pytest.fail(f"{api.DEMO_UEFI} is not built: run `make kernel`")
    own = api.launch_demo(uefi=True, memory="256M", timeout=90.0)
    session = None
    try:
        session = api.attach(own.gdb_endpoint, elf=demo_kernel)

        async def go():
            app = make_app(session)
            async with app.run_test(size=(160, 48)) as pilot:
                await until(pilot, lambda: app.stops == 1 and not app.link.pending, what="attach")
                view = app.query_one(EfiMapView)
                await pilot.press("8")
                await until(
                    pilot,
                    lambda: (view.memory_map or view.error) and not app.link.pending,
                    what="the EFI view",
                )
                assert view.error is None, view.error
                assert view.memory_map.descriptor_size == 48  # OVMF's stride
                assert view.summary.startswith(f"{len(view.rows)} descriptors, 48 bytes apart")
                runtime = [row for row in view.rows if row.runtime]
                # the kernel printed the runtime regions as it saved them (serial, not gdb)
                printed = re.findall(
                    r"\[mem 0x([0-9a-f]{16})-0x([0-9a-f]{16})\] \w+ attr 0x([0-9a-f]+) "
                    r"\(runtime\)",
                    own.serial_output(),
                )
                assert [(int(s, 16), int(e, 16) + 1, int(a, 16)) for s, e, a in printed] == [
                    (r.descriptor.physical_start, r.descriptor.physical_end, r.descriptor.attribute)
                    for r in runtime
                ]
                types = {row.descriptor.type_name for row in runtime}
                assert {"RuntimeServicesCode", "RuntimeServicesData"} <= types
                table = view.query_one("#efi-table")
                shown = {
                    str(table.get_row_at(i)[1]): table.get_row_at(i) for i in range(table.row_count)
                }
                for row in runtime:
                    d = row.descriptor
                    for va in row.mapped_at:  # QEMU's own translation of every address shown
                        assert gva2gpa(own, va) == d.physical_start, (d, hex(va))
                    if not row.mapped_at:  # "not mapped": not where a kernel would map it
                        for va in (d.physical_start, DIRECT_MAP + d.physical_start):
                            assert gva2gpa(own, va) != d.physical_start, (d, hex(va))
                    cell = str(shown[str(d.index)][-1])
                    assert cell == format_mapped_at(row.mapped_at, SHOWN_MAPPINGS)
                    assert cell != "not mapped" or shown[str(d.index)][-1].style.color.name == "red"
                attributes = str(view.query_one("#efi-attributes").render())
                assert "RO|RUNTIME" in attributes and "XP|RUNTIME" in attributes
                await pilot.click("#efi-runtime")
                await pilot.pause()
                assert table.row_count == len(runtime)
                assert app.errors == []

        run(go())
    finally:
        if session is not None:
            session.close()
        own.stop()


@pytest.mark.timeout(480)
def test_the_remap_screen_moves_uefi_runtime_on_ovmf(demo_kernel, tmp_path, monkeypatch):  # noqa: F811
    """One OVMF boot, attached as `kinspect demo --uefi` does (the stub, the agent beside it).

    The efi-runtime plan says before apply that SetVirtualAddressMap cannot be undone, and
    nothing is mapped at the new addresses yet (QEMU); applied (F2), the result shows what
    the firmware answered through the new mapping; QEMU then translates every runtime
    region the kernel printed at boot at 0xffffffef00000000 + its physical address, and
    maps nothing below the higher half. Undo of the call is refused on the screen, and
    QEMU's view and the journal list stay as they were.
    """
    import re
    import time

    from textual.widgets import Button, Static, TabbedContent

    from kinspect.inspector.efi.runtime import EFI_VA_BASE
    from kinspect.inspector.targets.qemu_text import decode_info_mem
    from kinspect.tui.screens.remap import RemapScreen
    from tests.integration.test_paging_vs_qemu import gva2gpa

    if not api.DEMO_UEFI.is_file():
        pytest.fail(f"{api.DEMO_UEFI} is not built: run `make kernel`")
    monkeypatch.setenv("KINSPECT_REMAP_JOURNAL", str(tmp_path / "journal.jsonl"))
    own = api.launch_demo(uefi=True, memory="256M", timeout=90.0)
    session = None
    try:
        # the runtime regions as the kernel printed them when it saved the map (serial)
        regions = [
            (int(s, 16), int(e, 16) + 1)
            for s, e in re.findall(
                r"\[mem 0x([0-9a-f]{16})-0x([0-9a-f]{16})\] \w+ attr 0x[0-9a-f]+ \(runtime\)",
                own.serial_output(),
            )
        ]
        assert regions
        for start, _end in regions:
            assert gva2gpa(own, EFI_VA_BASE + start) is None  # nothing there yet
        session = api.attach_with_agent(own.gdb_endpoint, own.agent_endpoint, elf=demo_kernel)

        def result_text(screen) -> str:
            return str(screen.query_one("#remap-result", Static).render())

        async def go():
            app = make_app(session)
            async with app.run_test(size=(160, 48)) as pilot:
                await until(pilot, lambda: app.stops == 1 and not app.link.pending, what="attach")
                await pilot.press("7")
                await until(
                    pilot,
                    lambda: isinstance(app.screen, RemapScreen) and not app.link.pending,
                    what="the remap screen",
                )
                screen = app.screen
                screen.query_one("#remap-forms", TabbedContent).active = "form-efi-runtime"
                await pilot.pause()
                await pilot.click("#preview-efi-runtime")
                await until(pilot, lambda: screen.plan is not None, timeout=120, what="the plan")
                plan = str(screen.query_one("#remap-plan", Static).render())
                methods = [s.method for s in screen.plan.steps]
                call = methods.index("efi_set_virtual_address_map") + 1
                assert plan.startswith(
                    f"CANNOT BE UNDONE: step {call} efi_set_virtual_address_map"
                ), plan
                assert "REFUSED" not in plan and methods[-1] == "unmap"
                apply = screen.query_one("#apply", Button)
                assert not apply.disabled and str(apply.label) == "Apply: cannot be undone"
                assert gva2gpa(own, EFI_VA_BASE + regions[0][0]) is None  # a plan writes nothing
                started = time.monotonic()
                await pilot.press("f2")
                await until(
                    pilot,
                    lambda: "steps applied" in result_text(screen) and not app.link.pending,
                    timeout=360,
                    what="apply",
                )
                print(
                    f"efi-runtime from the TUI: {len(methods)} steps, {len(regions)} "
                    f"regions, {time.monotonic() - started:.1f} s"
                )
                result = result_text(screen)
                assert result.endswith(
                    f"{len(methods)} steps applied and journaled; all "
                    "verified by a fresh walk and the runtime services' "
                    "answers"
                ), result
                block = result.partition(f"step #{call} ")[2]
                assert "verified: the firmware answers through the new mapping" in block
                assert "GetTime answers through the new mapping: " in block
                assert "GetVariable" in block
                assert app.errors == []
                # QEMU's own view: each region at its new address, nothing in the lower half
                for start, end in regions:
                    assert gva2gpa(own, EFI_VA_BASE + start) == start
                    assert gva2gpa(own, EFI_VA_BASE + end - 0x1000) == end - 0x1000
                mem = own.monitor("info mem")
                assert all(s >= 0xFFFF800000000000 for s, _e, _p in decode_info_mem(mem)), mem
                # undo the call: refused, shown, nothing changes
                journal = screen.query_one("#remap-journal")
                seqs = [s.seq for s in screen.steps]
                at = [s.method for s in screen.steps].index("efi_set_virtual_address_map")
                journal.highlighted = at
                journal.focus()
                prompts = [
                    str(journal.get_option_at_index(i).prompt) for i in range(journal.option_count)
                ]
                await pilot.press("f3")
                await until(
                    pilot,
                    lambda: "UNDO REFUSED" in result_text(screen) and not app.link.pending,
                    timeout=60,
                    what="the refusal",
                )
                refused = result_text(screen)
                assert f"step #{seqs[at]} called SetVirtualAddressMap, which cannot be " in refused
                assert "Traceback" not in refused
                assert [s.seq for s in screen.steps] == seqs and journal.highlighted == at
                assert [
                    str(journal.get_option_at_index(i).prompt) for i in range(journal.option_count)
                ] == prompts
                assert own.monitor("info mem") == mem
                assert len(app.errors) == 1 and app.errors[0].startswith("undo refused")

        asyncio.run(asyncio.wait_for(go(), 460))
    finally:
        if session is not None:
            session.close()
        own.stop()


def _monitor_cpus(text: str) -> dict[int, dict[str, int]]:
    """QEMU's ``info registers -a``: per CPU, RIP, CR3 and HLT (parsed here, not by kinspect)."""
    cpus = {}
    text = text.replace("\r\n", "\n")
    for number, body in re.findall(r"^CPU#(\d+)\n(.*?)(?=^CPU#|\Z)", text, re.M | re.S):
        regs = {k: int(v, 16) for k, v in re.findall(r"\b(RIP|CR3|HLT)=([0-9a-f]+)", body)}
        cpus[int(number)] = regs
    return cpus


def test_the_cpu_selector_on_the_two_cpu_demo_kernel(demo_kernel):  # noqa: F811
    """Every CPU's state in the status line and each CPU's registers after ``]`` and
    ``:cpu N``, against QEMU's own ``info registers -a`` (HLT, RIP, CR3 per CPU)."""
    own = api.launch_demo(smp=2)
    try:
        own.wait_for_serial("smp: 2 cpus online", timeout=60)
        session = api.attach(own.gdb_endpoint, elf=demo_kernel)

        async def go():
            app = make_app(session)
            async with app.run_test(size=(160, 48)) as pilot:
                status = app.query_one(StatusLine)
                regs = app.query_one(RegistersView)
                await until(
                    pilot,
                    lambda: app.stops == 1 and len(app.cpus) == 2 and not app.link.pending,
                    what="attach and the CPUs read",
                )
                truth = _monitor_cpus(own.monitor("info registers -a"))
                assert sorted(truth) == [0, 1]
                letters = " ".join("H" if truth[n]["HLT"] else "S" for n in (0, 1))
                first = status.cpu
                assert first in (0, 1)
                assert f"CPU {first}/2 ({letters})" in status.export_text()
                for press, cpu in (("right_square_bracket", 1 - first), ("", first)):
                    stops = app.stops
                    if press:
                        await pilot.press(press)
                    else:
                        app.run_command(f"cpu {cpu}")
                    await until(
                        pilot,
                        lambda stops=stops: app.stops == stops + 1 and not app.link.pending,
                        what=f"CPU {cpu} read",
                    )
                    assert session.cpu == cpu and f"CPU {cpu}/2" in status.export_text()
                    values = regs.snapshot.values
                    assert values["rip"] == truth[cpu]["RIP"], (cpu, truth)
                    assert values["cr3"] == truth[cpu]["CR3"]
                assert app.errors == []

        run(go())
        session.close()
    finally:
        own.stop()


def test_disassembly_and_telescope_at_a_breakpoint_against_objdump_and_qemu(qemu, demo_kernel):  # noqa: F811
    """At demo_level2+0x11 (its call of demo_level3): the disasm view's marked line is
    objdump's instruction at RIP, the telescope's slots are the qwords QEMU's monitor reads
    at RSP, and a hex window at the top of the boot stack stops at the guard page, which
    the monitor cannot read either."""
    from kinspect.tui.widgets.disasm import DisasmView
    from kinspect.tui.widgets.memory import HexView
    from kinspect.tui.widgets.telescope import TelescopeView
    from tests.unit.test_disasm import _objdump, normalize

    call = nm_address(demo_kernel, "demo_level2") + 0x11
    top = nm_address(demo_kernel, "boot_stack_top")
    length, spelled = _objdump(demo_kernel)[call]
    assert "<demo_level3>" in spelled  # the place this test means
    session = api.attach(qemu.gdb_endpoint, elf=demo_kernel)

    async def go():
        app = make_app(session)
        async with app.run_test(size=(200, 50)) as pilot:
            await until(pilot, lambda: app.stops == 1 and not app.link.pending, what="attach")
            status = app.query_one(StatusLine)
            app.run_command(f"break {call:#x}")
            await until(pilot, lambda: not app.link.pending, what="the breakpoint")
            await pilot.press("c")
            await until(
                pilot,
                lambda: status.state == "stopped" and app.stops > 1 and not app.link.pending,
                what="the breakpoint's stop",
            )
            rsp = app.query_one(RegistersView).snapshot.values["rsp"]
            assert app.query_one(RegistersView).snapshot.values["rip"] == call

            await pilot.press("d")
            view = app.query_one(DisasmView)
            await until(
                pilot,
                lambda: view.listing is not None and view.rip == call and not app.link.pending,
                what="the disassembly",
            )
            marked = [line for line in view.export_text().splitlines() if line.startswith("=>")]
            assert len(marked) == 1 and f"{call:#018x} <demo_level2+0x11>" in marked[0]
            insn = view.listing.instructions[view.listing.index]
            assert insn.address == call and insn.size == length
            assert normalize(f"{insn.mnemonic} {insn.operands}") == normalize(spelled)
            assert insn.target_name == "demo_level3"

            await pilot.press("4")
            scope = app.query_one(TelescopeView)
            await until(
                pilot,
                lambda: (
                    scope.telescope is not None
                    and scope.telescope.address == rsp
                    and not app.link.pending
                ),
                what="the telescope",
            )
            slots = scope.telescope.slots[:8]
            monitor = qemu.monitor(f"x /8gx {rsp:#x}")
            words = [int(w, 16) for line in monitor.splitlines() for w in line.split()[1:]]
            assert [s.value for s in slots] == words
            assert slots[0].registers == ("rsp", "rbp")  # mov rbp, rsp ran: both point here
            returns = [s for s in slots if s.symbol and s.symbol.startswith("demo_level1+")]
            assert returns and returns[0].mapping.endswith(" x")  # the return, in code

            app.run_command(f"mem {top - 0x50:#x}")
            hexview = app.query_one(HexView)
            await until(
                pilot,
                lambda: hexview.address == top - 0x50 and not app.link.pending,
                what="the hex window",
            )
            lines = hexview.plain.splitlines()
            assert lines[-1].startswith(f"{top:#x}: not readable (")  # the page's start
            assert len(lines) == 1 + 5 + 1
            monitor = qemu.monitor(f"x /10gx {top - 0x50:#x}")
            words = [w for line in monitor.splitlines() for w in line.split()[1:]]
            dumped = b"".join(bytes.fromhex(row[20:67].replace(" ", "")) for row in lines[1:6])
            assert [int.from_bytes(dumped[i : i + 8], "little") for i in range(0, 80, 8)] == [
                int(w, 16) for w in words
            ]
            assert "Cannot access memory" in qemu.monitor(f"x /1gx {top:#x}")
            assert app.errors == []

    try:
        run(go())
    finally:
        session.close()


def test_until_next_finish_and_a_watchpoint_from_the_keys_on_the_demo_kernel(qemu, demo_kernel):  # noqa: F811
    """`:until`, `n`, `f` and `:watch` then `c` on the demo kernel: each stop where objdump
    says it must be (the return address after demo_work's call; right after a store to
    demo_state), told on the status line, the watchpoint's hit in the breakpoints list."""
    import re

    from textual.widgets import DataTable

    from kinspect.tui.screens.breakpoints import BreakpointsScreen

    level1, work = nm_address(demo_kernel, "demo_level1"), nm_address(demo_kernel, "demo_work")
    code = [
        (int(m.group(1), 16), m.group(2))
        for m in re.finditer(
            r"^([0-9a-f]{16}):\s+(.*)$",
            subprocess.run(
                ["objdump", "-d", "--no-show-raw-insn", demo_kernel],
                capture_output=True,
                text=True,
                check=True,
            ).stdout,
            re.MULTILINE,
        )
    ]
    following = {code[i][0]: code[i + 1][0] for i in range(len(code) - 1)}
    returns = {following[a] for a, t in code if t.startswith("call") and "<demo_level1>" in t}
    stores = {
        following[a] for a, t in code if re.search(r",0x[0-9a-f]+\(%rip\)\s+# \w+ <demo_state>", t)
    }
    session = api.attach(qemu.gdb_endpoint, elf=demo_kernel)

    async def go():
        app = make_app(session)
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, lambda: app.stops == 1 and not app.link.pending, what="attach")
            regs = app.query_one(RegistersView)
            status = app.query_one(StatusLine)

            async def stop_after(action, what):
                stops = app.stops
                await action()
                await until(pilot, lambda: app.stops > stops and not app.link.pending, what=what)
                return regs.snapshot.values["rip"]

            async def command(text):
                app.run_command(text)

            rip = await stop_after(lambda: command("until demo_level1"), "until")
            assert rip == level1 and status.reason == "reached at demo_level1"
            rip = await stop_after(lambda: pilot.press("n"), "next")
            assert level1 < rip < work and status.reason.startswith("stepped at demo_level1+")
            rip = await stop_after(lambda: pilot.press("f"), "finish")
            assert rip in returns and status.reason.startswith("finished at demo_work+")

            app.run_command("watch demo_state w 8")
            await until(pilot, lambda: not app.link.pending, what="the watchpoint")
            rip = await stop_after(lambda: pilot.press("c"), "the watchpoint's hit")
            assert rip in stores, (hex(rip), sorted(map(hex, stores)))
            assert re.fullmatch(r"watchpoint \d+ at demo_level\d\+0x[0-9a-f]+", status.reason)
            await pilot.press("B")
            await until(
                pilot,
                lambda: isinstance(app.screen, BreakpointsScreen) and app.screen.loaded,
                what="the list",
            )
            table = app.screen.query_one("#breakpoint-table", DataTable)
            row = [str(c) for c in table.get_row_at(0)]
            assert row[2] == "1" and row[4].startswith("hw watchpoint: ")
            await pilot.press("d")
            await until(pilot, lambda: table.row_count == 0, what="the deletion")
            assert app.errors == []

    run(go())
