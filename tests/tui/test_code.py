"""The disassembly (d), the stack telescope in Memory (4) and the context page (0), with Pilot.

On the Linux 6.1 capture with code and a stack of our own put where its RIP
and RSP point (``CodeTarget``): each view's text is checked against the
same call made on an independent session over the same bytes, and the
instructions against the bytes the test wrote; every key these views add is
pressed.
"""

from __future__ import annotations

import struct

from kinspect.inspector.context import disassemble, telescope
from kinspect.inspector.errors import FaultError
from kinspect.inspector.session import Session
from kinspect.inspector.symbols import Symbol
from kinspect.tui.app import make_app
from kinspect.tui.widgets.context import ContextView, render_context
from kinspect.tui.widgets.disasm import DisasmView
from kinspect.tui.widgets.memory import HexView
from kinspect.tui.widgets.telescope import TelescopeView

from .conftest import run
from .fakes import REGISTERS, MemoryTarget, capture_symbols

RIP = REGISTERS["rip"]  # 0xffffffff81a592eb
CODE = RIP & ~0xFFF
CALLEE = RIP + 5 + 0x100
STACK = 0xFFFFFFFF82A03000  # the capture's RSP page
RSP = STACK + 0xF80  # 16 slots below the end of the page: the next one is not readable
HEAP = 0xFFFF888001234000
SIZE = (160, 48)


def code_page() -> bytes:
    """NOPs, and at RIP: call CALLEE; mov rax, [rip+0x20]; jne RIP; ret."""
    page = bytearray(b"\x90" * 0x1000)
    at = RIP - CODE
    page[at : at + 15] = bytes.fromhex("e800010000488b052000000075f2c3")
    return bytes(page)


def stack_page() -> bytes:
    page = bytearray(0x1000)
    values = [RIP + 5, HEAP, HEAP + 0x10, 0x1234, RSP + 0x20]
    struct.pack_into("<5Q", page, RSP - STACK, *values)
    return bytes(page)


def heap_page() -> bytes:
    page = bytearray(0x1000)
    struct.pack_into("<Q", page, 0, CALLEE)
    page[0x10:0x18] = b"kinspec\0"
    return bytes(page)


class CodeTarget(MemoryTarget):
    """The capture, with code at RIP, a stack at RSP (16 slots to the end of its page) and a
    page of data, read by virtual address (like the captured GDT); the page after the
    stack's cannot be read."""

    def __init__(self) -> None:
        super().__init__()
        self.regs["rsp"] = RSP
        self.regs["rbp"] = RSP + 0x20
        self.code = {CODE: code_page(), STACK: stack_page(), HEAP: heap_page()}

    def read_virtual(self, address, size):
        self._check()
        out = bytearray()
        while len(out) < size:
            at = address + len(out)
            page = self.code.get(at & ~0xFFF)
            if page is None:
                if not out and (address & ~0xFFF) not in self.code:
                    return super().read_virtual(address, size)
                raise FaultError(at + 1, "cannot read virtual memory (not mapped)")  # gdb's +1
            chunk = min(size - len(out), 0x1000 - (at & 0xFFF))
            out += page[at & 0xFFF : (at & 0xFFF) + chunk]
        return bytes(out)


def code_session(target=None) -> Session:
    session = Session(target or CodeTarget())
    session._symbols = capture_symbols(
        [Symbol("code_func", CODE, 0x1000, "func"), Symbol("callee", CALLEE, 0x10, "func")]
    )
    return session


async def started(app, pilot):
    await app.wait_idle(30)
    await pilot.pause()
    assert app.stops == 1, app.errors


async def settle(app, pilot):
    await app.wait_idle()
    await pilot.pause()
    await app.wait_idle()
    await pilot.pause()


