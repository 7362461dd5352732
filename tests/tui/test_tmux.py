"""The TUI in a real terminal (tmux), driven by keys as a person would drive it.

``kinspect tui`` runs in a detached tmux session on a server of its own
(``tmux -L``), attached to the demo kernel in QEMU; keys go in with
``send-keys`` and the screen comes back with ``capture-pane``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import demo_kernel, qemu  # noqa: F401
from tests.terminal import Tmux

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]

ROOT = Path(__file__).resolve().parents[2]


def test_a_person_at_a_terminal(qemu, demo_kernel):  # noqa: F811
    command = (
        f"cd {ROOT} && unset COLUMNS LINES"  # the real pane's size, not the caller's
        f" && {sys.executable} -m kinspect.inspector.cli --target {qemu.gdb_endpoint}"
        f" --elf {demo_kernel} tui; echo KINSPECT-EXIT=$?; sleep 30"
    )
    tmux = Tmux(command)
    try:
        tmux.wait_for(" STOPPED ")
        tmux.wait_for("paging: 4-level", "QEMU", "CR0=", "4-level paging")

        tmux.keys("2")
        tmux.wait_for("rows shown", "0xffffffff80100000")  # the demo kernel's text range

        tmux.keys("b")
        tmux.keys("demo_level3", literal=True)
        tmux.keys("Enter")
        tmux.wait_for("breakpoint 1 at 0x")  # the notification
        tmux.keys("c")
        tmux.wait_for("breakpoint 1 at demo_level3")
        tmux.keys("1")
        tmux.wait_for("rip = demo_level3")

        tmux.keys("v")
        tmux.keys("demo_level3", literal=True)
        tmux.keys("Enter")
        # the walk's lines are drawn after the title: wait for them, not for the title
        tmux.wait_for("vtop demo_level3", "PML4[511]", "=> 0xffffffff80")

        tmux.keys("Escape")
        time.sleep(0.3)  # a key right after Escape would read as Alt+key
        tmux.keys("q")
        tmux.wait_for("KINSPECT-EXIT=0")
    finally:
        tmux.close()


def _symbols(kernel: str) -> dict[str, int]:
    """The demo kernel's symbols as binutils' nm reads them (not our symbol table)."""
    out = subprocess.run(["nm", kernel], capture_output=True, text=True, check=True).stdout
    return {
        line.split()[2]: int(line.split()[0], 16)
        for line in out.splitlines()
        if len(line.split()) == 3
    }


@pytest.mark.parametrize("size", [(80, 24), (200, 50)], ids=["80x24", "200x50"])
def test_each_view_shows_its_key_columns(qemu, demo_kernel, size):  # noqa: F811
    """The same QEMU boot as above (module scope), at 80x24 and at 200x50: each view's
    content (not its title) with the columns that matter, and the list keys in a terminal."""
    if shutil.which("nm") is None:
        pytest.skip("binutils' nm is not installed")
    width, height = size
    symbols = _symbols(demo_kernel)
    main = symbols["kernel_main"]
    command = (
        f"cd {ROOT} && unset COLUMNS LINES"
        f" && {sys.executable} -m kinspect.inspector.cli --target {qemu.gdb_endpoint}"
        f" --elf {demo_kernel} tui; echo KINSPECT-EXIT=$?; sleep 30"
    )
    tmux = Tmux(command, width=width, height=height)
    try:
        # the status line keeps the run state, the paging mode and the link at any width
        screen = tmux.wait_for(" STOPPED ", "4-level paging", "link ok", "rax")
        status = screen.splitlines()[0]
        assert "4-level paging" in status and "link ok" in status, status
        if width >= 200:
            assert "gdb remote stub" in status

        tmux.keys("2")  # kernel text: start, physical address, permissions
        screen = tmux.wait_for("0xffffffff80100000", "0x0000000000100000", "rows shown")
        row = next(line for line in screen.splitlines() if "0xffffffff80100000" in line)
        assert "0x0000000000100000" in row and "ro" in row.split() and "x" in row.split(), row
        if width >= 200:
            assert "0xffffffff80100000-0xffffffff801" in row  # the end address too
            tmux.wait_for("walk of 0x", "=> 0x")
        # / then a symbol and Enter: the cursor on its range, the walk of that range
        tmux.keys("/")  # the search box is on screen: a priority key focuses it at once
        tmux.keys("kernel_main", literal=True)
        tmux.keys("Enter")
        tmux.wait_for("walk of 0xffffffff80100000")
        tmux.keys("G")
        tmux.keys("g")
        tmux.keys("j")
        # the second range of the demo kernel's map (the range list's second row, as drawn:
        # its address moves as the demo kernel grows)
        rows = [line.split()[1] for line in screen.splitlines() if line.startswith("│  0x")]
        tmux.wait_for(f"walk of {int(rows[1].partition('-')[0], 16):#x}")

        tmux.keys("3")
        tmux.wait_for("CR3 -> PML4 at", "PML4[511]", "PML4[  0]")

        tmux.keys("m")
        tmux.wait_without("vtop ADDR")  # the prompt is open: its placeholder gave way
        tmux.keys("kernel_main", literal=True)
        tmux.keys("Enter")
        tmux.wait_for(f"memory at {main:#x}")

        tmux.keys("5")
        tmux.wait_for("#0  0x", "kernel_main")

        tmux.keys("6")
        tmux.wait_for("GDT", "IDT", "<- CS")
        tmux.keys("/")
        tmux.wait_for("search the descriptor tables")  # the prompt, before typing
        tmux.keys("TSS", literal=True)
        tmux.keys("Enter")
        tmux.wait_without("search the descriptor tables")

        tmux.keys("8")
        tmux.wait_for("no UEFI memory map")

        tmux.keys("1")
        tmux.wait_for("General registers", "rip = ")  # rip symbolized: content
        tmux.keys("q")
        tmux.wait_for("KINSPECT-EXIT=0")
    finally:
        tmux.close()
