"""Remaps through the agent on the demo kernel booted with ``lowhalf``, checked
against QEMU's own view: ``info tlb`` for the mappings, ``xp`` for the raw
page-table entries, ``info registers`` for GDTR/IDTR/TR/RSP.

One QEMU for the module; every test undoes what it did, and the seed
scenario (last) undoes itself too.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from kinspect.inspector import api
from kinspect.inspector.remap.apply import Remapper, RemapRefused
from kinspect.inspector.remap.journal import Journal
from kinspect.inspector.remap.plan import FLAG_BITS
from kinspect.inspector.targets.agent import AgentTarget
from kinspect.inspector.targets.qemu_text import decode_info_registers, decode_info_tlb
from kinspect.protocols.agent_client import AgentClient, AgentRemoteError
from kinspect.protocols.agent_wire import encode_frame, encode_request

pytestmark = pytest.mark.integration

SPARE = 0xFFFFD00000000000  # no mapping in the demo kernel's layout here
RW, NX = FLAG_BITS["RW"], FLAG_BITS["NX"]
HIGHER_HALF = 0xFFFF800000000000
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def lowqemu(demo_kernel):
    instance = api.launch_demo(append="lowhalf")
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def remapper(lowqemu, tmp_path):
    target = AgentTarget(lowqemu.agent_endpoint, timeout=5)
    r = Remapper(target, Journal.open(tmp_path / "journal.jsonl"))
    try:
        yield r
    finally:
        target.close()


def tlb(qemu) -> dict[int, tuple[int, str]]:
    """va -> (pa, flags) from QEMU; D and A left out (the CPU sets them as the kernel runs)."""
    return {
        line.va: (line.pa, line.flags[:3] + "--" + line.flags[5:])
        for line in decode_info_tlb(qemu.monitor("info tlb"))
    }


def xp(qemu, pa: int) -> int:
    """One 8-byte physical word as QEMU reads it."""
    text = qemu.monitor(f"xp /1gx {pa:#x}")
    return int(re.search(r":\s*0x([0-9a-f]+)", text).group(1), 16)


def test_lowhalf_boot_leaves_the_runtime_in_the_identity_map(lowqemu):
    regs = decode_info_registers(lowqemu.monitor("info registers"))
    assert regs["rsp"] < HIGHER_HALF
    assert regs["gdt"].base < HIGHER_HALF and regs["idt"].base < HIGHER_HALF


def test_map_protect_unmap_in_info_tlb_and_undo_restores_raw_entries(lowqemu, remapper):
    before = tlb(lowqemu)
    assert not any(va >= SPARE and va < SPARE + (1 << 39) for va in before)

    plan = remapper.plan_map(SPARE, 0x200000, 0x3000, flags=RW | NX)
    assert plan.tables_to_allocate == 3 and not plan.refusals
    (report,) = remapper.apply(plan)
    assert report.verified, report.problems
    now = tlb(lowqemu)
    for i in range(3):
        pa, flags = now[SPARE + i * 0x1000]
        assert pa == 0x200000 + i * 0x1000
        assert flags[0] == "X" and flags[-1] == "W"  # NX and writable, as QEMU sees them

    (report,) = remapper.apply(remapper.plan_protect(SPARE, 0x2000, flags=0))
    assert report.verified, report.problems
    now = tlb(lowqemu)
    assert now[SPARE][1][-1] == "-" and now[SPARE][1][0] == "-"  # read-only, executable
    assert now[SPARE + 0x2000][1][-1] == "W"

    (report,) = remapper.apply(remapper.plan_unmap(SPARE + 0x1000, 0x1000))
    assert report.verified, report.problems
    now = tlb(lowqemu)
    assert SPARE + 0x1000 not in now and SPARE in now and SPARE + 0x2000 in now

    written = [e for s in remapper.journal.open_steps() for e in s.result]
    undone = remapper.undo()
    assert [s.method for s in undone] == ["unmap", "protect", "map"]
    assert tlb(lowqemu) == before
    first_old = {}
    for _va, _level, entry_pa, old, _new in written:
        first_old.setdefault(entry_pa, old)  # the value before the first step touched it
    for entry_pa, old in first_old.items():
        assert xp(lowqemu, entry_pa) == old, hex(entry_pa)
    assert not remapper.journal.open_steps()


def test_retried_mutating_request_is_applied_once(lowqemu, remapper):
    client = remapper.target.client
    request_id = 0x5EED0001
    frame = encode_frame(
        encode_request(request_id, "map", [SPARE, 0x300000, 0x1000, 0x1000, RW | NX, False])
    )

    def receive():
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            reply = client._receive(request_id, 0.5)
            if reply is not None:
                return reply
        pytest.fail("no reply from the agent")

    client._send(frame)
    first = receive()
    client._send(frame)  # the same id again, as a retry after a lost reply would be
    second = receive()
    assert first.error is None and second == first
    # Run again it would have found the entry already written and reported nothing replaced.
    assert any(e[3] == 0 and e[4] & 1 for e in first.result)
    again = client.call("map", SPARE, 0x300000, 0x1000, 0x1000, RW | NX, False)
    assert again == []
    entries = [[va, level, old] for va, level, _pa, old, _new in reversed(first.result)]
    client.call("set_entries", False, entries)
    assert SPARE not in tlb(lowqemu)


def refusal(client: AgentClient, method: str, *params) -> tuple[str, int]:
    with pytest.raises(AgentRemoteError) as info:
        client.call(method, *params)
    assert info.value.code == 9, info.value
    return info.value.message.partition(":")[0], info.value.address


def test_each_refusal_is_named_and_changes_nothing(lowqemu, remapper):
    client = remapper.target.client
    regs = remapper.registers()
    before = tlb(lowqemu)
    rip_page = regs["rip"] & ~0xFFF
    rsp_page = regs["rsp"] & ~0xFFF
    cr3 = regs["cr3"] & ~0xFFF
    direct = 0xFFFF888000000000
    page = 0x1000

    assert refusal(client, "protect", rip_page, page, page, NX, False)[0] == "running-code"
    assert refusal(client, "unmap", rip_page, page, page, False)[0] == "running-code"
    assert refusal(client, "unmap", rsp_page, page, page, False) == ("own-stack", rsp_page)
    assert refusal(client, "protect", rsp_page, page, page, NX, False)[0] == "own-stack"
    gdt_page = regs["gdtr_base"] & ~0xFFF
    assert refusal(client, "unmap", gdt_page, page, page, False)[0] == "descriptor-tables"
    idt_page = regs["idtr_base"] & ~0xFFF
    assert refusal(client, "unmap", idt_page, page, page, False)[0] == "descriptor-tables"
    # The LDT that LDTR selects (alone in its page in the demo kernel, so only it protects it).
    ldt = remapper.target.system_registers().ldtr
    assert ldt is not None and ldt.base % page == 0 and ldt.limit == 0x27
    assert refusal(client, "unmap", ldt.base, page, page, False) == ("descriptor-tables", ldt.base)
    # The page tables are reached through the direct map: its 2 MiB page holding CR3's table.
    big = 1 << 21
    assert (
        refusal(client, "unmap", direct + (cr3 & ~(big - 1)), big, big, False)[0] == "page-tables"
    )
    assert (
        refusal(client, "map", 0x0000800000000000, 0x200000, page, page, RW, False)[0]
        == "non-canonical"
    )
    assert refusal(client, "map", SPARE + 0x800, 0x200000, page, page, RW, False)[0] == "misaligned"
    # Moving the stack or the descriptor tables somewhere that is not the same memory.
    lo = rsp_page - 3 * page
    assert refusal(client, "move_stack", lo, rsp_page + page, SPARE, False)[0] == "not-an-alias"
    assert (
        refusal(client, "move_stack", lo, rsp_page + page, direct + lo, False)[0] == "no-guard-page"
    )
    assert (
        refusal(client, "load_descriptors", SPARE, regs["idtr_base"], 0, False)[0] == "not-an-alias"
    )
    # A whole PML4 entry: the identity map still holds the stack and the GDT.
    assert refusal(client, "unmap", 0, 1 << 39, 1 << 39, False)[0] in (
        "own-stack",
        "descriptor-tables",
    )
    # New tables that do not map the agent's code (an empty page of RAM as the PML4).
    assert refusal(client, "switch_cr3", 0x7000000, False)[0] == "running-code"
    assert tlb(lowqemu) == before
    assert client.call("switch_cr3", regs["cr3"], False) == regs["cr3"]  # same tables: allowed
    assert tlb(lowqemu) == before

    # The plan says the same before anything is sent.
    plan = remapper.plan_unmap(rsp_page, page)
    assert [r.reason for r in plan.refusals] == ["own-stack"]
    with pytest.raises(RemapRefused) as info:
        remapper.apply(plan)
    assert info.value.reason == "own-stack"
    assert not remapper.journal.open_steps()
    plan = remapper.plan_unmap(ldt.base, page)
    assert [(r.reason, r.address) for r in plan.refusals] == [("descriptor-tables", ldt.base)]


KILLED_SCRIPT = """
import sys, time
from kinspect.inspector.remap.apply import Remapper
from kinspect.inspector.remap.journal import Journal
from kinspect.inspector.targets.agent import AgentTarget
spec, journal, va = sys.argv[1], sys.argv[2], int(sys.argv[3], 0)
r = Remapper(AgentTarget(spec, timeout=5), Journal.open(journal))
plan = r.plan_map(va, 0x400000, 0x1000 * 65, flags=0x8000000000000002)  # two steps: 64 + 1 pages
r.run_step(plan.steps[0])
print("STEP1", flush=True)
time.sleep(60)
r.run_step(plan.steps[1])
"""


def test_killed_inspector_leaves_a_journal_that_undoes_on_next_start(lowqemu, tmp_path):
    journal = tmp_path / "killed.jsonl"
    before = tlb(lowqemu)
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_SCRIPT, lowqemu.agent_endpoint, str(journal), hex(SPARE)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout.readline().strip() == "STEP1"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert SPARE + 63 * 0x1000 in tlb(lowqemu) and SPARE + 64 * 0x1000 not in tlb(lowqemu)

    def kinspect(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "kinspect.inspector.cli",
                "--agent",
                lowqemu.agent_endpoint,
                "remap",
                *args,
                "--journal",
                str(journal),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )

    blocked = kinspect("map", hex(SPARE), "0x500000", "0x1000", "--yes")
    assert blocked.returncode == 1 and "crashed session left 1 open steps" in blocked.stderr
    listed = kinspect("journal")
    assert "1 open steps" in listed.stdout and "pending" not in listed.stdout
    undone = kinspect("undo")
    assert undone.returncode == 0 and "undone: #1 map" in undone.stdout, undone.stderr
    assert tlb(lowqemu) == before
    assert "0 open steps" in kinspect("journal").stdout


def test_seed_scenario_higher_half_from_the_cli(lowqemu, tmp_path):
    journal = tmp_path / "seed.jsonl"
    t0 = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kinspect.inspector.cli",
            "--agent",
            lowqemu.agent_endpoint,
            "remap",
            "higher-half",
            "--yes",
            "--journal",
            str(journal),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    elapsed = time.monotonic() - t0
    assert done.returncode == 0, done.stdout + done.stderr
    assert "move_stack" in done.stdout and "load_descriptors" in done.stdout
    assert done.stdout.count("verified: the registers are as planned") == 2
    assert done.stdout.count("verified: the walk matches the plan") == 1
    assert "the agent still answers" in done.stdout
    print(f"seed scenario from the CLI: {elapsed:.2f} s")

    # QEMU's own view: nothing left below the hole; RSP, GDTR, IDTR, TR up high.
    assert not [va for va in tlb(lowqemu) if va < HIGHER_HALF]
    regs = decode_info_registers(lowqemu.monitor("info registers"))
    assert regs["gdt"].base >= HIGHER_HALF and regs["idt"].base >= HIGHER_HALF
    assert regs["tr"].base >= HIGHER_HALF
    # The kernel keeps running (timer ticks, idle loop) and its agent answers.
    target = AgentTarget(lowqemu.agent_endpoint, timeout=5)
    try:
        assert target.agent_registers()["rsp"] >= HIGHER_HALF
        assert target.walk_ranges()[0].start >= HIGHER_HALF
    finally:
        target.close()
    time.sleep(0.3)
    regs = decode_info_registers(lowqemu.monitor("info registers"))
    assert regs["rsp"] >= HIGHER_HALF

    undone = subprocess.run(
        [
            sys.executable,
            "-m",
            "kinspect.inspector.cli",
            "--agent",
            lowqemu.agent_endpoint,
            "remap",
            "undo",
            "--all",  # every step of the scenario (plain undo takes the newest, then asks)
            "--journal",
            str(journal),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert undone.returncode == 0, undone.stderr
    assert [va for va in tlb(lowqemu) if va < HIGHER_HALF]
    regs = decode_info_registers(lowqemu.monitor("info registers"))
    assert regs["gdt"].base < HIGHER_HALF and regs["rsp"] < HIGHER_HALF


def test_python_api_plans_applies_and_undoes(lowqemu, tmp_path):
    with api.attach_agent(lowqemu.agent_endpoint) as k:
        r = api.remapper(k, journal=tmp_path / "api.jsonl")
        plan = r.plan_map(SPARE, 0x200000, 0x1000, flags=RW | NX)
        assert "page tables to allocate" in str(plan)
        (report,) = r.apply(plan)
        assert report.verified and SPARE in tlb(lowqemu)
        assert [s.method for s in r.undo()] == ["map"]
        assert SPARE not in tlb(lowqemu)


def test_move_maps_the_new_alias_verifies_then_drops_the_old(lowqemu, remapper):
    before = tlb(lowqemu)
    remapper.apply(remapper.plan_map(SPARE, 0x200000, 0x2000, flags=RW | NX | FLAG_BITS["G"]))
    plan = remapper.plan_move(SPARE, 0x2000, SPARE + 0x100000, drop_old=True)
    assert [s.method for s in plan.steps] == ["map", "unmap"]
    reports = remapper.apply(plan)
    assert all(r.verified for r in reports), [r.problems for r in reports]
    now = tlb(lowqemu)
    assert SPARE not in now and now[SPARE + 0x100000] == (0x200000, "XG------W")
    assert [s.method for s in remapper.undo()] == ["unmap", "map", "map"]
    assert tlb(lowqemu) == before


def test_cli_verifies_through_the_gdb_stub_when_given_one(lowqemu, tmp_path):
    journal = str(tmp_path / "gdb.jsonl")
    base = [
        sys.executable,
        "-m",
        "kinspect.inspector.cli",
        "--agent",
        lowqemu.agent_endpoint,
        "--target",
        lowqemu.gdb_endpoint,
        "remap",
    ]
    done = subprocess.run(
        [*base, "map", hex(SPARE), "0x200000", "4k", "--yes", "--json", "--journal", journal],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["verified"] and doc["applied"][0]["problems"] == []
    assert doc["verified_by"] == "the gdb stub's walk"
    assert SPARE in tlb(lowqemu)
    undone = subprocess.run(
        [*base, "undo", "--journal", journal], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert undone.returncode == 0, undone.stderr
    assert SPARE not in tlb(lowqemu)


def test_a_step_left_pending_is_undone_from_the_entries_read_before_it(lowqemu, remapper):
    """The reply never reached the journal (a crash right after sending): undo still works."""
    before = tlb(lowqemu)
    (step,) = remapper.plan_map(SPARE, 0x200000, 0x2000, flags=RW | NX).steps
    entries = remapper._before(step)
    record = remapper.journal.begin(step.method, list(step.params), entries, step.description)
    remapper.target.client.call("map", *step.params, False)  # applied; "applied" never written
    assert SPARE + 0x1000 in tlb(lowqemu)
    assert record.state == "pending" and entries["entries"]
    assert [s.seq for s in remapper.undo()] == [record.seq]
    assert tlb(lowqemu) == before
    for va, level, old in entries["entries"]:
        assert level >= 1 and old == 0 and va >= SPARE  # nothing was there before


def test_seed_scenario_each_step_against_qemus_view(lowqemu, remapper):
    """After every step of higher-half, QEMU's registers and TLB say what the step did."""
    plan = remapper.plan_higher_half()
    assert [s.method for s in plan.steps] == ["move_stack", "load_descriptors", "unmap"]
    seen = []
    for step in plan.steps:
        report = remapper.run_step(step)
        assert report.verified, report.problems
        regs = decode_info_registers(lowqemu.monitor("info registers"))
        low = [va for va in tlb(lowqemu) if va < HIGHER_HALF]
        high = [regs["rsp"]] + [regs[n].base for n in ("gdt", "idt", "tr")]
        seen.append((step.method, *(x >= HIGHER_HALF for x in high), bool(low)))
    assert seen == [
        ("move_stack", True, False, False, False, True),
        ("load_descriptors", True, True, True, True, True),
        ("unmap", True, True, True, True, False),
    ]
    assert remapper.target.client.call("hello")["protocol"] == 1
    remapper.undo()
    regs = decode_info_registers(lowqemu.monitor("info registers"))
    assert regs["rsp"] < HIGHER_HALF and regs["gdt"].base < HIGHER_HALF
    assert regs["tr"].base < HIGHER_HALF and [va for va in tlb(lowqemu) if va < HIGHER_HALF]


