"""`kinspect remap efi-runtime` on the UEFI demo kernel, as a user runs it, against
QEMU's own view (``info mem``, ``info tlb``, ``xp``, ``gva2gpa``) and the host's clock.

SetVirtualAddressMap works once per boot, so the module has one OVMF boot
and its tests run in order: before, the move, after.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest

from kinspect.inspector import api
from kinspect.inspector.efi.runtime import EFI_VA_BASE
from kinspect.inspector.targets.qemu_text import decode_info_mem, decode_info_tlb
from kinspect.protocols.agent_client import AgentClient, AgentRemoteError
from kinspect.protocols.transports import open_transport

from .test_cli import kinspect
from .test_paging_vs_qemu import gva2gpa
from .test_remap import xp
from .test_uefi import saved_memory_map

pytestmark = pytest.mark.integration

HIGHER_HALF = 0xFFFF800000000000
MMIO_WINDOW = 0xFFFFC90000000000  # the demo kernel's window on 0xc0000000-0xffffffff
MMIO = 11


@pytest.fixture(scope="module")
def runtime(uefi_qemu, demo_kernel):
    with api.attach(uefi_qemu.gdb_endpoint, elf=demo_kernel) as session:
        regions = [d for d in saved_memory_map(session) if d.runtime]
    assert regions
    return regions


@pytest.fixture(scope="module")
def journal(tmp_path_factory):
    return tmp_path_factory.mktemp("efi") / "journal.jsonl"


def agent(uefi_qemu, *args):
    return kinspect("--agent", uefi_qemu.agent_endpoint, *args, timeout=120)


def test_0_the_move_runs_with_an_ap_online(uefi_qemu):
    """The UEFI boot has two CPUs (conftest): the agent holds the AP and shoots down its TLB."""
    assert "smp: 2 cpus online" in uefi_qemu.serial_output()
    client = AgentClient(open_transport(uefi_qemu.agent_endpoint), timeout=5)
    try:
        hello = client.call("hello")
    finally:
        client.close()
    assert hello["cpus"] == 2 and {"hold_others", "tlb_shootdown"} <= set(hello["hooks"])


def test_1_efi_map_through_the_agent_shows_the_runtime_regions_identity_mapped(uefi_qemu, runtime):
    result = agent(uefi_qemu, "efi-map", "--json")  # no ELF: the agent says where the map is
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    shown = [d for d in doc["efi_memory_map"]["descriptors"] if d["runtime"]]
    assert [(d["physical_start"], d["number_of_pages"]) for d in shown] == [
        (d.physical_start, d.number_of_pages) for d in runtime
    ]
    for d in shown:
        if d["type"] != MMIO:  # the first GiB is identity-mapped; the pflash is not
            assert d["physical_start"] in d["mapped_at"]


def test_2_the_plan_says_what_it_will_do_and_changes_nothing(uefi_qemu, runtime, journal):
    before = tlb_without_a_d(uefi_qemu)
    result = agent(uefi_qemu, "remap", "efi-runtime", "--plan", "--journal", str(journal))
    assert result.returncode == 0, result.stderr
    assert "SetVirtualAddressMap" in result.stdout and "Cannot be undone" in result.stdout
    assert f"{EFI_VA_BASE + runtime[0].physical_start:#x}" in result.stdout
    assert "clear PML4 entry 0" in result.stdout
    assert tlb_without_a_d(uefi_qemu) == before


def test_2b_the_higher_half_scenario_includes_the_runtime_services(uefi_qemu, journal):
    result = agent(uefi_qemu, "remap", "higher-half", "--plan", "--json", "--journal", str(journal))
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)["plan"]
    methods = [s["method"] for s in plan["steps"]]
    # The UEFI kernel runs high already: no stack or descriptor move, the firmware's move
    # and then the identity map's end, in that order.
    assert "move_stack" not in methods and "load_descriptors" not in methods
    assert methods.index("efi_set_virtual_address_map") == len(methods) - 2
    assert methods[-1] == "unmap" and set(methods[:-2]) == {"map"}
    assert not plan["refusals"]


def test_3_the_move_is_applied_verified_and_journaled(uefi_qemu, demo_kernel, runtime, journal):
    started = time.monotonic()
    result = kinspect(
        "--agent",
        uefi_qemu.agent_endpoint,
        "--target",
        uefi_qemu.gdb_endpoint,
        "--elf",
        demo_kernel,
        "remap",
        "efi-runtime",
        "--yes",
        "--json",
        "--journal",
        str(journal),
        timeout=300,
    )
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr + result.stdout
    doc = json.loads(result.stdout)
    assert doc["verified"] and doc["verified_by"] == "the gdb stub's walk"
    methods = [r["step"]["method"] for r in doc["applied"]]
    assert methods.count("efi_set_virtual_address_map") == 1
    assert methods[-1] == "unmap"  # the identity map goes last, after the check
    svam = next(r for r in doc["applied"] if r["step"]["method"] == "efi_set_virtual_address_map")
    assert svam["result"][0] == 0  # EFI_SUCCESS
    assert any(c.startswith("GetTime answers through the new mapping") for c in svam["checks"])
    assert any("GetVariable" in c for c in svam["checks"])
    print(f"efi-runtime: {len(methods)} steps in {seconds:.1f} s")


def test_4_qemu_sees_the_runtime_regions_at_their_new_addresses_only(uefi_qemu, runtime):
    mem = list(decode_info_mem(uefi_qemu.monitor("info mem")))
    assert mem and all(start >= HIGHER_HALF for start, _end, _perm in mem), "identity map gone"
    for d in runtime:  # info mem: each region's new range is mapped whole
        new = EFI_VA_BASE + d.physical_start
        covered = sum(
            min(end, new + d.size) - max(start, new)
            for start, end, _ in mem
            if start < new + d.size and end > new
        )
        assert covered == d.size, d
    spans = leaf_spans(decode_info_tlb(uefi_qemu.monitor("info tlb")))
    for d in runtime:
        new = EFI_VA_BASE + d.physical_start
        for off in (0, d.size - 0x1000):
            assert gva2gpa(uefi_qemu, new + off) == d.physical_start + off
        # Every leaf that maps a page of the region, whatever its size.
        where = [
            va + max(0, d.physical_start - pa)
            for va, pa, size in spans
            if pa < d.physical_end and pa + size > d.physical_start
        ]
        assert where
        for va in where:
            inside = new <= va < new + d.size
            in_window = d.type == MMIO and MMIO_WINDOW <= va < MMIO_WINDOW + (1 << 30)
            assert inside or in_window, f"{d} is also mapped at {va:#x}"


def test_5_get_time_answers_with_the_hosts_date(uefi_qemu):
    result = agent(uefi_qemu, "efi-time", "--json")
    assert result.returncode == 0, result.stderr
    t = json.loads(result.stdout)["efi_time"]
    host = datetime.now(UTC)
    firmware = datetime(
        t["year"], t["month"], t["day"], t["hour"], t["minute"], t["second"], tzinfo=UTC
    )
    # QEMU's RTC starts at the host's UTC time (-rtc base=utc, the default).
    assert abs((firmware - host).total_seconds()) < 3600, (firmware, host)


def test_6_variables_answer_through_the_new_mapping(uefi_qemu):
    listed = agent(uefi_qemu, "efi-vars", "--json")
    assert listed.returncode == 0, listed.stderr
    names = json.loads(listed.stdout)["variables"]
    assert names
    first = names[0]
    read = agent(uefi_qemu, "efi-vars", first["name"], "--guid", first["guid"], "--json")
    assert read.returncode == 0, read.stderr
    variable = json.loads(read.stdout)["variable"]
    assert "RT" in variable["attribute_names"]  # only runtime variables are listed now


def test_7_undo_is_refused_with_the_reason_and_the_journal_stays_true(uefi_qemu, journal):
    # every open step (plain undo takes the newest, which follows the call and may go)
    result = agent(uefi_qemu, "remap", "undo", "--all", "--journal", str(journal))
    assert result.returncode == 1
    assert "SetVirtualAddressMap, which cannot be undone" in result.stderr
    assert "Traceback" not in result.stderr
    listed = agent(uefi_qemu, "remap", "journal", "--json", "--journal", str(journal))
    steps = json.loads(listed.stdout)["steps"]
    assert steps and all(s["state"] == "applied" for s in steps)
    # The page-table part of the journal says what the tables hold now.
    for step in steps:
        if step["method"] not in ("map", "unmap"):
            continue
        for _va, _level, entry_pa, _old, new in step["result"]:
            assert xp(uefi_qemu, entry_pa) & ~0x60 == new & ~0x60, hex(entry_pa)  # A, D: the CPU's


def test_8_the_moved_regions_may_not_be_unmapped(uefi_qemu, runtime, journal):
    va = EFI_VA_BASE + runtime[0].physical_start
    result = agent(uefi_qemu, "remap", "unmap", hex(va), "4k", "--plan", "--journal", str(journal))
    assert result.returncode == 1
    assert f"refused (efi-runtime) at {va:#x}" in result.stdout
    # Sent past the plan, the agent refuses it too.
    client = AgentClient(open_transport(uefi_qemu.agent_endpoint, timeout=5), timeout=5)
    try:
        client.hello()
        with pytest.raises(AgentRemoteError) as refused:
            client.call("unmap", va, 0x1000, 0x1000)
    finally:
        client.close()
    assert (refused.value.code, refused.value.address) == (9, va)
    assert refused.value.message.startswith("efi-runtime")


def test_9_a_second_call_is_refused(uefi_qemu, journal):
    result = agent(uefi_qemu, "remap", "efi-runtime", "--yes", "--journal", str(journal) + ".2")
    assert result.returncode == 1
    assert "efi-virtual-mode" in result.stderr
    hello = agent(uefi_qemu, "agent", "hello")
    assert hello.returncode == 0, hello.stderr  # the kernel and its agent still answer


def tlb_without_a_d(qemu):
    """info tlb's leaves, the accessed and dirty bits left out (the CPU sets them as it runs)."""
    return {
        (va, pa, flags[:3] + flags[5:])
        for va, pa, flags in decode_info_tlb(qemu.monitor("info tlb"))
    }


def leaf_spans(leaves):
    """(va, pa, size) per ``info tlb`` line: PS set (the third flag, "P") means 2 MiB, or
    1 GiB when nothing else is mapped in that GiB; info tlb does not print the size."""
    ordered = sorted(leaves)
    out = []
    for i, (va, pa, flags) in enumerate(ordered):
        size = 0x1000
        if flags[2] == "P":
            following = ordered[i + 1][0] if i + 1 < len(ordered) else 1 << 64
            gib = 1 << 30
            size = gib if va % gib == 0 and pa % gib == 0 and following - va >= gib else 1 << 21
        out.append((va, pa, size))
    return out