def test_the_disassembly_marks_rip_names_targets_and_acts_on_the_cursor_line():
    session = code_session()
    truth = code_session()

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            await pilot.press("d")
            await settle(app, pilot)
            view = app.query_one(DisasmView)
            assert app.focused is view
            listing = view.listing
            assert listing is not None and listing.at == RIP
            expected = disassemble(truth, RIP, before=10, after=40)
            assert listing == expected
            call = listing.instructions[listing.index]
            assert (call.mnemonic, call.target, call.target_name) == ("call", CALLEE, "callee")
            assert view.highlighted_address == RIP  # the cursor starts on RIP
            text = view.export_text().splitlines()
            assert text == expected.lines()
            assert text[listing.index].startswith(f"=> {RIP:#018x} <code_func+0x2eb>:")
            assert all(not line.startswith("=>") for i, line in enumerate(text) if i != 10)
            load = listing.instructions[listing.index + 1]
            assert load.reference == RIP + 5 + 7 + 0x20
            jne = listing.instructions[listing.index + 2]
            assert (jne.mnemonic, jne.target) == ("jne", RIP)  # 75 f2: back to the call

            # cursor keys
            await pilot.press("j")
            assert view.highlighted_address == load.address
            await pilot.press("down", "k")
            assert view.highlighted_address == load.address
            await pilot.press("up")
            assert view.highlighted_address == RIP

            # F2 / Space: a breakpoint on the line, through the break command
            await pilot.press("j", "space")
            await settle(app, pilot)
            assert list(session.target.armed.values()) == [load.address]
            await pilot.press("j", "f2")
            await settle(app, pilot)
            assert list(session.target.armed.values()) == [load.address, jne.address]

            # u / F4: run to the line, as the command line's until
            ran = []
            app.run_command = ran.append
            await pilot.press("u", "k", "f4")
            assert ran == [f"until {jne.address:#x}", f"until {load.address:#x}"]
            del app.run_command

            # Enter follows the call, Esc comes back
            await pilot.press("k", "enter")
            await settle(app, pilot)
            assert view.listing.at == CALLEE and "at 0xffffffff81a593f0 <callee>" in view.note
            assert view.listing == disassemble(truth, CALLEE, before=10, after=40)
            await pilot.press("escape")
            await settle(app, pilot)
            assert view.listing.at == RIP and view.note == ""
            assert app.focused is view
            await pilot.press("escape")  # nothing to go back to: Esc stays in the view's list
            assert app.focused is view

            # Enter on a line that does not branch is one line
            await pilot.press("d", "j", "enter")
            await settle(app, pilot)
            assert app.errors[-1] == (
                f"{load.address:#x} is not a direct call or jump: nothing to follow"
            )

            # :disasm SYM, then :disasm back to RIP
            app.run_command("disasm callee")
            await settle(app, pilot)
            assert view.listing.at == CALLEE
            app.run_command("disasm")
            await settle(app, pilot)
            assert view.listing.at == RIP

            # a stop elsewhere: the view follows RIP
            app.run_command(f"disasm {CALLEE:#x}")
            await settle(app, pilot)
            await pilot.press("s")  # the fake steps 2 bytes
            await settle(app, pilot)
            assert view.listing.at == RIP + 2 == view.rip
            assert app.errors[-1].endswith("nothing to follow")  # nothing new went wrong

    run(go())


def test_code_that_cannot_be_read_is_one_line_in_the_view_not_an_error():
    session = code_session(MemoryTarget())  # the plain capture: no code bytes at RIP

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            await pilot.press("d")
            await settle(app, pilot)
            view = app.query_one(DisasmView)
            assert view.listing is not None and view.listing.instructions == ()
            assert view.export_text() == (
                f"{RIP:#x}: cannot read the code here: not in the capture\n"
            )
            assert app.errors == []

    run(go())


