"""Byte pipes to the agent: a serial device (pyserial), TCP, a unix socket, a pty.

A transport only moves bytes: ``write`` sends all of them, ``read`` returns
what arrived within a timeout (``b""`` if nothing did) and raises
:class:`TransportError` once the other end has gone. Framing lives in
:mod:`protocols.agent_wire`, so every transport is a thin loop around a file
descriptor. :func:`open_transport` picks one from a spec string.
"""

from __future__ import annotations

import os
import random
import select
import socket
import stat
import termios
import time
import tty
from abc import ABC, abstractmethod

__all__ = [
    "FdTransport",
    "LossyTransport",
    "PacedTransport",
    "SerialTransport",
    "SocketTransport",
    "Transport",
    "TransportError",
    "open_transport",
]

READ_SIZE = 65536
#: Longest a write may block (a peer that stopped reading), seconds.
WRITE_TIMEOUT = 10.0


class TransportError(Exception):
    """The line cannot be opened, or it closed under us."""


class Transport(ABC):
    """A bidirectional byte stream."""

    description: str = "transport"
    #: the line's speed in bits per second when it has one (a UART, a paced line)
    baud: int | None = None

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Send every byte (blocking)."""

    @abstractmethod
    def read(self, timeout: float) -> bytes:
        """What arrived within ``timeout`` seconds; ``b""`` if nothing did."""

    @abstractmethod
    def close(self) -> None:
        """Let go of the line (idempotent)."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SocketTransport(Transport):
    """A connected stream socket: TCP (with TCP_NODELAY) or unix."""

    def __init__(self, sock: socket.socket, description: str) -> None:
        self.sock = sock
        self.description = description
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @classmethod
    def connect_tcp(cls, host: str, port: int, timeout: float = 5.0) -> SocketTransport:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise TransportError(
                f"cannot connect to tcp:{host}:{port}: {exc.strerror or exc}"
            ) from exc
        return cls(sock, f"tcp:{host}:{port}")

    @classmethod
    def connect_unix(cls, path: str, timeout: float = 5.0) -> SocketTransport:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise TransportError(f"cannot connect to unix:{path}: {exc.strerror or exc}") from exc
        return cls(sock, f"unix:{path}")

    def write(self, data: bytes) -> None:
        try:
            self.sock.settimeout(WRITE_TIMEOUT)
            self.sock.sendall(data)
        except TimeoutError as exc:
            raise TransportError(
                f"{self.description}: the other end took nothing for {WRITE_TIMEOUT:g} s"
            ) from exc
        except OSError as exc:
            raise TransportError(
                f"{self.description}: write failed: {exc.strerror or exc}"
            ) from exc

    def read(self, timeout: float) -> bytes:
        try:
            self.sock.settimeout(max(timeout, 0.0) or 0.0)
            data = self.sock.recv(READ_SIZE)
        except (TimeoutError, BlockingIOError):
            return b""
        except OSError as exc:
            raise TransportError(f"{self.description}: read failed: {exc.strerror or exc}") from exc
        if not data:
            raise TransportError(f"{self.description}: the other end closed the connection")
        return data

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class FdTransport(Transport):
    """A file descriptor in raw mode: a pty, a pipe pair, a tty without pyserial."""

    def __init__(self, read_fd: int, write_fd: int | None = None, description: str = "fd") -> None:
        self.read_fd = read_fd
        self.write_fd = read_fd if write_fd is None else write_fd
        self.description = description
        self._closed = False

    @classmethod
    def open_pty(cls, path: str) -> FdTransport:
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            raise TransportError(f"cannot open {path}: {exc.strerror}") from exc
        if os.isatty(fd):
            tty.setraw(fd, termios.TCSANOW)
        return cls(fd, fd, f"pty:{path}")

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + WRITE_TIMEOUT
        while view:
            try:
                n = os.write(self.write_fd, view)
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TransportError(
                        f"{self.description}: the other end took nothing for {WRITE_TIMEOUT:g} s"
                    ) from None
                select.select([], [self.write_fd], [], min(left, 1.0))
                continue
            except OSError as exc:
                raise TransportError(f"{self.description}: write failed: {exc.strerror}") from exc
            view = view[n:]

    def read(self, timeout: float) -> bytes:
        try:
            ready, _, _ = select.select([self.read_fd], [], [], max(timeout, 0.0))
            if not ready:
                return b""
            data = os.read(self.read_fd, READ_SIZE)
        except BlockingIOError:
            return b""
        except OSError as exc:
            raise TransportError(f"{self.description}: read failed: {exc.strerror}") from exc
        if not data:
            raise TransportError(f"{self.description}: the other end closed the line")
        return data

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for fd in {self.read_fd, self.write_fd}:
            try:
                os.close(fd)
            except OSError:
                pass


class SerialTransport(Transport):
    """A serial port through pyserial: a device path or any pyserial URL."""

    def __init__(self, url: str, baudrate: int = 115200) -> None:
        try:
            import serial
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise TransportError("pyserial is not installed (pip install pyserial)") from exc
        self._serial_module = serial
        try:
            self.port = serial.serial_for_url(
                url, baudrate=baudrate, timeout=0, write_timeout=WRITE_TIMEOUT
            )
        except (serial.SerialException, ValueError) as exc:
            raise TransportError(f"cannot open serial port {url}: {exc}") from exc
        self.description = f"serial:{url}@{baudrate}"
        self.baud = baudrate

    def write(self, data: bytes) -> None:
        try:
            self.port.write(data)
            self.port.flush()
        except self._serial_module.SerialTimeoutException as exc:
            raise TransportError(
                f"{self.description}: the line took nothing for {WRITE_TIMEOUT:g} s"
            ) from exc
        except self._serial_module.SerialException as exc:
            raise TransportError(f"{self.description}: write failed: {exc}") from exc

    def read(self, timeout: float) -> bytes:
        try:
            self.port.timeout = max(timeout, 0.0)
            first = self.port.read(1)
            if not first:
                return b""
            waiting = self.port.in_waiting
            data: bytes = first + (self.port.read(waiting) if waiting else b"")
            return data
        except self._serial_module.SerialException as exc:
            raise TransportError(f"{self.description}: read failed: {exc}") from exc

    def close(self) -> None:
        try:
            self.port.close()
        except Exception:  # noqa: BLE001 - closing must not raise
            pass


