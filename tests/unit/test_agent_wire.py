"""The Python framing fed the way a real line delivers bytes: in any split,
with console text, garbage, dropped bytes and flipped bits in between.
Every intact frame is delivered; no damaged frame is."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kinspect.protocols.agent_wire import (
    DEFAULT_MAX_FRAME,
    ConsoleText,
    Damaged,
    Frame,
    FrameDecoder,
    WireError,
    cobs_decode,
    cobs_encode,
    decode_reply,
    decode_request,
    encode_frame,
    encode_reply,
    encode_request,
    max_encoded_size,
    unframe,
)

bodies = st.binary(min_size=1, max_size=600)
text = st.binary(max_size=80).map(lambda b: b.replace(b"\x00", b""))


def feed_in_pieces(decoder: FrameDecoder, data: bytes, cuts: list[int]) -> list:
    events = []
    last = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        events += decoder.feed(data[last:cut])
        last = cut
    events += decoder.feed(data[last:])
    return events


@given(st.binary(max_size=2000))
def test_cobs_round_trip_has_no_zero(data):
    encoded = cobs_encode(data)
    assert 0 not in encoded
    assert len(encoded) <= max_encoded_size(len(data))
    assert cobs_decode(encoded) == data


@given(
    st.lists(st.tuples(text, bodies), max_size=8),
    text,
    st.lists(st.integers(0, 10**6), max_size=12),
)
def test_frames_and_text_survive_any_split(items, tail, cuts):
    stream = b"".join(t + encode_frame(b) for t, b in items) + tail
    events = feed_in_pieces(FrameDecoder(), stream, cuts)
    assert [e.body for e in events if isinstance(e, Frame)] == [b for _, b in items]
    assert (
        b"".join(e.data for e in events if isinstance(e, ConsoleText))
        == b"".join(t for t, _ in items) + tail
    )


@st.composite
def damaged_streams(draw):
    """Frames, some damaged (bit flips, drops, inserted garbage), some intact."""
    frames = draw(st.lists(bodies, min_size=1, max_size=6))
    stream = bytearray()
    intact = []
    for body in frames:
        wire = bytearray(encode_frame(body))
        damage = draw(st.sampled_from(["none", "flip", "drop", "insert", "garbage-before"]))
        if damage == "flip":
            i = draw(st.integers(1, len(wire) - 2))
            wire[i] ^= 1 << draw(st.integers(0, 7))
            if wire[i] == 0:  # a flip that makes a delimiter splits the frame: still damaged
                pass
        elif damage == "drop":
            i = draw(st.integers(1, len(wire) - 2))
            del wire[i]
        elif damage == "insert":
            i = draw(st.integers(1, len(wire) - 2))
            original = bytes(wire)
            wire[i:i] = draw(st.binary(min_size=1, max_size=4).filter(lambda b: 0 not in b))
            if wire.startswith(original[:-1]):
                # the insertion left the frame whole, text after it before the closing zero
                # (e.g. "71 8f 00" + 8f at the 8f: "71 8f 8f 00"): the frame is delivered
                # as soon as its CRC ends, the extra byte is text
                damage = "text-after"
        elif damage == "garbage-before":
            stream += draw(st.binary(max_size=40))
        if damage in ("none", "garbage-before", "text-after"):
            intact.append(body)
        stream += wire
    return bytes(stream), intact, len(frames)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300)
@given(damaged_streams(), st.lists(st.integers(0, 10**6), max_size=10))
@example(
    (
        b"\x00\x01\x05\x8d\xef\x02\xd2\x00\x00\t\xdc\xa6Bo\xa1\xa9q\x8f\x8f\x00",
        [b"\x00", b"\xdc\xa6Bo"],
        2,
    ),
    [],
)
def test_every_intact_frame_and_no_damaged_one(case, cuts):
    stream, intact, _ = case
    events = feed_in_pieces(FrameDecoder(), stream, cuts)
    delivered = [e.body for e in events if isinstance(e, Frame)]
    # Intact frames arrive, in order; nothing else does (a damaged frame never
    # passes the CRC, so it cannot be delivered in any form).
    assert delivered == intact


def test_bytes_one_at_a_time_with_garbage():
    body = encode_request(5, "hello")
    stream = b"\x00\x00garbage\x00\xff\xfe" + encode_frame(body) + b"console\r\n"
    decoder = FrameDecoder()
    events = [e for i in range(len(stream)) for e in decoder.feed(stream[i : i + 1])]
    assert [e.body for e in events if isinstance(e, Frame)] == [body]
    assert b"".join(e.data for e in events if isinstance(e, ConsoleText)) == b"console\r\n"
    assert decoder.dropped == 2  # "garbage" and "\xff\xfe"


def test_overlong_candidate_is_console_text():
    """Text after a lost delimiter comes back as text once it is too long for a frame."""
    decoder = FrameDecoder(max_frame=64)
    text_ = b"x" * 200
    events = decoder.feed(b"\x00" + text_ + encode_frame(b"\x90"))
    assert b"".join(e.data for e in events if isinstance(e, ConsoleText)) == text_
    assert [e.body for e in events if isinstance(e, Frame)] == [b"\x90"]


def test_unframe_rejects():
    good = encode_frame(b"\x91\x01")[1:-1]
    assert unframe(good) == b"\x91\x01"
    flipped = bytearray(good)
    flipped[2] ^= 0x02
    for bad, reason in (
        (bytes(flipped), "CRC"),
        (good[:-1], "COBS"),
        (cobs_encode(b"\x01\x02"), "too short"),
        (cobs_encode(bytes(DEFAULT_MAX_FRAME + 1)), "longer"),
    ):
        with pytest.raises(WireError, match=reason):
            unframe(bad)


def test_messages_round_trip_and_reject():
    assert decode_request(encode_request(7, "read_phys", (0x1000, 16))).params == (0x1000, 16)
    reply = decode_reply(encode_reply(7, None, (4, "not mapped", 0xDEAD)))
    assert reply.error == (4, "not mapped", 0xDEAD) and reply.result is None
    assert decode_reply(encode_reply(9, b"\x01")).result == b"\x01"
    with pytest.raises(WireError):
        decode_reply(encode_request(1, "hello"))
    with pytest.raises(WireError):
        decode_request(b"\xc1")
    with pytest.raises(WireError):
        decode_reply(b"\x94\x01\x01\x92\x04\x05\xc0")  # error message is not a string
    with pytest.raises(WireError):
        encode_request(1 << 32, "hello")


@st.composite
def lost_delimiter_streams(draw):
    """Frames whose opening or closing delimiter is dropped or changed into another
    value (one of the two between a pair of frames at most), text between them."""
    bodies_ = draw(st.lists(bodies, min_size=1, max_size=6))
    stream = bytearray()
    previous_damaged = False
    for body in bodies_:
        wire = bytearray(encode_frame(body))
        choices = ["none", "drop-close", "change-close"]
        if not previous_damaged:
            choices += ["drop-open", "change-open"]
        damage = draw(st.sampled_from(choices))
        if damage in ("none", "drop-close", "change-close"):
            stream += draw(text)  # text before a frame that keeps its opening delimiter
        at = 0 if damage.endswith("open") else len(wire) - 1
        if damage.startswith("drop"):
            del wire[at]
        elif damage.startswith("change"):
            wire[at] = draw(st.integers(1, 255))
        previous_damaged = damage.endswith("close")
        stream += wire
    return bytes(stream), bodies_


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300)
@given(lost_delimiter_streams(), st.lists(st.integers(0, 10**6), max_size=10))
def test_a_lost_or_changed_delimiter_loses_no_frame(case, cuts):
    """The last frame too: a receiver never waits for a closing zero that will not come."""
    stream, bodies_ = case
    events = feed_in_pieces(FrameDecoder(), stream, cuts)
    assert [e.body for e in events if isinstance(e, Frame)] == bodies_


def test_a_frame_is_delivered_before_its_closing_delimiter():
    body = encode_reply(5, b"x" * 300)
    wire = encode_frame(body)
    decoder = FrameDecoder()
    assert decoder.feed(wire[:-1]) == [Frame(body)]  # the closing zero has not come
    assert decoder.feed(wire[-1:] + b"login: ") == [ConsoleText(b"login: ")]
    decoder = FrameDecoder()
    decoder.feed(wire)
    # A frame whose opening zero was lost, or changed (its bytes passed on as text first).
    assert decoder.feed(wire[1:-1]) == [ConsoleText(wire[1:-1]), Frame(body)]
    assert decoder.feed(b"\x7f" + wire[1:-1]) == [ConsoleText(b"\x7f" + wire[1:-1]), Frame(body)]
    assert decoder.feed(b"\x00login: ") == [ConsoleText(b"login: ")]


def test_a_damaged_frame_without_its_opening_delimiter_is_reported():
    """Text that decodes to a message's start and ends at a zero without being a frame is
    a damaged frame (both faults at once): reported for a NAK, not left to a wait."""
    wire = bytearray(encode_frame(encode_request(7, "read_phys", (0x1000, 16))))
    wire[6] ^= 0x10
    decoder = FrameDecoder(report_damage=True)
    events = decoder.feed(encode_frame(b"\x90") + bytes(wire[1:]))
    assert [type(e) for e in events] == [Frame, ConsoleText, Damaged] and decoder.dropped == 1
    assert decoder.feed(encode_frame(b"\x90") + b"ls\r\n\x00") == [
        Frame(b"\x90"),
        ConsoleText(b"ls\r\n"),  # text that ends at a zero stays text
    ]
