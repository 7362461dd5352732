"""The demo kernel on several CPUs (``-smp N``), checked against QEMU's own view.

Each AP comes up through the real-mode trampoline with a GDT, a TSS and a
kernel stack of its own, and says where they are on the console. QEMU's
``info registers -a`` (stopped, every CPU) must show exactly those: per CPU its
GDT base, TR base, RSP inside its own stack, the kernel's CR3, long mode.
CPU 0 keeps the BSP's ``kernel_gdt`` and ``kernel_tss`` (by ``nm``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from kinspect.inspector import api
from kinspect.protocols.agent_client import AgentClient, AgentRemoteError
from kinspect.protocols.transports import open_transport
from tests.integration.conftest import demo_kernel  # noqa: F401
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

CPUS = 4
_ONLINE = re.compile(
    r"cpu (\d+) online: APIC ID (\d+), GDT (0x[0-9a-f]+), TSS (0x[0-9a-f]+), "
    r"stack (0x[0-9a-f]+)-(0x[0-9a-f]+)"
)


def _nm(kernel: str) -> dict[str, int]:
    out = subprocess.run(["nm", kernel], capture_output=True, text=True, check=True).stdout
    return {f[2]: int(f[0], 16) for f in (line.split() for line in out.splitlines()) if len(f) == 3}


def _per_cpu(text: str) -> dict[int, dict[str, int]]:
    """QEMU's ``info registers -a``, parsed here apart from kinspect's own parser."""
    cpus: dict[int, dict[str, int]] = {}
    text = text.replace("\r\n", "\n")
    for number, body in re.findall(r"^CPU#(\d+)\n(.*?)(?=^CPU#|\Z)", text, re.M | re.S):
        regs = {k: int(v, 16) for k, v in re.findall(r"\b(RIP|RSP|CR3|CR4|EFER)=([0-9a-f]+)", body)}
        regs["GDT"] = int(re.search(r"^GDT=\s+([0-9a-f]+)", body, re.M).group(1), 16)
        regs["IDT"] = int(re.search(r"^IDT=\s+([0-9a-f]+)", body, re.M).group(1), 16)
        tr = re.search(r"^TR =(\S+) ([0-9a-f]+)", body, re.M)
        regs["TR"], regs["TR_SEL"] = int(tr.group(2), 16), int(tr.group(1), 16)
        regs["GDT_LIMIT"] = int(
            re.search(r"^GDT=\s+[0-9a-f]+ ([0-9a-f]+)", body, re.M).group(1), 16
        )
        regs["CS"] = int(re.search(r"^CS =([0-9a-f]{4})", body, re.M).group(1), 16)
        cpus[int(number)] = regs
    return cpus


@pytest.fixture(scope="module")
def smp_qemu(demo_kernel):  # noqa: F811
    instance = api.launch_demo(smp=CPUS)
    try:
        instance.wait_for_serial(f"smp: {CPUS} cpus online", timeout=30)
        yield instance
    finally:
        instance.stop()


def test_every_cpu_runs_on_its_own_gdt_tss_and_stack(smp_qemu, demo_kernel):  # noqa: F811
    console = smp_qemu.serial_output()
    online = {int(m[0]): m for m in _ONLINE.findall(console)}
    assert sorted(online) == list(range(1, CPUS))
    symbols = _nm(demo_kernel)

    smp_qemu.monitor("stop")
    try:
        cpus = _per_cpu(smp_qemu.monitor("info registers -a"))
    finally:
        smp_qemu.monitor("cont")

    assert sorted(cpus) == list(range(CPUS))
    assert cpus[0]["GDT"] == symbols["kernel_gdt"]
    assert cpus[0]["TR"] == symbols["kernel_tss"]
    for n in range(1, CPUS):
        _, apic, gdt, tss, stack_low, stack_high = online[n]
        assert int(apic) == n
        assert cpus[n]["GDT"] == int(gdt, 16)
        assert cpus[n]["TR"] == int(tss, 16)
        assert int(stack_low, 16) <= cpus[n]["RSP"] < int(stack_high, 16)
    for regs in cpus.values():
        assert regs["CR3"] == cpus[0]["CR3"]  # one kernel, one set of tables
        assert regs["IDT"] == symbols["kernel_idt"]  # shared
        assert regs["CS"] == 0x08 and regs["EFER"] & 0x500 == 0x500  # LME and LMA: long mode
        assert regs["RIP"] >> 31 == 0x1FFFFFFFF  # in the kernel image (the higher half)
    assert len({r["GDT"] for r in cpus.values()}) == CPUS
    assert len({r["TR"] for r in cpus.values()}) == CPUS


def test_five_level_paging_reaches_the_aps(demo_kernel):  # noqa: F811
    """CR4.LA57 can only be set before paging: the trampoline takes the BSP's CR4."""
    with api.launch_demo(smp=2, append="la57", cpu_flags=("+la57",)) as qemu:
        qemu.wait_for_serial("smp: 2 cpus online", timeout=30)
        qemu.monitor("stop")
        cpus = _per_cpu(qemu.monitor("info registers -a"))
    assert sorted(cpus) == [0, 1]
    for regs in cpus.values():
        assert regs["CR4"] & (1 << 12)  # CR4.LA57
        assert regs["CR3"] == cpus[0]["CR3"]