def test_undo_leaves_steps_of_another_kernel_alone(lowqemu, tmp_path):
    """Steps are kept per kernel instance (the boot nonce the agent reports): a step left on
    another kernel neither blocks nor appears here, and is not undone on this one."""
    path = tmp_path / "other.jsonl"
    journal = Journal.open(path)
    journal.start_session("unix:/somewhere/else.sock", kernel="boot 0x00000000deadbeef")
    journal.applied(journal.begin("map", [SPARE], {"entries": []}, "elsewhere"), [])

    def kinspect(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "kinspect.inspector.cli",
                "--agent",
                lowqemu.agent_endpoint,
                "remap",
                *args,
                "--journal",
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )

    done = kinspect("undo")
    assert done.returncode == 0 and "nothing to undo" in done.stdout, done.stderr
    assert [s.seq for s in Journal.open(path).open_steps()] == [1]  # still open, for its kernel
    listed = kinspect("journal")
    assert "0 open steps (kernel boot 0x" in listed.stdout, listed.stdout
    assert "1 open steps of other kernels: --all lists them" in listed.stdout
    everything = kinspect("journal", "--all")
    assert "#1 applied  map elsewhere  [boot 0x00000000deadbeef]" in everything.stdout
    blocked = kinspect("map", hex(SPARE), "0x500000", "0x1000", "--plan")
    assert "crashed session" not in blocked.stderr and blocked.returncode == 0, blocked.stderr


