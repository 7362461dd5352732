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

from kinspect.inspector.errors import TargetError

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