def test_memory_opens_on_the_telescope_at_rsp_and_t_switches_to_hex():
    session = code_session()
    truth = code_session()

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            await pilot.press("4")
            await settle(app, pilot)
            view = app.query_one(TelescopeView)
            assert app.focused is view and view.display
            found = view.telescope
            assert found == telescope(truth, RSP, 32)
            assert len(found.slots) == 16 and found.unreadable == STACK + 0x1000
            first, pointer, string = found.slots[:3]
            assert first.registers == ("rsp",) and first.symbol == "code_func+0x2f0"
            assert (pointer.points_to, pointer.points_to_symbol) == (CALLEE, "callee")
            assert string.string == "kinspec"
            assert found.slots[4].registers == ("rbp",)
            lines = view.export_text().splitlines()
            assert lines[0] == f"stack telescope at {RSP:#x} (RSP)"
            assert lines[1:] == found.lines()
            assert lines[-1].startswith("0xffffffff82a04000: not readable (")

            # j/k, pagedown/pageup move the window; a stop brings it back to RSP
            await pilot.press("j")
            await settle(app, pilot)
            assert view.telescope.address == RSP + 8
            await pilot.press("k", "k")
            await settle(app, pilot)
            assert view.telescope.address == RSP - 8
            await pilot.press("pageup")
            await settle(app, pilot)
            assert view.telescope.address == RSP - 8 - 32 * 8
            await pilot.press("pagedown", "down")
            await settle(app, pilot)
            assert view.telescope.address == RSP

            # t: hex at the same address, t again: the telescope
            await pilot.press("t")
            await settle(app, pilot)
            hexview = app.query_one(HexView)
            assert hexview.display and not view.display and app.focused is hexview
            assert hexview.address == RSP
            await pilot.press("t")
            await settle(app, pilot)
            assert view.display and app.focused is view and view.telescope.address == RSP
            assert app.errors == []

    run(go())


def test_mem_rsp_shows_what_is_readable_and_the_first_unreadable_page():
    session = code_session()

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            app.run_command("mem rsp")
            await settle(app, pilot)
            hexview = app.query_one(HexView)
            lines = hexview.plain.splitlines()
            assert lines[0] == f"virtual memory at {RSP:#x}"
            assert len(lines) == 1 + 8 + 1  # 0x80 bytes: 8 rows, then where reading stopped
            assert lines[1].startswith(f"{RSP:#018x}: " + (RIP + 5).to_bytes(8, "little").hex(" "))
            assert lines[-1] == "0xffffffff82a04000: not readable (not in the capture)"
            assert app.errors == []
            # nothing readable at all: the line, and one notification
            app.run_command("mem 0xffffffff82a04000")
            await settle(app, pilot)
            assert hexview.plain.splitlines()[1].startswith("0xffffffff82a04000: not readable")
            assert app.errors == [hexview.plain.splitlines()[1]]

    run(go())


def test_the_context_page_at_200x50_and_80x24():
    async def go(size):
        session = code_session()
        app = make_app(session)
        async with app.run_test(size=size) as pilot:
            await started(app, pilot)
            await pilot.press("0")
            await settle(app, pilot)
            view = app.query_one(ContextView)
            assert app.focused is view
            text = view.export_text().splitlines()
            width, height = view.size.width, view.size.height
            assert len(text) <= height and all(len(line) <= width for line in text)
            heads = [line for line in text if line.startswith("─[ ")]
            assert [h.split()[1] for h in heads][:2] == ["registers", "code"]
            rip_lines = [line for line in text if line.startswith("=>")]
            assert len(rip_lines) == 1 and f"{RIP:#018x}" in rip_lines[0]
            assert "call" in rip_lines[0] and "<callee>" in rip_lines[0]
            assert any(f"{RIP:#018x}" in line and "rip" in line for line in text), "\n".join(text)
            assert any("backtrace" in h for h in text if h.startswith("─[ "))
            return text, app.errors

    wide, errors = run(go((200, 50)))
    assert errors == []
    head = next(line for line in wide if "code" in line and line.startswith("─[ "))
    assert "┬─[ stack ]" in head  # code and stack side by side
    side = [line for line in wide if "│" in line]
    assert len(side) >= 20 and any("<code_func+0x2f0>" in line for line in side)
    narrow, errors = run(go((80, 24)))
    assert errors == []
    names = [line.split()[1] for line in narrow if line.startswith("─[ ")]
    assert names == ["registers", "code", "stack", "backtrace"]  # stacked, each kept


