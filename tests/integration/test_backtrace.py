"""Stack frames of the live demo kernel against GDB's own backtrace, and source lines
against binutils' addr2line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kinspect.inspector import api

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def nm(demo_kernel) -> dict[str, int]:
    out = subprocess.run(["nm", demo_kernel], capture_output=True, text=True, check=True).stdout
    return {
        parts[2]: int(parts[0], 16) for parts in map(str.split, out.splitlines()) if len(parts) == 3
    }


def stop_at(session, location: str) -> dict:
    """Break at ``location``, let the kernel run into it, and return the stop record."""
    session.target.break_insert(location)
    session.resume()
    record = session.target.wait_for_stop(30)
    session.invalidate()
    assert record.get("reason") == "breakpoint-hit", record
    return record


def gdb_frames(session) -> list[dict]:
    return session.target._mi.command("-stack-list-frames").payload["stack"]


def ours(frame) -> tuple:
    return (
        frame.symbol,
        frame.line.file if frame.line else None,
        frame.line.line if frame.line else None,
    )


def theirs(frame: dict) -> tuple:
    line = frame.get("line")
    return (frame.get("func"), frame.get("file"), int(line) if line else None)


def test_frames_at_demo_level3_equal_gdbs(session):
    stop_at(session, "demo_level3")
    bt = session.backtrace()
    truth = gdb_frames(session)
    assert [ours(f) for f in bt.frames] == [theirs(f) for f in truth]
    assert [f.pc for f in bt.frames] == [int(f["addr"], 16) for f in truth]
    assert [f.line.path for f in bt.frames] == [f["fullname"] for f in truth]
    assert [f.symbol for f in bt.frames] == [
        "demo_level3",
        "demo_level2",
        "demo_level1",
        "demo_work",
        "kernel_main",
        "start64",
    ]
    assert bt.stop == "outermost" and bt.interrupts == ()
    assert [f.how for f in bt.frames] == ["registers"] + ["cfi"] * 5
    assert all(f.mapping for f in bt.frames)  # every frame on the mapped boot stack
    cfas = [f.cfa for f in bt.frames]
    assert cfas == sorted(cfas) and len(set(cfas)) == len(cfas)


def test_inside_the_page_fault_handler_unwinds_through_the_iretq_frame(session, nm):
    stop_at(session, "trap_demo_inner")
    regs = session.registers()
    assert regs["cr2"] == nm["boot_stack_guard"]  # the fault really happened where we said
    bt = session.backtrace()
    names = [f.symbol for f in bt.frames]
    assert names == [
        "trap_demo_inner",
        "trap_demo_handler",
        "trap_demo_fixup",
        "interrupt_dispatch",
        "interrupt_common",
        "trap_demo_fault",
        "trap_demo",
        "demo_work",
        "kernel_main",
        "start64",
    ]
    assert bt.stop == "outermost"
    crossed = [f for f in bt.frames if f.how == "interrupt"]
    assert len(crossed) == 1 and len(bt.interrupts) == 1
    interrupted = crossed[0]
    frame = interrupted.interrupt
    assert interrupted.symbol == "trap_demo_fault" and interrupted.pc == nm["trap_demo_fault_insn"]
    assert frame.rip == nm["trap_demo_fault_insn"] and frame.cs == 0x08 and frame.ss == 0x10
    assert frame.error_code == 0x2  # #PF: a supervisor write to a not-present page
    assert frame.rsp == interrupted.sp and frame.rflags & 0x2
    assert "interrupt frame" in str(bt)

    # GDB, frame for frame; it calls the interrupt entry '<signal handler called>'.
    truth = gdb_frames(session)
    assert len(truth) == len(bt.frames)
    for mine, gdbs in zip(bt.frames, truth, strict=True):
        assert mine.pc == int(gdbs["addr"], 16)
        if gdbs["func"] == "<signal handler called>":
            assert mine.symbol == "interrupt_common"
            assert bt.frames[mine.index + 1].how == "interrupt"
        else:
            assert ours(mine) == theirs(gdbs)


def test_cli_bt_json_inside_the_handler(qemu, demo_kernel, nm):
    session = api.attach(qemu.gdb_endpoint, elf=demo_kernel)
    try:
        stop_at(session, "trap_demo_handler")
    finally:
        session.close(resume=False)  # leave the CPU where it stopped
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kinspect.inspector.cli",
            "--target",
            qemu.gdb_endpoint,
            "--elf",
            demo_kernel,
            "bt",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)["backtrace"]
    assert doc["frames"][0]["symbol"] == "trap_demo_handler"
    assert doc["interrupts_crossed"] == 1 and doc["stop"] == "outermost"
    interrupted = next(f for f in doc["frames"] if f["how"] == "interrupt")
    assert interrupted["symbol"] == "trap_demo_fault"
    assert interrupted["interrupt"]["rip"] == nm["trap_demo_fault_insn"]
    assert interrupted["file"] == "demo/trap_demo.c" and interrupted["line"] > 0


def test_sym_without_a_target(demo_kernel, nm):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kinspect.inspector.cli",
            "--elf",
            demo_kernel,
            "sym",
            "demo_level2",
            hex(nm["demo_level2"] + 3),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    first, second = json.loads(result.stdout)["addresses"]
    assert first["symbol"] == "demo_level2" and first["offset"] == 0
    assert second["offset"] == 3 and second["line"]["file"] == "demo/work.c"


def test_addr2line_agrees_with_binutils_and_gdb(demo_kernel, nm):
    """binutils for every third text byte; where several rows share an address and
    binutils takes the last while gdb prefers a statement boundary, gdb decides
    (its backtraces are the truth the frames are held to)."""
    from kinspect.inspector.symbols import SymbolTable

    table = SymbolTable.from_elf(demo_kernel)
    addresses = list(range(nm["__text_start"], nm["__text_end"], 3))
    out = subprocess.run(
        ["addr2line", "-e", demo_kernel],
        input="\n".join(map(hex, addresses)),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert len(out) == len(addresses)
    compared, disputed = 0, {}
    for address, line in zip(addresses, out, strict=True):
        path, _, number = line.split(" ")[0].rpartition(":")
        mine = table.addr2line(address)
        if path == "??" or number == "?":  # no line here (binutils may name the object)
            assert mine is None, hex(address)
            continue
        assert mine is not None, hex(address)
        if (mine.path, mine.line) != (path, int(number)):
            disputed[address] = mine
        compared += 1
    assert compared > len(addresses) // 2
    assert len(disputed) < compared // 4, "binutils and kinspect disagree too often"
    if disputed:
        commands = [arg for a in disputed for arg in ("-ex", f"info line *{a:#x}")]
        gdb = subprocess.run(
            ["gdb", "-nx", "-batch", *commands, demo_kernel],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        answers = [line for line in gdb.splitlines() if line.startswith("Line ")]
        assert len(answers) == len(disputed), gdb
        for (address, mine), answer in zip(disputed.items(), answers, strict=True):
            assert answer.startswith(f'Line {mine.line} of "{mine.file}"'), (hex(address), answer)


@pytest.mark.parametrize(
    ("args", "contains"),
    [
        (("sym", "no_such_symbol"), "no_such_symbol"),
        (("--slide", "bogus", "sym", "demo_work"), "--slide"),
        (("--slide", "nope=0x1000", "sym", "demo_work"), "nope"),
    ],
)
def test_sym_errors_are_one_line(demo_kernel, args, contains):
    result = subprocess.run(
        [sys.executable, "-m", "kinspect.inspector.cli", "--elf", demo_kernel, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kinspect: error: ") and contains in lines[0]


def test_slide_from_a_symbol_moves_every_address(demo_kernel, nm):
    slid = nm["demo_work"] + 0x200000
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kinspect.inspector.cli",
            "--elf",
            demo_kernel,
            "--slide",
            f"demo_work={slid:#x}",
            "sym",
            hex(slid + 4),
            "demo_level3",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    first, second = json.loads(result.stdout)["addresses"]
    assert (first["symbol"], first["offset"]) == ("demo_work", 4)
    assert second["address"] == nm["demo_level3"] + 0x200000


def instruction_addresses(demo_kernel: str, function: str) -> list[int]:
    """Every instruction of ``function`` but padding, from binutils' objdump."""
    return [a for a, insn in instructions(demo_kernel, function) if not insn.startswith("nop")]


