"""The real C agent, built for the host, on page tables built by ptbuilder.

The agent's in-kernel walk must give exactly the ranges kinspect's own walker
and coalescer give for the same tables (4 and 5 levels, 1 GiB / 2 MiB /
4 KiB leaves, permissions combined across levels, NX without EFER.NXE,
reserved bits). Its reads, translations, errors and the replay of mutating
requests are checked through the Python client, over a pipe.

The UEFI runtime services run on a fake firmware (host_agent.c, image magic
"KAGENTEF") whose services are host functions reached through the real MS x64
thunk: the checks before a call, the statuses, UCS-2 names and virtual mode.
"""

from __future__ import annotations

import time

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kinspect.inspector.errors import AgentError, FaultError
from kinspect.inspector.targets.agent import AgentTarget
from kinspect.inspector.x86.control import decode_paging_mode
from kinspect.inspector.x86.paging import coalesce_ranges, collect_address_space, translate
from kinspect.protocols.agent_client import AgentClient, AgentRemoteError
from kinspect.protocols.agent_wire import (
    Frame,
    Reply,
    decode_incoming,
    decode_reply,
    encode_frame,
    encode_request,
)

from .agent_host import HostAgent, host_tools, write_image
from .ptbuilder import (
    NX,
    PAT_LARGE,
    PAT_PTE,
    PCD,
    PS,
    PWT,
    RW,
    US,
    G,
    P,
    PageTables,
    PhysicalMemory,
)

CR4_PAE, CR4_OSFXSR, CR4_LA57 = 1 << 5, 1 << 9, 1 << 12
EFER_LONG = 0x500  # LME | LMA
EFER_NXE = 1 << 11


def demo_like_tables(levels: int = 4) -> PageTables:
    pt = PageTables(levels, PhysicalMemory(ram_size=1 << 31))
    for i in range(1, 40):  # 4 KiB identity pages, one hole and a permission change
        if i != 17:
            pt.map(i << 12, i << 12, flags=P | RW | (US if i < 30 else 0))
    for i in range(1, 8):
        pt.map(i << 21, i << 21, 1 << 21, P | RW)
    for i in range(4):  # a direct map in 2 MiB pages, G and NX
        pt.map(0xFFFF888000000000 + (i << 21), i << 21, 1 << 21, P | RW | G | NX)
    pt.map(0xFFFFC90000000000, 0xC0000000, 1 << 30, P | RW | PWT | PCD | G | NX)
    pt.map(0xFFFFC90040000000, 0x80000000, 1 << 30, P | RW | PAT_LARGE | NX)
    for i, flags in enumerate(
        [P | G] * 5 + [P | G | NX] * 3 + [P | RW | G | NX] * 4 + [P | PAT_PTE]
    ):
        pt.map(0xFFFFFFFF80100000 + (i << 12), 0x100000 + (i << 12), flags=flags)
    # NX on an upper level applies to everything below it.
    pt.map(0x7F0000000000, 0x400000, flags=P | RW | US)
    pt.set_flags(0x7F0000000000, levels, set_=NX)
    return pt


@pytest.fixture
def machine(tmp_path):
    """Returns a function: tables and registers in, a running host agent out."""
    agents = []

    def start(
        pt: PageTables,
        *,
        cr4: int = CR4_PAE,
        efer: int = EFER_LONG | EFER_NXE,
        maxphyaddr: int = 52,
    ) -> HostAgent:
        image = tmp_path / f"image{len(agents)}"
        write_image(
            image,
            pt.memory,
            ram_size=pt.memory.ram_size,
            cr3=pt.root,
            cr4=cr4,
            efer=efer,
            maxphyaddr=maxphyaddr,
        )
        agent = HostAgent(host_tools()["host_agent"], image)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        stderr = agent.close()
        assert "runtime error" not in stderr and "AddressSanitizer" not in stderr, stderr


def python_ranges(pt: PageTables, *, cr4: int, efer: int, maxphyaddr: int = 52):
    mode = decode_paging_mode(0x80010011, cr4, efer, maxphyaddr=maxphyaddr)
    return coalesce_ranges(collect_address_space(pt.memory.read_physical, pt.root, mode).leaves)


