"""Reads through a gdb stub in few commands: runs of contiguous requests, commands pipelined,
packets as large as the stub's PacketSize, halved when the stub refuses them; holes said at
the exact address. Against real gdb and a fake stub (tests/fake_stub.py), and the session's
level-by-level table prefetch against the Linux capture."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pygdbmi import gdbmiparser

from kinspect.inspector.errors import FaultError, TargetError
from kinspect.inspector.session import Session
from kinspect.inspector.targets.gdb import (
    GdbTarget,
    decode_memory_blocks,
    join_blocks,
    readable_prefix,
    slice_blocks,
)
from kinspect.inspector.targets.qemu_dump import plan_spans
from kinspect.inspector.x86.paging import collect_address_space
from kinspect.protocols.gdbmi import parse_record
from tests.fake_stub import FakeStub
from tests.qemu_view import capture_reader
from tests.tui.fakes import CR3, MODE, MemoryTarget

RELAY = Path(__file__).resolve().parent.parent / "fake_stub.py"
BASE = 0xFFFF888000000000  # the direct map of the fake stub's memory
PAGES = 48
HOLE = 20  # page 20 is not mapped; page 30 is mapped only up to 0x800


def _memory() -> dict[int, bytes]:
    data = bytes((i * 7 + i // 4096) & 0xFF for i in range(PAGES * 4096))
    return {
        BASE: data[: HOLE * 4096],
        BASE + (HOLE + 1) * 4096: data[(HOLE + 1) * 4096 : 30 * 4096 + 0x800],
        BASE + 31 * 4096: data[31 * 4096 :],
    }, data


MEMORY, DATA = _memory()


def page(n: int) -> bytes:
    return DATA[n * 4096 : (n + 1) * 4096]


# -- pure helpers ------------------------------------------------------------------------------


def test_runs_join_what_touches_up_to_the_limit_and_cut_what_is_larger():
    requests = [(0x3000, 0x1000), (0x1000, 0x1000), (0x2000, 0x1000), (0x9000, 0x10), (0x2800, 8)]
    assert plan_spans(requests, None, limit=0x10000) == [
        (0x1000, 0x3000, [1, 2, 4, 0]),
        (0x9000, 0x10, [3]),
    ]
    assert plan_spans(requests, None, limit=0x2000) == [
        (0x1000, 0x2000, [1, 2, 4]),
        (0x3000, 0x1000, [0]),
        (0x9000, 0x10, [3]),
    ]
    assert plan_spans([(0, 0x2800)], None, limit=0x1000) == [
        (0, 0x1000, [0]),
        (0x1000, 0x1000, [0]),
        (0x2000, 0x800, [0]),
    ]
    assert plan_spans([(5, 0)], None, limit=0x1000) == [(5, 0, [0])]


def test_blocks_around_a_hole():
    payload = {
        "memory": [
            {"begin": "0x1000", "offset": "0x0", "end": "0x1002", "contents": "0102"},
            {"begin": "0x1000", "offset": "0x2", "end": "0x1004", "contents": "0304"},
            {"begin": "0x2000", "offset": "0x0", "end": "0x2001", "contents": "ff"},
        ]
    }
    blocks = decode_memory_blocks(payload)
    assert blocks == [(0x1000, b"\1\2\3\4"), (0x2000, b"\xff")]
    assert readable_prefix(blocks, 0x1001, 8) == b"\2\3\4"
    assert slice_blocks(blocks, 0x1001, 3) == b"\2\3\4"
    assert slice_blocks(blocks, 0x1001, 4) is None  # runs into the hole
    assert slice_blocks(blocks, 0x1800, 1) is None
    assert join_blocks([(0x10, b"b"), (0x0F, b"a")]) == [(0x0F, b"ab")]
    assert decode_memory_blocks({"memory": [{"begin": "zz"}]}) == [] == decode_memory_blocks(None)


@pytest.mark.parametrize(
    "line",
    [
        '7^done,memory=[{begin="0x10",offset="0x0",end="0x12",contents="abcd"}]',
        '12^done,memory=[{begin="0x10",offset="0x0",end="0x12",contents="abcd"},'
        '{begin="0x20",offset="0x1",end="0x21",contents=""}]',
        "^done,memory=[]",
        '3^done,memory=[{begin="0x10",offset="0x0",end="0x12",contents="ab"},junk]',
        '4^error,msg="Unable to read memory."',
        '~"some console text\\n"',
        '*stopped,reason="signal-received",frame={addr="0x1"}',
    ],
)
def test_records_parse_as_pygdbmi_parses_them(line):
    assert parse_record(line) == gdbmiparser.parse_response(line)


# -- real gdb, a fake stub -------------------------------------------------------------------


@pytest.fixture
def stub(request):
    options = getattr(request, "param", {})
    fake = FakeStub(MEMORY, **options)
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture
def target(stub):
    found = GdbTarget(stub.endpoint, phys_base=BASE, physical="direct-map", timeout=20)
    try:
        yield found
    finally:
        found.close()


def _commands(target, monkeypatch) -> list[list[str]]:
    """Each pipeline gdb was handed, as its list of commands."""
    seen: list[list[str]] = []
    pipeline = target._mi.pipeline

    def recording(commands, **kwargs):
        seen.append(list(commands))
        return pipeline(commands, **kwargs)

    monkeypatch.setattr(target._mi, "pipeline", recording)
    return seen


def test_pages_read_in_one_pipeline_of_runs_in_the_stubs_packets(stub, target, monkeypatch):
    assert not target.is_qemu and target.physical == "direct-map"
    assert target.packet_size == 0x1000  # what qSupported said
    seen = _commands(target, monkeypatch)
    stub.packets.clear()
    wanted = [2, 3, 4, 5, 9, 11, 12, 40, 41]
    got = target.read_physical_many([(n * 4096, 4096) for n in wanted])
    assert got == [page(n) for n in wanted]
    assert len(seen) == 1  # one pipeline
    assert [c.split()[1:] for c in seen[0]] == [
        [hex(BASE + 2 * 4096), str(4 * 4096)],
        [hex(BASE + 9 * 4096), "4096"],
        [hex(BASE + 11 * 4096), str(2 * 4096)],
        [hex(BASE + 40 * 4096), str(2 * 4096)],
    ]
    # gdb cut the runs into packets of the most the stub takes: 0x1000 of hex, 0x800 bytes
    assert max(length for _, length in stub.reads) == 0x800
    assert len(stub.reads) == len(wanted) * 2


def test_a_hole_is_said_at_its_first_byte_and_spares_the_rest(target):
    got = target.read_physical_many([(n * 4096, 4096) for n in range(17, 33)])
    for n, found in zip(range(17, 33), got, strict=True):
        if n in (HOLE, 30):
            assert isinstance(found, FaultError)
            assert found.address == BASE + n * 4096 + (0x800 if n == 30 else 0)
        else:
            assert found == page(n)
    with pytest.raises(FaultError) as raised:
        target.read_physical(30 * 4096 + 0x10, 0x1000)
    assert raised.value.address == BASE + 30 * 4096 + 0x800
    assert target.read_physical(30 * 4096 + 0x10, 0x7F0) == page(30)[0x10:0x800]


@pytest.mark.parametrize("stub", [{"packet_size": 0x4000, "max_read": 0x200}], indirect=True)
def test_a_stub_that_refuses_the_packets_it_announced_is_read_in_smaller_ones(stub, target):
    assert target.packet_size == 0x4000
    wanted = list(range(0, 24)) + [30, 47]
    got = target.read_physical_many([(n * 4096, 4096) for n in wanted])
    for n, found in zip(wanted, got, strict=True):
        if n in (HOLE, 30):
            assert isinstance(found, FaultError), n
            assert found.address == BASE + n * 4096 + (0x800 if n == 30 else 0)
        else:
            assert found == page(n), n
    assert target.packet_size <= 0x400  # halved until the stub took the reads
    refused = [i for i, (_, length) in enumerate(stub.reads) if length > 0x200]
    assert refused and max(refused) < len(stub.reads) - 1  # then only reads it takes
    assert target.read_physical(47 * 4096, 4096) == page(47)


@pytest.mark.parametrize("stub", [{"packet_size": None}], indirect=True)
def test_a_stub_that_announces_no_packet_size_still_reads(stub, target):
    assert target.read_physical_many([(0, 8192), (HOLE * 4096, 8)])[0] == DATA[:8192]


def test_a_big_read_is_pipelined_in_chunks(target, monkeypatch):
    seen = _commands(target, monkeypatch)
    assert target.read_physical(0, HOLE * 4096) == DATA[: HOLE * 4096]
    assert [len(commands) for commands in seen] == [2]  # 80 KiB: two chunks, one pipeline


# -- a stub behind a pipe (`| command`) ---------------------------------------------------------


def test_a_piped_stub_reads_in_its_packets(stub):
    """gdb reads a piped command's stderr after every byte of the link while it is gdb's: the
    target gives gdb the command with its stderr in a file (see the next test); the
    command still talks to gdb on its stdin and stdout."""
    piped = GdbTarget(
        f"| {sys.executable} {RELAY} relay {stub.endpoint}",
        phys_base=BASE,
        physical="direct-map",
        timeout=20,
    )
    try:
        assert not piped.is_qemu and piped.packet_size == 0x1000
        stub.packets.clear()
        assert piped.read_physical_many([(0, 3 * 4096), (HOLE * 4096, 8)])[0] == DATA[: 3 * 4096]
        assert stub.reads[:6] == [(BASE + n * 0x800, 0x800) for n in range(6)]
    finally:
        piped.close()


def test_a_piped_stub_that_fails_says_what_its_command_said():
    """The command's stderr is kept apart from gdb's, so its last line ends the error."""
    with pytest.raises(TargetError) as raised:
        GdbTarget("| sh -c 'echo no stub on that line >&2; exit 3'", timeout=20)
    assert str(raised.value).startswith("cannot attach to | sh -c")
    assert str(raised.value).endswith("(the command said: no stub on that line)")


# -- the session: a level of tables a batch --------------------------------------------------


class BatchCounting(MemoryTarget):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.single = 0

    def read_physical_many(self, requests):
        self.batches.append(len(requests))
        return super().read_physical_many(requests)

    def read_physical(self, address, size):
        self.single += 1
        return super().read_physical(address, size)


def test_the_walk_reads_its_tables_a_level_at_a_time():
    target = BatchCounting()
    session = Session(target)
    space = session.address_space()
    expected = collect_address_space(capture_reader(target.pages), CR3, MODE)
    assert space.leaves == expected.leaves and space.problems == expected.problems
    # the root read by the walk, then each level below it in one batch
    assert len(target.batches) == MODE.levels - 1
    assert sum(target.batches) + 1 == target.single  # the default batch reads one by one...
    target.batches.clear()
    target.single = 0
    session.invalidate()
    session._tables.clear()
    session.address_space()
    # a re-walk: the last walk's tables in one batch first, and the walk asks for none
    assert target.batches[0] >= 1 and target.single == sum(target.batches)