def instructions(demo_kernel: str, function: str) -> list[tuple[int, str]]:
    """(address, mnemonic and operands) of each instruction of ``function`` (objdump)."""
    out = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", demo_kernel],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    body = out.split(f"<{function}>:\n", 1)[1].split("\n\n", 1)[0]
    result = []
    for line in body.splitlines():
        address, _, insn = line.strip().partition(":")
        if insn.strip():
            result.append((int(address, 16), insn.strip()))
    return result


@pytest.mark.parametrize("function", ["demo_work", "demo_level2"])
def test_every_instruction_of_a_function_unwinds_like_gdb(session, demo_kernel, function):
    """Prologue, body and epilogue: the CFI row changes at each, gdb follows it too."""
    addresses = instruction_addresses(demo_kernel, function)
    assert len(addresses) >= 8
    for address in addresses:
        number = session.target.break_insert(f"*{address:#x}")
        stop_at_current(session)
        bt = session.backtrace()
        truth = gdb_frames(session)
        assert bt.frames[0].pc == address
        assert [ours(f) for f in bt.frames] == [theirs(f) for f in truth], hex(address)
        assert [f.pc for f in bt.frames] == [int(f["addr"], 16) for f in truth], hex(address)
        assert bt.stop == "outermost"
        session.target._mi.command(f"-break-delete {number}")


