"""The agent calls OVMF's runtime services (issue 7), against gdb's and QEMU's own view.

One OVMF boot for the module (the firmware alone takes 5-6 s under TCG), and
the tests run in file order on it: first what holds in physical mode, then
`remapped` maps every runtime region at VA_BASE + its physical address with
the agent's `map`, calls SetVirtualAddressMap and drops the low identity map,
so that the calls after it can only reach the firmware at its new addresses.
Everything goes through the agent on COM1 but the checks: gdb reads the saved
memory map by symbol, QMP gives QEMU's translations.
"""

from __future__ import annotations

import datetime
import time
import uuid

import pytest

from kinspect.inspector import api
from kinspect.inspector.targets.qemu_text import decode_info_mem, decode_info_tlb
from kinspect.protocols.agent_client import AgentClient, AgentRemoteError
from kinspect.protocols.transports import open_transport

from .test_paging_vs_qemu import gva2gpa
from .test_uefi import MMIO, RTCODE, RTDATA, saved_memory_map

pytestmark = pytest.mark.integration

VA_BASE = 0xFFFFFFEF00000000
DIRECT_MAP = 0xFFFF888000000000
PAGE, LARGE = 1 << 12, 1 << 21
RW, PWT, PCD, NX = 1 << 1, 1 << 3, 1 << 4, 1 << 63
EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
EFI_BUFFER_TOO_SMALL, EFI_NOT_FOUND = (1 << 63) | 5, (1 << 63) | 14
EFI_VARIABLE_RUNTIME_ACCESS = 4


@pytest.fixture(scope="module")
def client(uefi_qemu):
    c = AgentClient(open_transport(uefi_qemu.agent_endpoint), timeout=10, retries=2)
    try:
        c.hello()
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def saved_map(uefi_qemu, demo_kernel):
    """The memory map the kernel kept, and where, read by gdb through the symbols."""
    session = api.attach(uefi_qemu.gdb_endpoint, elf=demo_kernel)
    try:

        def u64(name: str) -> int:
            return int.from_bytes(session.read_virtual(session.resolve(name), 8), "little")

        return {
            "descriptors": saved_memory_map(session),
            "efi_memmap": session.resolve("efi_memmap"),
            "efi_memmap_size": u64("efi_memmap_size"),
            "efi_memattr": session.resolve("efi_memattr"),
            "efi_memattr_size": u64("efi_memattr_size"),
            "efi_system_table_paddr": u64("efi_system_table_paddr"),
        }
    finally:
        session.close()


def runtime(saved_map):
    return [d for d in saved_map["descriptors"] if d.runtime]


def remote_error(call, *args) -> AgentRemoteError:
    with pytest.raises(AgentRemoteError) as error:
        call(*args)
    return error.value