def test_flags_ro_keeps_nx_and_adding_execute_asks_again(lowqemu, tmp_path):
    """Issue 17: `--flags ro` made the page executable (NX cleared); it keeps NX now, as QEMU's
    own `info tlb` shows, and a change that adds execute or makes W+X says so and asks again."""
    journal = str(tmp_path / "flags.jsonl")

    def kinspect(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "kinspect.inspector.cli",
                "--agent",
                lowqemu.agent_endpoint,
                "remap",
                *args,
                "--journal",
                journal,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )

    before = tlb(lowqemu)
    mapped = kinspect("map", hex(SPARE), "0x500000", "4k", "--yes")
    assert mapped.returncode == 0 and "WARNING" not in mapped.stdout, mapped.stderr
    assert tlb(lowqemu)[SPARE][0] == 0x500000
    assert tlb(lowqemu)[SPARE][1][0] == "X" and tlb(lowqemu)[SPARE][1][-1] == "W"
    ro = kinspect("protect", hex(SPARE), "4k", "--flags", "ro", "--yes")
    assert ro.returncode == 0, ro.stderr
    flags = tlb(lowqemu)[SPARE][1]
    assert flags[0] == "X" and flags[-1] == "-", flags  # NX kept, read-only (QEMU's view)
    wx = kinspect("protect", hex(SPARE), "4k", "--flags", "rwx", "--plan")
    assert wx.returncode == 0 and "Traceback" not in wx.stderr, wx.stderr
    assert "WARNING: makes the pages writable AND executable (W+X)" in wx.stdout
    assert "WARNING: adds write to pages that were read-only" in wx.stdout
    # Without --yes and nobody to answer: not applied, and the page stays as it was.
    asked = kinspect("protect", hex(SPARE), "4k", "--flags", "rx")
    assert asked.returncode == 1 and "not applied" in asked.stderr
    assert tlb(lowqemu)[SPARE][1] == flags
    bad = kinspect("protect", hex(SPARE), "4k", "--flags", "rwz", "--plan")
    assert bad.returncode != 0 and "unknown flag 'rwz'" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    undone = kinspect("undo", "--all")
    assert undone.returncode == 0, undone.stderr
    assert tlb(lowqemu) == before
