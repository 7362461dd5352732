"""The agent's remap methods, built for the host and run on literal page tables.

The agent writes entries into a fake physical memory; its own walk (and
kinspect's walker on the same bytes) must then show the change, and
``set_entries`` with the old values must give back the exact bytes.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from kinspect.inspector.remap.apply import Remapper
from kinspect.inspector.remap.journal import Journal
from kinspect.inspector.targets.agent import AgentTarget
from kinspect.inspector.x86.control import decode_paging_mode
from kinspect.inspector.x86.paging import translate
from kinspect.protocols.agent_client import AgentClient, AgentRemoteError

from .agent_host import AGENT_DIR, CODEC, FLAGS, TESTS_DIR, HostAgent, host_tools, write_image
from .ptbuilder import NX, RW, US, P, PageTables

STACK = 0xFFFF800000001000  # host_agent's RSP (agent_cpu.rsp)
SPARE = 0xFFFFD00000000000


def start_host_agent(tmp_path, levels: int = 4, cr4: int = 0x20) -> tuple[HostAgent, PageTables]:
    """The agent on tables with its stack (two pages) and a 2 MiB page at 0x400000."""
    pt = PageTables(levels)
    pt.memory.ram_size = 1 << 30
    pt.map(STACK - 0x1000, 0x200000, flags=P | RW | NX)
    pt.map(STACK, 0x201000, flags=P | RW | NX)
    pt.map(0x400000, 0x400000, size=1 << 21, flags=P | RW)
    image = tmp_path / f"image{levels}"
    write_image(image, pt.memory, ram_size=pt.memory.ram_size, cr3=pt.root, cr4=cr4)
    return HostAgent(host_tools()["host_agent"], image), pt


def check_closed(host: HostAgent) -> None:
    stderr = host.close()
    assert "runtime error" not in stderr and "AddressSanitizer" not in stderr, stderr


@pytest.fixture
def agent(tmp_path):
    host, pt = start_host_agent(tmp_path)
    client = AgentClient(host.transport, timeout=5)
    client.hello()
    yield client, pt
    client.close()
    check_closed(host)


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


# --- 5-level paging (CR4.LA57) ------------------------------------------------------

CR4_PAE_LA57 = (1 << 5) | (1 << 12)
#: PML5 entry 320, neither the first nor the last: only 5-level paging reaches it.
VA57 = 0xFF40000000000000


@pytest.fixture
def agent5(tmp_path):
    """The agent on 5-level tables: the same pages, the stack under PML5 entry 511."""
    host, pt = start_host_agent(tmp_path, 5, CR4_PAE_LA57)
    yield host, pt
    check_closed(host)


def test_map_at_a_57_bit_address_creates_a_table_under_a_new_pml5_entry(agent5):
    host, pt = agent5
    client = AgentClient(host.transport, timeout=5)
    assert client.hello()["paging_levels"] == 5
    before = walk(client)
    edits = client.call("map", VA57, 0x300000, 0x2000, 0x1000, RW | NX, False)
    # New tables under PML5 entry 320 (PML4, PDPT, PD, PT), then the two leaves.
    assert [e[1] for e in edits] == [5, 4, 3, 2, 1, 1]
    assert edits[0][2] == pt.root + 8 * 320 and edits[0][3] == 0
    assert [VA57, 0x2000, 0x300000, 0x1000, 0b001] in walk(client)
    # kinspect's own walker, over the bytes the agent wrote, finds the same page.
    mode = decode_paging_mode(0x80010011, CR4_PAE_LA57, 0xD00)
    t = translate(lambda a, n: client.call("read_phys", a, n), pt.root, mode, VA57 + 0x1234)
    assert t.ok and t.pa == 0x301234 and [s.level for s in t.steps] == [5, 4, 3, 2, 1]
    assert t.steps[0].entry_address == edits[0][2]
    # Not canonical even with 57 bits, or crossing into the hole: refused.
    for va, size in ((0x0100000000000000, 0x1000), (0x00FFFFFFFFFFF000, 0x2000)):
        with pytest.raises(AgentRemoteError) as info:
            client.call("map", va, 0x300000, size, 0x1000, RW, False)
        assert info.value.message.startswith("non-canonical"), hex(va)
    undo = [[va, level, old] for va, level, _pa, old, _new in reversed(edits)]
    client.call("set_entries", False, undo)
    assert walk(client) == before
    client.close()


def test_remapper_on_5_level_tables_plans_applies_verifies_and_undoes(agent5, tmp_path):
    host, pt = agent5
    target = AgentTarget(host.transport, timeout=5)
    remapper = Remapper(target, Journal.open(tmp_path / "journal.jsonl"))
    assert remapper.levels == 5 and remapper.higher_half == 0xFF00000000000000
    # Every table the agent's tables hold is found (the walker's walk_tables).
    regs = remapper.registers()
    assert set(remapper.table_addresses(regs)) == set(range(pt.root, pt.next_table, 0x1000))
    before = target.walk_ranges()
    plan = remapper.plan_map(VA57, 0x300000, 0x2000, flags=RW | NX)
    assert not plan.refusals and plan.tables_to_allocate == 4
    (report,) = remapper.apply(plan)
    assert report.verified, report.problems
    (record,) = remapper.journal.open_steps()
    # What undo needs if the reply were lost: the absent PML5 entry, read by the walker.
    assert record.before == {"entries": [[VA57, 5, 0]]}
    remapper.undo()
    assert target.walk_ranges() == before
    for _va, _level, entry_pa, old, _new in report.result:
        assert target.read_physical(entry_pa, 8) == old.to_bytes(8, "little")
    target.close()
