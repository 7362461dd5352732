"""The remap journal scoped to a kernel instance, locked while written, and ``remap undo``'s
newest-first semantics, on host-built agents (two "boots" that differ by their nonce)."""

from __future__ import annotations

import argparse
import fcntl
import json
import threading
import time

import pytest

from kinspect.inspector.commands import Context, registry
from kinspect.inspector.commands.remap import _change
from kinspect.inspector.errors import InspectorError
from kinspect.inspector.remap.apply import Remapper
from kinspect.inspector.remap.journal import Journal, kernel_identity
from kinspect.inspector.targets.agent import AgentTarget

from .agent_host import HostAgent, host_tools, write_image
from .ptbuilder import NX, RW, P, PageTables
from .test_remap_host import STACK, check_closed

SPARE = 0xFFFFD00000000000


def boot(tmp_path, name: str, nonce: int | None) -> HostAgent:
    """One "boot" of a kernel: the host agent on fresh tables, with this boot's nonce."""
    pt = PageTables(4)
    pt.memory.ram_size = 1 << 30
    pt.map(STACK - 0x1000, 0x200000, flags=P | RW | NX)
    pt.map(STACK, 0x201000, flags=P | RW | NX)
    image = tmp_path / f"image-{name}"
    write_image(image, pt.memory, ram_size=pt.memory.ram_size, cr3=pt.root)
    return HostAgent(host_tools()["host_agent"], image, boot_nonce=nonce)


@pytest.fixture
def two_boots(tmp_path):
    hosts = [boot(tmp_path, "a", 0x1111), boot(tmp_path, "b", 0x2222)]
    targets = [AgentTarget(h.transport, timeout=5) for h in hosts]
    yield targets
    for t, h in zip(targets, hosts, strict=True):
        t.close()
        check_closed(h)


def map_one(remapper: Remapper, offset: int) -> None:
    plan = remapper.plan_map(SPARE + offset, 0x300000 + offset, 0x1000, flags=RW | NX)
    (report,) = remapper.apply(plan)
    assert report.verified


def undo_args(**kw) -> argparse.Namespace:
    return argparse.Namespace(
        **{"remap_command": "undo", "seq": None, "all": False, "force": False, "json": False, **kw}
    )


def run_undo(remapper, *, answer: bool, **kw) -> tuple[object, list[str], list[str]]:
    lines: list[str] = []
    asked: list[str] = []

    def confirm(question: str) -> bool:
        asked.append(question)
        return answer

    context = Context(
        undo_args(**kw), None, registry(), emit=lines.append, warn=lines.append, confirm=confirm
    )
    result = _change(context, None, remapper, "remap undo", hello=None)
    return result, lines + [result.text or ""], asked


def test_the_agent_reports_its_boot_nonce_and_the_identity_falls_back_to_cr3(tmp_path):
    assert kernel_identity({"boot_nonce": 0x1111}) == "boot 0x0000000000001111"
    assert kernel_identity({"boot_nonce": None}, {"cr3": 0x5000}) == "cr3 0x5000, build unknown"
    assert kernel_identity({}, {"cr3": 0x5000}, "ab12") == "cr3 0x5000, build ab12"
    host = boot(tmp_path, "none", None)
    target = AgentTarget(host.transport, timeout=5)
    try:
        assert target.info["boot_nonce"] is None  # the port supplies none
        remapper = Remapper(target, Journal.open(tmp_path / "j.jsonl"))
        assert remapper.kernel == f"cr3 {target.agent_registers()['cr3']:#x}, build unknown"
    finally:
        target.close()
        check_closed(host)


def test_steps_of_another_kernel_neither_block_nor_appear(two_boots, tmp_path):
    path = tmp_path / "journal.jsonl"
    a, b = two_boots
    assert a.info["boot_nonce"] == 0x1111 and b.info["boot_nonce"] == 0x2222
    on_a = Remapper(a, Journal.open(path))
    map_one(on_a, 0)
    map_one(on_a, 0x1000)
    # A's session never ended (as after a crash): unscoped, its steps would block as orphans.
    assert [s.seq for s in Journal.open(path).orphaned()] == [1, 2]
    on_b = Remapper(b, Journal.open(path))
    assert on_b.journal.kernel == "boot 0x0000000000002222"
    assert on_b.journal.open_steps() == [] and on_b.journal.orphaned() == []
    map_one(on_b, 0)  # not blocked by A's open steps
    assert [s.seq for s in on_b.journal.open_steps()] == [3]
    everything = on_b.journal.open_steps(all_kernels=True)
    assert [(s.seq, on_b.journal.kernel_of(s)) for s in everything] == [
        (1, "boot 0x0000000000001111"),
        (2, "boot 0x0000000000001111"),
        (3, "boot 0x0000000000002222"),
    ]
    # Undo on B takes B's step only; A's stay open, for A.
    result, text, asked = run_undo(on_b, answer=True)
    assert [s["seq"] for s in result.body["undone"]] == [3] and asked == []
    assert [s.seq for s in Journal.open(path).open_steps()] == [1, 2]