class PacedTransport(Transport):
    """Wraps a transport so that bytes cross it no faster than a UART at ``baud``.

    Each byte costs 10 bit times (8N1) in each direction, as on a real line:
    used to measure what a slow serial link costs (``make bench``).
    """

    def __init__(self, inner: Transport, baud: int = 115200) -> None:
        self.inner = inner
        self.byte_time = 10.0 / baud
        self.baud = baud
        self.description = f"{inner.description} paced to {baud} baud"
        self._rx_free_at = 0.0
        self._pending = b""

    def write(self, data: bytes) -> None:
        time.sleep(len(data) * self.byte_time)
        self.inner.write(data)

    def read(self, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        if not self._pending:
            self._pending = self.inner.read(timeout)
            if not self._pending:
                return b""
        now = time.monotonic()
        start = max(now, self._rx_free_at)
        # Deliver what the line could have carried by the deadline, at least one byte.
        budget = max(1, int((deadline - start) / self.byte_time)) if deadline > start else 1
        data, self._pending = self._pending[:budget], self._pending[budget:]
        self._rx_free_at = start + len(data) * self.byte_time
        delay = self._rx_free_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return data

    def close(self) -> None:
        self.inner.close()


class LossyTransport(PacedTransport):
    """A paced line that damages bytes, for tests and benchmarks of the link's recovery.

    Each byte, in each direction, is dropped with probability ``drop``, replaced by
    another value with ``corrupt``, or sent twice with ``duplicate``. Each direction
    draws from its own generator seeded from ``seed``, so a run damages the same bytes
    of the same stream every time. ``damage`` counts what was done.
    """

    def __init__(
        self,
        inner: Transport,
        baud: int = 115200,
        *,
        drop: float = 0.0,
        corrupt: float = 0.0,
        duplicate: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(inner, baud)
        if not all(0.0 <= rate < 1.0 for rate in (drop, corrupt, duplicate)):
            raise TransportError("damage rates must be fractions between 0 and 1")
        self.drop, self.corrupt, self.duplicate = drop, corrupt, duplicate
        self._up = random.Random(f"{seed}/up")
        self._down = random.Random(f"{seed}/down")
        self.damage = {"dropped": 0, "corrupted": 0, "duplicated": 0}
        self.description = (
            f"{self.description}, dropping {drop:.2%}, corrupting {corrupt:.2%}, "
            f"duplicating {duplicate:.2%} of bytes (seed {seed})"
        )

    def _damage(self, data: bytes, rng: random.Random) -> bytes:
        if not data or not (self.drop or self.corrupt or self.duplicate):
            return data
        out = bytearray()
        corrupt_at = self.drop + self.corrupt
        duplicate_at = corrupt_at + self.duplicate
        for byte in data:
            roll = rng.random()
            if roll < self.drop:
                self.damage["dropped"] += 1
            elif roll < corrupt_at:
                out.append(byte ^ rng.randrange(1, 256))
                self.damage["corrupted"] += 1
            elif roll < duplicate_at:
                out += bytes((byte, byte))
                self.damage["duplicated"] += 1
            else:
                out.append(byte)
        return bytes(out)

    def write(self, data: bytes) -> None:
        super().write(self._damage(data, self._up))

    def read(self, timeout: float) -> bytes:
        return self._damage(super().read(timeout), self._down)


def open_transport(spec: str, *, baudrate: int = 115200, timeout: float = 5.0) -> Transport:
    """Open the line a spec names.

    ``tcp:HOST:PORT``, ``unix:PATH``, ``pty:PATH``, a pyserial URL
    (``rfc2217://...``, ``socket://...``, ``loop://``), or a path: a unix
    socket, a pty (``/dev/pts/N``) or a serial device (``/dev/ttyUSB0``).
    ``timeout`` (seconds to connect) must be a positive finite number.
    """
    if not timeout > 0 or timeout == float("inf"):
        raise TransportError(f"bad timeout {timeout!r}: want a positive number of seconds")
    if spec.startswith("tcp:"):
        host, _, port = spec[len("tcp:") :].rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise TransportError(f"bad tcp spec {spec!r} (want tcp:HOST:PORT, PORT 1-65535)")
        return SocketTransport.connect_tcp(host, int(port), timeout)
    if spec.startswith("unix:"):
        return SocketTransport.connect_unix(spec[len("unix:") :], timeout)
    if spec.startswith("pty:"):
        return FdTransport.open_pty(spec[len("pty:") :])
    if "://" in spec:
        return SerialTransport(spec, baudrate)
    try:
        mode = os.stat(spec).st_mode
    except OSError as exc:
        raise TransportError(
            f"{spec}: {exc.strerror}; --agent takes a device path, tcp:HOST:PORT, "
            "unix:PATH, pty:PATH or a pyserial URL"
        ) from exc
    if stat.S_ISSOCK(mode):
        return SocketTransport.connect_unix(spec, timeout)
    if stat.S_ISCHR(mode) and spec.startswith("/dev/pts/"):
        return FdTransport.open_pty(spec)
    if stat.S_ISCHR(mode):
        return SerialTransport(spec, baudrate)
    raise TransportError(f"{spec} is neither a socket nor a character device")
