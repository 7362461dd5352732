"""The demo kernel booted through UEFI (OVMF on q35, gnu-efi loader), against QEMU's own view.

One OVMF boot for the module: the firmware alone takes 5-6 s under TCG.
"""

from __future__ import annotations

import re

import pytest

from kinspect.inspector import api
from kinspect.inspector.efi.memmap import decode_memory_map
from kinspect.inspector.targets.qemu_text import decode_info_tlb
from tests.waiting import wait_until

from .test_paging_vs_qemu import gva2gpa, tlb_flags

pytestmark = pytest.mark.integration

RTCODE, RTDATA, CONVENTIONAL, MMIO = 5, 6, 7, 11


@pytest.fixture
def uefi_session(uefi_qemu, demo_kernel):
    s = api.attach(uefi_qemu.gdb_endpoint, elf=demo_kernel)
    try:
        yield s
    finally:
        s.close()


def saved_memory_map(session):
    size = int.from_bytes(session.read_virtual(session.resolve("efi_memmap_size"), 8), "little")
    stride = int.from_bytes(
        session.read_virtual(session.resolve("efi_memmap_desc_size"), 8), "little"
    )
    assert 0 < size <= 0x4000 and stride >= 40
    return decode_memory_map(session.read_virtual(session.resolve("efi_memmap"), size), stride)


def test_booted_through_the_uefi_entry(uefi_qemu):
    text = uefi_qemu.serial_output()
    assert "kinspect-uefi: loading the demo kernel" in text  # the loader, on the firmware's console
    assert "kinspect demo kernel (x86_64, UEFI entry" in text
    assert "PVH entry" not in text
    print(f"UEFI boot to ready: {uefi_qemu.boot_seconds:.1f} s")


def test_every_leaf_matches_info_tlb(uefi_session, uefi_qemu):
    """After ExitBootServices the kernel runs on its own tables, not OVMF's 1 TiB identity map."""
    control = uefi_session.control_registers()
    assert control["CR3"].value & ~0xFFF == uefi_session.resolve("kernel_pml4") - 0xFFFFFFFF80000000
    space = uefi_session.address_space()
    assert not space.problems and not space.truncated
    ours = {(leaf.va, leaf.pa, tlb_flags(leaf.entry.raw)) for leaf in space.leaves}
    theirs = {tuple(line) for line in decode_info_tlb(uefi_qemu.monitor("info tlb"))}
    assert len(theirs) > 100
    assert ours == theirs


def test_saved_memory_map_has_the_firmware_runtime_regions(uefi_session, uefi_qemu):
    descriptors = saved_memory_map(uefi_session)
    assert len(descriptors) > 20
    for before, after in zip(descriptors, descriptors[1:], strict=False):
        assert before.physical_end <= after.physical_start, (before, after)
    assert all(d.type <= 14 and d.number_of_pages > 0 for d in descriptors)
    conventional = sum(d.size for d in descriptors if d.type == CONVENTIONAL)
    assert 128 << 20 < conventional < 256 << 20

    runtime = [d for d in descriptors if d.runtime]
    types = {d.type for d in runtime}
    assert RTCODE in types and RTDATA in types
    for d in runtime:
        if d.type in (RTCODE, RTDATA):
            assert d.physical_end <= 256 << 20  # in RAM
    # OVMF_CODE_4M + VARS_4M: QEMU maps the two pflash units as the last 4 MiB below 4 GiB.
    assert any(
        d.type == MMIO and d.physical_start == 0xFFC00000 and d.physical_end == 1 << 32
        for d in runtime
    )
    # The kernel printed the runtime regions as it saved them: the same ones, read back by symbol.
    printed = re.findall(
        r"\[mem 0x([0-9a-f]{16})-0x([0-9a-f]{16})\] (\w+) attr 0x([0-9a-f]+) \(runtime\)",
        uefi_qemu.serial_output(),
    )
    assert [(int(s, 16), int(e, 16) + 1, int(a, 16)) for s, e, _, a in printed] == [
        (d.physical_start, d.physical_end, d.attribute) for d in runtime
    ]
    # The symbol read went where QEMU says efi_memmap is.
    va = uefi_session.resolve("efi_memmap")
    assert uefi_session.translate(va).pa == gva2gpa(uefi_qemu, va)