def map_region(client, pa: int, va: int, size: int, flags: int) -> None:
    """2 MiB pages where both sides are aligned, else 4 KiB pages; at most 64 per request."""
    done = 0
    while done < size:
        at = pa + done
        if at % LARGE == 0 and size - done >= LARGE:
            step = min((size - done) // LARGE, 64) * LARGE
            client.call("map", va + done, at, step, LARGE, flags)
        else:
            step = min(size - done, 64 * PAGE, LARGE - at % LARGE)
            client.call("map", va + done, at, step, PAGE, flags)
        done += step


def test_efi_info_agrees_with_the_saved_map(client, saved_map):
    info = client.call("efi_info")
    regions = runtime(saved_map)
    assert info["virtual_mode"] is False
    assert info["system_table"] == saved_map["efi_system_table_paddr"] != 0
    assert info["system_table_va"] == info["system_table"]
    assert info["memmap"] == saved_map["efi_memmap"]
    assert info["memmap_size"] == saved_map["efi_memmap_size"]
    assert info["desc_size"] == 48 and info["desc_version"] == 1
    assert info["memattr"] == saved_map["efi_memattr"]
    assert info["memattr_size"] == saved_map["efi_memattr_size"] > 0
    assert info["runtime_regions"] == len(regions) == 5
    assert info["firmware_revision"] > 0
    # ST and ST->RuntimeServices are in RuntimeServicesData, the physical addresses before SVAM.
    for address in (info["system_table"], info["runtime_services"]):
        assert any(
            d.type == RTDATA and d.physical_start <= address < d.physical_end for d in regions
        ), hex(address)


def test_runtime_memory_is_out_of_the_direct_map(client, saved_map, uefi_qemu):
    """A read of a runtime page is an error reply (no #PF), and QEMU agrees it is not mapped."""
    st = saved_map["efi_system_table_paddr"]
    error = remote_error(client.call, "read_phys", st & ~0xFFF, 16)
    assert error.code == 4 and error.address == st & ~0xFFF
    assert client.call("hello")["protocol"] == 1
    for d in runtime(saved_map):
        if d.type in (RTCODE, RTDATA):
            assert gva2gpa(uefi_qemu, DIRECT_MAP + d.physical_start) is None
            assert gva2gpa(uefi_qemu, DIRECT_MAP + d.physical_end - PAGE) is None
    # The page below the first RAM region is still in the direct map (4 KiB pages around it).
    first = min(d.physical_start for d in runtime(saved_map) if d.type in (RTCODE, RTDATA))
    assert client.call("read_phys", first - 8, 8) is not None
    assert gva2gpa(uefi_qemu, DIRECT_MAP + first - PAGE) == first - PAGE


def test_get_time_before_svam_needs_the_pflash_identity_mapped(client):
    """OVMF's runtime regions include the pflash at 0xffc00000: the identity map stops at 1 GiB."""
    error = remote_error(client.call, "efi_get_time")
    assert error.code == 9 and error.message.startswith("efi-unmapped")
    assert error.address == 0xFFC00000


@pytest.fixture(scope="module")
def remapped(client, saved_map, uefi_qemu):
    """Every runtime region at VA_BASE + PA, SetVirtualAddressMap, then no identity map."""
    before = client.call("efi_info")
    for d in runtime(saved_map):
        flags = RW if d.type == RTCODE else RW | NX | (PCD | PWT if d.type == MMIO else 0)
        map_region(client, d.physical_start, VA_BASE + d.physical_start, d.size, flags)
    pairs = [[d.physical_start, VA_BASE + d.physical_start] for d in runtime(saved_map)]
    started = time.monotonic()
    reply = client.call("efi_set_virtual_address_map", pairs)
    svam_seconds = time.monotonic() - started
    print(f"SetVirtualAddressMap round trip: {svam_seconds * 1000:.1f} ms")
    # The low identity map (PML4 entry 0) goes: the firmware is reached at its new VAs only.
    client.call("unmap", 0, 1 << 39, 1 << 39)
    return {"reply": reply, "before": before, "pairs": pairs}


def test_svam_reply_and_efi_info(client, remapped):
    before = remapped["before"]
    status, st_va, rt_va = remapped["reply"]
    assert status == 0
    assert st_va == VA_BASE + before["system_table"]
    assert rt_va == VA_BASE + before["runtime_services"]
    info = client.call("efi_info")
    assert info["virtual_mode"] is True
    assert info["system_table"] == before["system_table"]
    assert info["system_table_va"] == st_va
    assert info["runtime_services"] == rt_va
    assert info["firmware_revision"] == before["firmware_revision"]


def test_qemu_translates_the_new_addresses(remapped, saved_map, uefi_qemu):
    """Each runtime region at its new VA only: no identity alias, no direct-map alias."""
    tlb = list(decode_info_tlb(uefi_qemu.monitor("info tlb")))
    for d in runtime(saved_map):
        for pa in (d.physical_start, d.physical_end - PAGE):
            assert gva2gpa(uefi_qemu, VA_BASE + pa) == pa
        if d.type == MMIO:
            continue  # the kernel's MMIO window maps the pflash too
        aliases = {
            line.va
            for line in tlb
            if line.pa < d.physical_end and d.physical_start < line.pa + _leaf_size(line)
        }
        assert aliases and all(VA_BASE <= va < VA_BASE + (1 << 32) for va in aliases), (
            d,
            sorted(map(hex, aliases))[:4],
        )
    # `info mem`: no direct-map range covers a RAM runtime page.
    direct = [
        (start, end)
        for start, end, _ in decode_info_mem(uefi_qemu.monitor("info mem"))
        if DIRECT_MAP <= start < DIRECT_MAP + (1 << 40)
    ]
    assert direct
    for d in runtime(saved_map):
        if d.type in (RTCODE, RTDATA):
            lo, hi = DIRECT_MAP + d.physical_start, DIRECT_MAP + d.physical_end
            assert not [r for r in direct if r[0] < hi and lo < r[1]], d


def _leaf_size(line) -> int:
    return LARGE if line.flags[2] == "P" else PAGE  # PS: 2 MiB (no 1 GiB leaf maps RAM here)


def test_get_time_after_svam(client, remapped):
    trips = []
    for _ in range(9):
        started = time.monotonic()
        reply = client.call("efi_get_time")
        trips.append(time.monotonic() - started)
    print(f"GetTime round trip: median {sorted(trips)[4] * 1000:.1f} ms of 9")
    year, month, day, hour, minute, second, nanosecond, time_zone, daylight = reply
    now = datetime.datetime.now(datetime.UTC)
    assert abs(year - now.year) <= 1  # QEMU's RTC starts at the host's time
    assert 1 <= month <= 12 and 1 <= day <= 31
    assert 0 <= hour < 24 and 0 <= minute < 60 and 0 <= second < 60
    assert 0 <= nanosecond < 10**9
    assert -1440 <= time_zone <= 1440 or time_zone == 0x07FF  # EFI_UNSPECIFIED_TIMEZONE
    assert daylight in (0, 1, 2, 3)
    rtc = datetime.datetime(year, month, day, hour, minute, second, tzinfo=datetime.UTC)
    assert abs((rtc - now).total_seconds()) < 24 * 3600


def test_variables_enumerate_and_read_back(client, remapped):
    names = []
    name, guid = "", bytes(16)
    for _ in range(500):
        entry = client.call("efi_next_variable_name", name, guid)
        if entry is None:
            break
        name, guid = entry
        assert len(guid) == 16
        names.append((name, uuid.UUID(bytes_le=guid)))
    else:
        pytest.fail("GetNextVariableName did not end within 500 names")
    assert len(names) == len(set(names)) >= 1
    global_names = [n for n, g in names if g == EFI_GLOBAL_VARIABLE]
    print(f"{len(names)} variables; in the EFI global GUID: {global_names}")
    assert global_names
    for name in global_names:
        attributes, data = client.call("efi_get_variable", name, EFI_GLOBAL_VARIABLE.bytes_le)
        # Only variables with runtime access are visible after ExitBootServices.
        assert attributes & EFI_VARIABLE_RUNTIME_ACCESS, name
        assert 0 < len(data) <= 1024, name
    if "PlatformLang" in global_names:
        _, data = client.call("efi_get_variable", "PlatformLang", EFI_GLOBAL_VARIABLE.bytes_le)
        assert data.endswith(b"\0") and data[:-1].isascii() and len(data) > 1

    name = global_names[0]
    error = remote_error(client.call, "efi_get_variable", name, EFI_GLOBAL_VARIABLE.bytes_le, 0)
    assert (error.code, error.message, error.address) == (
        10,
        "EFI_BUFFER_TOO_SMALL",
        EFI_BUFFER_TOO_SMALL,
    )
    error = remote_error(
        client.call, "efi_get_variable", "NoSuchVariable", EFI_GLOBAL_VARIABLE.bytes_le
    )
    assert (error.code, error.message, error.address) == (10, "EFI_NOT_FOUND", EFI_NOT_FOUND)


def test_second_svam_is_refused(client, remapped):
    _, st_va, _ = remapped["reply"]
    error = remote_error(client.call, "efi_set_virtual_address_map", remapped["pairs"])
    assert error.code == 9 and error.message.startswith("efi-virtual-mode")
    assert error.address == st_va
    assert client.call("efi_info")["virtual_mode"] is True


def test_runtime_page_read_is_an_error_after_the_remap(client, remapped, saved_map, uefi_qemu):
    st = saved_map["efi_system_table_paddr"]
    error = remote_error(client.call, "read_phys", st, 8)
    assert error.code == 4
    # Through its new VA the agent reads it (page walk, then read_phys: refused the same way).
    error = remote_error(client.call, "read_virt", VA_BASE + st, 8)
    assert error.code == 4
    assert client.call("hello")["protocol"] == 1
    assert "panic" not in uefi_qemu.serial_output()


def test_pvh_boot_gives_the_agent_no_uefi(qemu):
    """The same kernel booted through PVH: every efi_* method is error 6, nothing is called."""
    with AgentClient(open_transport(qemu.agent_endpoint), timeout=10) as pvh:
        assert "efi_get_time" in pvh.hello()["methods"]
        for method, *params in [
            ("efi_info",),
            ("efi_get_time",),
            ("efi_set_virtual_address_map", []),
            ("efi_get_variable", "BootOrder", EFI_GLOBAL_VARIABLE.bytes_le),
            ("efi_next_variable_name", "", bytes(16)),
        ]:
            assert remote_error(pvh.call, method, *params).code == 6, method
