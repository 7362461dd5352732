"""Who is on a line? One short look before a long handshake.

A gdb stub's or the agent's unix socket that QEMU has given to another
client still accepts a connection (the kernel's listen backlog does), but
nothing ever answers it: without a look first, a second ``kinspect`` waits
for its whole handshake timeout and then says "did not answer". :func:`probe`
sends a GDB status query (``$?#3f``) and the agent's ``hello`` frame, and
reads for a short while:

- ``"gdb"``: a GDB remote packet or acknowledgement came back (``+``, ``$...#xx``);
- ``"agent"``: an agent frame came back;
- ``"other"``: bytes, but neither (console text, something else entirely);
- ``"silent"``: the connection was accepted and nothing came back: the line is
  in use by another client, or what is behind it does not run (a stopped kernel).

A stub answers its query at once: the agent's hello (and the agent's wire
format, imported only then) follows only when no stub has answered within
:data:`GDB_FIRST`, so a look at a free gdb stub costs one round trip.

Imports nothing of kinspect's beyond the protocols package.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .agent_wire import FrameDecoder

__all__ = ["GDB_FIRST", "GDB_QUERY", "LineProbe", "hello_frame", "looks_like_gdb", "probe"]

#: A GDB acknowledgement and the "why did you stop" query: every stub answers it.
GDB_QUERY = b"+$?#3f"
#: How long a stub has to answer :data:`GDB_QUERY` before the agent's hello is sent too.
GDB_FIRST = 0.05
_GDB_PACKET = re.compile(rb"(^|[^$])\$[^$#]*#[0-9a-fA-F]{2}")


def looks_like_gdb(data: bytes) -> bool:
    """Whether ``data`` holds a GDB remote packet or starts with an acknowledgement."""
    return data[:1] in (b"+", b"-") or _GDB_PACKET.search(data) is not None


def hello_frame() -> bytes:
    """The agent's hello with an id whose frame holds no 0x03 (a GDB stub's interrupt)."""
    from .agent_wire import encode_frame, encode_request

    request_id = 0x6B696E73  # "kins"
    while True:
        frame = encode_frame(encode_request(request_id, "hello", ()))
        if b"\x03" not in frame:
            return frame
        request_id += 1


@dataclass(frozen=True, slots=True)
class LineProbe:
    """What :func:`probe` saw: ``kind`` (gdb, agent, other, silent) and the first bytes."""

    kind: str
    data: bytes
    seconds: float


def _connect(endpoint: str, timeout: float) -> socket.socket | None:
    """A socket to ``unix:PATH``, a socket path or ``HOST:PORT``; None for anything else."""
    path = endpoint[len("unix:") :] if endpoint.startswith("unix:") else endpoint
    if endpoint.startswith("unix:") or path.startswith(("/", ".")):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: object = path
    else:
        spec = endpoint[len("tcp:") :] if endpoint.startswith("tcp:") else endpoint
        host, sep, port = spec.rpartition(":")
        if not sep or not port.isdigit() or not host or "/" in host:
            return None
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        address = (host.strip("[]"), int(port))
    sock.settimeout(timeout)
    try:
        sock.connect(address)  # type: ignore[arg-type]
    except OSError:
        sock.close()
        return None  # the real connection says why, in its own words
    return sock


def probe(endpoint: str, *, timeout: float = 1.0, send_gdb: bool = True) -> LineProbe | None:
    """Connect to ``endpoint``, ask both ways, read for up to ``timeout`` seconds.

    None when the endpoint is not a socket this can reach (a device, a pty, a
    refused connection: the caller's own connection reports that). ``send_gdb``
    False sends only the agent's hello (for a line that may be the agent's,
    where ``$?#3f`` would be typed on the kernel's console).
    """
    t0 = time.monotonic()
    sock = _connect(endpoint, timeout)
    if sock is None:
        return None
    decoder: FrameDecoder | None = None
    seen = bytearray()
    deadline = t0 + timeout
    hello_at = min(t0 + GDB_FIRST, deadline) if send_gdb else t0
    hello_sent = False
    try:
        if send_gdb:
            sock.sendall(GDB_QUERY)
        while (now := time.monotonic()) < deadline:
            if not hello_sent and now >= hello_at:
                sock.sendall(hello_frame())
                hello_sent = True
            sock.settimeout(max((deadline if hello_sent else hello_at) - now, 0.001))
            try:
                data = sock.recv(4096)
            except (TimeoutError, BlockingIOError):
                continue  # the hello is due, or the deadline has come
            except OSError:
                break
            if not data:
                break
            seen += data
            if looks_like_gdb(bytes(seen)):
                return LineProbe("gdb", bytes(seen[:64]), time.monotonic() - t0)
            if decoder is None:  # the agent's wire format: only for a line that is not a stub's
                from .agent_wire import Frame, FrameDecoder

                decoder = FrameDecoder()
                data = bytes(seen)
            if any(isinstance(e, Frame) for e in decoder.feed(data)):
                return LineProbe("agent", bytes(seen[:64]), time.monotonic() - t0)
    except OSError:
        pass
    finally:
        sock.close()
    kind = "other" if seen else "silent"
    return LineProbe(kind, bytes(seen[:64]), time.monotonic() - t0)
