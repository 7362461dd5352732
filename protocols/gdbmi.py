"""A GDB/MI session that matches replies by token and never idles.

pygdbmi parses MI records for us, but its controller's ``write()`` waits for
200 ms of silence after every reply. We start gdb and write to it ourselves,
wait on the pipe with ``select`` and read until the result record that
carries our token arrives, so a command costs what gdb and the stub cost, not
200 ms.

pygdbmi is the parser of record, but it walks a line a character at a time
(a 4 KiB memory read is 8 KiB of hex: 0.5 ms, as long as gdb and QEMU's stub
take to fetch it), and importing it (with the ``logging`` it imports) costs a
command line 7 ms or more. So we read gdb's output ourselves, and the records
every command sees, in the plain form gdb prints them (``^done``, registers,
memory, ``*stopped``, ``=thread-...``, the stream records: quoted strings
with simple escapes, tuples, lists of values, no repeated names), are read by
:func:`_parse_plain`, which gives pygdbmi's own answer for them
(tests/unit/test_gdbmi_records.py holds it to that). Any other shape goes to
pygdbmi, imported then. :meth:`MiSession.pipeline` keeps several commands in
flight, so gdb never waits for us between two of them.

This module is the ground floor: it imports nothing of kinspect's and raises
its own errors (:class:`MiError`, :class:`MiTimeout`, :class:`MiClosed`),
which the inspector wraps.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, NamedTuple

__all__ = [
    "GDB_ARGS",
    "MiClosed",
    "MiError",
    "MiResult",
    "MiSession",
    "MiTimeout",
    "console_command",
    "mi_quote",
    "parse_record",
    "start_gdb",
]

DEFAULT_TIMEOUT = 10.0
#: gdb in MI 3, without init files, and without its data directory: that leaves gdb's own
#: Python API uninitialized (kinspect uses none of it: no pretty printers, frame filters or
#: auto-loaded scripts) and its syscall tables unread. Loading gdb's Python module was a third
#: of gdb's start (48 ms of CPU, 30 without); gdb warns about it on stderr, which is not shown.
GDB_ARGS = ("--interpreter=mi3", "-nx", "--quiet", f"--data-directory={os.devnull}")
#: How many commands :meth:`MiSession.pipeline` keeps in flight: enough that gdb always
#: has the next one, few enough that neither pipe fills while the other waits.
PIPELINE_WINDOW = 32


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


class MiResult(NamedTuple):
    """The result record of one command plus the stream output it produced.

    A named tuple, not a dataclass: the command line imports this module to start gdb
    before anything else, and ``dataclasses`` (with ``inspect``) would come first."""

    message: str
    payload: Any
    console: list[str]

    @property
    def text(self) -> str:
        return "".join(self.console)


def parse_record(line: str) -> dict[str, Any]:
    """One line of gdb's MI output as pygdbmi parses it (``type``, ``message``,
    ``payload``, ``token``): a plain record (:func:`_parse_plain`: every command's
    answers, memory reads too) without pygdbmi, any other line by pygdbmi."""
    plain = _parse_plain(line)
    if plain is not None:
        return plain
    record: dict[str, Any] = _pygdbmi().parse_response(line)
    return record


#: The escapes gdb writes in a C string, as pygdbmi reads them (gdbescapes.py); an octal
#: escape (``\\303``, a byte of a non-ASCII character) is left to pygdbmi.
_ESCAPES = {
    "'": "'",
    "\\": "\\",
    "a": "\a",
    "b": "\b",
    "e": "\033",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    '"': '"',
}
#: What may start a line that pygdbmi reads as MI (a token's digits aside): any other
#: line is gdb's or the program's own text, ``output`` to pygdbmi.
_MI_START = "^*=~&@("
_STREAMS = {"~": "console", "&": "log", "@": "target"}
_RECORDS = {"^": "result", "*": "notify", "=": "notify"}


class _NotPlain(Exception):
    """A shape :func:`_parse_plain` leaves to pygdbmi."""


def _parse_plain(line: str) -> dict[str, Any] | None:
    """The record ``line`` holds, as pygdbmi gives it, when the line is in the plain form
    gdb prints (or is no MI at all); None for anything else, which pygdbmi parses.

    Plain: ``[TOKEN](^|*|=)CLASS[,RESULTS]`` where CLASS is letters, digits, ``-`` and
    ``_``; results are ``NAME=VALUE`` with a name of the same characters, each name once
    per tuple (pygdbmi folds repeats into a list); a value is a C string with simple
    escapes, a tuple ``{...}`` of results, or a list ``[...]`` of values (a list of
    results goes to pygdbmi); and the stream records ``~"..."``, ``&"..."``, ``@"..."``.
    """
    first = line[:1]
    if first not in _MI_START and not first.isdecimal():
        # pygdbmi's patterns all start with a token's digits or one of _MI_START
        return {"type": "output", "message": None, "payload": line}
    if "\n" in line:  # pygdbmi's patterns stop at a line break inside a record
        return None
    try:
        stream = _STREAMS.get(first)
        if stream is not None:
            if line[1:2] != '"':
                return None
            text, end = _string(line, 1)
            if end != len(line):
                return None
            return {"type": stream, "message": None, "payload": text}
        at = 0
        while line[at : at + 1].isdigit() and line[at].isascii():
            at += 1
        kind = _RECORDS.get(line[at : at + 1])
        if kind is None:
            return None
        token = int(line[:at]) if at else None
        comma = line.find(",", at + 1)
        message = line[at + 1 :] if comma < 0 else line[at + 1 : comma]
        if not _is_name(message):
            return None
        payload = None if comma < 0 else _results(line, comma + 1, "")[0]
        return {"type": kind, "message": message, "payload": payload, "token": token}
    except (_NotPlain, RecursionError):  # pygdbmi says what it makes of it
        return None


def _is_name(text: str) -> bool:
    """A name as gdb writes them (``[A-Za-z_][A-Za-z0-9_-]*``); ``_`` alone is one too."""
    if not text.isascii() or not (text[:1].isalpha() or text[:1] == "_"):
        return False
    rest = text.replace("-", "").replace("_", "")
    return rest == "" or rest.isalnum()


def _string(line: str, at: int) -> tuple[str, int]:
    """The C string whose opening quote is at ``at``, and the index after its closing one."""
    start = at + 1
    end = line.find('"', start)
    if end < 0:
        raise _NotPlain
    if line.find("\\", start, end) < 0:
        return line[start:end], end + 1
    parts = []
    while True:
        slash = line.find("\\", start)
        quote = line.find('"', start)
        if quote < 0:
            raise _NotPlain
        if slash < 0 or quote < slash:
            parts.append(line[start:quote])
            return "".join(parts), quote + 1
        escaped = _ESCAPES.get(line[slash + 1 : slash + 2])
        if escaped is None:
            raise _NotPlain
        parts.append(line[start:slash])
        parts.append(escaped)
        start = slash + 2


def _value(line: str, at: int) -> tuple[Any, int]:
    """The value that starts at ``at``, and the index after it."""
    first = line[at : at + 1]
    if first == '"':
        return _string(line, at)
    if first == "{":
        return _results(line, at + 1, "}")
    if first != "[":
        raise _NotPlain
    items: list[Any] = []
    at += 1
    if line[at : at + 1] == "]":
        return items, at + 1
    while True:
        item, at = _value(line, at)
        items.append(item)
        after = line[at : at + 1]
        if after == "]":
            return items, at + 1
        if after != ",":
            raise _NotPlain
        at += 1


def _results(line: str, at: int, close: str) -> tuple[dict[str, Any], int]:
    """The results from ``at`` up to ``close`` (``}``, or ``""``: the end of the line), and
    the index after it."""
    results: dict[str, Any] = {}
    if close and line[at : at + 1] == close:
        return results, at + 1
    while True:
        equals = line.find("=", at)
        name = line[at:equals]
        if equals < 0 or not _is_name(name) or name in results:
            raise _NotPlain
        results[name], at = _value(line, equals + 1)
        after = line[at : at + 1]
        if after == close:
            return results, at + len(close)
        if after != ",":
            raise _NotPlain
        at += 1


def _pygdbmi() -> ModuleType:
    """pygdbmi's record parser, imported when a record first needs it."""
    from pygdbmi import gdbmiparser

    return gdbmiparser


