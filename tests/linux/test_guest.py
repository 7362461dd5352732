"""The Debian guest itself: it boots with KASLR and PTI, and its shell answers; on two CPUs
(this module boots it with -smp 2), each CPU's GDT, TSS and per-CPU area against QEMU's;
and what kinspect sees of it through a stub with QEMU's extensions hidden (as kgdb or a
probe's server would be: no physical-memory mode, no GDTR/IDTR/TR), against QEMU's monitor."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from kinspect.inspector import api
from kinspect.inspector.commands import registry
from kinspect.inspector.errors import FaultError
from kinspect.inspector.linux import guest as linux
from kinspect.inspector.session import Session
from kinspect.inspector.targets.base import Capability
from kinspect.inspector.targets.gdb import GdbTarget
from kinspect.inspector.targets.qemu_text import decode_info_tlb
from kinspect.inspector.x86.paging import walk_tables
from tests.qemu_view import tlb_flags

from .conftest import LINUX_BOOT_TIMEOUT, _files, read_guest_file

pytestmark = pytest.mark.integration


def test_guest_says_what_it_runs(linux_guest):
    release = linux_guest.shell("uname -r").output.strip()
    assert release == linux_guest.files.release
    assert linux_guest.version == linux_guest.shell("cat /proc/version").output.strip()
    cmdline = linux_guest.shell("cat /proc/cmdline").output
    assert "nokaslr" not in cmdline and "pti=on" in cmdline


def test_shell_status_and_markers(linux_guest):
    result = linux_guest.shell("echo one; echo two >&2; false", check=False)
    assert result.output == "one\ntwo\n"
    assert result.status == 1


def test_sleepers_sleep_where_init_says(linux_guest):
    sleeping = linux_guest.shell(f"cat /proc/{linux_guest.pids['nanosleep']}/stack").output
    assert re.search(r"^\[<0>\] hrtimer_nanosleep\+", sleeping, re.M)
    reading = linux_guest.shell(f"cat /proc/{linux_guest.pids['pipe_read']}/stack").output
    assert re.search(r"^\[<0>\] pipe_read\+", reading, re.M)


def test_kaslr_moved_the_text(linux_guest):
    text = read_guest_file(linux_guest, "/proc/kallsyms")
    start = int(re.search(r"^([0-9a-f]+) T _text$", text, re.M).group(1), 16)
    assert start != 0xFFFFFFFF81000000 and start >> 31 == 0x1FFFFFFFF


# -- two CPUs: this module's guest has them (-smp 2), the other modules' one ----------------


@pytest.fixture(scope="module")
def linux_guest():
    guest = linux.launch_linux(files=_files(), timeout=LINUX_BOOT_TIMEOUT, smp=2)
    try:
        yield guest
    finally:
        guest.stop()


def _qemu_cpus(guest, cpu=None) -> dict[int, dict[str, int]]:
    """QEMU's ``info registers`` (every CPU, or the monitor's CPU set to ``cpu``), parsed
    here apart from kinspect's parser."""
    arguments = {"command-line": "info registers" + (" -a" if cpu is None else "")}
    if cpu is not None:
        arguments["cpu-index"] = cpu
    with guest.qemu.qmp() as client:
        text = str(client.execute("human-monitor-command", arguments)).replace("\r\n", "\n")
    cpus = {}
    for number, body in re.findall(r"^CPU#(\d+)\n(.*?)(?=^CPU#|\Z)", text, re.M | re.S):
        regs = {k: int(v, 16) for k, v in re.findall(r"\b(RIP|CR3|HLT|CPL)=([0-9a-f]+)", body)}
        for name in ("GDT", "IDT"):
            base, limit = re.search(rf"^{name}=\s+([0-9a-f]+) ([0-9a-f]+)", body, re.M).groups()
            regs[name], regs[f"{name}_LIMIT"] = int(base, 16), int(limit, 16)
        selector, base = re.search(r"^TR =([0-9a-f]{4}) ([0-9a-f]+)", body, re.M).groups()
        regs["TR_SEL"], regs["TR"] = int(selector, 16), int(base, 16)
        regs["GS_BASE"] = int(re.search(r"^GS =[0-9a-f]{4} ([0-9a-f]+)", body, re.M).group(1), 16)
        cpus[int(number)] = regs
    return cpus


