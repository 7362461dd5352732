"""The agent client: request ids, timeouts, retries, console text.

Every request gets a fresh 32-bit id (from a random start, so ids of an
earlier session are not mistaken for ours). A request is sent, and the
replies are read until the one naming its id arrives; replies to earlier
attempts are dropped. When no reply comes within the timeout (a frame was
lost or damaged on the way, either way) the same request, same id, is sent
again: reads are idempotent, and the agent answers a repeated mutating
request with the reply it kept instead of running it twice.

Bytes outside frames are the kernel's console: they go to ``on_console`` and
are kept in :attr:`AgentClient.console`. Imports nothing of kinspect's.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .agent_wire import (
    DEFAULT_MAX_FRAME,
    PROTOCOL_VERSION,
    ConsoleText,
    Frame,
    FrameDecoder,
    Reply,
    WireError,
    decode_reply,
    encode_frame,
    encode_request,
    error_code,
)
from .transports import Transport, TransportError

__all__ = [
    "AgentClient",
    "AgentClientError",
    "AgentProtocolError",
    "AgentRemoteError",
    "AgentStats",
    "AgentTimeout",
]

CONSOLE_KEEP = 1 << 16
#: Largest request (body + CRC) an agent must accept; hello says the real one.
MAX_REQUEST = 512


class AgentClientError(Exception):
    """Base of the client's errors."""


class AgentTimeout(AgentClientError):
    def __init__(self, method: str, attempts: int, timeout: float) -> None:
        self.method = method
        self.attempts = attempts
        self.timeout = timeout
        super().__init__(
            f"no reply to {method!r} after {attempts} attempt(s) of {timeout:g} s each"
        )


class AgentProtocolError(AgentClientError):
    """The peer does not speak our protocol (version, message shape)."""


class AgentRemoteError(AgentClientError):
    """The agent answered with an error reply."""

    def __init__(self, code: int, message: str, address: int | None = None) -> None:
        #: an ErrorCode when the protocol names it (compares equal to its number)
        self.code = error_code(code)
        self.message = message
        self.address = address
        super().__init__(f"agent error {code}: {message}")


@dataclass(slots=True)
class AgentStats:
    requests: int = 0
    retries: int = 0
    stale_replies: int = 0
    bad_messages: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0


class AgentClient:
    """Speaks to the agent over one transport; not thread-safe (one owner)."""

    def __init__(
        self,
        transport: Transport,
        *,
        timeout: float = 2.0,
        retries: int = 3,
        on_console: Callable[[bytes], None] | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        self.transport = transport
        self.timeout = timeout
        self.retries = retries
        self.on_console = on_console
        self.decoder = FrameDecoder(max_frame)
        self.console = bytearray()
        self.stats = AgentStats()
        self.info: dict[str, Any] = {}
        self._next_id = random.getrandbits(32)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def dropped_frames(self) -> int:
        """Damaged frames the decoder dropped."""
        return self.decoder.dropped

    def _new_id(self) -> int:
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        return self._next_id

    def hello(self) -> dict[str, Any]:
        """The handshake: protocol and agent versions, methods, limits."""
        info = self.call("hello")
        if not isinstance(info, dict) or "protocol" not in info:
            raise AgentProtocolError("the hello reply is not a map with a protocol version")
        if info["protocol"] != PROTOCOL_VERSION:
            raise AgentProtocolError(
                f"the agent speaks protocol {info['protocol']}, this client {PROTOCOL_VERSION}"
            )
        self.info = info
        return info

    def call(
        self,
        method: str,
        *params: Any,
        timeout: float | None = None,
        retries: int | None = None,
    ) -> Any:
        """Send a request and return its result; retried on silence."""
        timeout = self.timeout if timeout is None else timeout
        retries = self.retries if retries is None else retries
        request_id = self._new_id()
        body = encode_request(request_id, method, params)
        limit = self.info.get("max_request", MAX_REQUEST)
        if len(body) + 4 > limit:
            raise AgentProtocolError(
                f"{method!r} request is {len(body) + 4} bytes; the agent takes at most {limit}"
            )
        frame = encode_frame(body)
        self.stats.requests += 1
        for attempt in range(retries + 1):
            if attempt:
                self.stats.retries += 1
            self._send(frame)
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                reply = self._receive(request_id, left)
                if reply is None:
                    continue
                if reply.error is not None:
                    code, message, address = reply.error
                    raise AgentRemoteError(code, message, address)
                return reply.result
        raise AgentTimeout(method, retries + 1, timeout)

    def _send(self, frame: bytes) -> None:
        try:
            self.transport.write(frame)
        except TransportError as exc:
            raise AgentClientError(str(exc)) from exc
        self.stats.bytes_sent += len(frame)

    def _receive(self, request_id: int, timeout: float) -> Reply | None:
        try:
            data = self.transport.read(timeout)
        except TransportError as exc:
            raise AgentClientError(str(exc)) from exc
        if not data:
            return None
        self.stats.bytes_received += len(data)
        found = None
        for event in self.decoder.feed(data):
            if isinstance(event, ConsoleText):
                self._console(event.data)
                continue
            assert isinstance(event, Frame)
            try:
                reply = decode_reply(event.body)
            except WireError:
                self.stats.bad_messages += 1
                continue
            if reply.id != request_id or found is not None:
                self.stats.stale_replies += 1
                continue
            found = reply
        return found

    def _console(self, data: bytes) -> None:
        self.console += data
        if len(self.console) > CONSOLE_KEEP:
            del self.console[: len(self.console) - CONSOLE_KEEP]
        if self.on_console is not None:
            self.on_console(data)

    def pump(self, duration: float) -> None:
        """Read for ``duration`` seconds, passing console text on (no request)."""
        deadline = time.monotonic() + duration
        while (left := deadline - time.monotonic()) > 0:
            self._receive(-1, left)

    def send_console(self, text: bytes) -> None:
        """Type text on the line (outside frames: the kernel's console input)."""
        if b"\x00" in text:
            raise AgentClientError("console input cannot hold a zero byte (the frame delimiter)")
        self._send(text)
