"""Stop to refreshed screen in the TUI, on the demo kernel in QEMU (make bench).

Each round continues the kernel from the app (the ``c`` key's action) to
a breakpoint on ``demo_level3`` (hit once per 10 ms timer tick) and waits
until the screen showing the new registers has been drawn. The benchmark's
own figure is key to screen, so it includes the kernel running up to the
breakpoint; ``extra_info`` holds what the issue asks for, stop to screen: from
the moment the owner thread sees GDB's ``*stopped`` record to the end of
the first screen refresh that shows the registers read at that stop, and
to the first one that shows the stack unwound at that stop.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time

import pytest

from kinspect.inspector import api
from kinspect.tui.app import make_app


class RunningApp:
    """The app running headless in a thread of its own, driven from the benchmark's thread."""

    def __init__(self, session) -> None:
        self.app = make_app(session)
        self.ready = threading.Event()
        self._quit: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self.thread.start()
        if not self.ready.wait(60):
            raise RuntimeError("the app did not start")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._quit = asyncio.Event()
        async with self.app.run_test(size=(160, 48)):
            await self.app.wait_idle(60)
            self.ready.set()
            await self._quit.wait()

    def press(self, action, *args) -> None:
        """Run an app action (as its key would); wait for the registers and stack to be redrawn."""
        registers, stack = threading.Event(), threading.Event()
        self.app.on_registers_drawn = registers.set
        self.app.on_stack_drawn = stack.set
        self.app.call_from_thread(action, *args)
        if not registers.wait(10) or not stack.wait(10):
            raise RuntimeError(f"no refresh after {action.__name__}: {self.app.errors}")

    def close(self) -> None:
        assert self._loop is not None and self._quit is not None
        self._loop.call_soon_threadsafe(self._quit.set)
        self.thread.join(30)


def test_stop_to_registers_on_screen(benchmark, qemu, demo_kernel):
    session = api.attach(qemu.gdb_endpoint, elf=demo_kernel)
    running = RunningApp(session)
    try:
        running.press(running.app.set_breakpoint, "demo_level3")
        running.app.latencies.clear()
        running.app.stack_latencies.clear()
        benchmark.pedantic(running.press, (running.app.action_resume,), rounds=40, warmup_rounds=3)
        assert running.app.errors == []
        medians = {}
        for view, measured in (
            ("registers", running.app.latencies),
            ("stack", running.app.stack_latencies),
        ):
            ms = sorted(x * 1000 for x in measured[3:])  # the warm-up rounds are not counted
            medians[view] = statistics.median(ms)
            benchmark.extra_info[f"stop_to_{view}_ms_median"] = round(medians[view], 2)
            benchmark.extra_info[f"stop_to_{view}_ms_max"] = round(max(ms), 2)
            print(
                f"\nstop -> {view} on screen: median {medians[view]:.1f} ms,"
                f" max {max(ms):.1f} ms over {len(ms)} stops"
            )
        # the bound is 100 ms: said, not asserted (a benchmark, never a timed test)
        met = medians["registers"] < 100 and medians["stack"] < 100
        print(f"stop -> screen within 100 ms (median): {'yes' if met else 'NO'}")
    finally:
        running.close()
        session.close()


@pytest.mark.timeout(600)
def test_ranges_first_screen_and_scroll(benchmark, capsys):
    """The Linux capture's 65,775 ranges in the TUI (in memory: no target I/O): from the
    walk's end (the ranges pane handed the walk's result) to the end of the next screen
    refresh; the slowest of 60 scroll steps (j, k, PageDown, End, Home; key to idle); and
    five single steps (``s``: a stop where no table changed), each from the pane's reload
    at the stop to the refreshed screen (the re-walk included)."""
    from benchmarks import summary
    from kinspect.tui.panes.ranges import RangesPane
    from tests.tui.fakes import memory_session

    drawn: list[float] = []  # walk's end (or reload) to the screen, per read
    loads: list[float] = []
    steps: list[float] = []
    original_read, original_load = RangesPane.on_ranges_pane_read, RangesPane.load

    def timed_read(pane, message):
        started = time.perf_counter()
        original_read(pane, message)
        since = loads[-1] if len(drawn) else started  # the first: from the walk's end
        pane.app.call_after_refresh(lambda: drawn.append(time.perf_counter() - since))

    def timed_load(pane):
        loads.append(time.perf_counter())
        original_load(pane)

    async def scenario() -> None:
        app = make_app(memory_session())
        async with app.run_test(size=(160, 48)) as pilot:
            await app.wait_idle(60)
            await pilot.pause()
            await pilot.press("2")
            await pilot.pause()
            for key in ["j"] * 20 + ["pagedown"] * 20 + ["end", "home"] + ["k"] * 18:
                started = time.perf_counter()
                await pilot.press(key)
                await pilot.pause()
                steps.append(time.perf_counter() - started)
            for _ in range(5):
                before = len(drawn)
                await pilot.press("s")
                for _ in range(3000):
                    await pilot.pause(0.01)
                    if len(drawn) > before:
                        break
            assert app.errors == []

    RangesPane.on_ranges_pane_read, RangesPane.load = timed_read, timed_load
    try:
        benchmark.pedantic(lambda: asyncio.run(asyncio.wait_for(scenario(), 300)), rounds=1)
    finally:
        RangesPane.on_ranges_pane_read, RangesPane.load = original_read, original_load
    assert len(drawn) >= 6 and steps
    first, refresh = drawn[0], statistics.median(drawn[1:])
    summary.record("7.first", first * 1000, note="Linux capture; OVMF not measured")
    summary.record(
        "7.scroll", max(steps) * 1000, note=f"median {statistics.median(steps) * 1000:.0f} ms"
    )
    summary.record("3.tui", refresh * 1000, note="Linux capture in memory: no I/O")
    with capsys.disabled():
        print(
            f"\nTUI, Linux capture: first ranges screen {first * 1000:.0f} ms after the walk;"
            f" scroll steps median {statistics.median(steps) * 1000:.0f} ms,"
            f" max {max(steps) * 1000:.0f} ms; refresh after a step {refresh * 1000:.0f} ms"
        )