def test_timer_ticks_after_exit_boot_services(uefi_qemu, demo_kernel):
    """The 8259's IRQ 0 reaches the CPU (LAPIC LINT0 in virtual-wire mode): the idle loop runs."""

    def ticks() -> int:
        s = api.attach(uefi_qemu.gdb_endpoint, elf=demo_kernel)
        try:
            return int.from_bytes(s.read_virtual(s.resolve("demo_ticks"), 8), "little")
        finally:
            s.close()

    first = ticks()
    wait_until(lambda: ticks() > first, what="demo_ticks moves: the kernel runs again")


def test_efi_map_command(uefi_qemu, demo_kernel):
    """`kinspect efi-map`: the runtime regions, each with the VAs that map it now."""
    import io
    import json

    from kinspect.inspector import cli

    out = io.StringIO()
    argv = ["--target", uefi_qemu.gdb_endpoint, "--elf", demo_kernel, "--json", "efi-map"]
    assert cli.run(argv, out=out) == 0
    document = json.loads(out.getvalue())
    assert document["command"] == "efi-map"
    memory_map = document["efi_memory_map"]
    assert memory_map["descriptor_size"] == 48
    runtime = [d for d in memory_map["descriptors"] if d["runtime"]]
    assert {"RuntimeServicesCode", "RuntimeServicesData"} <= {d["type_name"] for d in runtime}
    for d in runtime:
        if d["type_name"] == "MemoryMappedIO":  # the pflash, in the kernel's MMIO window only
            assert d["mapped_at"] == [0xFFFFC90000000000 + d["physical_start"] - 0xC0000000]
        else:
            # RAM: the low identity map only; the kernel leaves the firmware's memory out
            # of its direct map, as Linux does (`remap efi-runtime` maps it high)
            assert d["mapped_at"] == [d["physical_start"]]
            assert gva2gpa(uefi_qemu, 0xFFFF888000000000 + d["physical_start"]) is None
            for va in d["mapped_at"]:
                assert gva2gpa(uefi_qemu, va) == d["physical_start"]

    text = io.StringIO()
    assert cli.run(argv[:-2] + ["efi-map"], out=text) == 0
    assert "RuntimeServicesCode" in text.getvalue() and "mapped at" in text.getvalue()


def test_efi_map_through_the_agent_matches_the_stub(uefi_qemu, demo_kernel):
    """The agent on COM1 (the firmware's console before it) gives the same map, no gdb stub."""
    import io
    import json

    from kinspect.inspector import cli

    def efi_map(*channel: str) -> dict:
        out = io.StringIO()
        assert cli.run([*channel, "--elf", demo_kernel, "--json", "efi-map"], out=out) == 0
        return json.loads(out.getvalue())["efi_memory_map"]

    through_agent = efi_map("--agent", uefi_qemu.agent_endpoint)
    assert through_agent == efi_map("--target", uefi_qemu.gdb_endpoint)
    assert sum(d["runtime"] for d in through_agent["descriptors"]) >= 5


def test_memory_attributes_table_splits_the_runtime_regions(uefi_session):
    """OVMF's EFI_MEMORY_ATTRIBUTES_TABLE, copied before ExitBootServices: inside RT regions."""
    table = uefi_session.efi_memory_attributes()
    assert table is not None and table.version >= 1 and table.entries
    regions = [d for d in saved_memory_map(uefi_session) if d.type in (RTCODE, RTDATA)]
    for entry in table.entries:
        assert entry.runtime and entry.type in (RTCODE, RTDATA)
        assert any(
            r.physical_start <= entry.physical_start and entry.physical_end <= r.physical_end
            for r in regions
        ), entry
    # The code is split into read-only text and non-executable data (RO, XP: bits 17, 14).
    code = [e for e in table.entries if e.type == RTCODE]
    assert any(e.attribute >> 17 & 1 for e in code) and any(e.attribute >> 14 & 1 for e in code)
