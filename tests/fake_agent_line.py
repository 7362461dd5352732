"""The receiving half of a fake agent on a socket (unit tests): the frames' bodies as they
arrive, whatever else the line carries."""

from __future__ import annotations

import socket
from collections.abc import Iterator

from kinspect.protocols.agent_wire import FrameDecoder


def frame_bodies(sock: socket.socket) -> Iterator[bytes]:
    """Each whole frame's body received on ``sock``, until it is closed."""
    decoder = FrameDecoder()
    while True:
        try:
            data = sock.recv(4096)
        except OSError:
            return
        if not data:
            return
        for event in decoder.feed(data):
            body = getattr(event, "body", None)
            if body is not None:
                yield body
