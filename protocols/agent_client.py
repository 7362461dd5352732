"""The agent client: request ids, NAKs, chunks, timeouts, retries, console text.

Every request gets a fresh 32-bit id (from a random start, so ids of an
earlier session are not mistaken for ours). A request is sent, and the
replies are read until the one naming its id arrives; replies to earlier
attempts are dropped. A damaged frame is asked for again at once (a NAK),
and the agent does the same for a damaged request; a long reply comes in
chunks, each acknowledged, so one bad byte costs one chunk (link version 2,
AGENT_PROTOCOL.md section 2). When nothing comes within a wait derived from
the line's speed and the size expected (a frame lost whole), the same
request, same id, is sent again: reads are idempotent, and the agent answers
a repeated request with the reply it kept instead of running it twice.

Bytes outside frames are the kernel's console: they go to ``on_console`` and
are kept in :attr:`AgentClient.console`. Imports nothing of kinspect's.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .agent_wire import (
    DEFAULT_MAX_FRAME,
    LINK_VERSION,
    PROTOCOL_VERSION,
    Chunk,
    ConsoleText,
    Damaged,
    ErrorCode,
    Frame,
    FrameDecoder,
    Nak,
    Reply,
    WireError,
    damaged_id,
    decode_incoming,
    decode_reply,
    encode_ack,
    encode_frame,
    encode_nak,
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
#: The line's speed when neither the caller nor the transport says (bits per second).
DEFAULT_BAUD = 115200
#: What a request costs beyond its bytes on the line: the kernel's poll, the method, QEMU.
LATENCY = 0.1
LATENCY_MIN = 0.02
#: A frame's bytes beyond its payload: delimiters, COBS, CRC, the message's header.
FRAME_OVERHEAD = 32
#: How much longer than its timeout x (retries + 1) a call that makes progress may go on.
PROGRESS_CAP = 3
#: The first chunk of a long reply (the agent's AGENT_CHUNK_FIRST).
CHUNK_FIRST = 128
#: The chunk sizes the client asks for: the one that moves the most per second of line at
#: the byte error rate seen so far (a damaged frame per so many bytes received).
CHUNK_SIZES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
CHUNK_MIN = CHUNK_SIZES[0]
CHUNK_START = 256
#: A chunk's round trip beyond its data, in bytes of line time: its frame and the ACK (the
#: agent's latency, as measured, is added).
CHUNK_COST = FRAME_OVERHEAD + 16
#: How long the line may stay quiet while the decoder holds bytes that made no frame (a
#: damaged frame whose closing delimiter was lost too, so no zero will come to end it)
#: before it is asked for again: the agent writes a frame in one go, so a quiet line in the
#: middle of one is rare (console text is not held: FrameDecoder.holding).
IDLE_GAP = 0.03
#: ... at least this many bytes' line time (a slow line's pieces come further apart), and
#: at least four times the deviation of the agent's latency (a busy machine stalls longer).
IDLE_BYTES = 64
#: Bytes expected in a whole (link 1) reply, by method, when the caller does not say.
REPLY_SIZES = {"hello": 1024, "regs": 512, "walk": DEFAULT_MAX_FRAME, "translate": 128}


#: How many ids before the current one count as an earlier request's (a frame naming one
#: is late, not ours); any other id a damaged frame or a NAK names is ours, damaged. Few:
#: a damaged id is often one off in its last byte, and a late frame is the last request's.
EARLIER_IDS = 2


def _earlier(other: int, current: int) -> bool:
    """Whether ``other`` is the id of one of the requests sent just before ``current``."""
    return 0 < (current - other) & 0xFFFFFFFF <= EARLIER_IDS


class AgentClientError(Exception):
    """Base of the client's errors."""


