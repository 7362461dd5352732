"""The Debian guest itself: it boots with KASLR and PTI, and its shell answers; on two CPUs
(this module boots it with -smp 2), each CPU's GDT, TSS and per-CPU area against QEMU's."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from kinspect.inspector import api
from kinspect.inspector.linux import guest as linux

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