@pytest.mark.parametrize("levels", [4, 5])
@pytest.mark.parametrize("nxe", [True, False])
def test_walk_matches_kinspects_walker(machine, levels, nxe):
    pt = demo_like_tables(levels)
    cr4 = CR4_PAE | (CR4_LA57 if levels == 5 else 0)
    efer = EFER_LONG | (EFER_NXE if nxe else 0)
    target = AgentTarget(machine(pt, cr4=cr4, efer=efer).transport, timeout=5)
    expected = python_ranges(pt, cr4=cr4, efer=efer)
    got = target.walk_ranges()
    assert got == expected
    # Without EFER.NXE, NX is a reserved bit: both walkers skip those entries.
    assert len(got) > (10 if nxe else 1)
    # Paged in small replies, the walk gives the same ranges.
    assert target.walk_ranges(max_ranges=1) == expected
    assert target.walk_stats["requests"] == len(expected)
    target.close()


def test_walk_skips_reserved_bits_like_the_walker(machine):
    pt = demo_like_tables()
    slot = pt.map(0x600000000000, 0x1000, flags=P | RW)
    pt.memory.write_u64(slot, pt.memory.read_u64(slot) | (1 << 45))  # above MAXPHYADDR 40
    target = AgentTarget(machine(pt, maxphyaddr=40).transport, timeout=5)
    expected = python_ranges(pt, cr4=CR4_PAE, efer=EFER_LONG | EFER_NXE, maxphyaddr=40)
    assert target.walk_ranges() == expected
    assert target.walk_stats["problems"] == 1
    assert all(r.start != 0x600000000000 for r in expected)
    target.close()


def test_reads_and_translations(machine):
    pt = demo_like_tables()
    pt.memory.page(0x105000)[0x10:0x18] = b"kinspect"
    target = AgentTarget(machine(pt).transport, timeout=5)
    assert target.read_physical(0x105010, 8) == b"kinspect"
    assert target.read_virtual(0xFFFFFFFF80105010, 8) == b"kinspect"
    # Across pages, longer than one reply: chunks and pages both split.
    assert target.read_physical(0x104000, 9000) == pt.memory.read_physical(0x104000, 9000)
    assert target.read_virtual(0xFFFFFFFF80104FF0, 32) == pt.memory.read_physical(0x104FF0, 32)

    mode = decode_paging_mode(0x80010011, CR4_PAE, EFER_LONG | EFER_NXE)
    ours = translate(pt.memory.read_physical, pt.root, mode, 0xFFFFC90000123456)
    theirs = target.translate(0xFFFFC90000123456)
    assert theirs.pa == ours.pa == 0xC0123456
    assert theirs.page_size == 1 << 30
    assert theirs.entries == tuple(step.entry.raw for step in ours.steps)

    with pytest.raises(FaultError) as hole:
        target.read_virtual(0x11000, 4)  # page 17 is not mapped
    assert hole.value.address == 0x11000
    with pytest.raises(FaultError) as straddle:
        target.read_virtual(0x10FF0, 32)  # the second page is the hole
    assert straddle.value.address == 0x11000
    with pytest.raises(FaultError, match="non-canonical"):
        target.read_virtual(0x0000800000000000, 8)
    with pytest.raises(FaultError) as beyond:
        target.read_physical((1 << 31) - 4, 8)  # past the image's RAM
    assert beyond.value.address == (1 << 31) - 4
    target.close()


def test_registers_and_handshake(machine):
    target = AgentTarget(machine(demo_like_tables()).transport, timeout=5)
    assert target.info["protocol"] == 1 and target.info["paging_levels"] == 4
    assert set(target.info["methods"]) >= {"hello", "regs", "read_phys", "read_virt", "walk"}
    regs = target.registers()
    assert regs["cr3"] == 0x100000 and regs["efer"] == EFER_LONG | EFER_NXE
    assert target.agent_registers()["pat"] == 0x0007040600070406
    target.close()


