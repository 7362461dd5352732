"""A program in a real terminal: a detached tmux session on a server of its own
(``tmux -L``); keys go in with ``send-keys``, the screen comes back with
``capture-pane``. Every wait has a timeout and waits for the content asked for."""

from __future__ import annotations

import itertools
import os
import subprocess
import time

_SERVERS = itertools.count()


class Tmux:
    def __init__(self, command: str, *, width: int = 160, height: int = 45) -> None:
        self.server = f"kinspect-test-{os.getpid()}-{next(_SERVERS)}"
        self._run("new-session", "-d", "-s", "tui", "-x", str(width), "-y", str(height), command)

    def _run(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-L", self.server, *args], capture_output=True, text=True, timeout=10
        )
        return result.stdout

    def keys(self, *keys: str, literal: bool = False) -> None:
        self._run("send-keys", "-t", "tui", *(["-l"] if literal else []), *keys)

    def screen(self) -> str:
        return self._run("capture-pane", "-t", "tui", "-p")

    def wait_for(self, *texts: str, timeout: float = 30.0) -> str:
        """The screen once every one of ``texts`` is on it (not only the first to be drawn)."""
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if all(text in screen for text in texts):
                return screen
            time.sleep(0.1)
        missing = [text for text in texts if text not in screen]
        raise AssertionError(f"{missing!r} never appeared; the screen:\n{screen}")

    def wait_without(self, text: str, timeout: float = 30.0) -> str:
        """The screen once ``text`` is gone from it (a placeholder replaced by what was typed)."""
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if text not in screen:
                return screen
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never went away; the screen:\n{screen}")

    def close(self) -> None:
        self._run("kill-server")
