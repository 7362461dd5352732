"""Memory writes through the agent: only an agent built with AGENT_ENABLE_MEMORY_WRITES has
``write_phys``; kinspect then writes (a virtual address page by page through the agent's
own translation), and says in one line when the agent has no such method (the demo kernel's).
The host-built C agent on an image of memory stands in for the kernel."""

from __future__ import annotations

import pytest

from kinspect.inspector.errors import FaultError, MissingCapability
from kinspect.inspector.session import Session
from kinspect.inspector.targets.agent import AgentTarget
from kinspect.inspector.targets.base import Capability
from kinspect.inspector.writes import read_writes
from tests.unit.agent_host import HostAgent, build_host_tools, host_tools, write_image
from tests.unit.test_agent_host import demo_like_tables

DIRECT = 0xFFFF888000000000


@pytest.fixture(scope="module")
def writing_binary(tmp_path_factory):
    out = tmp_path_factory.mktemp("agent-writes")
    return build_host_tools(out, ("-DAGENT_ENABLE_MEMORY_WRITES",))["host_agent"]


def _session(binary, tmp_path):
    pt = demo_like_tables()
    image = tmp_path / "image"
    write_image(image, pt.memory, ram_size=pt.memory.ram_size, cr3=pt.root)
    agent = HostAgent(binary, image)
    return Session(AgentTarget(agent.transport, timeout=5)), agent


def test_writes_through_write_phys_read_back_and_recorded(writing_binary, tmp_path, monkeypatch):
    monkeypatch.setenv("KINSPECT_WRITES_LOG", str(tmp_path / "writes.log"))
    session, agent = _session(writing_binary, tmp_path)
    try:
        assert session.target.has(Capability.MEMORY_WRITES)
        at = DIRECT + 0x3FFFFC  # across a 2 MiB page boundary: two translations
        old = session.write_memory(at, bytes(range(1, 9)))
        assert session.read_physical(0x3FFFFC, 8) == bytes(range(1, 9))
        session.write_memory(0x5000, b"\xaa\xbb", physical=True)
        assert session.read_virtual(DIRECT + 0x5000, 2) == b"\xaa\xbb"
        with pytest.raises(FaultError):
            session.write_memory(DIRECT + (4 << 21), b"\x00")  # past the direct map
        records = list(read_writes(tmp_path / "writes.log"))
        assert [(r.kind, r.where, r.old, r.new) for r in records] == [
            ("virtual", at, old.hex(), "0102030405060708"),
            ("physical", 0x5000, "0000", "aabb"),
        ]
    finally:
        session.close(resume=False)
        stderr = agent.close()
    assert "runtime error" not in stderr and "AddressSanitizer" not in stderr, stderr


def test_an_agent_without_write_phys_says_so(tmp_path):
    session, agent = _session(host_tools()["host_agent"], tmp_path)
    try:
        assert not session.target.has(Capability.MEMORY_WRITES)
        with pytest.raises(MissingCapability, match="AGENT_ENABLE_MEMORY_WRITES"):
            session.write_memory(DIRECT + 0x5000, b"\x00")
        with pytest.raises(MissingCapability, match="cannot set registers"):
            session.set_register("rip", 0)
    finally:
        session.close(resume=False)
        agent.close()