# -- the agent on several CPUs: hold, TLB shootdown, no-shootdown ----------------------

PAGE = 4096


def _u64(client, address: int) -> int:
    return int.from_bytes(client.call("read_virt", address, 8), "little")


@pytest.fixture
def agent_on(request, demo_kernel):  # noqa: F811
    """A two-CPU demo kernel (``request.param``: its command line) and a client on its agent."""
    qemu = api.launch_demo(smp=2, append=request.param)
    client = None
    try:
        qemu.wait_for_serial("smp: 2 cpus online", timeout=30)
        client = AgentClient(open_transport(qemu.agent_endpoint), timeout=5)
        yield qemu, client, _nm(demo_kernel)
    finally:
        if client is not None:
            client.close()
        qemu.stop()


def _probe(client, symbols, cpu: int) -> tuple[int, int]:
    """(reads that worked, reads that faulted) of CPU ``cpu``'s probe of ap_probe_page."""
    return (
        _u64(client, symbols["ap_probe_reads"] + 8 * cpu),
        _u64(client, symbols["ap_probe_faults"] + 8 * cpu),
    )


@pytest.mark.parametrize("agent_on", [None], indirect=True)
def test_an_unmap_reaches_the_other_cpus_tlb(agent_on):
    """The AP reads its probe page every tick, so its TLB holds the translation. After the
    agent unmaps the page (with its shootdown), the AP's very next read faults."""
    qemu, client, symbols = agent_on
    hello = client.call("hello")
    assert hello["cpus"] == 2
    assert {"cpus_online", "hold_others", "tlb_shootdown", "flush_tlb"} <= set(hello["hooks"])
    page = symbols["ap_probe_page"]
    before = _probe(client, symbols, 1)
    wait_until(lambda: _probe(client, symbols, 1)[0] > before[0], what="the AP reads its page")

    client.call("unmap", page, PAGE, PAGE)
    reads, faults = _probe(client, symbols, 1)
    wait_until(lambda: _probe(client, symbols, 1)[1] > faults, what="the AP faults on the page")
    after = _probe(client, symbols, 1)
    time.sleep(0.3)
    assert _probe(client, symbols, 1)[0] == after[0]  # no read has worked since
    # QEMU's own view agrees: the page is gone from the tables both CPUs use
    qemu.monitor("stop")
    try:
        assert f"{page:016x}:" not in qemu.monitor("info tlb")
    finally:
        qemu.monitor("cont")


