"""What fetching the page-table map costs through the in-kernel agent (make bench).

Over a line paced to 115,200 baud (8N1: 11,520 bytes/s each way), against
reading the raw tables over the same line and walking them here. Figures
on a 2-core TCG machine: the agent's walk of the demo kernel (10 ranges,
663 leaves) is one request of ~20 bytes and a reply of ~270, about 25 ms;
the raw tables are 10 pages of 4 KiB plus framing, about 4 s. Unpaced
(QEMU's unix-socket serial), the agent's walk takes a few ms.
"""

from __future__ import annotations

import time

import pytest

from kinspect.inspector.errors import InspectorError
from kinspect.inspector.session import Session
from kinspect.inspector.targets.agent import AgentTarget
from kinspect.protocols.transports import LossyTransport, PacedTransport, SocketTransport

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


# -- a lossy line (issue 17): the whole map through the agent, recovered by NAKs and chunks --

#: (name, drop, corrupt): the rates of bytes damaged, each way.
LOSSES = [
    ("0.1% dropped", 0.001, 0.0),
    ("0.1% corrupted", 0.0, 0.001),
    ("1% dropped", 0.01, 0.0),
    ("1% corrupted", 0.0, 0.01),
    ("5% dropped+corrupted", 0.025, 0.025),
]
SEEDS = range(1, 6)
#: A call gives up after 2 s x 2 without progress (AgentClient), so a hopeless line ends in
#: a clean error well within 30 s: hello (1 s first look, then at most 3 x 4 s) and walk.
LOSSY_TIMEOUT, LOSSY_RETRIES = 2.0, 1


def _map_over(qemu, drop: float, corrupt: float, seed: int):
    """Connect (hello), walk the whole map, close: what `kinspect --agent ... pt` does."""
    link = LossyTransport(
        SocketTransport.connect_unix(str(qemu.serial_socket)),
        BAUD,
        drop=drop,
        corrupt=corrupt,
        seed=seed,
    )
    started = time.monotonic()
    try:
        target = AgentTarget(link, timeout=LOSSY_TIMEOUT, retries=LOSSY_RETRIES)
    except InspectorError as exc:
        link.close()
        return None, time.monotonic() - started, str(exc), None
    try:
        ranges = target.walk_ranges()
        return ranges, time.monotonic() - started, None, target.client.stats
    except InspectorError as exc:
        return None, time.monotonic() - started, str(exc), target.client.stats
    finally:
        target.close()


def test_map_over_a_lossy_line_at_115200(benchmark, capsys, qemu):
    clean_ranges, _, error, _ = _map_over(qemu, 0.0, 0.0, 0)
    assert error is None and clean_ranges is not None
    benchmark.pedantic(lambda: _map_over(qemu, 0.0, 0.0, 0), rounds=5, iterations=1)
    clean_time = benchmark.stats.stats.median
    lines = [f"\nwhole map through the agent at {BAUD} baud: clean {clean_time:.3f} s (median)"]
    figures = {"clean": clean_time}
    for name, drop, corrupt in LOSSES:
        times, errors = [], []
        naks = resent = timeouts = 0
        for seed in SEEDS:
            ranges, elapsed, error, stats = _map_over(qemu, drop, corrupt, seed)
            if error is None:
                assert ranges == clean_ranges, f"{name}, seed {seed}: a wrong map"
                times.append(elapsed)
            else:
                errors.append((elapsed, error))
            if stats is not None:
                naks += stats.naks_sent + stats.naks_received
                resent += stats.chunks_resent
                timeouts += stats.timeouts
        worst = max(times) if times else float("nan")
        figures[name] = worst
        lines.append(
            f"  {name:22} {len(times)}/{len(SEEDS)} right, worst {worst:.3f} s "
            f"({worst / clean_time:.1f}x clean), median "
            f"{sorted(times)[len(times) // 2] if times else float('nan'):.3f} s; "
            f"NAKs {naks}, chunks resent {resent}, timeouts {timeouts}; each seed: "
            + ", ".join(f"{t:.3f}" for t in times)
            + (
                f"; {len(errors)} clean error(s), the slowest after {max(e[0] for e in errors):.1f}"
                f" s: {errors[0][1][:90]}"
                if errors
                else ""
            )
        )
    benchmark.extra_info.update(figures)
    with capsys.disabled():  # make bench shows it (pytest keeps a passing test's output)
        print("\n".join(lines))
