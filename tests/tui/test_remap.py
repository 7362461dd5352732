"""The remap screen (7) on the in-memory Linux 6.1 capture: forms, the plan, refusals.

The plan the screen shows is compared with one made by the remap core on an
independent session over the same bytes; applying needs the agent, so it is
tested on the demo kernel (tests/tui/test_live.py).
"""

from __future__ import annotations

from textual.widgets import Button, Static, TabbedContent

from inspector.remap.plan import parse_flags, plan_map, protected_areas
from tui.app import make_app
from tui.screens.remap import RemapScreen

from .conftest import run
from .fakes import REGISTERS, remap_session

SIZE = (160, 48)
SPARE = 0xFFFFD00000000000


async def remap_screen(app, pilot) -> RemapScreen:
    await app.wait_idle(30)
    await pilot.pause()
    assert app.stops == 1, app.errors
    await pilot.press("7")
    await pilot.pause()
    assert isinstance(app.screen, RemapScreen)
    await app.wait_idle(30)
    await pilot.pause()
    return app.screen


def plan_text(screen) -> str:
    return str(screen.query_one("#remap-plan", Static).render())


def test_the_map_form_shows_the_plan_before_anything_is_applied(tmp_path, truth):
    session = remap_session(tmp_path / "journal.jsonl")
    target = session.target
    assert not any(r.start <= SPARE < r.end for r in truth.ranges())

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            screen = await remap_screen(app, pilot)
            journal = screen.query_one("#remap-journal")
            assert "no open steps" in str(journal.get_option_at_index(0).prompt)
            assert screen.query_one("#apply", Button).disabled
            await pilot.press(*hex(SPARE))  # the focus starts in the map form's VA
            screen.query_one("#map-pa").value = "0x500000"
            screen.query_one("#map-size").value = "8k"
            pages_before = dict(target.pages)
            await pilot.press("enter")
            await app.wait_idle(30)
            await pilot.pause()
            text = plan_text(screen)
            regs = dict(REGISTERS)
            system = target.system_registers()
            regs.update(gdtr_base=system.gdtr.base, gdtr_limit=system.gdtr.limit,
                        idtr_base=system.idtr.base, idtr_limit=system.idtr.limit)  # fmt: skip
            expected = plan_map(
                truth.ranges(), protected_areas(regs, tss_base=None, frames_top=None),
                SPARE, 0x500000, 0x2000, 0x1000, parse_flags("rw,nx"),
            )  # fmt: skip
            assert str(expected) in text
            assert f"map 0x2000 bytes at {SPARE:#x} -> 0x500000" in text
            assert "page tables to allocate" in text and "REFUSED" not in text
            assert not screen.query_one("#apply", Button).disabled
            assert screen.plan == expected
            assert target.pages == pages_before  # a preview writes nothing
            assert app.errors == []
            await pilot.press("escape")
            await pilot.pause()
            assert not isinstance(app.screen, RemapScreen)

    run(go())


def test_a_refused_plan_shows_its_reason_and_cannot_be_applied(tmp_path):
    session = remap_session(tmp_path / "journal.jsonl")
    rsp_page = REGISTERS["rsp"] & ~0xFFF

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            screen = await remap_screen(app, pilot)
            screen.query_one("#remap-forms", TabbedContent).active = "form-unmap"
            await pilot.pause()
            screen.query_one("#unmap-va").value = hex(rsp_page)
            await pilot.click("#preview-unmap")
            await app.wait_idle(30)
            await pilot.pause()
            text = plan_text(screen)
            assert f"refused (own-stack) at {rsp_page:#x}" in text
            assert "REFUSED (own-stack): would unmap, move or make read-only the stack" in text
            assert screen.query_one("#apply", Button).disabled
            await pilot.press("f2")  # refused: nothing is posted
            await app.wait_idle(30)
            await pilot.pause()
            assert "not applicable" in text
            assert str(screen.query_one("#remap-result", Static).render()) == ""
            # a form that does not parse is a notification, and the plan pane says why
            screen.query_one("#unmap-size").value = "lots"
            await pilot.click("#preview-unmap")
            await app.wait_idle(30)
            await pilot.pause()
            assert "size 'lots'" in plan_text(screen)
            assert any("size 'lots'" in e for e in app.errors), app.errors

    run(go())


def test_without_an_agent_the_remap_screen_says_so_and_offers_nothing(session):
    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            screen = await remap_screen(app, pilot)
            text = str(screen.query_one("#remap-unavailable", Static).render())
            assert "need the in-kernel agent" in text
            assert not screen.query(Button) and not screen.query("#remap-plan")
            await pilot.press("f2")
            await pilot.pause()
            assert app.errors == []
            titles = [c.title for c in app.get_system_commands(app.screen)]
            assert {"Remap", "Remap journal"} <= set(titles)

    run(go())
