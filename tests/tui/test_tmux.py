"""The TUI in a real terminal (tmux), driven by keys as a person would drive it.

``kinspect tui`` runs in a detached tmux session on a server of its own
(``tmux -L``), attached to the demo kernel in QEMU; keys go in with
``send-keys`` and the screen comes back with ``capture-pane``.
"""

from __future__ import annotations

import shutil
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