def test_errors_are_replies(machine):
    agent = machine(demo_like_tables())
    client = AgentClient(agent.transport, timeout=5)
    with pytest.raises(AgentRemoteError) as unknown:
        client.call("frobnicate")
    assert unknown.value.code == 2
    with pytest.raises(AgentRemoteError) as params:
        client.call("read_phys", 0x1000)
    assert params.value.code == 3
    with pytest.raises(AgentRemoteError) as too_long:
        client.call("read_phys", 0x1000, 4097)
    assert too_long.value.code == 3
    with pytest.raises(AgentRemoteError) as kind:
        client.call("read_phys", "0x1000", 4)
    assert kind.value.code == 3
    # A frame with a good CRC that is not a request: error 1, id 0.
    agent.transport.write(encode_frame(b"\x93\x00\x01\x02"))
    client.transport.write(encode_frame(encode_request(77, "hello")))
    client.pump(0.5)
    assert client.stats.stale_replies == 2  # both replies were for no call of ours
    assert client.call("hello")["protocol"] == 1


def test_mutating_request_is_not_applied_twice(machine):
    """A repeated stop (same id: the client retrying) gets the kept reply."""
    agent = machine(demo_like_tables())
    client = AgentClient(agent.transport, timeout=5)
    client.call("hello")
    frame = encode_frame(encode_request(1000, "stop"))
    replies = []
    for _ in range(3):
        agent.transport.write(frame)

    deadline = time.monotonic() + 5
    while len(replies) < 3 and time.monotonic() < deadline:
        for event in client.decoder.feed(agent.transport.read(0.5)):
            if isinstance(event, Frame):
                replies.append(decode_reply(event.body))
    assert [r.result for r in replies] == [1, 1, 1]
    assert client.call("resume") == 1
    assert client.call("stop") == 2  # a new id: a new stop
    assert client.call("resume") == 2


def test_console_input_reaches_the_host(machine):
    agent = machine(demo_like_tables())
    client = AgentClient(agent.transport, timeout=5)
    client.send_console(b"typed text\r")
    assert client.call("hello")["protocol"] == 1
    client.close()
    assert "typed text\r" in agent.close()


def test_agent_error_for_a_non_fault(machine):
    target = AgentTarget(machine(demo_like_tables()).transport, timeout=5)
    with pytest.raises(AgentError, match="bad parameters|max_ranges"):
        target.walk_ranges(max_ranges=0)
    target.close()


@pytest.fixture(scope="module")
def fuzz_agent(tmp_path_factory):
    pt = demo_like_tables()
    image = tmp_path_factory.mktemp("fuzz") / "image"
    write_image(
        image,
        pt.memory,
        ram_size=pt.memory.ram_size,
        cr3=pt.root,
        cr4=CR4_PAE,
        efer=EFER_LONG | EFER_NXE,
    )
    agent = HostAgent(host_tools()["host_agent"], image)
    yield agent
    stderr = agent.close()
    assert "runtime error" not in stderr and "AddressSanitizer" not in stderr, stderr


_params = st.lists(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.binary(max_size=8)
    | st.text(max_size=8),
    max_size=4,
)
_methods = st.sampled_from(
    ["hello", "regs", "read_phys", "read_virt", "translate", "walk", "stop", "resume", "x", ""]
    + ["efi_info", "efi_get_time", "efi_get_variable", "efi_next_variable_name"]
)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.one_of(
        st.tuples(st.integers(0, 2**32 - 1), _methods, _params).map(
            lambda t: msgpack.packb([0, t[0], t[1], t[2]])
        ),
        st.binary(min_size=1, max_size=64),  # not even msgpack
    )
)
def test_every_request_frame_gets_exactly_one_reply(fuzz_agent, body):
    """Whatever a frame with a good CRC holds, the agent answers it, and survives."""
    client = AgentClient(fuzz_agent.transport, timeout=5)
    fuzz_agent.transport.write(encode_frame(body))
    replies = []
    deadline = time.monotonic() + 5
    while not replies and time.monotonic() < deadline:
        for event in client.decoder.feed(fuzz_agent.transport.read(0.5)):
            if isinstance(event, Frame):
                # A reply, or (link 2: after a "hello [2]" or for a NAK/ACK-shaped body) a
                # chunk or a NAK: one answer either way.
                replies.append(decode_incoming(event.body))
    assert len(replies) == 1
    # Leave the agent running for the next example.
    if isinstance(replies[0], Reply) and replies[0].error is None and replies[0].result is not None:
        client.call("resume")