def test_render_context_gives_each_section_its_share_and_never_overflows():
    session = code_session()
    from kinspect.inspector.context import disassemble as dis
    from kinspect.tui.widgets.context import ContextData

    data = ContextData(
        registers=dict(session.registers()),
        disassembly=dis(session, before=8, after=32),
        telescope=telescope(session, None, 24),
        backtrace_error="no frames here",
    )
    for width, height in ((80, 24), (100, 30), (200, 50), (40, 10)):
        lines = render_context(data, width, height)
        assert len(lines) <= height and all(line.cell_len <= width for line in lines)
        plain = [line.plain for line in lines]
        assert any(line.startswith("=>") for line in plain), (width, height)
        assert plain[-1] == "cannot unwind: no frames here" or height < 24


def test_the_cli_commands_print_the_same_records_and_refuse_bad_input_in_one_line():
    import pytest

    from kinspect.inspector.commands import UsageError, registry
    from kinspect.inspector.errors import InspectorError

    session, truth = code_session(), code_session()
    result = registry().execute(session, "disasm")
    assert result.text == str(disassemble(truth, RIP))  # 8 before RIP, 16 from it
    assert result.document["disassembly"]["at"] == RIP
    assert result.document["command"] == "disasm"
    result = registry().execute(session, "disasm callee -n 3")
    assert result.text.splitlines()[0].startswith(f"=> {CALLEE:#018x} <callee>:")
    assert len(result.text.splitlines()) == 3
    result = registry().execute(session, "telescope rsp -n 4")
    assert result.text == str(telescope(truth, RSP, 4))
    slots = result.document["telescope"]["slots"]
    assert [s["value"] for s in slots[:2]] == [RIP + 5, HEAP] and slots[2]["string"] == "kinspec"
    unreadable = registry().execute(session, "telescope 0xffffffff82a04000")
    assert unreadable.status == 1 and unreadable.text is None
    assert unreadable.error == "0xffffffff82a04000: not readable (not in the capture)"
    nothing = registry().execute(code_session(MemoryTarget()), "disasm")
    assert nothing.status == 1
    assert nothing.error == f"{RIP:#x}: cannot read the code here: not in the capture"
    for line, error in (
        ("disasm -n 0", UsageError),
        ("disasm -b -1", UsageError),
        ("disasm no_such_symbol", InspectorError),
        ("telescope 0x3", InspectorError),
    ):
        with pytest.raises(error) as caught:
            registry().execute(session, line)
        assert "\n" not in str(caught.value) and str(caught.value)


def test_disasm_with_options_on_the_command_line_is_the_clis_text_in_a_screen():
    from kinspect.tui.screens.output import OutputScreen

    session, truth = code_session(), code_session()

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            app.run_command("disasm -n 3 callee")
            await settle(app, pilot)
            assert isinstance(app.screen, OutputScreen)
            expected = str(disassemble(truth, CALLEE, before=0, after=3))
            assert expected in "\n".join(str(s.content) for s in app.screen.query("Static"))
            await pilot.press("escape")
            app.run_command("disasm -n zero")
            await settle(app, pilot)
            assert app.errors == ["argument -n/--count: 'zero' is not a number"]

    run(go())


def test_list_keys_in_the_disassembly():
    """j k g G / n N Esc in the disassembly, as in every list (tui/widgets/listnav.py)."""
    from .test_navigation import check_list_keys

    session = code_session()

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            await pilot.press("d")
            await settle(app, pilot)
            view = app.query_one(DisasmView)
            assert app.focused is view
            texts = [view.nav_text(i) for i in range(view.nav_count())]
            rows = [i for i in range(view.nav_count()) if not view.get_option_at_index(i).disabled]
            matches = [i for i in rows if "nop" in texts[i]]
            assert len(matches) > 2, texts
            await check_list_keys(pilot, view, lambda: view.highlighted, "nop", matches)

    run(go())