def stop_at_current(session) -> None:
    session.resume()
    record = session.target.wait_for_stop(30)
    session.invalidate()
    assert record.get("reason") == "breakpoint-hit", record


def test_timer_interrupt_unwinds_like_gdb(session):
    """IRQ0 from wherever the PIT caught the kernel (mostly HLT in kernel_main)."""
    stop_at(session, "pic_irq")
    bt = session.backtrace()
    truth = gdb_frames(session)
    assert len(bt.interrupts) == 1 and bt.stop == "outermost"
    assert len(truth) == len(bt.frames)
    for mine, gdbs in zip(bt.frames, truth, strict=True):
        assert mine.pc == int(gdbs["addr"], 16)
        if gdbs["func"] == "<signal handler called>":
            assert mine.symbol == "interrupt_common"
        else:
            assert ours(mine) == theirs(gdbs)
    assert bt.interrupts[0].rflags & 0x200  # IF was set: the CPU took the IRQ
    assert bt.interrupts[0].error_code == 0  # the stub's placeholder


def test_at_a_stub_without_cfi_the_idt_says_an_iretq_frame_is_on_top(session, nm):
    stop_at(session, f"*{nm['isr_stub_32']:#x}")
    bt = session.backtrace()
    assert bt.frames[0].symbol == "isr_stub_32" and bt.frames[0].how == "registers"
    interrupted = bt.frames[1]
    assert interrupted.how == "interrupt" and interrupted.interrupt.vector == 32
    assert interrupted.interrupt.error_code is None  # IRQs push none
    assert interrupted.interrupt.address == bt.frames[0].sp
    assert interrupted.interrupt.cs == 0x08 and interrupted.interrupt.rflags & 0x200
    assert "vector 32" in str(bt)
    assert bt.frames[-1].symbol == "start64" and bt.stop == "outermost"
    # CR2 and the general registers are untouched by the entry: RIP is in kernel text.
    assert nm["__text_start"] <= interrupted.pc < nm["__text_end"]


def test_frame_pointers_alone_give_gdbs_frames_outside_leaf_functions(session, demo_kernel):
    """The fallback for code without CFI, on real frames: -fno-omit-frame-pointer code."""
    from kinspect.inspector.unwind import unwind

    # At the call to demo_level3 demo_level2 has pushed RBP and set it up.
    call = next(
        a for a, insn in instructions(demo_kernel, "demo_level2") if insn.startswith("call")
    )
    stop_at(session, f"*{call:#x}")
    truth = gdb_frames(session)
    bt = unwind(
        session.read_virtual,
        session.registers(),
        cfi=None,
        symbols=session.symbols,
        mapping=session.mapping(),
    )
    assert [f.how for f in bt.frames[1:]] == ["frame-pointer"] * (len(bt.frames) - 1)
    assert [ours(f) for f in bt.frames] == [theirs(f) for f in truth]
    assert bt.stop == "no-unwind-info"  # start64 zeroes RBP: no frame pointer above it


def test_a_stack_pointer_in_the_guard_page_is_named(session, nm):
    """RSP moved into boot_stack_guard (what an overflow does), on the real page tables
    and memory: the frame says its stack is unmapped; where the CFA hangs off RSP the
    walk cannot go on and says why, where it hangs off RBP it goes on, as gdb would."""
    from kinspect.inspector.unwind import unwind

    stop_at(session, "demo_level3")  # RBP is demo_level2's frame pointer here
    in_level2 = session.backtrace().frames[1].pc
    regs = dict(session.registers())
    regs["rsp"] = nm["boot_stack_guard"] + 0xFF8

    def walk(rip: int):
        return unwind(
            session.read_virtual,
            {**regs, "rip": rip},
            cfi=session.symbols.cfi,
            symbols=session.symbols,
            mapping=session.mapping(),
        )

    leaf = walk(nm["demo_level3"])  # CFA = RSP+8: the return address is in the guard page
    assert len(leaf.frames) == 1 and leaf.frames[0].mapping is None
    assert leaf.stop == "unmapped-stack" and "boot_stack_guard+0xff8" in leaf.reason
    assert "(unmapped stack)" in str(leaf)
    framed = walk(in_level2)  # demo_level2's CFA is RBP+16, still on the stack
    assert framed.frames[0].mapping is None and framed.frames[1].mapping is not None
    assert [f.symbol for f in framed.frames[:2]] == ["demo_level2", "demo_level1"]
    assert framed.stop == "outermost"