@pytest.fixture
def agent_on_a_pty(tmp_path):
    """The host agent on a pty's master side; kinspect opens the slave by path."""
    import os
    import subprocess
    import tty

    agents = []

    def start(pt: PageTables) -> str:
        image = tmp_path / f"pty-image{len(agents)}"
        write_image(
            image,
            pt.memory,
            ram_size=pt.memory.ram_size,
            cr3=pt.root,
            cr4=CR4_PAE,
            efer=EFER_LONG | EFER_NXE,
        )
        master, slave = os.openpty()
        tty.setraw(master)
        process = subprocess.Popen(
            [str(host_tools()["host_agent"]), str(image)],
            stdin=master,
            stdout=master,
            stderr=subprocess.PIPE,
        )
        os.close(master)
        path = os.ttyname(slave)
        agents.append((process, slave))
        return path

    yield start
    for process, slave in agents:
        os.close(slave)
        process.kill()
        process.wait()
        process.stderr.close()


def test_cli_pt_uses_the_agent_walk_and_falls_back_for_problems(agent_on_a_pty, monkeypatch):
    import io

    from kinspect.inspector import cli
    from kinspect.inspector.targets.agent import AgentTarget

    clean = demo_like_tables()
    expected = coalesce_ranges(
        collect_address_space(
            clean.memory.read_physical,
            clean.root,
            decode_paging_mode(0x80010011, CR4_PAE, EFER_LONG | EFER_NXE),
        ).leaves
    )
    path = agent_on_a_pty(clean)

    def no_raw_reads(self, address, size):
        raise AssertionError("pt read raw tables although the agent's walk was clean")

    with monkeypatch.context() as patch:
        patch.setattr(AgentTarget, "read_physical", no_raw_reads)
        out = io.StringIO()
        assert cli.run(["--agent", path, "pt"], out) == 0
    text = out.getvalue()
    assert f"in {len(expected)} ranges" in text and "problem" not in text

    broken = demo_like_tables()
    broken.map(0x600000000000, 0x1000, flags=P | RW)
    broken.set_flags(0x600000000000, 4, set_=PS)  # PS is reserved in a PML4E
    out = io.StringIO()
    # The agent counts one problem; pt walks the raw tables to say which.
    assert cli.run(["--agent", agent_on_a_pty(broken), "pt"], out) == 0
    assert "problem: " in out.getvalue()


# -- UEFI runtime services on a fake firmware (host_agent.c, "KAGENTEF") ----------------

FAKE = 0x40000000  # the fake firmware's "physical" memory, also its host address
RTCODE_PA, BSDATA_PA, RTDATA_PA, MMIO_PA = FAKE, FAKE + 0x2000, FAKE + 0x3000, 0xFFC00000
ST_PA, RT_PA = RTDATA_PA + 0x18, RTDATA_PA + 0x1100
RUNTIME = [(RTCODE_PA, 2), (RTDATA_PA, 3), (MMIO_PA, 4)]
NEW = 0x200000000000  # new VA = NEW + PA: in the user half, where the fake can map itself again
GLOBAL = bytes.fromhex("61dfe48bca93d211aa0d00e098032b8c")  # EFI_GLOBAL_VARIABLE, as in memory
VENDOR = bytes.fromhex("78563412341278569abcdef011223344")
EFI_INVALID_PARAMETER, EFI_BUFFER_TOO_SMALL, EFI_NOT_FOUND = (
    (1 << 63) | 2,
    (1 << 63) | 5,
    (1 << 63) | 14,
)
EFI_METHODS = [
    ("efi_info",),
    ("efi_set_virtual_address_map", []),
    ("efi_get_time",),
    ("efi_get_variable", "PlatformLang", GLOBAL),
    ("efi_next_variable_name", "", bytes(16)),
]


