"""Pilot tests drive the app on an in-memory Linux 6.1 capture (tests/tui/fakes.py)."""

from __future__ import annotations

import asyncio

import pytest

from kinspect.inspector.session import Session

from .fakes import MemoryTarget, memory_session


@pytest.fixture(scope="session")
def truth() -> Session:
    """A second, independent session on the same capture: what the app must agree with."""
    session = Session(MemoryTarget())
    session.ranges()
    return session


@pytest.fixture
def session() -> Session:
    return memory_session()


#: A pilot test's bound on a hang. A live one (a remap applied, verified and undone) took
#: over 60 s on a 2-core machine with two busy loops, a second test worker and other jobs.
PILOT_TIMEOUT = 240


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, PILOT_TIMEOUT))
