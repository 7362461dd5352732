"""Each fault class of the demo kernel (``-append fault=NAME``, kernel-agent/demo/fault_demo.c),
explained by kinspect and checked against QEMU's own log of delivered exceptions
(``-d int``), its ``info tlb`` and ``info registers`` at the same instant, and the
addresses binutils' ``nm`` gives for the faulting instruction and data.

One boot per class. QEMU starts halted (``-S``); the test runs the kernel to
``pic_init`` (the IDT is loaded by then), sets a catchpoint on the vector (a
breakpoint on the IDT's handler), and lets it fault: the CPU stops before the
handler runs, and the kernel's line before the fault is on the console. The
triple faults leave QEMU paused (``-action shutdown=pause``): status
``shutdown``, the gdb stub and the monitor still answering.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from kinspect.inspector import api
from kinspect.inspector.targets.qemu_log import (
    Delivery,
    ExceptionCheck,
    exception_chain,
    last_delivery,
    parse_qemu_log,
)
from kinspect.inspector.targets.qemu_text import decode_info_registers, decode_info_tlb

pytestmark = pytest.mark.integration

STOP_TIMEOUT = 90.0
FAULT_USER_VA = 0x00007F0000000000  # fault_demo.h


@pytest.fixture(scope="module")
def nm(demo_kernel):
    out = subprocess.run(["nm", demo_kernel], capture_output=True, text=True, check=True).stdout
    return {
        parts[2]: int(parts[0], 16)
        for parts in (line.split() for line in out.splitlines())
        if len(parts) == 3
    }


def boot(name):
    return api.launch_demo(append=f"fault={name}", exception_log=True, stopped=True)


def run_to_fault(qemu, session, name, vector):
    session.break_insert("pic_init")
    session.resume()
    session.wait_for_stop(STOP_TIMEOUT)
    for bp in session.breakpoints():
        session.break_delete(bp.number)
    catches = session.catch(vector)
    assert len(catches) == (32 if vector is None else 1)  # the demo's stubs: one per vector
    session.resume()
    record = session.wait_for_stop(STOP_TIMEOUT)
    assert record.get("reason") == "breakpoint-hit"
    assert session.registers()["rip"] in {c.handler for c in catches}
    text = qemu.wait_for_serial(f"kinspect-demo: fault={name}:", timeout=10)
    assert "EXCEPTION" not in text  # stopped before the handler ran


def tlb_line(qemu, address):
    for va, pa, flags in decode_info_tlb(qemu.monitor("info tlb")):
        size = 1 << 12 if "P" not in flags[2] else 1 << 21
        if va <= address < va + size:
            return va, pa, flags
    return None


def check_against_log(qemu, report):
    events = parse_qemu_log(qemu.int_log_text())
    logged = last_delivery(events)
    c = report.context
    assert (logged.vector, logged.error_code) == (c.vector, report.error.value)
    assert (logged.cs, logged.rip, logged.ss, logged.rsp) == (c.cs, c.rip, c.ss, c.rsp)
    if c.vector == 14:
        assert logged.cr2 == c.cr2
    return events


# name, error code, rule, level, CR2 (symbol or value), RIP (symbol or value), info tlb check
PAGE_FAULTS = [
    ("pf-notpresent", 0x0, "not-present", 1, 0x10, "fault_pf_notpresent_insn", None),
    (
        "pf-write-ro",
        0x3,
        "write-read-only",
        1,
        "fault_demo_readonly",
        "fault_pf_write_ro_insn",
        lambda flags: flags[8] == "-",
    ),
    (
        "pf-nx",
        0x11,
        "nx",
        1,
        "fault_demo_nx_code",
        "fault_demo_nx_code",
        lambda flags: flags[0] == "X",
    ),
    (
        "pf-user",
        0x5,
        "user-supervisor",
        4,
        "fault_demo_secret",
        FAULT_USER_VA,
        lambda flags: flags[7] == "-",
    ),
]


@pytest.mark.parametrize(
    "name, error, rule, level, cr2, rip, tlb", PAGE_FAULTS, ids=[c[0] for c in PAGE_FAULTS]
)
def test_page_fault(demo_kernel, nm, name, error, rule, level, cr2, rip, tlb):
    cr2 = nm[cr2] if isinstance(cr2, str) else cr2
    rip = nm[rip] if isinstance(rip, str) else rip
    with boot(name) as qemu:
        session = api.attach(qemu.gdb_endpoint, elf=demo_kernel)
        try:
            run_to_fault(qemu, session, name, 14)
            report = session.fault()
            c = report.context
            assert (c.vector, report.error.value, c.rip, c.cr2) == (14, error, rip, cr2)
            assert report.page_fault.rule == rule and report.page_fault.level == level
            assert c.cpl == (3 if name == "pf-user" else 0)
            check_against_log(qemu, report)
            found = tlb_line(qemu, cr2)
            if tlb is None:
                assert found is None and not report.walk.ok
            else:
                assert found is not None and tlb(found[2])
                # The leaf kinspect blames is the one QEMU lists for the page.
                leaf = report.walk.steps[-1]
                assert leaf.entry.address == found[1]
            blamed = report.page_fault.step
            assert blamed.entry.raw == report.walk.steps[len(report.walk.steps) - level].entry.raw
            assert report.to_dict()["page_fault"]["level"] == level
        finally:
            session.close(resume=False)


def test_gp_from_a_bad_selector(demo_kernel, nm):
    with boot("gp-selector") as qemu:
        session = api.attach(qemu.gdb_endpoint, elf=demo_kernel)
        try:
            run_to_fault(qemu, session, "gp-selector", None)  # catch all: #GP comes first
            report = session.fault()
            assert report.context.rip == nm["fault_gp_selector_insn"]
            error = report.error
            assert (error.value, error.table, error.index, error.selector) == (0x28, "GDT", 5, 0x28)
            cause = report.selector
            assert cause.register == "DS" and cause.descriptor.kind == "TSS64-busy"
            assert "DS must select a data or readable code segment" in str(cause)
            check_against_log(qemu, report)
            # The descriptor kinspect blames is the one TR holds in QEMU's view.
            regs = decode_info_registers(qemu.monitor("info registers"))
            assert regs["tr"].selector == 0x28
            assert cause.descriptor.base == regs["tr"].base
        finally:
            session.close(resume=False)


def test_double_fault_on_a_blown_stack(demo_kernel, nm):
    with boot("df-stack") as qemu:
        session = api.attach(qemu.gdb_endpoint, elf=demo_kernel)
        try:
            run_to_fault(qemu, session, "df-stack", 8)
            report = session.fault()
            assert report.context.vector == 8 and report.error.value == 0
            stack = report.stack
            assert stack.stack == "RSP0" and stack.top == nm["boot_stack_top"]
            assert stack.guard_start == nm["boot_stack_guard"]
            assert "ran into the unmapped page" in str(stack) and "(boot_stack_guard)" in str(stack)
            # On IST1: the handler's stack is df_stack, the interrupted one the boot stack.
            assert nm["df_stack_top"] - 0x1000 < session.registers()["rsp"] < nm["df_stack_top"]
            events = check_against_log(qemu, report)
            checks = [e for e in events if isinstance(e, ExceptionCheck)]
            assert (checks[-1].old, checks[-1].new) == (0xE, 0xE)
            # The second #PF (a push into the guard page) is CR2 in the #DF's dump.
            assert last_delivery(events, 8).registers["cr2"] == report.context.cr2
            assert nm["boot_stack_guard"] <= report.context.cr2 < nm["boot_stack_guard"] + 4096
            assert tlb_line(qemu, nm["boot_stack_guard"]) is None
        finally:
            session.close(resume=False)


def wait_for_shutdown(qemu, timeout=STOP_TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        status = qemu.status()
        if status["status"] == "shutdown":
            return status
        assert time.monotonic() < deadline, f"QEMU did not pause on the triple fault: {status}"
        time.sleep(0.1)


def test_triple_fault_from_an_unmapped_idt(demo_kernel, nm):
    with boot("triple-idt") as qemu:
        session = api.attach(qemu.gdb_endpoint, elf=demo_kernel)
        try:
            session.resume()
            record = session.wait_for_stop(STOP_TIMEOUT)
            assert record.get("signal-name") == "SIGQUIT"  # QEMU's stub on a shutdown stop
            assert wait_for_shutdown(qemu)["running"] is False
            log = qemu.int_log_text()
            assert "Triple fault" in log
            chain = exception_chain(parse_qemu_log(log))
            report = session.triple_fault(log)
            assert report.chain == chain
            assert [d.vector for d in chain.deliveries] == [6, 14, 8] and chain.final == 14
            assert chain.deliveries[0].rip == nm["fault_triple_idt_insn"]
            idt = nm["boot_stack_guard"]
            assert chain.deliveries[1].cr2 == idt + 6 * 16
            # The final #PF's CR2 is only in the paused CPU: the stub and the monitor agree.
            monitor = decode_info_registers(qemu.monitor("info registers"))
            assert report.final_cr2 == monitor["cr2"] == idt + 8 * 16
            assert monitor["idt"].base == idt
            text = str(report)
            assert text.startswith("triple fault: #UD (vector 6) at RIP ")
            assert "IDT gate 6 at" in text and "IDT gate 14 at" in text
            assert text.endswith(
                f"the #DF could not be delivered because of #PF reading IDT gate 8 at "
                f"{idt + 0x80:#x} (IDTR.base {idt:#x}) is not mapped: not present at level 1 "
                f"(PT entry {(idt >> 12) & 0x1FF} at {report_pt_entry(session, idt):#x})"
            )
            assert tlb_line(qemu, idt) is None
        finally:
            session.close(resume=False)


def report_pt_entry(session, address):
    return session.translate(address).steps[-1].entry_address


def test_seed_mistake_gdt_below_a_dropped_identity_map(demo_kernel, nm):
    """No debugger attached while it faults: QEMU pauses by itself (-action shutdown=pause)."""
    qemu = api.launch_qemu(
        api.DEMO_KERNEL,
        extra_args=("-append", "fault=seed-lowgdt"),
        ready_marker="enabling interrupts",
        exception_log=True,
        timeout=60.0,
    )
    with qemu:
        status = wait_for_shutdown(qemu)
        assert status["running"] is False
        time.sleep(0.5)
        assert qemu.running() and qemu.status()["status"] == "shutdown"  # stays paused
        session = api.attach(qemu.gdb_endpoint, elf=demo_kernel)
        try:
            log = qemu.int_log_text()
            report = session.triple_fault(log)
            assert report.chain == exception_chain(parse_qemu_log(log))
            deliveries = report.chain.deliveries
            assert [d.vector for d in deliveries] == [0x20, 14, 8]
            gdt_phys = nm["kernel_gdt"] - 0xFFFFFFFF80000000
            assert deliveries[1].cr2 == gdt_phys + 8  # the CS of the timer's gate
            assert report.final_cr2 == gdt_phys + 8
            monitor = decode_info_registers(qemu.monitor("info registers"))
            assert monitor["gdt"].base == gdt_phys and monitor["cr2"] == gdt_phys + 8
            assert report.reason == (
                f"the #DF could not be delivered because of #PF reading GDT entry 0x0008 at "
                f"{gdt_phys + 8:#x} (GDTR.base {gdt_phys:#x}: the code segment of the gate) is "
                "not mapped: not present at level 4 (PML4 entry 0 at "
                f"{report_pt_entry(session, gdt_phys):#x})"
            )
            assert str(report).startswith("triple fault: vector 32 (interrupt) at RIP ")
            assert isinstance(deliveries[0], Delivery) and deliveries[0].rip in (
                nm["fault_seed_lowgdt_hlt"],
                nm["fault_seed_lowgdt_hlt"] + 1,
            )
        finally:
            session.close(resume=False)


def test_fault_after_the_handler_ran_from_the_backtrace(demo_kernel, nm):
    """No catchpoint: the handler printed and halted; the interrupt frame of the backtrace
    gives the context, and the vector comes from QEMU's log (or from the caller)."""
    with api.launch_qemu(
        api.DEMO_KERNEL,
        extra_args=("-append", "fault=pf-nx"),
        ready_marker="kinspect-demo: halted",
        exception_log=True,
        timeout=60.0,
    ) as qemu:
        session = api.attach(qemu.gdb_endpoint, elf=demo_kernel)
        try:
            (frame,) = [f for f in session.backtrace().frames if f.interrupt is not None]
            report = session.fault(qemu_log=qemu.int_log_text())
            assert report.context.source.endswith(f"(frame #{frame.index})")
            assert (report.context.vector, report.error.value) == (14, 0x11)
            assert report.context.rip == report.context.cr2 == nm["fault_demo_nx_code"]
            assert report.page_fault.rule == "nx"
            check_against_log(qemu, report)
            # The console says the same (the handler's own line).
            assert "EXCEPTION vector=14 (#PF page fault) error=0x11" in qemu.serial_output()
            given = session.fault(frame=frame.index, vector=14)
            assert given.page_fault.rule == "nx" and given.context == report.context
            with pytest.raises(api.InspectorError, match="does not say its vector"):
                session.fault(frame=frame.index)
            with pytest.raises(api.InspectorError, match="crosses no interrupt frame"):
                session.fault(frame=0)
        finally:
            session.close(resume=False)