def efi_tables(*, identity=True, new=True, skip=()) -> PageTables:
    """demo_like_tables with the fake's RAM regions identity-mapped and every region at NEW + PA."""
    pt = demo_like_tables()
    for pa, pages in RUNTIME:
        for i in range(pages):
            page = pa + (i << 12)
            if identity and pa != MMIO_PA and page not in skip:
                pt.map(page, page, flags=P | RW)
            if new and NEW + page not in skip:
                pt.map(NEW + page, page, flags=P | RW | (0 if pa == RTCODE_PA else NX))
    return pt


def start_efi_agent(image, pt: PageTables, cr4: int = CR4_PAE | CR4_OSFXSR) -> HostAgent:
    """A host agent on ``pt`` with the fake firmware (the image's magic says UEFI)."""
    write_image(
        image,
        pt.memory,
        ram_size=pt.memory.ram_size,
        cr3=pt.root,
        cr4=cr4,
        efer=EFER_LONG | EFER_NXE,
    )
    with open(image, "r+b") as f:
        f.write(b"KAGENTEF")
    return HostAgent(host_tools()["host_agent"], image)


@pytest.fixture
def efi_machine(tmp_path):
    """A host agent on the fake firmware (the image's magic says UEFI), with a client."""
    agents = []

    def start(pt: PageTables, cr4: int = CR4_PAE | CR4_OSFXSR) -> AgentClient:
        agent = start_efi_agent(tmp_path / f"efi-image{len(agents)}", pt, cr4)
        agents.append(agent)
        client = AgentClient(agent.transport, timeout=5)
        client.hello()
        return client

    yield start
    for agent in agents:
        stderr = agent.close()
        assert "runtime error" not in stderr and "AddressSanitizer" not in stderr, stderr
        assert agent.process.returncode == 0, stderr  # no crash in the fake firmware


def error_of(client, method, *params) -> AgentRemoteError:
    with pytest.raises(AgentRemoteError) as error:
        client.call(method, *params)
    return error.value


def test_efi_methods_unsupported_without_uefi(machine):
    """A PVH boot gives the agent no UEFI information: error 6, whatever the parameters."""
    client = AgentClient(machine(demo_like_tables()).transport, timeout=5)
    assert {"efi_info", "efi_set_virtual_address_map", "efi_get_time"} <= set(
        client.hello()["methods"]
    )
    for method, *params in EFI_METHODS:
        assert error_of(client, method, *params).code == 6, method