class AgentTimeout(AgentClientError):
    def __init__(self, method: str, attempts: int, timeout: float) -> None:
        self.method = method
        self.attempts = attempts
        #: seconds the call went on before giving up
        self.timeout = timeout
        super().__init__(f"no reply to {method!r} after {attempts} attempt(s) in {timeout:.3g} s")


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
    #: requests sent again after a silence (a frame lost whole)
    timeouts: int = 0
    #: damaged frames this side asked for again, and NAKs the agent sent for ours
    naks_sent: int = 0
    naks_received: int = 0
    #: requests sent again on a NAK
    resends: int = 0
    #: chunks received intact, and chunks asked for again (damaged or lost)
    chunks: int = 0
    chunks_resent: int = 0


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
        baud: int | None = None,
    ) -> None:
        self.transport = transport
        #: the longest one wait for silence lasts; a call gives up after timeout x (retries + 1)
        self.timeout = timeout
        self.retries = retries
        self.on_console = on_console
        #: the line's speed, for waits: the caller's, the transport's, or 115,200
        self.baud = baud or getattr(transport, "baud", None) or DEFAULT_BAUD
        #: the link version both sides speak (hello says); 1 until then
        self.link = 1
        self.chunk_size = CHUNK_START
        # What the line did lately: bytes received, and damaged frames among them.
        self._line_bytes = 0.0
        self._line_damage = 0.0
        self._line_frames = 0.0
        # The agent's latency beyond line time: smoothed mean and deviation (RFC 6298).
        self._srtt = LATENCY / 2
        self._rttvar = LATENCY / 8
        self._sent_at: float | None = None
        self._sent_size = 0
        self.decoder = FrameDecoder(max_frame, report_damage=True)
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

    def hello(self, *, timeout: float | None = None, retries: int | None = None) -> dict[str, Any]:
        """The handshake: protocol and agent versions, methods, limits.

        Asks for link version 2 (``hello [2]``); an agent older than that refuses the
        parameter (bad-params) and is asked again plainly: it gets whole replies.
        """
        try:
            info = self.call("hello", LINK_VERSION, timeout=timeout, retries=retries)
        except AgentRemoteError as exc:
            if exc.code != ErrorCode.BAD_PARAMS:
                raise
            info = self.call("hello", timeout=timeout, retries=retries)
        if not isinstance(info, dict) or "protocol" not in info:
            raise AgentProtocolError("the hello reply is not a map with a protocol version")
        if info["protocol"] != PROTOCOL_VERSION:
            raise AgentProtocolError(
                f"the agent speaks protocol {info['protocol']}, this client {PROTOCOL_VERSION}"
            )
        self.info = info
        link = info.get("link", 1)
        self.link = min(link, LINK_VERSION) if isinstance(link, int) and link > 0 else 1
        chunk_max = info.get("chunk_max")
        if isinstance(chunk_max, int) and chunk_max >= CHUNK_MIN:
            self.chunk_size = min(self.chunk_size, chunk_max)
        return info

    def wire_time(self, size: int) -> float:
        """Seconds ``size`` bytes take on the line (8N1: 10 bits a byte)."""
        return size * 10.0 / self.baud

    def _wait(self, sent: int, expected: int, silences: int, cap: float) -> float:
        """How long to wait for a frame of ``expected`` bytes after sending ``sent``:
        the line time both ways twice over plus the agent's latency as measured (a
        smoothed mean and four deviations, as TCP's retransmission timer), doubled after each
        silence in a row (up to 8 times: a lossy line loses frames whole too), at
        most ``cap``."""
        latency = max(LATENCY_MIN, self._srtt + 4 * self._rttvar)
        base = latency + 2 * self.wire_time(sent + expected + FRAME_OVERHEAD)
        return min(cap, base * (1 << min(silences, 3)))

    def _idle_gap(self) -> float:
        """How long a quiet line with a frame's bytes held means the frame's end was lost:
        a frame is written in one go, so only the latency's jitter (its deviation as
        measured), not the latency itself, can part its bytes."""
        return max(IDLE_GAP, self.wire_time(IDLE_BYTES), 4 * self._rttvar)

    def _expected(self, method: str, params: tuple[Any, ...]) -> int:
        """Bytes of the first frame of the reply: a chunk at most, when chunked."""
        if method in ("read_phys", "read_virt") and len(params) >= 2:
            size = int(params[1]) if isinstance(params[1], int) else 512
        else:
            size = REPLY_SIZES.get(method, 512)
        # hello [2] is answered in chunks by an agent that speaks link 2 (a whole reply from
        # an older one keeps bytes coming, which holds off the silence).
        chunked = self.link >= 2 or (method == "hello" and bool(params) and params[0] == 2)
        return min(size, CHUNK_FIRST) if chunked else size

    def call(
        self,
        method: str,
        *params: Any,
        timeout: float | None = None,
        retries: int | None = None,
    ) -> Any:
        """Send a request and return its result; damaged frames asked for again at once,
        silences answered by sending the request (or the last ACK) again."""
        timeout = self.timeout if timeout is None else timeout
        retries = self.retries if retries is None else retries
        request_id = self._new_id()
        body = encode_request(request_id, method, params)
        limit = self.info.get("max_request", MAX_REQUEST)
        if len(body) + 4 > limit:
            raise AgentProtocolError(
                f"{method!r} request is {len(body) + 4} bytes; the agent takes at most {limit}"
            )
        request = encode_frame(body)
        self.stats.requests += 1
        started = time.monotonic()
        # The call gives up after timeout x (retries + 1) without progress (a chunk of the
        # reply accepted), and after PROGRESS_CAP times that in all.
        allowed = timeout * (retries + 1)
        budget = started + allowed
        cap = started + allowed * PROGRESS_CAP
        # What we sent last (the request or an ACK), and the reply's bytes so far.
        current = request
        expected = self._expected(method, params)
        received = bytearray()
        total: int | None = None
        attempts = 1
        silences = 0
        idle_asked = False  # a NAK for what the quiet line left in the decoder, once
        self._send(current)
        wait_until = time.monotonic() + self._wait(len(current), expected, silences, timeout)
        while True:
            now = time.monotonic()
            if now >= budget:
                raise AgentTimeout(method, attempts, now - started)
            if now >= wait_until:
                # Silence: the request, the reply or an ACK was lost whole. Again.
                silences += 1
                attempts += 1
                self.stats.retries += 1
                self.stats.timeouts += 1
                if total is not None:
                    self.stats.chunks_resent += 1
                    self._saw_damage()
                    current = encode_frame(
                        encode_ack(request_id, len(received), self._chunk(total, received))
                    )
                self._send(current)
                wait_until = time.monotonic() + self._wait(
                    len(current), expected, silences, timeout
                )
                continue
            read_until = min(wait_until, budget)
            idle = not idle_asked and self.decoder.holding
            if idle:
                read_until = min(read_until, now + self._idle_gap())
            arrived = self.stats.bytes_received
            events = self._events(read_until - now)
            if self.stats.bytes_received != arrived:
                idle_asked = False
                # Bytes are coming: no silence yet (a long whole reply may take longer than
                # the wait for its first chunk).
                wait_until = max(wait_until, time.monotonic() + self._idle_gap())
            elif idle and time.monotonic() < min(wait_until, budget):
                # Quiet after bytes that made no frame: a damaged frame that lost its
                # closing delimiter too. Asked for again now, not after the whole wait.
                idle_asked = True
                self.decoder.discard()
                events = [Damaged(b"")]
            for event in events:
                if isinstance(event, Damaged):
                    named = damaged_id(event.prefix)
                    if named is not None and named[1] and _earlier(named[0], request_id):
                        continue  # a damaged frame of an earlier request's
                    # Ours, or its id is damaged too (an id we never sent): asked for again
                    # at once.
                    self.stats.retries += 1
                    self.stats.naks_sent += 1
                    self._saw_damage()
                    if total is not None:
                        self.stats.chunks_resent += 1
                    nak = encode_nak(request_id, len(received), self._chunk(total, received))
                    self._send(encode_frame(nak))
                    wait_until = time.monotonic() + self._wait(
                        len(nak), expected, silences, timeout
                    )
                    continue
                silences = 0  # the agent is there: a silence was a lost frame, not a slow agent
                if isinstance(event, Nak):
                    if event.known and _earlier(event.id, request_id):
                        self.stats.stale_replies += 1
                        continue
                    # Ours, or one naming an id we never sent (the id of our frame came
                    # damaged to the agent): send it again.
                    # The agent got ours damaged (or lost the reply): send it again.
                    self.stats.naks_received += 1
                    self.stats.retries += 1
                    self.stats.resends += 1
                    attempts += 1
                    self._send(current)
                    wait_until = time.monotonic() + self._wait(
                        len(current), expected, silences, timeout
                    )
                    continue
                if event.id != request_id:
                    self.stats.stale_replies += 1
                    continue
                if isinstance(event, Reply):
                    if event.error is not None:
                        code, message, address = event.error
                        raise AgentRemoteError(code, message, address)
                    return event.result
                # A chunk: the next one in order is kept; a repeat or a late one is not.
                if event.offset != len(received) or (total is not None and event.total != total):
                    self.stats.stale_replies += 1
                    continue
                total = event.total
                received += event.data
                self.stats.chunks += 1
                self._pick_chunk()
                budget = min(cap, time.monotonic() + allowed)
                silences = 0
                if len(received) >= total:
                    reply = self._whole(bytes(received))
                    if reply.id != request_id:
                        raise AgentProtocolError(
                            f"chunks of reply {request_id} hold the reply to {reply.id}"
                        )
                    if reply.error is not None:
                        code, message, address = reply.error
                        raise AgentRemoteError(code, message, address)
                    return reply.result
                size = self._chunk(total, received)
                expected = size
                current = encode_frame(encode_ack(request_id, len(received), size))
                self._send(current)
                wait_until = time.monotonic() + self._wait(len(current), size, 0, timeout)

    def _saw_damage(self) -> None:
        self._line_damage += 1
        self._line_frames += 1
        self._pick_chunk(damaged=True)

    def byte_error_rate(self) -> float:
        """The chance a byte arrives damaged, from the frames seen: a frame of n bytes
        arrives whole with probability (1 - p)^n, so p = -ln(whole frames' share) / n
        (counting damaged frames per byte would undercount: a frame is damaged once,
        however many of its bytes are)."""
        frames = self._line_frames + 1
        share = min(0.95, (self._line_damage + 0.02) / frames)
        mean = (self._line_bytes + 256) / frames
        return min(0.5, -math.log1p(-share) / mean)

    def _pick_chunk(self, *, damaged: bool = False) -> None:
        """The chunk size with the most data per byte of line time, damage counted: a
        chunk of n arrives whole with probability (1 - p)^(n + overhead)."""
        if self._line_bytes > 65536:  # forget slowly: the line may have changed
            self._line_bytes /= 2
            self._line_damage /= 2
            self._line_frames /= 2
        p = self.byte_error_rate()
        cost = CHUNK_COST + self._srtt * self.baud / 10  # the round trip's wait, in bytes
        best = max(
            (n for n in CHUNK_SIZES if n <= self._chunk_max()),
            key=lambda n: n * (1 - p) ** (n + FRAME_OVERHEAD) / (n + cost),
        )
        # The estimate is slow to learn from a few frames: a damaged chunk halves the size
        # at once, and an intact one at most doubles it (a chunk too large for the line is
        # damaged nearly every time; one too small costs a little more line time).
        if damaged:
            best = min(best, max(CHUNK_MIN, self.chunk_size // 2))
        else:
            best = min(best, self.chunk_size * 2)
        self.chunk_size = best

    def _receive(self, request_id: int, timeout: float) -> Reply | None:
        """The reply to ``request_id`` that arrives within ``timeout`` (chunks pulled and
        joined), or None: for callers that send a frame of their own and wait for its
        answer (a retry with an id they chose)."""
        deadline = time.monotonic() + timeout
        received = bytearray()
        total: int | None = None
        while (left := deadline - time.monotonic()) > 0:
            for event in self._events(left):
                if isinstance(event, Damaged | Nak) or event.id != request_id:
                    if not isinstance(event, Damaged | Nak):
                        self.stats.stale_replies += 1
                    if total is not None:  # ask for the chunk again
                        ack = encode_ack(request_id, len(received), self._chunk(total, received))
                        self._send(encode_frame(ack))
                    continue
                if isinstance(event, Reply):
                    return event
                if event.offset != len(received):
                    continue
                total = event.total
                received += event.data
                self.stats.chunks += 1
                if len(received) >= total:
                    return self._whole(bytes(received))
                ack = encode_ack(request_id, len(received), self._chunk(total, received))
                self._send(encode_frame(ack))
                deadline = time.monotonic() + timeout
        return None

    def _chunk_max(self) -> int:
        chunk_max = self.info.get("chunk_max", CHUNK_START)
        return chunk_max if isinstance(chunk_max, int) and chunk_max >= CHUNK_MIN else CHUNK_START

    def _chunk(self, total: int | None, received: bytearray) -> int:
        """The size of the next chunk to ask for."""
        if total is None:
            return self.chunk_size
        return max(1, min(self.chunk_size, total - len(received)))

    @staticmethod
    def _whole(body: bytes) -> Reply:
        try:
            return decode_reply(body)
        except WireError as exc:
            raise AgentProtocolError(f"a chunked reply does not decode: {exc}") from exc

    def _send(self, frame: bytes) -> None:
        try:
            self.transport.write(frame)
        except TransportError as exc:
            raise AgentClientError(str(exc)) from exc
        self.stats.bytes_sent += len(frame)
        self._sent_at = time.monotonic()
        self._sent_size = len(frame)

    def _measure(self, received: int) -> None:
        """A frame answered what we sent last: one latency sample (line time taken out)."""
        if self._sent_at is None:
            return
        sample = max(0.0, time.monotonic() - self._sent_at - self.wire_time(received))
        self._sent_at = None
        self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - sample)
        self._srtt = 0.875 * self._srtt + 0.125 * sample

    def _events(self, timeout: float) -> list[Reply | Nak | Chunk | Damaged]:
        """What arrives within ``timeout``: messages and damaged frames (console text is
        passed on, undecodable messages counted)."""
        try:
            data = self.transport.read(max(timeout, 0.0))
        except TransportError as exc:
            raise AgentClientError(str(exc)) from exc
        if not data:
            return []
        self.stats.bytes_received += len(data)
        self._line_bytes += len(data)
        self._measure(len(data))
        events: list[Reply | Nak | Chunk | Damaged] = []
        for event in self.decoder.feed(data):
            if isinstance(event, ConsoleText):
                self._console(event.data)
            elif isinstance(event, Damaged):
                events.append(event)
            else:
                assert isinstance(event, Frame)
                self._line_frames += 1
                try:
                    events.append(decode_incoming(event.body))
                except WireError:
                    self.stats.bad_messages += 1
        return events

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
            for event in self._events(left):
                if not isinstance(event, Damaged):
                    self.stats.stale_replies += 1

    def send_console(self, text: bytes) -> None:
        """Type text on the line (outside frames: the kernel's console input)."""
        if b"\x00" in text:
            raise AgentClientError("console input cannot hold a zero byte (the frame delimiter)")
        self._send(text)
