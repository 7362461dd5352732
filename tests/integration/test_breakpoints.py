"""Breakpoints listed and deleted on the demo kernel, through QEMU's gdb stub.

The addresses are checked against binutils' ``nm`` on the same ELF; the hit
counts against the stops the stub reported (``bkptno`` and RIP at each
stop); gdb's own ``info breakpoints`` text says the same counts. A deleted
breakpoint is shown gone by running through the code it was on, several
times, and never stopping there.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from kinspect.inspector.errors import FaultError, TargetError

pytestmark = pytest.mark.integration

WAIT = 30.0


@pytest.fixture(scope="module")
def nm(demo_kernel) -> dict[str, int]:
    out = subprocess.run(["nm", demo_kernel], capture_output=True, text=True, check=True).stdout
    return {p[2]: int(p[0], 16) for p in (line.split() for line in out.splitlines()) if len(p) == 3}


def run_to_stop(session) -> tuple[int, int]:
    """Continue to the next breakpoint; its number and RIP."""
    session.resume()
    record = session.target.wait_for_stop(WAIT)
    assert record.get("reason") == "breakpoint-hit", record
    return int(record["bkptno"]), session.registers()["rip"]


def gdb_hits(session) -> dict[int, int]:
    """What gdb's CLI says: ``breakpoint already hit N time(s)`` under each number."""
    text = session.target._console("info breakpoints")
    hits: dict[int, int] = {}
    number = None
    for line in text.splitlines():
        if m := re.match(r"^(\d+)\s+breakpoint\s", line):
            number = int(m.group(1))
            hits[number] = 0
        elif (m := re.search(r"breakpoint already hit (\d+) time", line)) and number:
            hits[number] = int(m.group(1))
    return hits


def test_list_hit_counts_and_delete(session, nm):
    level3, work = nm["demo_level3"], nm["demo_work"]
    assert session.breakpoints() == []
    n_work, at_work = session.break_insert("demo_work")
    n_level3, at_level3 = session.break_insert("demo_level3")
    assert (at_work, at_level3) == (work, level3)

    listed = session.breakpoints()
    assert [(b.number, b.address, b.hits, b.enabled) for b in listed] == [
        (n_work, work, 0, True),
        (n_level3, level3, 0, True),
    ]
    assert listed[0].location.startswith("demo_work at ")
    assert listed[1].location.startswith("demo_level3 at ")
    assert "work.c:" in listed[1].location

    # demo_work calls demo_level1 -> 2 -> 3: the next stops alternate, work first
    seen = [run_to_stop(session) for _ in range(3)]
    expected_first = (n_work, work) if seen[0][0] == n_work else (n_level3, level3)
    assert seen[0] == expected_first  # attached anywhere: either may come first
    counts = {n_work: 0, n_level3: 0}
    for number, rip in seen:
        assert rip == {n_work: work, n_level3: level3}[number]
        counts[number] += 1
    assert {b.number: b.hits for b in session.breakpoints()} == counts
    assert gdb_hits(session) == counts

    # stop at demo_work, then delete its breakpoint
    while True:
        number, rip = run_to_stop(session)
        counts[number] += 1
        if number == n_work:
            break
    session.break_delete(n_work)
    listed = session.breakpoints()
    assert [(b.number, b.address, b.hits) for b in listed] == [(n_level3, level3, counts[n_level3])]
    assert n_work not in gdb_hits(session)

    # every further call of demo_work runs through it: only demo_level3 stops, each hit counted
    for extra in range(1, 5):
        assert run_to_stop(session) == (n_level3, level3)
        assert [b.hits for b in session.breakpoints()] == [counts[n_level3] + extra]

    with pytest.raises(TargetError, match=f"no breakpoint number {n_work}"):
        session.break_delete(n_work)


def test_listed_while_running_and_deleted_by_stopping(session, nm):
    number, address = session.break_insert("demo_level2")
    session.break_delete(number)  # stopped: nothing to hit
    number, address = session.break_insert("demo_level1")
    assert address == nm["demo_level1"]
    session.resume()
    record = session.target.wait_for_stop(WAIT)
    assert int(record["bkptno"]) == number
    session.break_insert("demo_level3")
    session.resume()
    record = session.target.wait_for_stop(WAIT)  # demo_level3, in the same call
    session.break_delete(number)
    # demo_level1 deleted, demo_level3 kept: the kernel runs; the list is gdb's, read as it runs
    session.resume()
    assert session.state == "running"
    (kept,) = session.breakpoints()
    assert kept.address == nm["demo_level3"] and kept.hits == 1
    assert session.state == "running"
    session.break_delete(kept.number)  # stops the kernel first, as break_insert does
    assert session.state == "stopped"
    assert session.breakpoints() == []