def mi_quote(text: str) -> str:
    """Quote an argument for an MI command line (a C string)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def console_command(text: str) -> str:
    """The MI command line that runs gdb's CLI command ``text`` (its output comes back as
    console records)."""
    return f"-interpreter-exec console {mi_quote(text)}"


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
        command = [gdb, *GDB_ARGS, *extra_args]  # found on PATH as the shell would
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
            )
        except FileNotFoundError:
            raise MiClosed(
                f"{gdb!r} was not found on PATH; install gdb (apt-get install gdb)"
            ) from None
        except OSError as exc:
            raise MiClosed(f"cannot start {gdb}: {exc}") from exc
        assert process.stdin is not None and process.stdout is not None
        assert process.stderr is not None
        self._process: subprocess.Popen[bytes] = process
        self._stdin = process.stdin.fileno()
        self._fds = [process.stdout.fileno(), process.stderr.fileno()]
        for fd in (self._stdin, *self._fds):
            os.set_blocking(fd, False)  # never wait on a pipe but in select, with a timeout
        self._closed = False
        #: wait for gdb to exit in :meth:`close` (the command line, about to exit, does not)
        self.wait_on_close = True
        self._next_token = 1
        #: the end of gdb's output that is not a whole line yet, per descriptor
        self._partial: dict[int, list[bytes]] = {}
        self._on_async = on_async
        self.state = "unknown"  # "running" | "stopped" | "unknown" | "exited"
        self.last_stop: dict[str, Any] | None = None
        self.stderr: list[str] = []

    # -- lifecycle ---------------------------------------------------------

    @property
    def alive(self) -> bool:
        return not self._closed and self._process.poll() is None

    def close(self, timeout: float = 2.0) -> None:
        """Stop gdb: ask politely, then terminate, then kill. Never hangs.

        With :attr:`wait_on_close` False, gdb is asked to exit and left to do so: its
        teardown (10 ms or more) is its own; a process about to exit need not wait."""
        if self._closed:
            return
        if self._process.poll() is None:
            try:
                self._write("-gdb-exit")
            except MiClosed:  # the pipe may already be gone
                pass
            if not self.wait_on_close:
                self._close_pipes()
                return
            try:
                self._process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._process.terminate()
                try:
                    self._process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait(timeout=timeout)
        self._close_pipes()

    def _close_pipes(self) -> None:
        self._closed = True
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
        (result,) = self.pipeline([command], timeout=timeout)
        if isinstance(result, MiError):
            raise result
        return result

    def pipeline(
        self,
        commands: Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        window: int = PIPELINE_WINDOW,
    ) -> list[MiResult | MiError]:
        """Run ``commands`` in order, up to ``window`` of them in flight; each one's
        result, or its :class:`MiError` (an ``^error`` does not stop the others).

        gdb runs commands one after the other, so this saves the turn-around
        between two of them, not gdb's own work. :class:`MiTimeout` when a
        result takes more than ``timeout`` seconds after the one before;
        :class:`MiClosed` when gdb exits.
        """
        if not self.alive:
            raise MiClosed("gdb has exited")
        results: list[MiResult | MiError | None] = [None] * len(commands)
        flight: dict[int, tuple[int, list[str]]] = {}  # token -> (index, console lines)
        order: list[int] = []  # tokens in flight, oldest first
        sent = 0
        deadline = time.monotonic() + timeout
        while sent < len(commands) or flight:
            while sent < len(commands) and len(flight) < max(1, window):
                token = self._next_token
                self._next_token += 1
                self._write(f"{token}{commands[sent]}")
                flight[token] = (sent, [])
                order.append(token)
                sent += 1
            waiting = commands[flight[order[0]][0]]
            for record in self._read_available(deadline, waiting, timeout):
                kind = record.get("type")
                done = record.get("token")
                if kind == "result" and done in flight:
                    index, console = flight.pop(done)
                    order.remove(done)
                    results[index] = self._result(commands[index], record, console)
                    deadline = time.monotonic() + timeout
                elif kind in ("console", "target") and isinstance(record.get("payload"), str):
                    if order:  # gdb prints a command's output before its result
                        flight[order[0]][1].append(record["payload"])
                elif kind == "notify":
                    self._handle_async(record)
                elif kind == "output" and record.get("stream") == "stderr":
                    self.stderr.append(str(record.get("payload")))
        return [r for r in results if r is not None]

    def _result(
        self, command: str, record: dict[str, Any], console: list[str]
    ) -> MiResult | MiError:
        message = record.get("message") or ""
        payload = record.get("payload")
        if message == "running":
            self.state = "running"
        if message == "error":
            text = payload.get("msg", "") if isinstance(payload, dict) else ""
            return MiError(command, text or "gdb reported an error")
        return MiResult(message, payload, console)

    def console(self, text: str, *, timeout: float = DEFAULT_TIMEOUT) -> str:
        """Run a CLI command through MI and return what it printed."""
        return self.command(console_command(text), timeout=timeout).text

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

    def _write(self, line: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        """One command line to gdb's input; :class:`MiTimeout` when gdb has not taken
        it within ``timeout`` seconds (its input pipe stays full)."""
        if self._closed:
            raise MiClosed("the gdb session is closed")
        data = f"{line}\n".encode()
        deadline = time.monotonic() + timeout
        try:
            while data:
                try:
                    data = data[os.write(self._stdin, data) :]
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise MiTimeout(line, timeout) from None
                    select.select([], [self._stdin], [], 0.1)
        except (OSError, ValueError) as exc:
            raise MiClosed(f"cannot write to gdb: {exc}") from exc

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
        """Every complete line gdb has printed so far, parsed (pygdbmi's records, with
        ``stream``); a line cut in the middle waits for the rest."""
        records: list[dict[str, Any]] = []
        for fd in self._fds:
            pending = self._partial.setdefault(fd, [])
            lines: list[bytes] = []
            while True:
                try:
                    data = os.read(fd, 1 << 20)
                except BlockingIOError:
                    break
                except (OSError, ValueError) as exc:
                    raise MiClosed(f"cannot read from gdb: {exc}") from exc
                if not data:
                    break
                if b"\n" not in data:  # a long line (a big read) arrives in many pieces
                    pending.append(data)
                    continue
                pending.append(data)
                *whole, rest = b"".join(pending).split(b"\n")
                lines += whole
                pending[:] = [rest] if rest else []
            stream = "stdout" if fd == self._fds[0] else "stderr"
            for raw in lines:
                line = raw.decode(errors="replace").rstrip("\r")
                if not line or line.rstrip() == "(gdb)":  # the prompt after each answer
                    continue
                record = parse_record(line)
                record["stream"] = stream
                records.append(record)
        return records

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


def start_gdb() -> MiSession | None:
    """gdb started now, for a target to take later; None when it cannot start (the
    target then starts its own and says why)."""
    try:
        return MiSession()
    except MiClosed:
        return None
