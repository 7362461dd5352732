"""bt on a stock Debian kernel with no debug files: ORC tables read from its memory (found
through its kallsyms) or from the stripped vmlinux of the same package, checked against
/proc/kallsyms and against the guest's own backtrace of the same stack."""

from __future__ import annotations

import random
import re
import threading
import time

import pytest

from kinspect.inspector import api
from kinspect.inspector.linux.image import extract_vmlinux
from kinspect.inspector.linux.orc import OrcTable
from kinspect.inspector.unwind import unwind

pytestmark = pytest.mark.integration

#: A stop can land outside the idle loop (in a timer interrupt, in do_idle's body): stop
#: again until the CPU is in the idle call, a bounded number of times.
IDLE_TRIES = 20
_TRACE_LINE = re.compile(r"^\[[ \d.]+\]  ([\w.]+)\+(0x[0-9a-f]+)/0x[0-9a-f]+\r?$")


def kallsyms_addresses(text: str) -> dict[str, int]:
    table: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            table.setdefault(fields[2], int(fields[0], 16))
    return table


def idle_backtrace(session):
    """The backtrace of the CPU once it is in default_idle_call (stopping it again if not)."""
    for _ in range(IDLE_TRIES):
        bt = session.backtrace()
        if "default_idle_call" in [f.symbol for f in bt.frames]:
            return bt
        session.resume()
        time.sleep(0.2)
        session.stop()
    pytest.fail(f"the CPU was never in default_idle_call in {IDLE_TRIES} stops:\n{bt}")


def test_idle_cpu_unwinds_through_the_idle_loop_by_orc(linux_guest, proc_kallsyms):
    kallsyms = kallsyms_addresses(proc_kallsyms)
    with api.attach(linux_guest.gdb_endpoint) as session:
        orc = session.orc()
        assert orc is not None and "memory" in orc.source and orc.version == 1
        bt = idle_backtrace(session)
        symbols = session.symbols
        names = [f.symbol for f in bt.frames]
        assert names.index("default_idle_call") < names.index("do_idle")
        assert names.index("do_idle") < names.index("cpu_startup_entry")
        # every frame's name is /proc/kallsyms' for its address
        for frame in bt.frames:
            assert frame.symbol is not None, str(bt)
            assert frame.pc - frame.offset == kallsyms[frame.symbol], str(frame)
            assert symbols.lookup(frame.symbol) == kallsyms[frame.symbol]
        # the idle task of the boot CPU: down to the startup code ORC marks as the end
        assert bt.stop == "outermost" and "stack's end" in bt.reason
        assert names[-1] == "secondary_startup_64_no_verify"
        methods = {f.method for f in bt.frames[1:]}
        assert methods == {"orc"}, str(bt)
        assert bt.to_dict()["frames"][1]["method"] == "orc"
        # the kernel's orc_lookup blocks (filled at boot) agree with a full binary search
        assert orc.lookup is not None and orc.lookup.text_start == kallsyms["_stext"]
        full = OrcTable(session.read_virtual, orc.ip_table, orc.unwind_table, orc.count, version=1)
        rng = random.Random(12)
        for ip in [f.pc - 1 for f in bt.frames[1:]] + [
            rng.randrange(kallsyms["_stext"], kallsyms["_etext"]) for _ in range(300)
        ]:
            assert orc.find(ip) == full.find(ip), hex(ip)


def test_the_stripped_vmlinux_gives_the_same_unwind(linux_guest, tmp_path):
    vmlinux = tmp_path / "vmlinux"
    vmlinux.write_bytes(extract_vmlinux(linux_guest.files.vmlinuz.read_bytes()))
    with api.attach(linux_guest.gdb_endpoint) as session:
        memory_bt = idle_backtrace(session)
        registers = dict(session.registers())
    with api.attach(linux_guest.gdb_endpoint, elf=str(vmlinux)) as session:
        orc = session.orc()
        assert orc is not None and "vmlinux" in orc.source  # the file, at the running slide
        linked = OrcTable.from_elf(str(vmlinux)).ip_table
        assert orc.ip_table == linked + session.kernel().slide != linked  # KASLR on
        # the CPU may have moved on: unwind the registers of the first stop again
        file_bt = unwind(session.read_virtual, registers, orc=orc)
    assert [(f.pc, f.sp, f.method) for f in file_bt.frames] == [
        (f.pc, f.sp, f.method) for f in memory_bt.frames
    ]
    assert file_bt.stop == memory_bt.stop == "outermost"


def test_a_syscall_stack_matches_the_guests_own_dump_stack(linux_guest):
    """Stop the guest in dump_stack_lvl() as `echo l > /proc/sysrq-trigger` calls it, unwind,
    then let the guest print its own unwind of the same stack and compare."""
    result: dict[str, object] = {}

    def run_shell() -> None:
        try:
            result["shell"] = linux_guest.shell(
                "dmesg -c > /dev/null; echo l > /proc/sysrq-trigger; dmesg", timeout=300
            )
        except Exception as exc:  # reported by the test below
            result["error"] = exc

    session = api.attach(linux_guest.gdb_endpoint)
    shell = threading.Thread(target=run_shell)
    try:
        number, address = session.break_insert("dump_stack_lvl")
        session.resume()
        shell.start()
        deadline = time.monotonic() + 240
        while session.wait_for_stop(5) is None:
            assert time.monotonic() < deadline, "the guest never reached dump_stack_lvl"
        regs = session.registers()
        assert regs["rip"] == address
        bt = session.backtrace()
        session.break_delete(number)
    finally:
        session.close()  # the guest runs on and prints its trace
    shell.join(timeout=300)
    assert "error" not in result, result.get("error")
    output = result["shell"].output
    block = output[output.index("Call Trace:") : output.index("</TASK>")]
    oracle = [
        f"{m.group(1)}+{m.group(2)}"
        for line in block.splitlines()
        if (m := _TRACE_LINE.match(line))  # the lines with "?" are the guest's guesses
    ]
    got = [f"{f.symbol}+{f.offset:#x}" for f in bt.frames]
    assert got[0] == "dump_stack_lvl+0x0" and oracle[0].startswith("dump_stack_lvl+")
    assert got[1:-1] == oracle[1:], f"{bt}\n---\n{block}"
    user = bt.frames[-1]
    rip = re.search(r"RIP: 0033:(0x[0-9a-f]+)", output)
    rsp = re.search(r"RSP: 002b:([0-9a-f]+)", output)
    assert rip and rsp and user.pc == int(rip.group(1), 16) and user.sp == int(rsp.group(1), 16)
    assert user.interrupt is not None and user.interrupt.cs & 3 == 3
    assert bt.stop == "outermost" and "user space" in bt.reason
    assert {f.method for f in bt.frames[1:]} == {"orc"}
