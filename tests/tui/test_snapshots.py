"""What the main screens show, as SVG snapshots (pytest-textual-snapshot).

The app runs on the in-memory Linux 6.1 capture, so every value on screen
is fixed; cursor blink is frozen and the target's jobs are waited for before
the picture is taken. Regenerate after an intended change with
``pytest tests/tui/test_snapshots.py --snapshot-update`` and review the SVGs.
"""

from __future__ import annotations

from textual.widgets import Input

from kinspect.tui.app import make_app

from .fakes import memory_session

SIZE = (140, 40)


def settle(*keys: str, command: str | None = None):
    async def run_before(pilot) -> None:
        app = pilot.app
        for box in app.query(Input):
            box.cursor_blink = False
        await app.wait_idle(30)
        await pilot.pause()
        if command:
            app.run_command(command)
            await app.wait_idle(30)
        if keys:
            await pilot.press(*keys)
        await app.wait_idle(30)
        await pilot.pause()

    return run_before


def test_registers_screen(snap_compare):
    assert snap_compare(make_app(memory_session()), terminal_size=SIZE, run_before=settle())


def test_range_map_with_the_wx_filter(snap_compare):
    app = make_app(memory_session(wx=True))

    async def run_before(pilot) -> None:
        await settle("2")(pilot)
        await pilot.click("#f-wx")
        await pilot.app.wait_idle(30)
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_table_tree(snap_compare):
    app = make_app(memory_session())
    assert snap_compare(app, terminal_size=SIZE, run_before=settle("3", "down", "down"))


def test_memory_view(snap_compare):
    app = make_app(memory_session())
    assert snap_compare(app, terminal_size=SIZE, run_before=settle(command="phys 0x487c000"))


def test_help_screen(snap_compare):
    app = make_app(memory_session())
    assert snap_compare(app, terminal_size=SIZE, run_before=settle("question_mark"))


def test_stack_and_descriptor_tables(snap_compare):
    app = make_app(memory_session())
    assert snap_compare(app, terminal_size=SIZE, run_before=settle("6"))


def test_remap_screen_with_a_refused_plan(snap_compare, tmp_path):
    from .fakes import remap_session

    app = make_app(remap_session(tmp_path / "journal.jsonl"))

    async def run_before(pilot) -> None:
        await settle("7")(pilot)
        screen = pilot.app.screen
        for box in screen.query(Input):
            box.cursor_blink = False
        screen.query_one("#map-va", Input).value = "0xffffffff82a03000"  # the stack's page
        screen.query_one("#map-pa", Input).value = "0x500000"
        await pilot.click("#preview-map")
        await pilot.app.wait_idle(30)
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_efi_view_with_a_runtime_region_under_the_cursor(snap_compare):
    from .test_efi import uefi_session

    app = make_app(uefi_session())  # 48-byte descriptors, one runtime region not mapped
    assert snap_compare(app, terminal_size=SIZE, run_before=settle("8", "down", "down", "down"))


def test_remap_screen_with_the_efi_runtime_plan(snap_compare, tmp_path):
    """The plan of `remap efi-runtime` before apply: the call that cannot be undone says so."""
    from textual.widgets import TabbedContent

    from .test_remap import uefi_remap_session

    app = make_app(uefi_remap_session(tmp_path / "journal.jsonl"))

    async def run_before(pilot) -> None:
        await settle("7")(pilot)
        screen = pilot.app.screen
        for box in screen.query(Input):
            box.cursor_blink = False
        screen.query_one("#remap-forms", TabbedContent).active = "form-efi-runtime"
        await pilot.pause()
        await pilot.click("#preview-efi-runtime")
        await pilot.app.wait_idle(30)
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_breakpoints_list_with_hits(snap_compare):
    """B after two breakpoints and one continue: the first hit once, the second not yet."""
    app = make_app(memory_session())
    # the two "breakpoint N at" toasts are in the picture: on a loaded machine the default
    # 5 s could expire them before it is taken
    app.NOTIFICATION_TIMEOUT = 600

    async def run_before(pilot) -> None:
        await settle(command="break asm_exc_coproc_segment_overrun")(pilot)
        await settle(command="break asm_exc_divide_error")(pilot)
        stops = pilot.app.stops
        pilot.app.action_resume()
        for _ in range(300):
            await pilot.pause(0.01)
            if pilot.app.stops > stops and not pilot.app.link.pending:
                break
        await settle("B")(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