def _cli_json(guest, *argv):
    result = subprocess.run(
        [sys.executable, "-m", "kinspect.inspector.cli", "--target", guest.gdb_endpoint]
        + ["--json", *argv],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_gdt_and_tss_of_cpu_1_match_qemus_cpu_1(linux_guest):
    assert linux_guest.shell("nproc").output.strip() == "2"
    gdt = _cli_json(linux_guest, "gdt", "--cpu", "1")["gdt"]
    tss = _cli_json(linux_guest, "--cpu", "1", "tss")["tss"]
    one, zero = _qemu_cpus(linux_guest, 1)[1], _qemu_cpus(linux_guest, 0)[0]
    assert gdt["base"] == one["GDT"] != zero["GDT"]
    assert gdt["limit"] == one["GDT_LIMIT"] and len(gdt["slots"]) == (one["GDT_LIMIT"] + 1) // 8
    tr = [s for s in gdt["slots"] if "TR" in s["loaded_by"]]
    assert [s["selector"] for s in tr] == [one["TR_SEL"]]
    assert tr[0]["descriptor"]["base"] == one["TR"]
    assert tss["base"] == one["TR"] != zero["TR"] and tss["selector"] == one["TR_SEL"]


def test_cpus_and_the_per_cpu_areas_match_qemu(linux_guest):
    session = api.attach(linux_guest.gdb_endpoint)
    try:
        cpus = session.cpus(detail=True)
        truth = _qemu_cpus(linux_guest)  # every CPU, stopped by gdb
    finally:
        session.close()
    assert [c.index for c in cpus] == sorted(truth) == [0, 1]
    halted_in_kernel = 0
    for cpu in cpus:
        regs = truth[cpu.index]
        assert (cpu.rip, cpu.cr3) == (regs["RIP"], regs["CR3"])
        assert (cpu.gdtr.base, cpu.idtr.base, cpu.tr_base) == (regs["GDT"], regs["IDT"], regs["TR"])
        assert cpu.state == ("halted" if regs["HLT"] else "stopped")
        area = cpu.area
        assert area is not None and area.entry_area == regs["GDT"]
        assert area.gdt_shared and area.tss_shared  # the entry area aliases the per-CPU copies
        assert cpu.current_task is not None
        if regs["HLT"] and regs["CPL"] == 0:  # idle: GS holds the kernel's per-CPU base
            halted_in_kernel += 1
            assert area.offset == regs["GS_BASE"]
            if cpu.index == 0:
                assert cpu.current_task_symbol == "init_task"  # CPU 0's idle task: swapper/0
    assert cpus[0].area.offset != cpus[1].area.offset
    assert halted_in_kernel, "no CPU was idle in the kernel: nothing checked the per-CPU offsets"


# -- a stub without QEMU's extensions: last, as its fixture holds the guest stopped ----


class PlainStub(GdbTarget):
    """QEMU's stub as a stub without QEMU's extensions: it never says it has them."""

    def _probe_qemu(self) -> bool:
        return False


@pytest.fixture(scope="module")
def plain(linux_guest):
    """A session through the plain stub (no --phys-base, no ELF), with what QEMU's monitor
    says at the same stop; last in the module, as it holds the guest stopped."""
    session = Session(PlainStub(linux_guest.gdb_endpoint, physical="direct-map"))
    try:
        assert not session.target.has(Capability.SYSTEM_REGISTERS)
        session.stop()
        monitor = {
            "registers": linux_guest.monitor("info registers"),
            "tlb": linux_guest.monitor("info tlb", timeout=240.0),
        }
        yield session, monitor
    finally:
        session.close()


def test_plain_stub_walks_with_no_phys_base_and_matches_info_tlb(plain):
    session, monitor = plain
    ours = {
        (leaf.va, leaf.pa, tlb_flags(leaf.entry.raw)) for leaf in session.address_space().leaves
    }
    truth = {tuple(line) for line in decode_info_tlb(monitor["tlb"])}
    assert len(truth) > 50_000
    assert ours == truth
    kernel = session.kernel()
    assert session.physical_source == (
        f"the direct map at {kernel.page_offset_base:#x} (page_offset_base (kallsyms))"
    )
    said = registry().execute(session, "kernel")
    assert said.body["physical_from"] == session.physical_source
    assert f"physical memory  {session.physical_source}" in said.text
    pt = registry().execute(session, "pt")
    assert pt.text.endswith(f"physical memory read through {session.physical_source}")


def qemu_register(text: str, name: str) -> tuple[int, int]:
    """(base, limit) of GDT, IDT or TR in ``info registers``."""
    match = re.search(
        rf"^{name}\s*=\s*(?:[0-9a-f]{{4}} )?([0-9a-f]{{16}}) ([0-9a-f]{{8}})", text, re.M
    )
    assert match, text
    return int(match.group(1), 16), int(match.group(2), 16)


def test_plain_stub_descriptors_are_where_qemu_says(plain):
    session, monitor = plain
    text = monitor["registers"]
    gdt = registry().execute(session, "gdt")
    assert gdt.status == 0, gdt.error
    assert (gdt.body["gdt"]["base"], gdt.body["gdt"]["limit"]) == qemu_register(text, "GDT")
    assert gdt.body["source"]["gdtr"].startswith("gdt_page via __per_cpu_offset[0] (kallsyms)")
    assert "GDTR from gdt_page via __per_cpu_offset[0]" in gdt.text

    idt = registry().execute(session, "idt")
    assert idt.status == 0, idt.error
    assert (idt.body["idt"]["base"], idt.body["idt"]["limit"]) == qemu_register(text, "IDT")
    assert idt.body["source"] == {"idtr": "idt_descr (kallsyms)"}
    assert "asm_exc_page_fault" in idt.text

    tss = registry().execute(session, "tss")
    assert tss.status == 0, tss.error
    assert (tss.body["tss"]["base"], tss.body["tss"]["limit"]) == qemu_register(text, "TR")
    assert "cpu_tss_rw via __per_cpu_offset[0]" in tss.body["source"]["tr"]


#: the regions a running Debian guest always maps (user space and modules vary with the
#: CR3 it stops in and what it loaded)
REGIONS = {"direct map", "vmalloc", "vmemmap", "cpu_entry_area", "espfix", "kernel text/data"}
REGIONS |= {"fixmap"}
ALL_REGIONS = REGIONS | {"user space", "modules", "LDT remap", "EFI runtime", None}


def test_pt_compact_fits_500_rows_under_region_headings(plain):
    session, _ = plain
    exact = registry().execute(session, "pt")
    compact = registry().execute(session, "pt --compact")
    assert compact.status == 0, compact.error
    rows = compact.text.splitlines()
    assert len(rows) < 500 < len(exact.text.splitlines())
    headings = [line for line in rows if line.startswith("---[ ")]
    assert REGIONS <= {h[5:-5] for h in headings} <= ALL_REGIONS
    assert headings.index("---[ direct map ]---") < headings.index("---[ espfix ]---")
    # every leaf is counted once, in one compact row
    merged = compact.body["ranges"]
    assert sum(r["pieces"] for r in merged) == len(exact.body["ranges"])
    assert sum(r["mapped"] for r in merged) == sum(r["size"] for r in exact.body["ranges"])
    kernel = session.kernel()
    for doc in (exact.body, compact.body):
        by_start = {r["start"]: r["region"] for r in doc["ranges"]}
        assert by_start[kernel.text] == "kernel text/data"
        assert by_start[kernel.page_offset_base] == "direct map"
        assert REGIONS <= {r["region"] for r in doc["ranges"]} <= ALL_REGIONS


def _qemu_physical(guest, address: int, size: int) -> bytes:
    """``size`` bytes at physical ``address`` as QEMU's monitor reads them (``xp``)."""
    text = guest.monitor(f"xp /{size // 8}gx {address:#x}")
    words = [int(w, 16) for line in text.splitlines() for w in line.split(":", 1)[1].split()]
    return b"".join(w.to_bytes(8, "little") for w in words)


def test_plain_stub_batched_reads_are_qemus_own_and_stop_at_the_end_of_ram(plain, linux_guest):
    """The walk's tables read in one batch (runs of contiguous pages, pipelined) are what
    QEMU's monitor reads at the same physical addresses, and one by one the same; a batch
    that runs off the end of the direct map (QEMU's ``info mem`` says where) fails at its
    first unmapped byte, and only the requests that reach it fail."""
    session, _ = plain
    mode = session.paging_mode()
    tables = sorted({t for _, t in walk_tables(session.read_physical, session.root_table(), mode)})
    assert len(tables) > 100
    batch = session.target.read_physical_many([(t, 4096) for t in tables])
    assert batch == [session.target.read_physical(t, 4096) for t in tables]
    for table in tables[:: max(1, len(tables) // 12)] + [tables[-1]]:
        assert batch[tables.index(table)] == _qemu_physical(linux_guest, table, 4096), hex(table)

    base = session.kernel().page_offset_base
    spans = [line.split()[0].split("-") for line in linux_guest.monitor("info mem").splitlines()]
    ends = [int(end, 16) for start, end in spans if base <= int(start, 16) < base + (1 << 40)]
    top = max(ends) - base  # where the direct map ends: the end of RAM
    below, across, past = session.target.read_physical_many(
        [(top - 0x3000, 0x1000), (top - 0x2000, 0x4000), (top, 0x1000)]
    )
    assert below == _qemu_physical(linux_guest, top - 0x3000, 0x1000)
    assert isinstance(across, FaultError) and across.address == base + top
    assert isinstance(past, FaultError) and past.address == base + top
