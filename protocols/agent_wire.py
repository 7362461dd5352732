"""The agent's wire format, sans-I/O: COBS frames with a CRC-32, msgpack messages.

A frame on the wire is ``00 COBS(body + CRC32(body)) 00``: the zero byte
cannot occur inside COBS output, so a receiver resyncs at the next zero after
any loss. ``body`` is one msgpack message; the CRC-32 (ISO-HDLC, zlib's) is
appended little-endian. Bytes outside frames are console text.

:class:`FrameDecoder` is fed bytes in any split and returns :class:`Frame`
and :class:`ConsoleText` events; damaged candidates are counted and dropped.
The messages are msgpack-RPC shaped (see ``AGENT_PROTOCOL.md``)::

    request  [0, id, method, params]
    reply    [1, id, error, result]      error: nil or [code, message, (address)]

and the link's own (link version 2): a NAK asks for a damaged frame again at
once, and a long reply comes in chunks, each acknowledged::

    NAK      [2, id, known]              agent -> host: a request came damaged
    NAK      [2, id, offset, size]       host -> agent: that reply's frame came damaged
    ACK      [3, id, offset, size]       host -> agent: chunk intact, send the next
    chunk    [4, id, offset, total, bin] agent -> host

This module imports nothing of kinspect's and raises :class:`WireError`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import msgpack

__all__ = [
    "DEFAULT_MAX_FRAME",
    "ERROR_NAMES",
    "MSG_REPLY",
    "MSG_REQUEST",
    "PROTOCOL_VERSION",
    "LINK_VERSION",
    "MSG_ACK",
    "MSG_CHUNK",
    "MSG_NAK",
    "Chunk",
    "ConsoleText",
    "Damaged",
    "ErrorCode",
    "Frame",
    "FrameDecoder",
    "Nak",
    "Reply",
    "Request",
    "WireError",
    "cobs_decode",
    "cobs_decode_prefix",
    "cobs_encode",
    "crc32",
    "damaged_id",
    "decode_incoming",
    "decode_message",
    "decode_reply",
    "decode_request",
    "encode_ack",
    "encode_chunk",
    "encode_frame",
    "encode_nak",
    "encode_reply",
    "encode_request",
    "error_code",
    "max_encoded_size",
    "unframe",
]

PROTOCOL_VERSION = 1
#: The link layer this side speaks: 2 adds NAKs and chunked replies (AGENT_PROTOCOL.md, 2).
LINK_VERSION = 2
#: The largest frame body plus CRC (decoded bytes) this side accepts.
DEFAULT_MAX_FRAME = 4608
MSG_REQUEST = 0
MSG_REPLY = 1
MSG_NAK = 2
MSG_ACK = 3
MSG_CHUNK = 4
#: Decoded bytes of a damaged candidate kept for :func:`damaged_id`.
DAMAGED_PREFIX = 16


class ErrorCode(IntEnum):
    """Error codes of the agent (AGENT_PROTOCOL.md, "Errors"); ``wire_name`` is the table's."""

    MALFORMED = 1
    UNKNOWN_METHOD = 2
    BAD_PARAMS = 3
    FAULT = 4
    TOO_BIG = 5
    UNSUPPORTED = 6
    INTERNAL = 7
    REFUSED = 9
    EFI = 10

    @property
    def wire_name(self) -> str:
        """``unknown-method``, as AGENT_PROTOCOL.md names the code."""
        return self.name.lower().replace("_", "-")


#: The protocol's name of each error code, by number.
ERROR_NAMES: dict[int, str] = {int(code): code.wire_name for code in ErrorCode}


def error_code(code: int) -> ErrorCode | int:
    """``code`` as an :class:`ErrorCode` when the protocol names it, else the number."""
    try:
        return ErrorCode(code)
    except ValueError:
        return code


class WireError(Exception):
    """Bytes or a message that do not follow the agent protocol."""


def crc32(data: bytes) -> int:
    """CRC-32/ISO-HDLC (poly 0x04C11DB7 reflected, init and xorout 0xFFFFFFFF)."""
    return zlib.crc32(data) & 0xFFFFFFFF


