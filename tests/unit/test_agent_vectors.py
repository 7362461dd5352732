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

from protocols.agent_wire import (
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
            [str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
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
