"""The session's re-walk between two stops (issue 16, incremental refresh), on the Linux
capture as a target (tests/tui/fakes.py: MemoryTarget, simulated run control).

Unchanged tables are read again, in bulk (runs of adjacent pages in one request), compared
with the bytes they were decoded from, and not decoded again: the very same leaf arrays and
ranges come back. A changed entry gives what a fresh session walks.
"""

from __future__ import annotations

from kinspect.inspector.session import Session
from kinspect.inspector.x86.paging import LeafSequence
from tests.tui.fakes import MemoryTarget


def stop_again(session: Session) -> None:
    session.resume()
    session.stop()


def test_an_unchanged_map_is_read_in_bulk_and_not_decoded_again():
    target = MemoryTarget()
    session = Session(target)
    space, ranges = session.address_space(), session.ranges()
    first_reads = target.reads
    assert len(space.leaves) == 74251 and len(ranges) == 65775
    assert first_reads < 109  # each level's tables in runs of adjacent pages
    stop_again(session)
    target.reads = 0
    again = session.address_space()
    assert again is not space and again.arrays is space.arrays
    assert session.ranges() is ranges
    assert 0 < target.reads <= 21  # the 109 pages lie in 21 runs of adjacent pages
    assert isinstance(again.leaves, LeafSequence)


def test_a_changed_entry_is_walked_as_a_fresh_session_walks_it():
    target = MemoryTarget()
    session = Session(target)
    before = session.ranges()
    text = 0xFFFFFFFF81000000
    step = session.translate(text).steps[-1]
    stop_again(session)
    target.write_entry(step.entry_address, step.entry.raw | 0x2)  # kernel text made writable
    after = session.ranges()
    fresh = Session(target).ranges()
    assert after == fresh and after != before
    assert next(r for r in after if r.start == text).permissions.writable
    assert not next(r for r in before if r.start == text).permissions.writable
    assert session.aliases(0x1000123) == Session(target).aliases(0x1000123)
