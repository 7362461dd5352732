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


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))
