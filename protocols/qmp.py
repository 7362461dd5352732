"""A small QMP (QEMU Machine Protocol) client over a unix socket.

QMP is line-delimited JSON. We use it to ask QEMU questions that do not go
through the gdb stub (status, the human monitor for ``info tlb`` in tests) and
to quit QEMU cleanly. Every wait has a timeout.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

__all__ = ["QmpClient", "QmpError"]


class QmpError(Exception):
    """QMP failed: cannot connect, timed out, or QEMU answered an error."""


class QmpClient:
    """One QMP connection, capabilities negotiated, commands matched by id."""

    def __init__(self, path: str, *, timeout: float = 5.0) -> None:
        self._timeout = timeout
        self._buffer = b""
        self._next_id = 1
        self.events: list[dict[str, Any]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
            greeting = self._read_message(time.monotonic() + timeout)
            if "QMP" not in greeting:
                raise QmpError(f"unexpected QMP greeting: {greeting!r}")
            self.execute("qmp_capabilities")
        except OSError as exc:
            self._sock.close()
            raise QmpError(f"cannot connect to QMP socket {path}: {exc}") from exc
        except QmpError:
            self._sock.close()
            raise

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass

    def __enter__(self) -> QmpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def execute(
        self, command: str, arguments: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        """Run one QMP command and return its ``return`` value."""
        request_id = self._next_id
        self._next_id += 1
        message: dict[str, Any] = {"execute": command, "id": request_id}
        if arguments:
            message["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError as exc:
            raise QmpError(f"QMP connection lost: {exc}") from exc
        deadline = time.monotonic() + (timeout if timeout is not None else self._timeout)
        while True:
            reply = self._read_message(deadline)
            if "event" in reply:
                self.events.append(reply)
                continue
            if reply.get("id") != request_id:
                continue
            if "error" in reply:
                error = reply["error"]
                raise QmpError(f"QMP {command}: {error.get('desc', error)}")
            return reply.get("return")

    def human_monitor_command(self, command_line: str, *, timeout: float | None = None) -> str:
        """Run a human monitor command (e.g. ``info tlb``) and return its text."""
        result = self.execute(
            "human-monitor-command", {"command-line": command_line}, timeout=timeout
        )
        return str(result)

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QmpError("QMP timed out waiting for QEMU")
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError as exc:
                raise QmpError("QMP timed out waiting for QEMU") from exc
            except OSError as exc:
                raise QmpError(f"QMP connection lost: {exc}") from exc
            if not chunk:
                raise QmpError("QEMU closed the QMP connection")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            message: dict[str, Any] = json.loads(line)
        except ValueError as exc:
            raise QmpError(f"QMP sent something that is not JSON: {line[:80]!r}") from exc
        return message