# -- stepping as debuggers do, watchpoints, writes, memory dumps (issue 18) ------------------
# Oracles: gdb's own next/finish from the same breakpoint in a second pass (a plain gdb
# batch session on the same stub), gdb's line table (info line), objdump of the demo
# kernel, and QEMU's monitor (x, xp, info registers) for what was written and dumped.


def objdump(demo_kernel) -> list[tuple[int, str]]:
    """(address, instruction text) of every instruction, in order."""
    out = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", demo_kernel],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = []
    for line in out.splitlines():
        if m := re.match(r"^([0-9a-f]{16}):\s+(.*)$", line):
            found.append((int(m.group(1), 16), m.group(2)))
    return found


def after(instructions, predicate) -> set[int]:
    """The addresses of the instructions that follow those ``predicate`` accepts."""
    return {
        instructions[i + 1][0]
        for i, (_address, text) in enumerate(instructions[:-1])
        if predicate(text)
    }


def gdb_batch(qemu, demo_kernel, *commands: str) -> str:
    """A plain gdb of our own on the stub (ours has disconnected): its CLI output."""
    argv = ["gdb", "-batch", "-nx", "-ex", f"file {demo_kernel}"]
    argv += ["-ex", f"target remote {qemu.gdb_endpoint}"]
    for command in (*commands, "disconnect"):
        argv += ["-ex", command]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    return done.stdout + done.stderr


def pcs(text: str) -> list[int]:
    return [int(v, 16) for v in re.findall(r"^\$\d+ = (0x[0-9a-f]+)", text, re.MULTILINE)]


def test_next_finish_nexti_land_where_gdbs_own_do(qemu, demo_kernel, nm):
    from kinspect.inspector import api

    level1 = nm["demo_level1"]
    session = api.attach(qemu.gdb_endpoint, elf=demo_kernel)
    try:
        number, _ = session.break_insert("demo_level1")
        session.resume()
        assert session.target.wait_for_stop(WAIT).get("reason") == "breakpoint-hit"
        assert session.registers()["rip"] == level1
        session.break_delete(number)
        ours = []
        for step in ("next", "next", "finish", "nexti"):
            if step == "finish":
                record = session.finish(timeout=WAIT)
                assert record.get("reason") == "function-finished", record
            else:
                record = session.next(line=step == "next", timeout=WAIT)
                assert record.get("reason") == "end-stepping-range", record
            ours.append(session.registers()["rip"])
        assert session.breakpoints() == []
    finally:
        session.close(resume=False)  # stays stopped: gdb's own pass takes the stub

    text = gdb_batch(
        qemu,
        demo_kernel,
        f"break *{level1:#x}",
        "continue",
        "delete",
        "next",
        "p/x $pc",
        "next",
        "p/x $pc",
        "finish",
        "p/x $pc",
        "nexti",
        "p/x $pc",
    )
    assert pcs(text) == ours, text
    # and against sources that do not step at all: next lands on the first address of a
    # line in gdb's line table, finish right after demo_work's call of demo_level1
    code = objdump(demo_kernel)
    calls = after(code, lambda t: t.startswith("call") and "<demo_level1>" in t)
    assert ours[2] in calls and nm["demo_work"] < ours[2] < nm["demo_work"] + 0x40
    lines = gdb_batch(qemu, demo_kernel, *(f"info line *{pc:#x}" for pc in ours[:2]))
    for pc in ours[:2]:
        assert re.search(rf"starts at address {pc:#x} ", lines), lines
    assert level1 < ours[0] < ours[1] < nm["demo_work"]  # two lines further in demo_level1


def test_until_and_a_watchpoint_stop_at_the_writing_instruction(session, demo_kernel, nm):
    code = objdump(demo_kernel)
    stores = after(code, lambda t: re.search(r",0x[0-9a-f]+\(%rip\)\s+# [0-9a-f]+ <demo_state>", t))
    assert len(stores) == 3  # demo_level3's, demo_level2's and demo_level1's stores

    record = session.until("demo_level2", timeout=WAIT)
    assert record.get("reason") == "breakpoint-hit"
    assert session.registers()["rip"] == nm["demo_level2"]
    assert session.breakpoints() == []  # the temporary breakpoint went with its stop

    # an address the kernel never runs again (kernel_main's entry): stopped where it is
    # after --wait, and the temporary breakpoint goes with that stop
    with pytest.raises(TargetError, match=r"until kernel_main did not stop within 1 s"):
        session.until("kernel_main", timeout=1.0)
    assert session.state == "stopped" and session.breakpoints() == []

    with pytest.raises(TargetError, match="not 8-byte aligned"):
        session.watch(f"{nm['demo_state'] + 4:#x}", "w", 8)
    with pytest.raises(TargetError, match="1, 2, 4 or 8 bytes"):
        session.watch("demo_state", "w", 16)
    number, address = session.watch("demo_state", "w", 8)
    assert address == nm["demo_state"]
    (listed,) = session.breakpoints()
    assert (listed.number, listed.kind) == (number, "hw watchpoint")
    seen = set()
    for hit in range(1, 5):
        session.resume()
        record = session.wait_for_stop(WAIT)
        assert record.get("reason") == "watchpoint-trigger", record
        rip = session.registers()["rip"]
        # x86 data breakpoints are traps: RIP is the instruction after the store
        assert rip in stores, (hex(rip), sorted(map(hex, stores)))
        seen.add(rip)
        new = int.from_bytes(session.read_virtual(address, 8), "little")
        assert int(record["value"]["new"]) == new
        assert [b.hits for b in session.breakpoints()] == [hit]
    assert len(seen) >= 2  # level3's store, then level2's: each where it writes
    session.break_delete(number)
    assert session.breakpoints() == []


