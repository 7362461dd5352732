"""A GDB/MI session that matches replies by token and never idles.

pygdbmi parses MI records for us, but its ``write()`` waits for 200 ms of
silence after every reply. We write with ``read_response=False``, wait on the
pipe ourselves with ``select`` and read until the result record that carries
our token arrives, so a command costs what gdb and the stub cost, not 200 ms.

This module is the ground floor: it imports nothing of kinspect's and raises
its own errors (:class:`MiError`, :class:`MiTimeout`, :class:`MiClosed`),
which the inspector wraps.
"""

from __future__ import annotations

import select
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pygdbmi.gdbcontroller import GdbController

__all__ = [
    "MiClosed",
    "MiError",
    "MiResult",
    "MiSession",
    "MiTimeout",
    "mi_quote",
]

DEFAULT_TIMEOUT = 10.0


class MiError(Exception):
    """gdb answered a command with ``^error``."""

    def __init__(self, command: str, message: str) -> None:
        self.command = command
        self.message = message
        super().__init__(message)


class MiTimeout(Exception):
    """gdb did not answer a command in time."""

    def __init__(self, command: str, timeout: float) -> None:
        self.command = command
        self.timeout = timeout
        super().__init__(f"gdb did not answer {command!r} within {timeout:g} s")


class MiClosed(Exception):
    """The gdb process is gone."""


@dataclass(slots=True)
class MiResult:
    """The result record of one command plus the stream output it produced."""

    message: str
    payload: Any
    console: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.console)


def mi_quote(text: str) -> str:
    """Quote an argument for an MI command line (a C string)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


class MiSession:
    """One gdb process driven through GDB/MI 3.

    Not thread-safe: one thread owns a session. Async records (``*stopped``,
    ``*running``) update :attr:`state` and are handed to ``on_async``.
    """

    def __init__(
        self,
        gdb: str = "gdb",
        *,
        extra_args: Sequence[str] = (),
        on_async: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        path = shutil.which(gdb)
        if path is None:
            raise MiClosed(f"{gdb!r} was not found on PATH; install gdb (apt-get install gdb)")
        command = [path, "--interpreter=mi3", "-nx", "--quiet", *extra_args]
        self._controller = GdbController(command=command, time_to_check_for_additional_output_sec=0)
        process = self._controller.gdb_process
        assert process is not None and process.stdout is not None
        self._process: subprocess.Popen[bytes] = process
        self._fds = [process.stdout.fileno()]
        if process.stderr is not None:
            self._fds.append(process.stderr.fileno())
        self._next_token = 1
        self._on_async = on_async
        self.state = "unknown"  # "running" | "stopped" | "unknown" | "exited"
        self.last_stop: dict[str, Any] | None = None
        self.stderr: list[str] = []

    # -- lifecycle ---------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._process.poll() is None

    def close(self, timeout: float = 2.0) -> None:
        """Stop gdb: ask politely, then terminate, then kill. Never hangs."""
        if self._process.poll() is None:
            try:
                self._controller.io_manager.write("-gdb-exit", read_response=False)
            except Exception:  # noqa: BLE001 - the pipe may already be gone
                pass
            try:
                self._process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._process.terminate()
                try:
                    self._process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait(timeout=timeout)
        for stream in (self._process.stdin, self._process.stdout, self._process.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

    def __enter__(self) -> MiSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- commands ----------------------------------------------------------

    def command(self, command: str, *, timeout: float = DEFAULT_TIMEOUT) -> MiResult:
        """Send one MI command and return its result record.

        Raises :class:`MiError` on ``^error``, :class:`MiTimeout` when no
        result arrives in ``timeout`` seconds and :class:`MiClosed` when gdb
        exits.
        """
        if not self.alive:
            raise MiClosed("gdb has exited")
        token = self._next_token
        self._next_token += 1
        try:
            self._controller.io_manager.write(f"{token}{command}", read_response=False)
        except (OSError, ValueError) as exc:
            raise MiClosed(f"cannot write to gdb: {exc}") from exc
        console: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            records = self._read_available(deadline, command, timeout)
            for index, record in enumerate(records):
                kind = record.get("type")
                if kind == "result" and record.get("token") == token:
                    message = record.get("message") or ""
                    payload = record.get("payload")
                    if message == "running":
                        self.state = "running"
                    # Async records gdb printed after the result arrive in the same
                    # read (``*running``, and ``*stopped`` when the target stops at
                    # once): dropping them would lose the stop for good.
                    for later in records[index + 1 :]:
                        if later.get("type") == "notify":
                            self._handle_async(later)
                    if message == "error":
                        text = payload.get("msg", "") if isinstance(payload, dict) else ""
                        raise MiError(command, text or "gdb reported an error")
                    return MiResult(message, payload, console)
                if kind in ("console", "target") and isinstance(record.get("payload"), str):
                    console.append(record["payload"])
                elif kind == "notify":
                    self._handle_async(record)
                elif kind == "output" and record.get("stream") == "stderr":
                    self.stderr.append(str(record.get("payload")))

    def console(self, text: str, *, timeout: float = DEFAULT_TIMEOUT) -> str:
        """Run a CLI command through MI and return what it printed."""
        return self.command(f"-interpreter-exec console {mi_quote(text)}", timeout=timeout).text

    def wait_for_stop(self, timeout: float) -> dict[str, Any]:
        """Wait for a ``*stopped`` record; return its payload."""
        deadline = time.monotonic() + timeout
        if self.state == "stopped" and self.last_stop is not None:
            return self.last_stop
        while True:
            for record in self._read_available(deadline, "*stopped", timeout):
                if record.get("type") == "notify":
                    self._handle_async(record)
                    if record.get("message") == "stopped":
                        return record.get("payload") or {}

    def poll(self) -> None:
        """Consume any pending async output without blocking."""
        for record in self._read_ready():
            if record.get("type") == "notify":
                self._handle_async(record)

    # -- internals ---------------------------------------------------------

    def _handle_async(self, record: dict[str, Any]) -> None:
        message = record.get("message")
        if message == "stopped":
            self.state = "stopped"
            self.last_stop = record.get("payload") or {}
        elif message == "running":
            self.state = "running"
        elif message == "thread-group-exited":
            self.state = "exited"
        if self._on_async is not None:
            self._on_async(record)

    def _read_ready(self) -> list[dict[str, Any]]:
        try:
            return self._controller.io_manager.get_gdb_response(
                timeout_sec=0, raise_error_on_timeout=False
            )
        except (OSError, ValueError) as exc:
            raise MiClosed(f"cannot read from gdb: {exc}") from exc

    def _read_available(self, deadline: float, what: str, timeout: float) -> list[dict[str, Any]]:
        """Block until gdb prints something (or the deadline), then parse it."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MiTimeout(what, timeout)
            try:
                ready, _, _ = select.select(self._fds, [], [], min(remaining, 0.5))
            except (OSError, ValueError) as exc:
                raise MiClosed(f"gdb's output pipe is closed: {exc}") from exc
            if ready:
                records = self._read_ready()
                if records:
                    return records
                if self._process.poll() is not None:
                    raise MiClosed(f"gdb exited with status {self._process.returncode}")
            elif self._process.poll() is not None:
                raise MiClosed(f"gdb exited with status {self._process.returncode}")
