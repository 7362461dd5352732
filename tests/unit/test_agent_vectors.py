"""The shared byte vectors (protocols/agent_vectors.json), through both codecs.

The Python codec (protocols/agent_wire.py) and the C codec the agent runs
(kernel-agent/agent/, built for the host with ASan/UBSan) must give the
same bytes for the same vectors.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import msgpack
import pytest

from kinspect.protocols.agent_wire import (
    ConsoleText,
    Frame,
    FrameDecoder,
    WireError,
    cobs_decode,
    cobs_encode,
    crc32,
    encode_frame,
    unframe,
)

from .agent_host import host_tools

VECTORS = json.loads(
    (Path(__file__).resolve().parents[2] / "protocols" / "agent_vectors.json").read_text()
)


def canonical_text(value) -> str:
    """The same rendering as codec_tool's mpdump."""
    if value is None:
        return "nil"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bytes):
        return "b:" + value.hex()
    if isinstance(value, list):
        return "[" + ",".join(canonical_text(v) for v in value) + "]"
    return (
        "{" + ",".join(f"{canonical_text(k)}:{canonical_text(v)}" for k, v in value.items()) + "}"
    )


class CodecTool:
    def __init__(self, binary: Path) -> None:
        self.process = subprocess.Popen(
            [str(binary)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            errors="strict",
        )

    def ask(self, command: str, data: str) -> list[str]:
        self.process.stdin.write(f"{command} {data}\n")
        self.process.stdin.flush()
        lines = [self.process.stdout.readline().rstrip("\n")]
        if command == "feed":
            while not lines[-1].startswith("end"):
                lines.append(self.process.stdout.readline().rstrip("\n"))
        return lines

    def close(self) -> None:
        self.process.stdin.close()
        assert self.process.wait(timeout=10) == 0


@pytest.fixture(scope="module")
def c_codec():
    tool = CodecTool(host_tools()["codec_tool"])
    yield tool
    tool.close()


def test_vectors_cover_every_section():
    for section in ("crc32", "cobs", "cobs_invalid", "messages", "frames", "streams"):
        assert VECTORS[section], section
    # The published CRC-32 check value is among them.
    assert {"data": b"123456789".hex(), "crc": "cbf43926"} in VECTORS["crc32"]


# -- Python codec ---------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS["crc32"], ids=lambda v: v["data"][:16])
def test_python_crc32(vector):
    assert f"{crc32(bytes.fromhex(vector['data'])):08x}" == vector["crc"]


@pytest.mark.parametrize("vector", VECTORS["cobs"], ids=lambda v: v["data"][:16])
def test_python_cobs(vector):
    data, encoded = bytes.fromhex(vector["data"]), bytes.fromhex(vector["encoded"])
    assert cobs_encode(data) == encoded
    assert cobs_decode(encoded) == data


@pytest.mark.parametrize("encoded", VECTORS["cobs_invalid"])
def test_python_cobs_rejects(encoded):
    with pytest.raises(WireError):
        cobs_decode(bytes.fromhex(encoded))


@pytest.mark.parametrize("vector", VECTORS["messages"], ids=lambda v: v["name"])
def test_python_messages(vector):
    body = bytes.fromhex(vector["msgpack"])
    value = msgpack.unpackb(body, raw=False, strict_map_key=False)
    assert canonical_text(value) == vector["text"]
    assert msgpack.packb(value, use_bin_type=True) == body


@pytest.mark.parametrize("vector", VECTORS["frames"], ids=lambda v: v["body"][:16])
def test_python_frames(vector):
    body, frame = bytes.fromhex(vector["body"]), bytes.fromhex(vector["frame"])
    assert encode_frame(body) == frame
    assert unframe(frame[1:-1]) == body


@pytest.mark.parametrize("vector", VECTORS["streams"], ids=lambda v: v["name"])
def test_python_streams(vector):
    decoder = FrameDecoder()
    stream = bytes.fromhex(vector["stream"])
    events = [e for i in range(len(stream)) for e in decoder.feed(stream[i : i + 1])]
    assert [e.body.hex() for e in events if isinstance(e, Frame)] == vector["frames"]
    assert b"".join(e.data for e in events if isinstance(e, ConsoleText)).hex() == vector["text"]
    assert decoder.dropped == vector["dropped"]


# -- the C codec -------------------------------------------------------------------


def test_c_crc32(c_codec):
    for vector in VECTORS["crc32"]:
        assert c_codec.ask("crc", vector["data"]) == [vector["crc"]]


def test_c_cobs(c_codec):
    for vector in VECTORS["cobs"]:
        assert c_codec.ask("cobs", vector["data"]) == [vector["encoded"]], vector
        assert c_codec.ask("uncobs", vector["encoded"]) == [vector["data"]], vector
    for encoded in VECTORS["cobs_invalid"]:
        assert c_codec.ask("uncobs", encoded) == ["error"], encoded


def test_c_messages(c_codec):
    for vector in VECTORS["messages"]:
        assert c_codec.ask("mpdump", vector["msgpack"]) == [vector["text"]], vector["name"]
        assert c_codec.ask("mpreenc", vector["msgpack"]) == [vector["msgpack"]], vector["name"]


def test_c_frames(c_codec):
    for vector in VECTORS["frames"]:
        assert c_codec.ask("frame", vector["body"]) == [vector["frame"]]


def test_c_streams(c_codec):
    for vector in VECTORS["streams"]:
        lines = c_codec.ask("feed", vector["stream"])
        frames = [line.split()[1] for line in lines if line.startswith("frame")]
        text = "".join(line.split()[1] for line in lines if line.startswith("text"))
        assert frames == vector["frames"], vector["name"]
        assert text == vector["text"], vector["name"]
        assert lines[-1] == f"end {vector['dropped']}", vector["name"]


def test_c_reader_rejects_truncated_and_reserved(c_codec):
    assert c_codec.ask("mpdump", "c1") == [" error"]  # 0xc1 is never used
    assert c_codec.ask("mpdump", "cd01") == [" error"]  # uint16 cut short
    assert c_codec.ask("mpdump", "dd0000ffff") == ["[ error"]  # array 32 longer than the input
    assert c_codec.ask("mpdump", "c4ff00") == [" error"]  # bin 8 longer than the input


# -- differential fuzzing: the C codec against the Python one ------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from kinspect.protocols.agent_wire import encode_request  # noqa: E402

_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@st.composite
def line_noise(draw):
    """Frames, text, garbage, zeros, and frames with a byte flipped or dropped, or a
    delimiter lost or changed into another value."""
    parts = []
    for _ in range(draw(st.integers(1, 6))):
        kinds = ["frame", "text", "garbage", "flip", "drop", "zeros"]
        kind = draw(
            st.sampled_from([*kinds, "delimiter-lost", "delimiter-changed", "opening-and-flip"])
        )
        if kind == "text":
            parts.append(draw(st.binary(max_size=30)).replace(b"\x00", b""))
        elif kind == "garbage":
            parts.append(draw(st.binary(max_size=30)))
        elif kind == "zeros":
            parts.append(b"\x00" * draw(st.integers(1, 3)))
        else:
            frame = bytearray(encode_frame(draw(st.binary(min_size=1, max_size=300))))
            if kind == "opening-and-flip":  # damaged, and its opening delimiter lost
                frame[draw(st.integers(2, len(frame) - 2))] ^= 1 << draw(st.integers(0, 7))
                del frame[0]
            elif kind.startswith("delimiter"):
                i = draw(st.sampled_from([0, len(frame) - 1]))
                if kind == "delimiter-lost":
                    del frame[i]
                else:
                    frame[i] = draw(st.integers(1, 255))
            elif kind != "frame":
                i = draw(st.integers(1, len(frame) - 2))
                if kind == "flip":
                    frame[i] ^= 1 << draw(st.integers(0, 7))
                else:
                    del frame[i]
            parts.append(bytes(frame))
    return b"".join(parts)


@_FUZZ
@given(line_noise())
def test_c_decoder_agrees_with_python_on_any_line(c_codec, stream):
    decoder = FrameDecoder()
    events = decoder.feed(stream)
    lines = c_codec.ask("feed", stream.hex())
    c_frames = [line.split()[1] for line in lines if line.startswith("frame")]
    c_text = "".join(line.split()[1] for line in lines if line.startswith("text"))
    assert c_frames == [e.body.hex() for e in events if isinstance(e, Frame)]
    assert c_text == b"".join(e.data for e in events if isinstance(e, ConsoleText)).hex()
    assert lines[-1] == f"end {decoder.dropped}"


@_FUZZ
@given(st.binary(max_size=300))
def test_c_cobs_and_crc_agree_with_python(c_codec, data):
    assert c_codec.ask("crc", data.hex()) == [f"{crc32(data):08x}"]
    assert c_codec.ask("cobs", data.hex()) == [cobs_encode(data).hex()]
    try:
        expected = cobs_decode(data).hex()
    except WireError:
        expected = "error"
    assert c_codec.ask("uncobs", data.hex()) == [expected]


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters='"\\'),
        max_size=40,
    )
    | st.binary(max_size=300),
    lambda children: (
        st.lists(children, max_size=20)
        | st.dictionaries(st.text(alphabet="abcxyz", max_size=5), children, max_size=20)
    ),
    max_leaves=30,
)


@_FUZZ
@given(values)
def test_c_msgpack_reads_and_rewrites_what_python_writes(c_codec, value):
    body = msgpack.packb(value, use_bin_type=True)
    assert c_codec.ask("mpdump", body.hex()) == [canonical_text(value)]
    assert c_codec.ask("mpreenc", body.hex()) == [body.hex()]


@_FUZZ
@given(st.binary(max_size=200))
def test_c_msgpack_reader_survives_garbage(c_codec, data):
    """Any bytes: an answer or "error", never a crash (ASan/UBSan abort the tool)."""
    reply = c_codec.ask("mpdump", data.hex())
    assert len(reply) == 1
    assert c_codec.process.poll() is None


def test_request_encoding_is_what_the_agent_expects(c_codec):
    body = encode_request(0xDEADBEEF, "read_phys", (0x100000, 16))
    assert c_codec.ask("mpdump", body.hex()) == ['[0,3735928559,"read_phys",[1048576,16]]']