def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing: the output holds no zero byte.

    Blocks end at a zero byte (which the block stands for) or after 254
    non-zero bytes; a full block at the very end is not followed by an empty
    one (the variant of Cheshire and Baker's paper, and of the C agent).
    """
    out = bytearray()
    pos = 0
    n = len(data)
    while True:
        zero = data.find(b"\x00", pos, pos + 254)
        run = (min(n, pos + 254) if zero < 0 else zero) - pos
        out.append(run + 1)
        out += data[pos : pos + run]
        pos += run
        if pos == n:
            return bytes(out)
        if run == 254:
            continue
        pos += 1  # the zero this block stands for


def cobs_decode(data: bytes) -> bytes:
    """Undo :func:`cobs_encode`; WireError on a zero byte or a code past the end."""
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        code = data[i]
        if code == 0:
            raise WireError("zero byte inside a COBS block")
        end = i + code
        if end > n:
            raise WireError("COBS block runs past the end of the frame")
        block = data[i + 1 : end]
        if 0 in block:
            raise WireError("zero byte inside a COBS block")
        out += block
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


def cobs_decode_prefix(data: bytes, limit: int = DAMAGED_PREFIX) -> bytes:
    """What COBS decodes to up to the first damage (at most ``limit`` bytes): the
    start of a damaged frame, whose first bytes name its id more often than not."""
    out = bytearray()
    i = 0
    n = len(data)
    while i < n and len(out) < limit:
        code = data[i]
        if code == 0:
            break
        block = data[i + 1 : min(i + code, n)]
        zero = block.find(0)
        if zero >= 0:
            out += block[:zero]
            break
        out += block
        i += code
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out[:limit])


def max_encoded_size(payload: int) -> int:
    """COBS output size bound for ``payload`` bytes (without the two delimiters)."""
    return payload + payload // 254 + 1


def encode_frame(body: bytes) -> bytes:
    """``00 COBS(body + CRC32 LE) 00``: one frame, ready for the wire."""
    return b"\x00" + cobs_encode(body + struct.pack("<I", crc32(body))) + b"\x00"


def unframe(encoded: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """The body of one frame's COBS bytes (no delimiters); WireError if damaged."""
    if len(encoded) > max_encoded_size(max_frame):
        raise WireError(f"frame longer than {max_frame} bytes")
    payload = cobs_decode(encoded)
    if len(payload) < 5:
        raise WireError("frame too short for a body and a CRC")
    if len(payload) > max_frame:
        raise WireError(f"frame longer than {max_frame} bytes")
    body, (check,) = payload[:-4], struct.unpack("<I", payload[-4:])
    if crc32(body) != check:
        raise WireError("CRC mismatch")
    return body


@dataclass(frozen=True, slots=True)
class Frame:
    """An intact frame's body (msgpack bytes)."""

    body: bytes


@dataclass(frozen=True, slots=True)
class Damaged:
    """A candidate that failed COBS or its CRC: ``prefix`` is its first decoded bytes."""

    prefix: bytes


@dataclass(frozen=True, slots=True)
class ConsoleText:
    """Bytes that arrived outside any frame: the kernel's console output."""

    data: bytes


class _Blocks:
    """A frame assembled COBS block by block from ``start`` of a growing buffer: its
    bytes decoded so far (a block's implied zero added when the next block begins) and
    the CRC of all but their last four, so each block's end is checked at once."""

    __slots__ = ("crc", "crc_len", "decoded", "next_code", "pending_zero", "start")

    def __init__(self, start: int = 0) -> None:
        self.start = start
        self.next_code = start
        self.decoded = bytearray()
        self.pending_zero = False
        self.crc = 0
        self.crc_len = 0

    def advance(self, buffer: bytearray, max_frame: int) -> int | None:
        """Where in ``buffer`` the first block ends after which the bytes from ``start``
        are a whole frame (COBS, size, CRC), or None (not yet, or never)."""
        decoded = self.decoded
        while self.next_code < len(buffer):
            code = buffer[self.next_code]
            end = self.next_code + code
            if code == 0 or end > len(buffer):
                return None  # the block's bytes are still coming
            if self.pending_zero:
                decoded.append(0)
            decoded += buffer[self.next_code + 1 : end]
            self.pending_zero = code != 0xFF
            self.next_code = end
            size = len(decoded)
            if not 5 <= size <= max_frame:
                continue
            self.crc = zlib.crc32(memoryview(decoded)[self.crc_len : size - 4], self.crc)
            self.crc_len = size - 4
            if self.crc == int.from_bytes(decoded[size - 4 :], "little"):
                return end
        return None

    def body(self) -> bytes:
        return bytes(self.decoded[:-4])


class FrameDecoder:
    """Split a byte stream into frames and console text.

    Outside a frame, bytes are console text, passed on as they come. A zero
    byte opens a candidate frame; the next zero closes it. A candidate that
    decodes (COBS, length, CRC) is a :class:`Frame` and the decoder returns to
    text; a damaged or empty one is dropped and the closing zero is taken as
    the opening of the next candidate, so a frame whose delimiters arrive
    intact is always found whatever came before it. A candidate longer than
    the largest frame cannot be one: its bytes go out as console text.

    A frame is also found without the delimiter that should end it: a candidate
    is checked at each COBS block's end as its bytes come, and is delivered as
    soon as its CRC matches (a zero next is its closing delimiter). And without
    the one that should open it: the text since the last frame or zero is
    checked the same way, from its first byte and from its second (an opening
    delimiter changed into another value; its bytes were passed on as text
    already). So a lost or changed delimiter costs nothing, instead of a wait
    for a zero that will not come (AGENT_PROTOCOL.md, section 1). Text that
    ends at a zero without making a frame, and whose bytes decode to a start
    like a message's (an array of 2 to 5), is a damaged frame: counted, and
    reported like a damaged candidate.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME, *, report_damage: bool = False) -> None:
        self.max_frame = max_frame
        #: also yield a :class:`Damaged` event for each damaged candidate (for a NAK)
        self.report_damage = report_damage
        self._limit = max_encoded_size(max_frame)
        self._in_frame = False
        self._buffer = bytearray()
        self._blocks = _Blocks()
        # A frame was delivered at its last block: a zero next is its closing delimiter.
        self._after_frame = False
        # Text since the last frame or zero, and the frames it may hold (its opening
        # delimiter lost, or changed into the run's first byte).
        self._run = bytearray()
        self._shadows = (_Blocks(0), _Blocks(1))
        #: damaged candidates dropped so far
        self.dropped = 0

    @property
    def holding(self) -> bool:
        """Whether bytes that may be a frame's are held without having made one: a
        candidate's, or text that starts as a message does (an array of 2 to 5). When
        the line goes quiet so, a damaged frame lost a delimiter too (console text is
        ASCII: it is never held so)."""
        if self._in_frame:
            return bool(self._buffer)
        prefix = cobs_decode_prefix(bytes(self._run[:8]), 1) if self._run else b""
        return bool(prefix) and 0x92 <= prefix[0] <= 0x95

    def discard(self) -> None:
        """Drop what :attr:`holding` holds, as a damaged frame (its sender was asked for it
        again): the zero that ends it later then ends an empty candidate, not a second
        damaged one."""
        if self.holding:
            self.dropped += 1
        if self._in_frame:
            self._open()
        else:
            self._new_run()

    def _open(self) -> None:
        self._in_frame = True
        self._buffer.clear()
        self._blocks = _Blocks()

    def _new_run(self) -> None:
        self._run.clear()
        self._shadows = (_Blocks(0), _Blocks(1))

    def feed(self, data: bytes) -> list[Frame | ConsoleText | Damaged]:
        events: list[Frame | ConsoleText | Damaged] = []
        text = bytearray()

        def deliver(body: bytes) -> None:
            if text:
                events.append(ConsoleText(bytes(text)))
                text.clear()
            events.append(Frame(body))
            self._after_frame = True
            self._new_run()

        i = 0
        n = len(data)
        while i < n:
            if self._after_frame:
                self._after_frame = False
                if data[i] == 0:
                    i += 1  # the closing delimiter of the frame delivered at its last block
                    continue
            zero = data.find(b"\x00", i)
            piece = data[i:] if zero < 0 else data[i:zero]
            if not self._in_frame:
                old_len = len(self._run)
                found = None
                if old_len <= self._limit:  # longer is no frame: console text alone
                    self._run += piece
                    for shadow in self._shadows:
                        end = shadow.advance(self._run, self.max_frame)
                        if end is not None:
                            found = (shadow, end)
                            break
                if found is not None:
                    # A frame whose opening delimiter was lost or changed. Its bytes went
                    # out as text as they came, as the agent's decoder passes each byte on.
                    shadow, end = found
                    text += piece[: end - old_len]
                    i += end - old_len
                    deliver(shadow.body())
                    continue
                text += piece
                if zero < 0:
                    break
                i = zero + 1
                prefix = cobs_decode_prefix(bytes(self._run)) if self._run else b""
                self._new_run()
                self._open()
                if prefix and 0x92 <= prefix[0] <= 0x95:
                    # Text that starts as a message does (an array of 2 to 5) and is no
                    # frame: a damaged frame that lost its opening delimiter too.
                    self.dropped += 1
                    if self.report_damage:
                        if text:
                            events.append(ConsoleText(bytes(text)))
                            text.clear()
                        events.append(Damaged(prefix))
                continue
            old_len = len(self._buffer)
            self._buffer += piece
            if len(self._buffer) > self._limit:
                # Too long for a frame: it was text after a lost delimiter.
                text += self._buffer
                self._buffer.clear()
                self._in_frame = False
                self._new_run()
                if zero < 0:
                    break
                i = zero  # this zero may open a frame
                continue
            end = self._blocks.advance(self._buffer, self.max_frame)
            if end is not None:
                # A whole frame at a block's end: delivered now, its closing zero or not.
                self._in_frame = False
                i += end - old_len
                deliver(self._blocks.body())
                continue
            if zero < 0:
                break
            i = zero + 1
            candidate = bytes(self._buffer)
            self._open()  # the closing zero opens the next candidate
            if not candidate:
                continue  # two zeros in a row: still between delimiters
            # Not a frame at any block's end: damaged.
            self.dropped += 1
            if self.report_damage:
                if text:
                    events.append(ConsoleText(bytes(text)))
                    text.clear()
                events.append(Damaged(cobs_decode_prefix(candidate)))
        if text:
            events.append(ConsoleText(bytes(text)))
        return events


# -- messages ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    id: int
    method: str
    params: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply: ``error`` is None or (code, message, address or None)."""

    id: int
    error: tuple[int, str, int | None] | None
    result: Any


def _pack(obj: Any) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def encode_request(request_id: int, method: str, params: tuple[Any, ...] | list[Any] = ()) -> bytes:
    """The msgpack body of a request."""
    if not 0 <= request_id <= 0xFFFFFFFF:
        raise WireError(f"request id {request_id} is not a 32-bit unsigned integer")
    return _pack([MSG_REQUEST, request_id, method, list(params)])


def encode_reply(
    request_id: int,
    result: Any = None,
    error: tuple[int, str] | tuple[int, str, int] | None = None,
) -> bytes:
    """The msgpack body of a reply (what the agent sends; used by tests and fakes)."""
    return _pack([MSG_REPLY, request_id, list(error) if error else None, result])


def decode_message(body: bytes) -> list[Any]:
    try:
        message = msgpack.unpackb(body, raw=False, strict_map_key=False, use_list=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise WireError(f"not a msgpack message: {exc}") from exc
    if not isinstance(message, list) or len(message) != 4 or message[0] not in (0, 1):
        raise WireError("not a [type, id, ...] message of 4 elements")
    if not isinstance(message[1], int) or not 0 <= message[1] <= 0xFFFFFFFF:
        raise WireError("message id is not a 32-bit unsigned integer")
    return message


def decode_request(body: bytes) -> Request:
    message = decode_message(body)
    if message[0] != MSG_REQUEST:
        raise WireError("expected a request, got a reply")
    _, request_id, method, params = message
    if not isinstance(method, str) or not isinstance(params, list):
        raise WireError("request method must be a string and params an array")
    return Request(request_id, method, tuple(params))


def decode_reply(body: bytes) -> Reply:
    message = decode_message(body)
    if message[0] != MSG_REPLY:
        raise WireError("expected a reply, got a request")
    _, request_id, error, result = message
    if error is None:
        return Reply(request_id, None, result)
    if (
        not isinstance(error, list)
        or len(error) not in (2, 3)
        or not isinstance(error[0], int)
        or not isinstance(error[1], str)
        or (len(error) == 3 and not isinstance(error[2], int))
    ):
        raise WireError("reply error must be [code, message] or [code, message, address]")
    address = error[2] if len(error) == 3 else None
    return Reply(request_id, (error[0], error[1], address), result)


# -- the link (version 2): NAKs and chunks ------------------------------------------


@dataclass(frozen=True, slots=True)
class Nak:
    """The agent got a damaged frame: ``id`` is its id when ``known``, else the one it expects."""

    id: int
    known: bool


@dataclass(frozen=True, slots=True)
class Chunk:
    """``data`` is the reply body's bytes at ``offset`` of ``total``."""

    id: int
    offset: int
    total: int
    data: bytes


def encode_nak(request_id: int, offset: int = 0, size: int = 0) -> bytes:
    """Host to agent: the frame of reply ``request_id`` at ``offset`` came damaged."""
    return _pack([MSG_NAK, request_id, offset, size])


def encode_ack(request_id: int, offset: int, size: int) -> bytes:
    """Host to agent: the chunk before ``offset`` came intact; send at most ``size`` more."""
    return _pack([MSG_ACK, request_id, offset, size])


def encode_chunk(request_id: int, offset: int, total: int, data: bytes) -> bytes:
    """Agent to host (what the agent sends; used by tests and fakes)."""
    return _pack([MSG_CHUNK, request_id, offset, total, data])


def damaged_id(prefix: bytes) -> tuple[int, bool] | None:
    """The ``[type, id`` a damaged frame's first bytes show, as (id, True); None when
    they do not start like a message (text after damage)."""
    if not prefix or not 0x92 <= prefix[0] <= 0x95:
        return None
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(prefix[1:])
    try:
        kind, request_id = unpacker.unpack(), unpacker.unpack()
    except Exception:  # truncated or garbage: msgpack raises several kinds
        return (0, False)
    if (
        isinstance(kind, int)
        and 0 <= kind <= MSG_CHUNK
        and isinstance(request_id, int)
        and 0 <= request_id <= 0xFFFFFFFF
    ):
        return (request_id, True)
    return (0, False)


def decode_incoming(body: bytes) -> Reply | Nak | Chunk:
    """What the agent sends: a reply, a NAK or a chunk; WireError otherwise."""
    try:
        message = msgpack.unpackb(body, raw=False, strict_map_key=False, use_list=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise WireError(f"not a msgpack message: {exc}") from exc
    if isinstance(message, list) and message and message[0] == MSG_NAK and len(message) == 3:
        request_id, known = message[1], message[2]
        if isinstance(request_id, int) and 0 <= request_id <= 0xFFFFFFFF:
            return Nak(request_id, bool(known))
        raise WireError("NAK id is not a 32-bit unsigned integer")
    if isinstance(message, list) and message and message[0] == MSG_CHUNK and len(message) == 5:
        _, request_id, offset, total, data = message
        if (
            isinstance(request_id, int)
            and isinstance(offset, int)
            and isinstance(total, int)
            and isinstance(data, bytes)
            and 0 <= offset <= total
            and offset + len(data) <= total
        ):
            return Chunk(request_id, offset, total, data)
        raise WireError("chunk is not [4, id, offset, total, bin] within its total")
    return decode_reply(body)