@pytest.mark.parametrize("agent_on", ["noshootdown"], indirect=True)
def test_without_a_shootdown_the_agent_refuses_and_the_stale_tlb_shows_why(agent_on):
    qemu, client, symbols = agent_on
    hello = client.call("hello")
    assert hello["cpus"] == 2 and "tlb_shootdown" not in hello["hooks"]
    page = symbols["ap_probe_page"]
    with pytest.raises(AgentRemoteError) as refused:
        client.call("unmap", page, PAGE, PAGE)
    assert refused.value.code == 9 and "no-shootdown" in str(refused.value)
    # forced, the change is made on the tables and flushed on this CPU only
    before = _probe(client, symbols, 1)
    wait_until(lambda: _probe(client, symbols, 1)[0] > before[0], what="the AP reads its page")
    client.call("unmap", page, PAGE, PAGE, True)
    qemu.monitor("stop")
    try:
        assert f"{page:016x}:" not in qemu.monitor("info tlb")  # unmapped in the tables
    finally:
        qemu.monitor("cont")
    reads, faults = _probe(client, symbols, 1)
    wait_until(lambda: _probe(client, symbols, 1)[0] > reads, what="a stale read on the AP")
    assert _probe(client, symbols, 1)[1] == faults == 0  # through its stale TLB entry


