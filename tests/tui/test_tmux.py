"""The TUI in a real terminal (tmux), driven by keys as a person would drive it.

``kinspect tui`` runs in a detached tmux session on a server of its own
(``tmux -L``), attached to the demo kernel in QEMU; keys go in with
``send-keys`` and the screen comes back with ``capture-pane``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import demo_kernel, qemu  # noqa: F401

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]

ROOT = Path(__file__).resolve().parents[2]


class Tmux:
    def __init__(self, command: str) -> None:
        self.server = f"kinspect-test-{os.getpid()}"
        self._run("new-session", "-d", "-s", "tui", "-x", "160", "-y", "45", command)

    def _run(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-L", self.server, *args], capture_output=True, text=True, timeout=10
        )
        return result.stdout

    def keys(self, *keys: str, literal: bool = False) -> None:
        self._run("send-keys", "-t", "tui", *(["-l"] if literal else []), *keys)

    def screen(self) -> str:
        return self._run("capture-pane", "-t", "tui", "-p")

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never appeared; the screen:\n{screen}")

    def close(self) -> None:
        self._run("kill-server")


def test_a_person_at_a_terminal(qemu, demo_kernel):  # noqa: F811
    command = (
        f"cd {ROOT} && unset COLUMNS LINES"  # the real pane's size, not the caller's
        f" && {sys.executable} -m inspector.cli --target {qemu.gdb_endpoint}"
        f" --elf {demo_kernel} tui; echo KINSPECT-EXIT=$?; sleep 30"
    )
    tmux = Tmux(command)
    try:
        tmux.wait_for(" STOPPED ")
        screen = tmux.wait_for("paging: 4-level")
        assert "QEMU" in screen and "CR0=" in screen and "4-level paging" in screen

        tmux.keys("2")
        screen = tmux.wait_for("rows shown")
        assert "0xffffffff80100000" in screen  # the demo kernel's text range

        tmux.keys("b")
        tmux.keys("demo_level3", literal=True)
        tmux.keys("Enter")
        tmux.wait_for("breakpoint 1 at 0x")  # the notification
        tmux.keys("c")
        screen = tmux.wait_for("breakpoint 1 at demo_level3")
        tmux.keys("1")
        screen = tmux.wait_for("rip = demo_level3")

        tmux.keys("v")
        tmux.keys("demo_level3", literal=True)
        tmux.keys("Enter")
        # the prompt echoes "vtop demo_level3" before the walk is drawn: wait for the walk
        screen = tmux.wait_for("=> 0xffffffff80")
        assert "vtop demo_level3" in screen and "PML4[511]" in screen

        tmux.keys("Escape")
        time.sleep(0.3)  # a key right after Escape would read as Alt+key
        tmux.keys("q")
        tmux.wait_for("KINSPECT-EXIT=0")
    finally:
        tmux.close()
