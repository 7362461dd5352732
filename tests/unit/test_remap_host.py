"""The agent's remap methods, built for the host and run on literal page tables.

The agent writes entries into a fake physical memory; its own walk (and
kinspect's walker on the same bytes) must then show the change, and
``set_entries`` with the old values must give back the exact bytes.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from kinspect.protocols.agent_client import AgentClient, AgentRemoteError

from .agent_host import AGENT_DIR, CODEC, FLAGS, TESTS_DIR, HostAgent, host_tools, write_image
from .ptbuilder import NX, RW, US, P, PageTables

STACK = 0xFFFF800000001000  # host_agent's RSP (agent_cpu.rsp)
SPARE = 0xFFFFD00000000000


@pytest.fixture
def agent(tmp_path):
    pt = PageTables(4)
    pt.memory.ram_size = 1 << 30
    pt.map(STACK - 0x1000, 0x200000, flags=P | RW | NX)
    pt.map(STACK, 0x201000, flags=P | RW | NX)
    pt.map(0x400000, 0x400000, size=1 << 21, flags=P | RW)
    image = tmp_path / "image"
    write_image(image, pt.memory, ram_size=pt.memory.ram_size, cr3=pt.root)
    host = HostAgent(host_tools()["host_agent"], image)
    client = AgentClient(host.transport, timeout=5)
    client.hello()
    yield client, pt
    client.close()
    stderr = host.close()
    assert "runtime error" not in stderr and "AddressSanitizer" not in stderr, stderr


def walk(client):
    ranges, _next, _leaves, _problems, _root = client.call("walk")
    return ranges


def test_map_then_set_entries_restores_exact_entries(agent):
    client, _pt = agent
    before = walk(client)
    edits = client.call("map", SPARE, 0x300000, 0x3000, 0x1000, RW | NX, False)
    # Three new tables (PDPT, PD, PT), then three leaves: [va, level, entry_pa, old, new].
    assert [e[1] for e in edits] == [4, 3, 2, 1, 1, 1]
    assert all(e[3] == 0 for e in edits)
    assert edits[3][4] == 0x300000 | P | RW | NX
    assert [SPARE, 0x3000, 0x300000, 0x1000, 0b001] in walk(client)  # W, not X
    again = client.call("map", SPARE, 0x300000, 0x3000, 0x1000, RW | NX, False)
    assert again == []  # nothing to write: the same entries are there
    undo = [[va, level, old] for va, level, _pa, old, _new in reversed(edits)]
    restored = client.call("set_entries", False, undo)
    assert len(restored) == 6
    assert walk(client) == before
    # The entries the map changed hold their old bytes again (read back through the agent).
    for _va, _level, entry_pa, old, _new in edits:
        assert client.call("read_phys", entry_pa, 8) == old.to_bytes(8, "little")


def test_protect_keeps_the_address_and_unmap_clears(agent):
    client, _pt = agent
    (edit,) = client.call("protect", 0x400000, 1 << 21, 1 << 21, 0, False)
    assert edit[4] == (edit[3] & ~RW & ~US) and edit[4] & (1 << 7)  # PS kept
    (edit,) = client.call("unmap", 0x400000, 1 << 21, 1 << 21, False)
    assert edit[4] == 0
    assert not [r for r in walk(client) if r[0] == 0x400000]


@pytest.mark.parametrize(
    ("method", "params", "reason"),
    [
        ("unmap", [STACK, 0x1000, 0x1000], "own-stack"),
        ("protect", [STACK, 0x1000, 0x1000, NX], "own-stack"),
        ("unmap", [0xFFFF800000000000, 1 << 39, 1 << 39], "own-stack"),
        ("map", [0x0000800000000000, 0, 0x1000, 0x1000, RW], "non-canonical"),
        ("map", [SPARE + 0x10, 0, 0x1000, 0x1000, RW], "misaligned"),
        ("map", [SPARE, 0x1000, 0x200000, 0x200000, RW], "misaligned"),
    ],
)
def test_refusals_name_their_reason(agent, method, params, reason):
    client, _pt = agent
    before = walk(client)
    with pytest.raises(AgentRemoteError) as info:
        client.call(method, *params, False)
    assert info.value.code == 9
    assert info.value.message.split(":")[0] == reason
    assert walk(client) == before


def test_force_skips_the_safety_checks_but_not_the_shape_checks(agent):
    client, _pt = agent
    (edit,) = client.call("unmap", STACK, 0x1000, 0x1000, True)
    assert edit[4] == 0
    with pytest.raises(AgentRemoteError) as info:
        client.call("map", SPARE + 0x10, 0, 0x1000, 0x1000, RW, True)
    assert info.value.message.startswith("misaligned")


def test_without_the_hooks_remaps_are_unsupported_and_bad_params_are_named(agent):
    client, _pt = agent
    with pytest.raises(AgentRemoteError) as info:
        client.call("move_stack", STACK, STACK + 0x1000, SPARE, False)
    assert info.value.code == 6  # the host gives no rebase_stack
    with pytest.raises(AgentRemoteError) as info:
        client.call("map", SPARE, 0, 0x1000, 0x1000, 1 << 9, False)
    assert info.value.code == 3
    with pytest.raises(AgentRemoteError) as info:
        client.call("map", SPARE, 0, 65 * 0x1000, 0x1000, RW, False)
    assert info.value.code == 3


def test_memory_writes_exist_only_when_the_host_builds_them_in(agent, tmp_path):
    client, _pt = agent
    assert "write_phys" not in client.call("hello")["methods"]
    with pytest.raises(AgentRemoteError) as info:
        client.call("write_phys", 0x300000, b"\x01")
    assert info.value.code == 2  # unknown method: this agent cannot poke memory

    gcc = shutil.which("gcc")
    binary = tmp_path / "host_agent_writes"
    sources = [str(TESTS_DIR / "host_agent.c")] + [str(AGENT_DIR / s) for s in ("agent.c", *CODEC)]
    subprocess.run(
        [gcc, *FLAGS, "-DAGENT_ENABLE_MEMORY_WRITES", *sources, "-o", str(binary)],
        check=True,
        capture_output=True,
    )
    pt = PageTables(4)
    pt.memory.ram_size = 1 << 30
    image = tmp_path / "image-writes"
    write_image(image, pt.memory, ram_size=pt.memory.ram_size, cr3=pt.root)
    host = HostAgent(binary, image)
    poke = AgentClient(host.transport, timeout=5)
    try:
        assert "write_phys" in poke.hello()["methods"]
        assert poke.call("write_phys", 0x300000, b"kinspect") == 8
        assert poke.call("read_phys", 0x300000, 8) == b"kinspect"
    finally:
        poke.close()
        stderr = host.close()
    assert "runtime error" not in stderr and "AddressSanitizer" not in stderr, stderr