def test_the_seed_scenario_with_two_cpus_online(demo_kernel, tmp_path):  # noqa: F811
    """remap higher-half on a lowhalf kernel whose AP is online: the AP is held while each
    step runs and its TLB shot down; afterwards QEMU sees nothing below the higher half and
    both CPUs on higher-half stacks and descriptor tables."""
    with api.launch_demo(smp=2, append="lowhalf") as qemu:
        qemu.wait_for_serial("smp: 2 cpus online", timeout=30)
        env = dict(os.environ, KINSPECT_REMAP_JOURNAL=str(tmp_path / "journal.jsonl"))
        result = subprocess.run(
            [sys.executable, "-m", "kinspect.inspector.cli", "--agent", qemu.agent_endpoint]
            + ["remap", "higher-half", "--yes"],
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        assert "3 steps applied" in result.stdout and "all verified" in result.stdout
        qemu.monitor("stop")
        cpus = _per_cpu(qemu.monitor("info registers -a"))
        tlb = qemu.monitor("info tlb")
    assert not [line for line in tlb.splitlines() if line.startswith("00000000")]
    assert sorted(cpus) == [0, 1]
    for regs in cpus.values():
        for name in ("RSP", "GDT", "IDT", "TR", "RIP"):
            assert regs[name] >> 47 == 0x1FFFF, (name, hex(regs[name]))


# -- a CPU in every view: cpus, --cpu N, the stop's CPU --------------------------------


def _monitor_cpu(qemu, cpu: int) -> dict[str, int]:
    """QEMU's monitor on one CPU: ``info registers`` with the monitor's CPU set to ``cpu``
    (QMP's human-monitor-command ``cpu-index``: the monitor's ``cpu N``; parsed here)."""
    with qemu.qmp() as client:
        text = client.execute(
            "human-monitor-command", {"command-line": "info registers", "cpu-index": cpu}
        )
    cpus = _per_cpu(str(text))
    assert list(cpus) == [cpu]  # the monitor answered for the CPU asked
    return cpus[cpu]


def test_cpus_matches_qemu_for_every_cpu(smp_qemu, demo_kernel):  # noqa: F811
    from kinspect.inspector.commands import registry

    session = api.attach(smp_qemu.gdb_endpoint, elf=demo_kernel)
    try:
        result = registry().execute(session, "cpus")
        truth = _per_cpu(smp_qemu.monitor("info registers -a"))  # stopped by gdb
        text = result.text
    finally:
        session.close()
    cpus = {cpu["index"]: cpu for cpu in result.body["cpus"]}
    assert sorted(cpus) == sorted(truth) == list(range(CPUS))
    for n, regs in truth.items():
        mine = cpus[n]
        assert mine["cr3"] == regs["CR3"]
        assert mine["gdtr"]["base"] == regs["GDT"]
        assert mine["idtr"]["base"] == regs["IDT"]
        assert mine["tr"]["base"] == regs["TR"]
        assert mine["rip"] == regs["RIP"]
        assert mine["paging"] == "4-level" and mine["state"] in ("halted", "stopped")
        assert mine["error"] is None
        assert f"{regs['GDT']:016x}" in text.splitlines()[n + 1]
    assert [c["selected"] for c in cpus.values()].count(True) == 1


def test_a_breakpoint_on_an_ap_shows_that_cpus_registers_stack_and_tables(
    smp_qemu,
    demo_kernel,  # noqa: F811
):
    symbols = _nm(demo_kernel)
    online = {int(m[0]): m for m in _ONLINE.findall(smp_qemu.serial_output())}
    session = api.attach(smp_qemu.gdb_endpoint, elf=demo_kernel)
    try:
        number, address = session.break_insert("ap_level2")
        assert address == symbols["ap_level2"]
        session.resume()
        deadline = time.monotonic() + 30
        record = None
        while record is None and time.monotonic() < deadline:
            record = session.wait_for_stop(1.0)
        assert record is not None, "no AP reached ap_level2 within 30 s"
        cpu = record["cpu"]
        assert cpu in range(1, CPUS)  # only APs run ap_level2
        assert session.cpu == cpu and session.last_stop["cpu"] == cpu
        truth = _monitor_cpu(smp_qemu, cpu)

        regs = session.registers()
        assert regs["rip"] == truth["RIP"] == symbols["ap_level2"]
        assert regs["rsp"] == truth["RSP"] and regs["cr3"] == truth["CR3"]
        _, _, gdt, tss, stack_low, stack_high = online[cpu]
        low, high = int(stack_low, 16), int(stack_high, 16)
        assert low <= regs["rsp"] < high  # this AP's own stack in ap_stacks

        frames = session.backtrace().frames
        assert [f.symbol for f in frames[:2]] == ["ap_level2", "ap_work"]
        assert all(low <= f.sp < high for f in frames[:2])

        table = session.gdt()
        assert table.base == truth["GDT"] == int(gdt, 16)
        task = session.tss()
        assert task.base == truth["TR"] == int(tss, 16)
        assert {s.name: s.value for s in task.stacks}["RSP0"] == high
        assert session.system_registers().idtr.base == truth["IDT"]
        session.break_delete(number)
    finally:
        session.close()


def _cli_json(qemu, kernel, *argv):
    result = subprocess.run(
        [sys.executable, "-m", "kinspect.inspector.cli", "--target", qemu.gdb_endpoint]
        + ["--elf", kernel, "--json", *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    import json

    return json.loads(result.stdout)


def test_gdt_and_tss_of_cpu_2_match_qemus_cpu_2(smp_qemu, demo_kernel):  # noqa: F811
    gdt = _cli_json(smp_qemu, demo_kernel, "gdt", "--cpu", "2")["gdt"]
    tss = _cli_json(smp_qemu, demo_kernel, "--cpu", "2", "tss")["tss"]
    smp_qemu.monitor("stop")
    try:
        truth = _monitor_cpu(smp_qemu, 2)
        zero = _monitor_cpu(smp_qemu, 0)
    finally:
        smp_qemu.monitor("cont")
    assert gdt["base"] == truth["GDT"] != zero["GDT"]
    assert tss["base"] == truth["TR"] != zero["TR"]
    tr_slots = [s for s in gdt["slots"] if "TR" in s["loaded_by"]]
    assert [s["selector"] for s in tr_slots] == [truth["TR_SEL"]]
    assert tr_slots[0]["descriptor"]["base"] == truth["TR"]  # CPU 2's TSS, in CPU 2's GDT
    assert gdt["limit"] == truth["GDT_LIMIT"] and len(gdt["slots"]) == (truth["GDT_LIMIT"] + 1) // 8


def test_a_cpu_that_is_not_there_is_one_line(smp_qemu, demo_kernel):  # noqa: F811
    result = subprocess.run(
        [sys.executable, "-m", "kinspect.inspector.cli", "--target", smp_qemu.gdb_endpoint]
        + ["--cpu", "9", "regs"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "kinspect: error: there is no CPU 9: this target has CPUs 0-3"