def test_efi_info_and_calls_in_physical_mode(efi_machine):
    client = efi_machine(efi_tables())
    info = client.call("efi_info")
    assert info["memmap"] and info["memattr"]
    del info["memmap"], info["memattr"]  # host addresses
    assert info == {
        "system_table": ST_PA,
        "system_table_va": ST_PA,
        "runtime_services": RT_PA,
        "firmware_revision": 0x10203,
        "virtual_mode": False,
        "memmap_size": 5 * 48,
        "desc_size": 48,
        "desc_version": 1,
        "memattr_size": 64,
        "runtime_regions": 3,
        "virtual_map": [],
    }
    # The MMIO region is not identity-mapped: no call before it is (a refusal, not a fault).
    error = error_of(client, "efi_get_time")
    assert (error.code, error.address) == (9, MMIO_PA)
    assert error.message.startswith("efi-unmapped")
    client.call("map", MMIO_PA, MMIO_PA, 4 << 12, 4096, RW | NX)
    assert client.call("efi_get_time") == [2026, 11, 25, 19, 46, 2, 123456789, -60, 1]

    assert client.call("efi_get_variable", "PlatformLang", GLOBAL) == [7, b"en-US\0"]
    for params, status in [
        (("PlatformLang", GLOBAL, 5), EFI_BUFFER_TOO_SMALL),
        (("BigOne", VENDOR), EFI_BUFFER_TOO_SMALL),  # 1500 bytes, max_size 1024 by default
        (("NoSuchVariable", GLOBAL), EFI_NOT_FOUND),
        (("PlatformLang", VENDOR), EFI_NOT_FOUND),  # the GUID is part of the name
    ]:
        error = error_of(client, "efi_get_variable", *params)
        assert (error.code, error.address) == (10, status), params
    assert error_of(client, "efi_get_variable", "PlatformLang", GLOBAL, 5).message == (
        "EFI_BUFFER_TOO_SMALL"
    )
    assert error_of(client, "efi_get_variable", "Nope", GLOBAL).message == "EFI_NOT_FOUND"
    weird = error_of(client, "efi_get_variable", "Weird", GLOBAL)
    assert (weird.code, weird.message, weird.address) == (
        10,
        "EFI status 0x8000000000000123",
        0x8000000000000123,
    )
    for params in [
        ("Caf\u00e9", GLOBAL),  # not ASCII
        ("a\0b", GLOBAL),
        ("PlatformLang", GLOBAL[:15]),
        ("PlatformLang", "not bytes"),
        ("PlatformLang", GLOBAL, 1025),
        (b"PlatformLang", GLOBAL),
        ("x" * 256, GLOBAL),
    ]:
        assert error_of(client, "efi_get_variable", *params).code == 3, params


def test_efi_calls_need_sse_enabled(efi_machine):
    """Firmware code uses SSE: without CR4.OSFXSR it would fault (#UD), so no call is made."""
    client = efi_machine(efi_tables(), cr4=CR4_PAE)
    client.call("map", MMIO_PA, MMIO_PA, 4 << 12, 4096, RW | NX)
    for method, *params in EFI_METHODS[1:]:
        if method == "efi_set_virtual_address_map":
            params = [pairs()]
        error = error_of(client, method, *params)
        assert error.code == 6 and "OSFXSR" in error.message, method
    assert client.call("efi_info")["virtual_mode"] is False


def test_efi_variable_names_enumerate_past_non_ascii(efi_machine):
    client = efi_machine(efi_tables())
    client.call("map", MMIO_PA, MMIO_PA, 4 << 12, 4096, RW | NX)
    names = []
    entry = client.call("efi_next_variable_name", "", bytes(16))
    while entry is not None:
        names.append(tuple(entry))
        entry = client.call("efi_next_variable_name", *entry)
    # "Café" comes back as "Caf?", and the agent continues from the raw name it kept.
    assert names == [("PlatformLang", GLOBAL), ("Caf?", VENDOR), ("BigOne", VENDOR)]
    error = error_of(client, "efi_next_variable_name", "Caf?", GLOBAL)  # not the name kept
    assert (error.code, error.message, error.address) == (
        10,
        "EFI_INVALID_PARAMETER",
        EFI_INVALID_PARAMETER,
    )
    assert error_of(client, "efi_next_variable_name", "\u00e9", GLOBAL).code == 3


def pairs(base: int = NEW, moved: dict[int, int] | None = None) -> list[list[int]]:
    """One [physical_start, virtual_start] per runtime region; ``moved`` overrides some VAs."""
    moved = moved or {}
    return [[pa, moved.get(pa, base + pa)] for pa, _ in RUNTIME]


