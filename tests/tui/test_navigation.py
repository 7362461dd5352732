"""The keys people already know, the same in every list, on the in-memory Linux 6.1 capture.

``j``/``k``, ``g``/``G``, ``/`` then ``n``/``N``, Enter, Esc in the range map,
the table tree, the stack's frames, the descriptor tables, the EFI map, the
breakpoints and the fault view; the range search (a preview while typing, a
jump on Enter, symbols and registers resolved, Esc back to the list); the tab
keys from any focus; ``n`` reaching an app key when no search is active; the
layout at 80x24; exports; the help built from the bindings and the README
that must list every key.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from textual.binding import Binding
from textual.widgets import Button, Checkbox, DataTable, Input, OptionList, TabbedContent

from kinspect.inspector.errors import TargetLost
from kinspect.tui import app as tui_app
from kinspect.tui.app import KinspectApp, default_export_dir, make_app
from kinspect.tui.model import format_range_row
from kinspect.tui.screens.breakpoints import BreakpointsScreen
from kinspect.tui.screens.help import HelpScreen, key_name, key_sections
from kinspect.tui.screens.remap import RemapScreen
from kinspect.tui.widgets.descriptors import DescriptorsView
from kinspect.tui.widgets.fault import FaultView
from kinspect.tui.widgets.listnav import ListNav, SearchPrompt
from kinspect.tui.widgets.ranges import RangeList
from kinspect.tui.widgets.status import StatusLine
from kinspect.tui.widgets.tables import TableTree
from kinspect.tui.widgets.walk import WalkView

from .fakes import REGISTERS, capture_symbols, remap_session


def run(coro):
    """A pilot test with room for a loaded machine (the capture's 65,000 ranges per app)."""
    return asyncio.run(asyncio.wait_for(coro, 240))


SIZE = (160, 48)
SMALL = (80, 24)
README = Path(__file__).resolve().parents[2] / "tui" / "README.md"
HANDLER = "asm_exc_page_fault"  # a symbol of the capture's kallsyms


async def settle(app, pilot):
    await app.wait_idle(30)
    await pilot.pause()


async def started(app, pilot):
    await settle(app, pilot)
    assert app.stops == 1, app.errors


async def type_search(pilot, text: str) -> None:
    """``/`` opened a prompt: wait for it before typing (keys must not land in the list)."""
    for _ in range(100):
        if isinstance(pilot.app.screen, SearchPrompt) or isinstance(pilot.app.focused, Input):
            break
        await pilot.pause(0.01)
    focused = pilot.app.focused
    assert isinstance(focused, Input), focused
    focused.value = text  # as typed (typing costs 50 ms a key)
    await pilot.pause()


def symbol(name: str) -> int:
    address = capture_symbols().lookup(name)
    assert address is not None
    return address


# -- the tab keys leave every view, from any focus ------------------------------------------


def test_every_tab_key_leaves_ranges_tables_and_stack_from_any_focus(session):
    tabs = {"1": "registers", "2": "ranges", "3": "tables", "4": "memory", "5": "stack"}
    tabs.update({"6": "descriptors", "8": "efi", "9": "fault"})

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            for origin in ("2", "3", "5"):
                await pilot.press(origin)
                await settle(app, pilot)  # each view read once; then the keys alone
                keys = tabs if origin == "2" else {k: tabs[k] for k in ("1", "4", "6")}
                for key, name in keys.items():
                    await pilot.press(origin)
                    await pilot.pause()
                    # the list, a filter box (by a click), the search after Esc, ...
                    if origin == "2" and key == "1":
                        await pilot.click("#f-user")
                        await pilot.click("#f-user")
                        assert isinstance(app.focused, Checkbox)
                    if origin == "2" and key == "3":
                        await pilot.press("slash")
                        await pilot.press("escape")
                        assert isinstance(app.focused, RangeList)
                    await pilot.press(key)
                    await pilot.pause()
                    assert app.query_one(TabbedContent).active == name, (origin, key)
            await settle(app, pilot)
            assert app.errors == []

    run(go())


def test_tab_never_lands_in_a_text_box(session):
    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            for view in ("2", "5"):
                await pilot.press(view)
                await settle(app, pilot)
                for _ in range(10):
                    await pilot.press("tab")
                    assert not isinstance(app.focused, Input), (view, app.focused)
            # the keys that open them still do, and Esc leaves them for the list
            await pilot.press("2")
            await pilot.press("colon")
            assert app.focused is app.query_one("#command")
            await pilot.press("escape")
            assert isinstance(app.focused, RangeList)
            await pilot.press("1")
            assert app.query_one(TabbedContent).active == "registers"

    run(go())


# -- the range search: a preview while typing, a jump on Enter ----------------------------------


def test_range_search_enter_jumps_to_the_first_match_and_n_walks_the_matches(session, truth):
    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            await pilot.press("2")
            view = app.query_one(RangeList)
            everything = list(view.rows)
            matches = [i for i, row in enumerate(everything) if "pmd" in format_range_row(row)]
            assert len(matches) > 3
            await pilot.press("slash")
            await type_search(pilot, "pmd")
            assert len(view.rows) == len(matches)  # the preview narrows as you type
            await pilot.press("enter")
            await settle(app, pilot)
            assert app.focused is view and view.search == "pmd"
            assert list(view.rows) == everything  # the whole map again
            assert view.cursor == matches[0]
            walk = app.query_one("#range-walk", WalkView).translation
            assert walk is not None and walk.va == everything[matches[0]].range.start
            await pilot.press("n", "n")
            assert view.cursor == matches[2]
            await pilot.press("N")
            assert view.cursor == matches[1]
            await pilot.press("N", "N")  # wraps around to the last match
            assert view.cursor == matches[-1]
            await pilot.press("j")
            assert view.cursor == matches[-1] + 1
            await pilot.press("k", "k")
            assert view.cursor == matches[-1] - 1
            await pilot.press("G")
            assert view.cursor == len(everything) - 1
            await pilot.press("g")
            assert view.cursor == 0
            await pilot.press("escape")  # the search ends: n is the app's again
            assert view.search == ""
            assert app.focused is view
            await pilot.press("enter")
            await settle(app, pilot)
            walk = app.query_one("#range-walk", WalkView).translation
            assert walk is not None and walk.va == everything[0].range.start
            assert app.errors == []

    run(go())


@pytest.mark.parametrize("text", [HANDLER, "rsp", "$rsp"])
def test_range_search_takes_symbols_and_registers(session, truth, text):
    address = REGISTERS["rsp"] if "rsp" in text else symbol(text)
    expected = next(r for r in truth.ranges() if r.start <= address < r.end)

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            await pilot.press("2")
            view = app.query_one(RangeList)
            await pilot.press("slash")
            await type_search(pilot, text)
            assert [row.range for row in view.rows] == [expected]  # the preview
            await pilot.press("enter")
            await settle(app, pilot)
            assert app.focused is view
            assert view.current.range == expected
            walk = app.query_one("#range-walk", WalkView).translation
            assert walk.va == expected.start

    run(go())


def test_range_search_esc_goes_back_to_the_list_where_it_was(session):
    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            await pilot.press("2")
            view = app.query_one(RangeList)
            await pilot.press("j", "j", "j")
            before = view.current.range
            await pilot.press("slash")
            await type_search(pilot, "no such text anywhere")
            assert len(view.rows) == 0
            await settle(app, pilot)
            # no row: the walk of a row that is gone is not shown
            walk = app.query_one("#range-walk", WalkView)
            assert walk.translation is None and "no range matches" in walk.plain
            await pilot.press("escape")
            await settle(app, pilot)
            assert app.focused is view
            assert view.current.range == before and len(view.rows) == len(app.rows)
            await pilot.press("down")  # the arrows work at once
            assert view.cursor == view.rows.index(view.current) and view.current.range != before

    run(go())


def test_range_filter_keys(session, truth):
    ranges = truth.ranges()
    expect = {
        "U": [r for r in ranges if r.permissions.user],
        "K": [r for r in ranges if not r.permissions.user],
        "W": [r for r in ranges if r.permissions.writable],
        "X": [r for r in ranges if r.permissions.executable],
        "exclamation_mark": [
            r for r in ranges if r.permissions.writable and r.permissions.executable
        ],
    }

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            await pilot.press("2")
            view = app.query_one(RangeList)
            for key, rows in expect.items():
                await pilot.press(key)
                await pilot.pause()
                assert [row.range for row in view.rows] == rows, key
                await pilot.press(key)
                await pilot.pause()
                assert len(view.rows) == len(ranges)
            await pilot.press("C")  # changed: nothing changed at the first stop
            await pilot.pause()
            assert view.rows == [] and app.query_one("#f-changed", Checkbox).value
            assert "filters changed" in str(app.query_one("#range-summary").render())

    run(go())


# -- the same keys in every list --------------------------------------------------------------


async def check_list_keys(pilot, widget: ListNav, index, search: str, matches: list[int]):
    """j k g G on ``widget`` (focused), then / ``search``, n N over ``matches``."""
    app = pilot.app
    count = widget.nav_count()
    assert count > 3 and app.focused is widget
    await pilot.press("g")
    assert index() == 0
    await pilot.press("j", "j")
    assert index() == 2
    await pilot.press("k")
    assert index() == 1
    await pilot.press("G")
    last = index()
    assert last > 1
    await pilot.press("g")
    assert index() == 0
    await pilot.press("slash")
    await type_search(pilot, search)
    await pilot.press("enter")
    await pilot.pause()
    assert app.focused is widget and widget.search == search
    assert index() == matches[0]
    if len(matches) > 1:
        await pilot.press("n")
        assert index() == matches[1]
        await pilot.press("N")
        assert index() == matches[0]
    await pilot.press("escape")  # the search ends; the list keeps the focus
    assert widget.search == "" and app.focused is widget
    await pilot.press("slash")
    await type_search(pilot, "zz no such row zz")
    await pilot.press("enter")
    await pilot.pause()
    assert index() == matches[0]  # no match: the cursor stays
    await pilot.press("slash")
    assert isinstance(app.screen, SearchPrompt)
    await pilot.press("escape")  # Esc in the prompt: back to the list
    await pilot.pause()
    assert app.focused is widget and not isinstance(app.screen, SearchPrompt)


def test_list_keys_in_the_table_tree(session):
    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            await pilot.press("3")
            await settle(app, pilot)
            tree = app.query_one(TableTree)
            lines = [tree.nav_text(i) for i in range(tree.nav_count())]
            matches = [i for i, line in enumerate(lines) if "PML4[511]" in line]
            await check_list_keys(pilot, tree, lambda: tree.cursor_line, "pml4[511]", matches)
            # Enter opens the entry (one table read) and the next lines are its entries
            await pilot.press("slash")
            await type_search(pilot, "PML4[511]")
            await pilot.press("enter")
            await pilot.press("enter")
            await settle(app, pilot)
            node = tree.cursor_node
            assert node.data.loaded and node.is_expanded and len(node.children) > 1
            # a table entry says what it is: the table it points to and its flags
            await pilot.press("j")
            await settle(app, pilot)
            walk = app.query_one("#tree-walk", WalkView).plain
            spot = tree.cursor_node.data
            assert spot.table is not None
            assert "a table entry, not a page" in walk and f"at {spot.table:#x}" in walk
            assert spot.entry.describe() in walk

    run(go())


def test_list_keys_in_the_stack_frames(session, monkeypatch):
    # The capture's stack unwinds to fewer frames than the keys need: the same frame 0,
    # called from six made-up callers (their names in the search).
    from dataclasses import replace

    from kinspect.inspector.unwind import Backtrace

    real = session.backtrace()
    callers = ["idle_loop", "do_idle", "cpu_idle_entry", "start_idle", "rest_init", "kmain"]
    frames = (real.frames[0],) + tuple(
        replace(real.frames[0], index=n, pc=0xFFFFFFFF81000000 + 0x100 * n, symbol=name, how="orc")
        for n, name in enumerate(callers, start=1)
    )
    monkeypatch.setattr(
        session, "backtrace", lambda **_: Backtrace(frames, "outermost", "the stack's first frame")
    )

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            await pilot.press("5")
            await settle(app, pilot)
            frames = app.query_one("#frames", OptionList)
            texts = [frames.nav_text(i) for i in range(frames.option_count)]
            enabled = [
                i for i in range(frames.option_count) if not frames.get_option_at_index(i).disabled
            ]
            assert len(enabled) >= 4, texts
            word = texts[enabled[1]].split()[1]
            matches = [i for i in enabled if word.lower() in texts[i].lower()]
            await check_list_keys(pilot, frames, lambda: frames.highlighted, word, matches)

    run(go())


def test_list_keys_in_the_descriptor_tables_and_the_fault_view(session):
    async def go():
        app = make_app(session)
        async with app.run_test(size=SMALL) as pilot:
            await started(app, pilot)
            await pilot.press("6")
            await settle(app, pilot)
            view = app.query_one(DescriptorsView)
            lines = view.nav_lines()
            matches = [i for i, line in enumerate(lines) if "IDT" in line]
            assert matches
            await pilot.press("G")
            await pilot.pause()
            assert view.scroll_offset.y == view.max_scroll_y > 0
            await pilot.press("g")
            await pilot.pause()
            assert view.scroll_offset.y == 0
            await pilot.press("j", "j")
            await pilot.pause()
            assert view.scroll_offset.y == 2
            await pilot.press("k")
            await pilot.pause()
            assert view.scroll_offset.y == 1
            await pilot.press("g", "slash")
            await type_search(pilot, "IDT")
            await pilot.press("enter")
            await pilot.pause()
            assert view.scroll_offset.y == min(matches[0], view.max_scroll_y)
            await pilot.press("9")
            await settle(app, pilot)
            fault = app.query_one(FaultView)
            assert app.focused is fault and fault.nav_count() >= 1
            await pilot.press("slash")
            await type_search(pilot, "handler")
            await pilot.press("enter")
            await pilot.pause()
            assert fault.search == "handler" and app.focused is fault

    run(go())


def test_list_keys_in_the_breakpoints(session):
    names = ["asm_exc_divide_error", "asm_exc_debug", "asm_exc_int3", HANDLER]

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            for name in names:
                app.set_breakpoint(name)
                await settle(app, pilot)
            await pilot.press("B")
            await settle(app, pilot)
            assert isinstance(app.screen, BreakpointsScreen)
            table = app.screen.query_one(DataTable)
            table.focus()
            await pilot.pause()
            await check_list_keys(pilot, table, lambda: table.cursor_row, "int3", [2])
            await pilot.press("G", "d")  # d deletes the highlighted one: the last
            await settle(app, pilot)
            assert [bp.location for bp in app.screen.breakpoints][-1] != HANDLER

    run(go())


def test_list_keys_in_the_efi_map():
    from .test_efi import uefi_session

    session = uefi_session()
    memory_map = session.efi_memory_map()

    async def go():
        app = make_app(uefi_session())
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            await pilot.press("8")
            await settle(app, pilot)
            table = app.query_one("#efi-table", DataTable)
            runtime = [i for i, d in enumerate(memory_map.descriptors) if d.runtime]
            await check_list_keys(pilot, table, lambda: table.cursor_row, "RUNTIME", runtime)

    run(go())


# -- n and N: the list's only while it searches, else the app's -------------------------------


class DummyStep(KinspectApp):
    """An app key on ``n`` (as step over will be), not a priority binding."""

    CSS_PATH = str(Path(tui_app.__file__).parent / "app.tcss")  # the app's, not beside us
    BINDINGS = [Binding("n", "dummy_step", "Step over (dummy)")]
    dummy_steps = 0

    def action_dummy_step(self) -> None:
        self.dummy_steps += 1


class PriorityDummyStep(DummyStep):
    """The same key as a priority binding, like the app's other keys."""

    BINDINGS = [Binding("n", "dummy_step", "Step over (dummy)", priority=True)]


@pytest.mark.parametrize("priority", [False, True])
def test_n_reaches_an_app_key_unless_the_list_has_a_search(session, priority):
    async def go():
        app = (PriorityDummyStep if priority else DummyStep)(session)
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            await pilot.press("2")
            view = app.query_one(RangeList)
            await pilot.press("n")
            assert app.dummy_steps == 1 and view.cursor == 0
            view.search_for("pmd")
            first = view.cursor
            await pilot.press("n")
            assert app.dummy_steps == 1 and view.cursor > first  # the next match
            await pilot.press("escape")
            await pilot.press("n")
            assert app.dummy_steps == 2
            # and from a list without a search of its own, the same
            await pilot.press("3")
            await settle(app, pilot)
            await pilot.press("n")
            assert app.dummy_steps == 3

    run(go())


# -- 80x24 ----------------------------------------------------------------------------------


def test_at_80x24_the_status_line_keeps_the_paging_mode_and_the_link(session):
    async def go():
        app = make_app(session)
        async with app.run_test(size=SMALL) as pilot:
            await started(app, pilot)
            status = app.query_one(StatusLine)
            status.target = "gdb remote stub /tmp/kinspect-qemu-abcdefgh/gdb.sock (QEMU) " * 2
            status.reason = "breakpoint 1 at a_rather_long_function_name_for_a_stop+0x1234"
            await pilot.pause()
            line = status.render().plain
            assert len(line) <= 80
            assert line.startswith(" STOPPED ")
            assert "4-level paging" in line and "64-bit CPL0" in line and "link ok" in line
            assert status.export_text().endswith("link ok")  # the export has all of it
            assert "gdb remote stub" in status.export_text()
            status.health = "connection lost: R reconnects"
            await pilot.pause()
            line = status.render().plain
            assert "connection lost: R reconnects" in line and "4-level paging" in line

    run(go())


def test_at_80x24_the_range_list_shows_the_physical_address_and_permissions(session, truth):
    async def go():
        app = make_app(session)
        async with app.run_test(size=SMALL) as pilot:
            await started(app, pilot)
            await pilot.press("2")
            await settle(app, pilot)
            view = app.query_one(RangeList)
            assert view.size.width < len(format_range_row(view.rows[0]))
            r = view.rows[0].range
            line = view.render_line(0).text
            assert f"{r.start:#018x}" in line and f"{r.phys:#018x}" in line
            assert ("RW" if r.permissions.writable else "ro") in line
            assert ("x" if r.permissions.executable else "NX") in line.split()

    run(go())


def test_at_80x24_the_remap_forms_scroll_and_keys_choose_them(tmp_path):
    session = remap_session(tmp_path / "journal.jsonl")

    async def go():
        app = make_app(session)
        async with app.run_test(size=SMALL) as pilot:
            await started(app, pilot)
            await pilot.press("7")
            await settle(app, pilot)
            screen = app.screen
            assert isinstance(screen, RemapScreen)
            forms = screen.query_one("#remap-forms", TabbedContent)
            for field in ("map-page_size", "map-flags"):
                screen.query_one(f"#{field}").focus()
                await pilot.pause()
                assert screen.query_one(f"#{field}").region.height > 0  # scrolled into view
            preview = screen.query_one("#preview-map", Button)
            preview.focus()
            await pilot.pause()
            assert preview.region.height > 0 and preview.region.bottom <= 24
            await pilot.press("f7")
            assert forms.active == "form-unmap" and app.focused.id == "unmap-va"
            await pilot.press("ctrl+pagedown")
            assert forms.active == "form-protect"
            await pilot.press("f6", "f6", "f6")
            assert forms.active == "form-efi-runtime"  # around
            await pilot.press("f6")
            assert forms.active == "form-higher-half"
            assert app.focused.id == "preview-higher-half"

    run(go())


# -- exports, reconnect ------------------------------------------------------------------------


def test_exports_go_to_the_state_directory_or_the_one_named(session, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    assert default_export_dir() == tmp_path / "state" / "kinspect" / "exports"

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            await pilot.press("e")
            await pilot.pause()
            saved = list((tmp_path / "state" / "kinspect" / "exports").glob("kinspect-*.txt"))
            assert len(saved) == 1
            assert any(f"saved {saved[0]}" == n.message for n in app._notifications)
            app.run_command(f"export {tmp_path / 'mine'}")
            app.run_command("svg")  # the named directory holds from then on
            await pilot.pause()
            assert len(list((tmp_path / "mine").glob("kinspect-registers-*.txt"))) == 1
            svgs = list((tmp_path / "mine").glob("kinspect-registers-*.svg"))
            assert len(svgs) == 1
            assert any(f"saved {svgs[0]}" == n.message for n in app._notifications)
            assert list(tmp_path.glob("kinspect-*")) == []  # never the current directory
            (tmp_path / "file").write_text("")
            app.run_command(f"export {tmp_path / 'file'}")
            await pilot.pause()
            assert app.errors and app.errors[-1].startswith("cannot make")

    run(go())


def test_reconnect_that_fails_does_not_leave_the_status_at_connecting(session):
    def connect():
        raise TargetLost("nothing listens on the socket (test)")

    async def go():
        app = make_app(session, connect=connect)
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            session.target.fail = TargetLost("the target has gone away (test)")
            await pilot.press("r")
            await settle(app, pilot)
            await pilot.press("R")
            await settle(app, pilot)
            status = app.query_one(StatusLine)
            assert app.errors[-1] == "nothing listens on the socket (test)"
            assert status.state == "exited" and "R" in status.health

    run(go())


# -- the help and the README -------------------------------------------------------------------


def all_keys(app) -> list[tuple[str, str, str]]:
    return [
        (title, name, text)
        for title, rows in key_sections(app)
        for keys, text in rows
        for name in keys.split(" ")
    ]


def test_help_lists_every_binding_scrolls_at_once_and_lists_every_view(session):
    async def go():
        app = DummyStep(session)
        async with app.run_test(size=SMALL) as pilot:
            await started(app, pilot)
            await pilot.press("question_mark")
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, HelpScreen)
            text = screen.text
            assert "Step over (dummy)" in text  # a key added anywhere shows up
            for keys in ("j", "k", "g", "G", "/", "n", "N", "m", "z", "U", "F7", "F2"):
                assert re.search(rf"(^|\s){re.escape(keys)}(\s|$)", text), keys
            for title in ("Registers [1]", "Stack [5]", "GDT IDT TSS [6]", "EFI [8]", "Remaps (7)"):
                assert title in text
            body = screen.query_one("#help-body")
            assert app.focused is body
            await pilot.press("down", "down", "down")
            await pilot.pause()
            assert body.scroll_offset.y == 3
            await pilot.press("G")
            await pilot.pause()
            assert body.scroll_offset.y == body.max_scroll_y > 3

    run(go())


def test_the_readme_lists_every_key_the_bindings_define(session):
    readme = README.read_text()
    section = readme.split("## Keys", 1)[1].split("\n## ", 1)[0]

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            keys = all_keys(app)
            missing = sorted({(t, n) for t, n, _ in keys if f"`{n}`" not in section})
            assert not missing, f"tui/README.md's Keys section does not list {missing}"
            assert key_name("question_mark") == "?" and key_name("f2") == "F2"

    run(go())