def test_undo_takes_the_newest_and_asks_before_the_rest(two_boots, tmp_path):
    a, _b = two_boots
    remapper = Remapper(a, Journal.open(tmp_path / "journal.jsonl"))
    for i in range(3):
        map_one(remapper, i * 0x1000)
    result, text, asked = run_undo(remapper, answer=False)
    assert [s["seq"] for s in result.body["undone"]] == [3]
    assert asked == ["2 more open steps of this kernel: undo them too? [y/N] "]
    assert result.body["left"] == 2
    assert "undone: #3 map" in text[0]
    assert "2 open steps left (`kinspect remap undo --all` undoes them)" in text[-1]
    result, _text, asked = run_undo(remapper, answer=True)
    assert [s["seq"] for s in result.body["undone"]] == [2, 1] and len(asked) == 1
    assert result.body["left"] == 0 and a.walk_ranges()[0].start == STACK - 0x1000


def test_undo_all_takes_every_open_step_without_asking(two_boots, tmp_path):
    a, _b = two_boots
    remapper = Remapper(a, Journal.open(tmp_path / "journal.jsonl"))
    for i in range(3):
        map_one(remapper, i * 0x1000)
    result, _text, asked = run_undo(remapper, answer=False, all=True)
    assert [s["seq"] for s in result.body["undone"]] == [3, 2, 1] and asked == []
    map_one(remapper, 0)
    with pytest.raises(InspectorError, match="no open step #1 of this kernel"):
        run_undo(remapper, answer=False, seq=[1])
    result, _text, asked = run_undo(remapper, answer=False, seq=[4])
    assert [s["seq"] for s in result.body["undone"]] == [4] and asked == []


def test_two_writers_never_take_one_step_number(tmp_path):
    path = tmp_path / "journal.jsonl"
    first, second = Journal.open(path, kernel="k"), Journal.open(path, kernel="k")
    first.start_session("a")
    second.start_session("b")
    seqs = []
    for _ in range(3):
        seqs.append(first.begin("map", [1], {"entries": []}, "one").seq)
        seqs.append(second.begin("map", [2], {"entries": []}, "two").seq)
    assert seqs == [1, 2, 3, 4, 5, 6]
    again = Journal.open(path, kernel="k")
    assert [s.seq for s in again.open_steps()] == [1, 2, 3, 4, 5, 6]


def test_appends_wait_for_the_lock(tmp_path):
    path = tmp_path / "journal.jsonl"
    journal = Journal.open(path, kernel="k")
    journal.start_session("a")
    held = threading.Event()

    def hold() -> None:
        with open(path, "ab") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            held.set()
            time.sleep(0.5)
            f.write(b'{"kind":"session","session":"other","pid":1,"target":"x","time":0}\n')
            f.flush()
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    thread = threading.Thread(target=hold)
    thread.start()
    assert held.wait(5)
    t0 = time.monotonic()
    journal.begin("map", [1], {"entries": []}, "one")
    waited = time.monotonic() - t0
    thread.join(5)
    assert waited >= 0.3, waited
    assert "other" in journal.sessions  # caught up with what the holder wrote
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["kind"] for r in lines] == ["session", "session", "step"]


def test_a_damaged_journal_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "journal.jsonl"
    journal = Journal.open(path)
    journal.start_session("a")
    journal.begin("map", [1], {"entries": []}, "one")
    with open(path, "a") as f:
        f.write("garbage that is not a record\n")
    with pytest.raises(InspectorError, match=r"line 3 is damaged \(not JSON"):
        Journal.open(path)
    path.write_text("\n".join(["x" * 40] * 5) + "\n")  # a file full of garbage
    with pytest.raises(InspectorError, match="line 1 is damaged"):
        Journal.open(path)
    with pytest.raises(InspectorError, match="Is a directory"):
        Journal.open(tmp_path)


def test_a_torn_last_line_is_skipped_and_the_next_record_starts_a_line(tmp_path):
    path = tmp_path / "journal.jsonl"
    journal = Journal.open(path, kernel="k")
    journal.start_session("a")
    with open(path, "a") as f:
        f.write('{"kind":"step","seq":9,"sta')  # a crash mid-write
    again = Journal.open(path, kernel="k")
    again.start_session("b")
    step = again.begin("map", [1], {"entries": []}, "one")
    assert step.seq == 1
    third = Journal.open(path, kernel="k")
    assert [s.seq for s in third.open_steps()] == [1]


def test_a_read_only_agent_offers_no_remaps_and_says_so_in_one_line(tmp_path):
    from kinspect.inspector.session import Session
    from kinspect.inspector.targets.base import Capability

    from .agent_host import build_host_tools

    binary = build_host_tools(tmp_path, ("-DAGENT_READONLY",))["host_agent"]
    pt = PageTables(4)
    pt.memory.ram_size = 1 << 30
    pt.map(STACK, 0x201000, flags=P | RW | NX)
    image = tmp_path / "image"
    write_image(image, pt.memory, ram_size=pt.memory.ram_size, cr3=pt.root)
    host = HostAgent(binary, image)
    session = Session(AgentTarget(host.transport, timeout=5))
    try:
        assert not session.target.has(Capability.REMAPS)
        assert "read-only build" in (session.remap_unavailable or "")
        with pytest.raises(InspectorError, match=r"^remap map: the agent is a read-only build"):
            registry().execute(session, f"remap map {SPARE:#x} 0x300000 4k --yes")
        with pytest.raises(InspectorError, match="read-only build"):
            registry().execute(session, "remap undo")
    finally:
        session.close()
        check_closed(host)