def kinspect(*args, timeout=120.0):
    return subprocess.run(
        [sys.executable, "-m", "kinspect.inspector.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_catch_and_fault(demo_kernel, nm, tmp_path):
    """``kinspect catch 14`` stops before the #PF handler and shows RIP and CR2; ``kinspect
    fault`` says the same from the stop; ``fault --qemu-log`` gives the triple fault's chain."""
    with boot("pf-write-ro") as qemu:
        session = api.attach(qemu.gdb_endpoint, elf=demo_kernel)
        session.break_insert("pic_init")
        session.resume()
        session.wait_for_stop(STOP_TIMEOUT)
        session.close(resume=False)  # stopped, the IDT loaded; its breakpoint goes with gdb
        common = ("--target", qemu.gdb_endpoint, "--elf", demo_kernel, "--no-resume")
        result = kinspect(*common, "--json", "catch", "14")
        assert result.returncode == 0, result.stderr
        document = json.loads(result.stdout)
        fault = document["fault"]
        assert fault["context"]["rip"] == nm["fault_pf_write_ro_insn"]
        assert fault["context"]["cr2"] == nm["fault_demo_readonly"]
        assert fault["error"]["value"] == 3 and fault["page_fault"]["rule"] == "write-read-only"
        assert document["catchpoints"][0]["vector"] == 14
        assert "EXCEPTION" not in qemu.serial_output()
        text = kinspect(*common, "fault")
        assert text.returncode == 0, text.stderr
        assert text.stdout.startswith("#PF (vector 14) (stopped at the handler's entry 0x")
        assert f"CR2 {nm['fault_demo_readonly']:#018x}" in text.stdout
        assert "cause: a write to a read-only page with CR0.WP=1" in text.stdout
        bad = kinspect(*common, "catch", "300")
        assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0
        assert "a vector is 0..255, not 300" in bad.stderr

    with boot("triple-idt") as qemu:
        session = api.attach(qemu.gdb_endpoint, elf=demo_kernel)
        session.resume()
        session.wait_for_stop(STOP_TIMEOUT)
        session.close(resume=False)
        wait_for_shutdown(qemu)
        log = tmp_path / "qemu-int.log"
        log.write_text(qemu.int_log_text())
        attach = ("--target", qemu.gdb_endpoint, "--elf", demo_kernel, "--no-resume", "--json")
        result = kinspect(*attach, "fault", "--qemu-log", str(log))
        assert result.returncode == 0, result.stderr
        triple = json.loads(result.stdout)["triple_fault"]
        chain = exception_chain(parse_qemu_log(log.read_text()))
        assert [d["vector"] for d in triple["chain"]["deliveries"]] == [
            d.vector for d in chain.deliveries
        ]
        assert triple["text"].startswith("triple fault: #UD (vector 6) at RIP ")
        assert qemu.status()["status"] == "shutdown"


def test_triple_fault_from_a_missing_double_fault_gate(demo_kernel, nm):
    """The last fault is no #PF: the reason comes from decoding the #DF's IDT gate."""
    with boot("triple-df-gate") as qemu:
        session = api.attach(qemu.gdb_endpoint, elf=demo_kernel)
        try:
            session.resume()
            session.wait_for_stop(STOP_TIMEOUT)
            wait_for_shutdown(qemu)
            log = qemu.int_log_text()
            report = session.triple_fault(log)
            events = parse_qemu_log(log)
            checks = [e for e in events if isinstance(e, ExceptionCheck)]
            assert (checks[-1].old, checks[-1].new) == (8, 0xB)  # QEMU: #NP while delivering #DF
            assert [d.vector for d in report.chain.deliveries] == [14, 8]
            assert report.chain.final == 0xB and report.final_cr2 is None
            assert report.reason.startswith(
                "the #DF could not be delivered because of #NP: IDT gate 8 is not present (#NP)"
            )
            assert "while delivering the #PF: #PF at the same address" not in str(report)
            idt = decode_info_registers(qemu.monitor("info registers"))["idt"]
            gate = session.read_virtual(idt.base + 8 * 16, 16)
            assert not gate[5] & 0x80  # P clear in QEMU's memory too
        finally:
            session.close(resume=False)


@pytest.mark.parametrize(
    "args, message",
    [
        (["fault"], "no exception to explain: the CPU is not at an IDT handler's entry"),
        (["fault", "--qemu-log", "/nonexistent"], "cannot read QEMU's log /nonexistent"),
        (["catch", "xyz"], "'xyz' is not a vector (0..255, or 'all')"),
        (["fault", "--frame", "0"], "frame 0 crosses no interrupt frame (see `bt`)"),
    ],
)
def test_cli_errors_are_one_line(qemu, demo_kernel, args, message):
    """On the demo kernel stopped in demo_level3 (called from the idle loop, in no exception
    handler): one line on stderr, exit 1, no traceback."""
    session = api.attach(qemu.gdb_endpoint, elf=demo_kernel)
    number, _ = session.break_insert("demo_level3")
    session.resume()
    session.wait_for_stop(STOP_TIMEOUT)
    session.break_delete(number)
    session.close(resume=False)
    result = kinspect("--target", qemu.gdb_endpoint, "--elf", demo_kernel, "--no-resume", *args)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("kinspect: error: ") and result.stderr.count("\n") == 1
    assert message in result.stderr