def monitor_registers(qemu) -> dict[str, int]:
    text = qemu.monitor("info registers")
    return {k.lower(): int(v, 16) for k, v in re.findall(r"\b(R[A-Z0-9]+)=([0-9a-f]{16})", text)}


def monitor_bytes(qemu, command: str) -> bytes:
    """The bytes of a monitor ``x /Nxb`` or ``xp /Nxb``; Cannot access: where it stopped."""
    text = qemu.monitor(command)
    out = bytearray()
    for line in text.splitlines():
        if "Cannot access" in line:
            break
        if ":" in line:
            out += bytes(int(v, 16) for v in line.split(":", 1)[1].split())
    return bytes(out)


def test_set_register_and_write_memory_read_back_through_qemus_monitor(
    session, qemu, tmp_path, monkeypatch
):
    from kinspect.inspector.writes import read_writes

    monkeypatch.setenv("KINSPECT_WRITES_LOG", str(tmp_path / "writes.log"))
    session.stop()
    regs = dict(session.registers())
    old_rax = session.set_register("rax", 0x1122334455667788)
    assert old_rax == regs["rax"]
    assert monitor_registers(qemu)["rax"] == 0x1122334455667788
    session.set_register("rax", old_rax)
    assert monitor_registers(qemu)["rax"] == old_rax

    target = regs["rsp"] - 0x400  # below the stack pointer: nothing the kernel uses now
    old = session.write_memory(target, bytes.fromhex("deadbeefcafef00d"))
    assert monitor_bytes(qemu, f"x /8xb {target:#x}") == bytes.fromhex("deadbeefcafef00d")
    physical = session.translate(target).pa
    session.write_memory(physical, b"\x5a\xa5", physical=True)
    assert monitor_bytes(qemu, f"xp /2xb {physical:#x}") == b"\x5a\xa5"
    assert monitor_bytes(qemu, f"x /8xb {target:#x}")[:2] == b"\x5a\xa5"
    session.write_memory(target, old)
    with pytest.raises(FaultError, match="non-canonical"):
        session.write_memory(0x0000800000000000, b"\x00")
    kinds = [(r.kind, r.where) for r in read_writes()]
    assert kinds == [
        ("register", "rax"),
        ("register", "rax"),
        ("virtual", target),
        ("physical", physical),
        ("virtual", target),
    ]


def test_mem_and_phys_dumps_equal_qemus_monitor(session, qemu, nm):
    from kinspect.inspector.commands import registry

    session.stop()
    state = nm["demo_state"]
    result = registry().execute(session, f"mem {state:#x} 64 --json")
    assert result.status == 0
    data = bytes.fromhex(result.body["data"])
    assert data == monitor_bytes(qemu, f"x /64xb {state:#x}")
    assert result.text.splitlines()[0].startswith(f"{state:#018x}: ")
    physical = session.translate(state).pa
    result = registry().execute(session, f"phys {physical:#x} 48")
    assert bytes.fromhex(result.body["data"]) == monitor_bytes(qemu, f"xp /48xb {physical:#x}")
    assert bytes.fromhex(result.body["data"])[:16] == data[:16]

    # into the stack's guard page: what is readable, then the first unreadable byte exactly
    rsp = session.registers()["rsp"]
    stack = next(r for r in session.ranges() if r.start <= rsp < r.end)
    low, top = stack.start, stack.end
    assert monitor_bytes(qemu, f"x /16xb {low - 0x10:#x}") == b""  # the monitor cannot either
    result = registry().execute(session, f"mem {low - 0x10:#x} 0x30")
    assert result.status == 1 and result.body["unreadable"] == low - 0x10
    shown = monitor_bytes(qemu, f"x /32xb {top - 0x10:#x}")
    assert len(shown) == 16  # readable up to the top of the stack, not past it
    result = registry().execute(session, f"mem {top - 0x10:#x} 0x20")
    assert bytes.fromhex(result.body["data"]) == shown
    assert result.body["unreadable"] == top and f"{top:#x} is unreadable" in result.error
