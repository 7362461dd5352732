"""The read-only agent (``-DAGENT_READONLY``): nothing that changes the kernel is compiled
in, and ``hello`` says so; everything that reads still answers."""

from __future__ import annotations

import subprocess

import pytest

from kinspect.protocols.agent_client import AgentClient, AgentRemoteError
from tests.unit.agent_host import HostAgent, build_host_tools, host_tools, write_image
from tests.unit.test_agent_host import demo_like_tables

MUTATING = {
    "map",
    "unmap",
    "protect",
    "set_entries",
    "move_stack",
    "load_descriptors",
    "switch_cr3",
    "efi_set_virtual_address_map",
}


@pytest.fixture(scope="module")
def readonly_binary(tmp_path_factory):
    out = tmp_path_factory.mktemp("agent-readonly")
    return build_host_tools(out, ("-DAGENT_READONLY",))["host_agent"]


def _symbols(binary) -> set[str]:
    out = subprocess.run(["nm", str(binary)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def test_the_mutating_methods_are_not_compiled_in(readonly_binary):
    full = _symbols(host_tools()["host_agent"])
    readonly = _symbols(readonly_binary)
    for function in ("m_map", "m_unmap", "m_protect", "m_move_stack", "apply_intents"):
        assert function in full and function not in readonly
    assert "agent_m_efi_set_virtual_address_map" not in readonly
    assert "m_read_phys" in readonly and "m_walk" in readonly


def test_hello_says_read_only_and_reads_still_answer(readonly_binary, tmp_path):
    pt = demo_like_tables()
    image = tmp_path / "image"
    write_image(image, pt.memory, ram_size=pt.memory.ram_size, cr3=pt.root)
    agent = HostAgent(readonly_binary, image)
    client = AgentClient(agent.transport, timeout=5)
    try:
        hello = client.hello()
        assert hello["readonly"] is True
        assert not MUTATING & set(hello["methods"])
        assert {"hello", "regs", "read_phys", "read_virt", "walk", "stop", "resume"} <= set(
            hello["methods"]
        )
        assert len(client.call("read_phys", pt.root, 64)) == 64
        with pytest.raises(AgentRemoteError) as unknown:
            client.call("map", 0xFFFF800000000000, 0x100000, 4096, 4096, 0)
        assert unknown.value.code == 2  # an unknown method: there is no code to run
    finally:
        client.close()
        stderr = agent.close()
    assert "runtime error" not in stderr and "AddressSanitizer" not in stderr, stderr


def test_the_full_build_says_it_is_not_read_only(tmp_path):
    pt = demo_like_tables()
    image = tmp_path / "image"
    write_image(image, pt.memory, ram_size=pt.memory.ram_size, cr3=pt.root)
    agent = HostAgent(host_tools()["host_agent"], image)
    client = AgentClient(agent.transport, timeout=5)
    try:
        hello = client.hello()
        assert hello["readonly"] is False and MUTATING <= set(hello["methods"])
    finally:
        client.close()
        agent.close()