def test_efi_svam_parameters_are_checked_first(efi_machine):
    client = efi_machine(efi_tables())
    cases = [
        (pairs()[:2], MMIO_PA, "no pair"),
        ([*pairs(), [BSDATA_PA, NEW + BSDATA_PA]], BSDATA_PA, "no runtime descriptor"),
        ([*pairs(), pairs()[0]], RTCODE_PA, "two pairs"),
        (pairs(moved={RTDATA_PA: NEW + RTDATA_PA + 8}), NEW + RTDATA_PA + 8, "page-aligned"),
        (pairs(moved={RTCODE_PA: 0x800000000000}), 0x800000000000, "canonical"),
        (pairs(moved={MMIO_PA: 0x7FFFFFFFF000}), 0x7FFFFFFFF000, "canonical"),  # across the hole
    ]
    for params, address, words in cases:
        error = error_of(client, "efi_set_virtual_address_map", params)
        assert (error.code, error.address) == (3, address), params
        assert words in error.message
    for params in ([[RTCODE_PA]], [RTCODE_PA, NEW], "pairs", [[RTCODE_PA, -1]]):
        assert error_of(client, "efi_set_virtual_address_map", params).code == 3, params
    assert error_of(client, "efi_set_virtual_address_map", pairs(), 1).code == 3
    assert client.call("efi_info")["virtual_mode"] is False


def test_efi_svam_refuses_what_is_not_mapped(efi_machine):
    # RTData's third page is missing at its new address, the second from the identity map.
    client = efi_machine(efi_tables(skip=(NEW + RTDATA_PA + 0x2000, RTDATA_PA + 0x1000)))
    error = error_of(client, "efi_set_virtual_address_map", pairs())
    assert (error.code, error.address) == (9, NEW + RTDATA_PA + 0x2000)
    assert error.message.startswith("efi-unmapped")
    # Mapped, but to another physical page: still refused there.
    client.call("map", NEW + RTDATA_PA + 0x2000, RTDATA_PA, 4096, 4096, RW | NX)
    error = error_of(client, "efi_set_virtual_address_map", pairs())
    assert (error.code, error.address) == (9, NEW + RTDATA_PA + 0x2000)
    client.call("unmap", NEW + RTDATA_PA + 0x2000, 4096, 4096)
    client.call("map", NEW + RTDATA_PA + 0x2000, RTDATA_PA + 0x2000, 4096, 4096, RW | NX)
    # SVAM runs at physical addresses: RTCode and RTData must be identity-mapped (the PA).
    error = error_of(client, "efi_set_virtual_address_map", pairs())
    assert (error.code, error.address) == (9, RTDATA_PA + 0x1000)
    assert "identity" in error.message
    client.call("map", RTDATA_PA + 0x1000, RTDATA_PA + 0x1000, 4096, 4096, RW)
    # The MMIO region needs no identity mapping for SVAM: now it is called.
    assert client.call("efi_set_virtual_address_map", pairs())[0] == 0


def test_efi_svam_error_status_stays_in_physical_mode(efi_machine):
    """The fake cannot map itself in the kernel half: EFI_INVALID_PARAMETER, as a firmware would."""
    kernel_half = 0xFFFF900000000000
    pt = efi_tables()
    for pa, pages in RUNTIME:
        for i in range(pages):
            pt.map(kernel_half + pa + (i << 12), pa + (i << 12), flags=P | RW)
    client = efi_machine(pt)
    error = error_of(client, "efi_set_virtual_address_map", pairs(kernel_half))
    assert (error.code, error.message, error.address) == (
        10,
        "EFI_INVALID_PARAMETER",
        EFI_INVALID_PARAMETER,
    )
    assert client.call("efi_info")["virtual_mode"] is False
    assert client.call("efi_set_virtual_address_map", pairs()) == [0, NEW + ST_PA, NEW + RT_PA]


