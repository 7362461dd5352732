"""What fetching the page-table map costs through the in-kernel agent (make bench).

Over a line paced to 115,200 baud (8N1: 11,520 bytes/s each way), against
reading the raw tables over the same line and walking them here. Figures
on a 2-core TCG machine: the agent's walk of the demo kernel (10 ranges,
663 leaves) is one request of ~20 bytes and a reply of ~270, about 25 ms;
the raw tables are 10 pages of 4 KiB plus framing, about 4 s. Unpaced
(QEMU's unix-socket serial), the agent's walk takes a few ms.
"""

from __future__ import annotations

import pytest

from kinspect.inspector.session import Session
from kinspect.inspector.targets.agent import AgentTarget
from kinspect.protocols.transports import PacedTransport, SocketTransport

BAUD = 115200


@pytest.fixture
def paced_agent(qemu):
    link = PacedTransport(SocketTransport.connect_unix(str(qemu.serial_socket)), BAUD)
    target = AgentTarget(link, timeout=10)
    target.stop()
    try:
        yield target
    finally:
        target.close()


@pytest.fixture
def agent(qemu):
    target = AgentTarget(f"unix:{qemu.serial_socket}", timeout=5)
    target.stop()
    try:
        yield target
    finally:
        target.close()


def _bytes(target, run):
    stats = target.client.stats
    sent, received = stats.bytes_sent, stats.bytes_received
    result = run()
    return result, stats.bytes_sent - sent, stats.bytes_received - received


def test_map_by_agent_walk_at_115200(benchmark, paced_agent):
    ranges, sent, received = _bytes(paced_agent, paced_agent.walk_ranges)
    benchmark.extra_info.update(bytes_sent=sent, bytes_received=received, ranges=len(ranges))
    result = benchmark.pedantic(paced_agent.walk_ranges, rounds=5, iterations=1)
    assert result == ranges and len(ranges) == 10
    assert received < 1000  # "a few hundred bytes"


def test_map_by_raw_tables_at_115200(benchmark, paced_agent):
    session = Session(paced_agent)

    def walk():
        session.invalidate()
        return session.ranges()

    ranges, sent, received = _bytes(paced_agent, walk)
    benchmark.extra_info.update(bytes_sent=sent, bytes_received=received, ranges=len(ranges))
    result = benchmark.pedantic(walk, rounds=2, iterations=1)
    assert result == ranges == paced_agent.walk_ranges()
    assert received > 40000  # every table page crossed the line


def test_map_by_agent_walk_unpaced(benchmark, agent):
    assert len(benchmark(agent.walk_ranges)) == 10


def test_agent_read_4k_unpaced(benchmark, agent):
    assert len(benchmark(agent.read_physical, 0x100000, 4096)) == 4096


def test_agent_regs_unpaced(benchmark, agent):
    assert benchmark(agent.agent_registers)["cr0"] >> 31 == 1