def test_efi_virtual_mode(efi_machine):
    client = efi_machine(efi_tables())
    # Kept like a remap's reply: a retry (same id) gets the success again, not a refusal.
    body = encode_request(4242, "efi_set_virtual_address_map", [pairs()])
    replies = []
    for _ in range(2):
        client.transport.write(encode_frame(body))
        deadline = time.monotonic() + 5
        while len(replies) < _ + 1 and time.monotonic() < deadline:
            for event in client.decoder.feed(client.transport.read(0.5)):
                if isinstance(event, Frame):
                    replies.append(event.body)
    assert len(replies) == 2 and replies[0] == replies[1]
    assert decode_reply(replies[0]).result == [0, NEW + ST_PA, NEW + RT_PA]

    info = client.call("efi_info")
    assert info["virtual_mode"] is True
    assert (info["system_table"], info["system_table_va"]) == (ST_PA, NEW + ST_PA)
    assert info["runtime_services"] == NEW + RT_PA
    assert info["virtual_map"] == [[pa, NEW + pa, pages] for pa, pages in RUNTIME]
    # The fake unmapped its physical addresses: these calls reach it at NEW + PA only.
    assert client.call("efi_get_time") == [2026, 11, 25, 19, 46, 2, 123456789, -60, 1]
    assert client.call("efi_next_variable_name", "", bytes(16)) == ["PlatformLang", GLOBAL]
    assert client.call("efi_get_variable", "PlatformLang", GLOBAL) == [7, b"en-US\0"]

    error = error_of(client, "efi_set_virtual_address_map", pairs())
    assert (error.code, error.address) == (9, NEW + ST_PA)
    assert error.message.startswith("efi-virtual-mode")
    # The firmware reaches its regions only at the new addresses now: the agent keeps them
    # mapped (unmap, a move, another CR3), while their permissions stay the kernel's.
    for method, *params in [
        ("unmap", NEW + MMIO_PA + 0x1000, 4096, 4096),
        ("map", NEW + RTDATA_PA, RTCODE_PA, 4096, 4096, RW | NX),
    ]:
        error = error_of(client, method, *params)
        assert (error.code, error.address) == (9, params[0]), method
        assert error.message.startswith("efi-runtime"), error.message
    client.call("protect", NEW + RTDATA_PA, 4096, 4096, NX)  # read-only: allowed
    # Forced anyway, a region's new mapping gone: calls are refused at that VA, not faulted.
    client.call("unmap", NEW + MMIO_PA + 0x1000, 4096, 4096, True)
    error = error_of(client, "efi_get_time")
    assert (error.code, error.address) == (9, NEW + MMIO_PA + 0x1000)
    assert error.message.startswith("efi-unmapped")


@pytest.fixture(scope="module")
def fuzz_efi_agent(tmp_path_factory):
    """The fake firmware with every runtime region identity-mapped: calls reach it."""
    pt = efi_tables()
    for i in range(4):
        pt.map(MMIO_PA + (i << 12), MMIO_PA + (i << 12), flags=P | RW | NX)
    agent = start_efi_agent(tmp_path_factory.mktemp("fuzz-efi") / "image", pt)
    yield agent
    stderr = agent.close()
    assert "runtime error" not in stderr and "AddressSanitizer" not in stderr, stderr
    assert agent.process.returncode == 0, stderr


_efi_value = (
    st.none()
    | st.integers(0, 2**64 - 1)
    | st.text(max_size=12)
    | st.sampled_from(["PlatformLang", "Caf?", "BigOne", "Weird", "", GLOBAL, VENDOR])
    | st.binary(min_size=15, max_size=17)
    | st.lists(
        st.lists(st.sampled_from([RTCODE_PA, RTDATA_PA, MMIO_PA, NEW + RTCODE_PA]), max_size=3),
        max_size=4,
    )
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.sampled_from(
        [
            "efi_info",
            "efi_set_virtual_address_map",
            "efi_get_time",
            "efi_get_variable",
            "efi_next_variable_name",
        ]
    ),
    st.lists(_efi_value, max_size=4),
    st.integers(0, 2**32 - 1),
)
def test_efi_requests_get_exactly_one_reply(fuzz_efi_agent, method, params, request_id):
    """Whatever the parameters, one reply, and neither the agent nor the fake firmware crashes."""
    client = AgentClient(fuzz_efi_agent.transport, timeout=5)
    fuzz_efi_agent.transport.write(encode_frame(msgpack.packb([0, request_id, method, params])))
    replies = []
    deadline = time.monotonic() + 5
    while not replies and time.monotonic() < deadline:
        for event in client.decoder.feed(fuzz_efi_agent.transport.read(0.5)):
            if isinstance(event, Frame):
                replies.append(decode_reply(event.body))
    assert len(replies) == 1
    error = replies[0].error
    assert error is None or error[0] in (3, 9, 10), (method, params, error)
