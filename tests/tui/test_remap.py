"""The remap screen (7) on the in-memory Linux 6.1 capture: forms, the plan, refusals.

The plan the screen shows is compared with one made by the remap core on an
independent session over the same bytes; applying needs the agent, so it is
tested on the demo kernel (tests/tui/test_live.py). The higher-half and
efi-runtime plans are made by the real Remapper over test_efi's kept UEFI
map; applying them only journals and reports what the firmware would answer
(fakes.EfiRemapper), and undo is the real Remapper's, its refusal included.
"""

from __future__ import annotations

from textual.widgets import Button, Static, TabbedContent

from kinspect.inspector.remap.efi import SVAM
from kinspect.inspector.remap.plan import parse_flags, plan_map, protected_areas
from kinspect.tui.app import make_app
from kinspect.tui.screens.remap import RemapScreen

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
            regs.update(
                gdtr_base=system.gdtr.base,
                gdtr_limit=system.gdtr.limit,
                idtr_base=system.idtr.base,
                idtr_limit=system.idtr.limit,
            )
            expected = plan_map(
                truth.ranges(),
                protected_areas(regs, tss_base=None, frames_top=None),
                SPARE,
                0x500000,
                0x2000,
                0x1000,
                parse_flags("rw,nx"),
            )
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


# -- higher-half and efi-runtime: the plans of a whole scenario ----------------------------------

SYSTEM_TABLE = 0x1E201018  # in the RuntimeServicesData region of test_efi's map


def uefi_remap_session(journal_path, *, identity: bool = True):
    """test_efi's kept UEFI map (code split RO/XP by the attributes table, data, the flash)
    with an agent that plans the UEFI steps through the real Remapper (fakes.EfiRemapper)."""
    from .fakes import efi_remap_session
    from .test_efi import STRIDE, attributes_table_bytes, memory_map_bytes

    return efi_remap_session(
        journal_path,
        memory_map_bytes(),
        STRIDE,
        memattr=attributes_table_bytes(),
        system_table=SYSTEM_TABLE,
        identity=identity,
    )


def styles_of(text, needle: str) -> set[str]:
    """The styles of the spans that cover the first character of ``needle`` in ``text``."""
    at = text.plain.index(needle)
    return {str(span.style) for span in text.spans if span.start <= at < span.end}


async def preview(app, pilot, screen, action: str) -> None:
    screen.query_one("#remap-forms", TabbedContent).active = f"form-{action}"
    await pilot.pause()
    await pilot.click(f"#preview-{action}")
    await app.wait_idle(30)
    await pilot.pause()


def journal_prompts(screen) -> list[str]:
    journal = screen.query_one("#remap-journal")
    return [str(journal.get_option_at_index(i).prompt) for i in range(journal.option_count)]


def test_the_efi_runtime_plan_marks_the_call_that_cannot_be_undone(tmp_path):
    from kinspect.tui.screens.remap import format_plan

    session = uefi_remap_session(tmp_path / "journal.jsonl")
    remapper = session.remapper()
    # the core's plans, made on an independent session over the same bytes
    truth = uefi_remap_session(tmp_path / "truth.jsonl").remapper()
    expected = truth.plan_efi_runtime()
    kept = truth.plan_efi_runtime(drop_identity=False)
    elsewhere = truth.plan_efi_runtime(base=0xFFFFFFEE00000000)
    svam = [i for i, s in enumerate(expected.steps, 1) if s.method == SVAM]
    assert svam == [9] and expected.steps[-1].method == "unmap" and not expected.refusals

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            screen = await remap_screen(app, pilot)
            await preview(app, pilot, screen, "efi-runtime")
            text = plan_text(screen)
            assert screen.plan == expected
            assert str(expected) in text
            assert text.startswith(
                "CANNOT BE UNDONE: step 9 efi_set_virtual_address_map (SetVirtualAddressMap: "
                "UEFI allows one call per boot); undo refuses it and every step before it\n"
            )
            assert text.endswith(
                "Apply (F2) writes it, journaled, and verifies it; step 9 cannot be undone"
            )
            shown = screen.query_one("#remap-plan", Static).content
            assert shown.plain == text
            # the call, its parameters and its description in bold red; the maps around it not
            assert "bold red" in styles_of(shown, "  step 9: efi_set_virtual_address_map [3 pairs]")
            assert "bold red" in styles_of(shown, "          SetVirtualAddressMap: 3 runtime")
            assert not styles_of(shown, "  step 8: map 0xffffffefffc00000")
            assert not styles_of(shown, "  step 10: unmap 0x0 ")
            assert not styles_of(shown, "  page tables to allocate")
            assert styles_of(shown, "CANNOT BE UNDONE") == {"bold red reverse"}
            assert format_plan(expected).plain == text
            apply = screen.query_one("#apply", Button)
            assert not apply.disabled and apply.variant == "error"
            assert str(apply.label) == "Apply: cannot be undone"
            assert remapper.applied == [] and remapper.journal.open_steps() == []  # not yet
            # keep the identity map: no unmap after the call
            screen.query_one("#efi-runtime-keep_identity").value = True
            await preview(app, pilot, screen, "efi-runtime")
            assert screen.plan == kept
            assert [s.method for s in kept.steps][-1] == SVAM
            assert "then drop the identity map" not in plan_text(screen)
            # another base (Enter in the field previews too)
            screen.query_one("#efi-runtime-keep_identity").value = False
            screen.query_one("#efi-runtime-base").value = "0xffffffee00000000"
            screen.query_one("#efi-runtime-base").focus()
            await pilot.press("enter")
            await app.wait_idle(30)
            await pilot.pause()
            assert screen.plan == elsewhere
            assert "map 0x20000 bytes at 0xffffffee1e000000 -> 0x1e000000" in plan_text(screen)
            # a base that does not parse: the plan pane says why, Apply is off again
            screen.query_one("#efi-runtime-base").value = "lots"
            await preview(app, pilot, screen, "efi-runtime")
            assert "no plan: efi-runtime: base 'lots'" in plan_text(screen)
            assert apply.disabled and str(apply.label) == "Apply" and apply.variant == "warning"
            assert remapper.applied == []
            assert [e for e in app.errors if "base 'lots'" not in e] == []

    run(go())


def test_the_higher_half_plan_on_a_uefi_kernel_and_on_one_already_high(tmp_path):
    uefi = uefi_remap_session(tmp_path / "journal.jsonl")
    linux = remap_session(tmp_path / "linux.jsonl")
    expected_uefi = uefi_remap_session(tmp_path / "truth.jsonl").remapper().plan_higher_half()
    expected_linux = remap_session(tmp_path / "truth-linux.jsonl").remapper().plan_higher_half()
    assert expected_uefi.title.startswith("move the runtime and the UEFI runtime services")
    assert SVAM not in [s.method for s in expected_linux.steps]

    async def go():
        for session, expected, irreversible in (
            (uefi, expected_uefi, True),
            (linux, expected_linux, False),
        ):
            app = make_app(session)
            async with app.run_test(size=SIZE) as pilot:
                screen = await remap_screen(app, pilot)
                await preview(app, pilot, screen, "higher-half")
                text = plan_text(screen)
                assert screen.plan == expected and str(expected) in text
                assert "note: the stack is already in the higher half" in text
                assert text.startswith("CANNOT BE UNDONE: step 9 ") == irreversible
                apply = screen.query_one("#apply", Button)
                assert not apply.disabled
                assert (str(apply.label) == "Apply: cannot be undone") == irreversible
                assert session.remapper().journal.open_steps() == []
                assert app.errors == []
                if irreversible:
                    continue
                # efi-runtime on a kernel that did not boot through UEFI: the core says so
                await preview(app, pilot, screen, "efi-runtime")
                assert plan_text(screen).startswith(
                    "no plan: the kernel has no UEFI runtime services to move"
                )
                assert screen.plan is None and screen.query_one("#apply", Button).disabled
                assert len(app.errors) == 1 and "no UEFI runtime services" in app.errors[0]

    run(go())


def test_applying_efi_runtime_shows_what_the_firmware_answered_then_undo_is_refused(tmp_path):
    from .fakes import GET_TIME, VARIABLES

    session = uefi_remap_session(tmp_path / "journal.jsonl")
    remapper = session.remapper()

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            screen = await remap_screen(app, pilot)
            await preview(app, pilot, screen, "efi-runtime")
            plan = screen.plan
            await pilot.press("f2")
            await app.wait_idle(30)
            await pilot.pause()
            assert remapper.applied == list(plan.steps)  # the plan shown is the plan applied
            result = str(screen.query_one("#remap-result", Static).render())
            block = result.partition("step #9 ")[2].partition("step #10 ")[0]
            assert block.startswith(
                "efi_set_virtual_address_map: SetVirtualAddressMap: 3 runtime regions (1408 pages)"
            )
            assert "verified: the firmware answers through the new mapping" in block
            assert "registers" not in block and "entries written" not in block
            assert f"    {GET_TIME}\n" in block and f"    {VARIABLES}\n" in block
            assert "    the system table is at 0xffffffef1e201018 (physical 0x1e201018)" in block
            # before the call the firmware was not asked; after it, at every step
            assert result.count(GET_TIME) == 3  # steps 9, 10, 11
            assert GET_TIME not in result.partition("step #9 ")[0]
            assert "step #1 map: map 0x20000 bytes at 0xffffffef1e000000" in result
            assert "  32 entries written (old values journaled)" in result
            assert "verified 0xffffffef1e000000-0xffffffef1e020000 -> 0x1e000000 RW NX" in result
            assert result.endswith(
                "11 steps applied and journaled; all verified by a fresh "
                "walk and the runtime services' answers"
            )
            assert app.errors == []
            # the journal lists the 11 steps, the call in red
            assert [s.seq for s in screen.steps] == list(range(1, 12))
            journal = screen.query_one("#remap-journal")
            call = journal.get_option_at_index(8).prompt
            assert str(call).startswith("#9 applied  efi_set_virtual_address_map")
            assert str(call.style) == "bold red"
            assert str(journal.get_option_at_index(7).prompt.style) == ""
            # once per boot: the core refuses a second plan, and it cannot be applied
            await preview(app, pilot, screen, "efi-runtime")
            text = plan_text(screen)
            assert "REFUSED (efi-virtual-mode): SetVirtualAddressMap was already called" in text
            assert screen.query_one("#apply", Button).disabled
            await pilot.press("f2")
            await app.wait_idle(30)
            await pilot.pause()
            assert len(remapper.applied) == 11
            # undo: the steps after the call can be undone, newest first
            await pilot.click("#undo-one")
            await app.wait_idle(30)
            await pilot.pause()
            assert remapper.undone == [11]
            assert "undone: #11 unmap" in str(screen.query_one("#remap-result", Static).render())
            assert [s.seq for s in screen.steps] == list(range(1, 11))
            # the call itself (and the steps before it) are refused, with the core's reason
            journal.focus()
            await pilot.press("up", "up", "up")  # #10 -> #7, a map before the call
            assert journal.highlighted == 6
            before = journal_prompts(screen)
            await pilot.press("f3")
            await app.wait_idle(30)
            await pilot.pause()
            shown = screen.query_one("#remap-result", Static).content
            assert shown.plain.startswith(
                "UNDO REFUSED: nothing was undone\nundo refused: step #9 called "
                "SetVirtualAddressMap, which cannot be undone"
            )
            assert "steps #1-#9 keep the runtime services mapped" in shown.plain
            assert styles_of(shown, "UNDO REFUSED") == {"bold red"}
            assert "Traceback" not in shown.plain
            assert remapper.undone == [11]  # nothing was undone
            assert journal_prompts(screen) == before and journal.highlighted == 6
            assert [s.seq for s in remapper.journal.open_steps()] == list(range(1, 11))
            assert len(app.errors) == 1 and app.errors[0].startswith("undo refused: step #9")
            assert not any(e.startswith("internal error") for e in app.errors)
            # Undo all: the same refusal, nothing undone
            await pilot.click("#undo-all")
            await app.wait_idle(30)
            await pilot.pause()
            assert remapper.undone == [11] and journal_prompts(screen) == before
            assert len(app.errors) == 2 and app.errors[1] == app.errors[0]
            # the step after the call still can be
            journal.focus()  # the click focused Undo all
            await pilot.press("down", "down", "down")
            assert journal.highlighted == 9
            await pilot.press("f3")
            await app.wait_idle(30)
            await pilot.pause()
            assert remapper.undone == [11, 10]
            assert [s.seq for s in screen.steps] == list(range(1, 10))
            # Keep (F4): the highlighted step closes without undoing; the journal says so
            journal.focus()
            await pilot.press("up")  # #9, the call: it stays, as it must
            assert journal.highlighted == 7
            await pilot.press("f4")
            await app.wait_idle(30)
            await pilot.pause()
            assert "kept: #8 " in str(screen.query_one("#remap-result", Static).render())
            assert [s.seq for s in screen.steps] == [1, 2, 3, 4, 5, 6, 7, 9]
            assert remapper.undone == [11, 10]  # nothing undone by keeping
            reread = type(remapper.journal).open(remapper.journal.path)
            assert [s.seq for s in reread.open_steps(all_kernels=True)] == [1, 2, 3, 4, 5, 6, 7, 9]

    run(go())


def test_a_refused_efi_runtime_plan_cannot_be_applied(tmp_path):
    """Without the identity map the firmware cannot run SetVirtualAddressMap: refused."""
    session = uefi_remap_session(tmp_path / "journal.jsonl", identity=False)
    remapper = session.remapper()

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            screen = await remap_screen(app, pilot)
            await preview(app, pilot, screen, "efi-runtime")
            text = plan_text(screen)
            assert "REFUSED (efi-unmapped): SetVirtualAddressMap runs in physical mode" in text
            assert text.endswith("not applicable: the plan is refused")
            assert screen.query_one("#apply", Button).disabled
            await pilot.press("f2")
            await pilot.click("#apply")
            await app.wait_idle(30)
            await pilot.pause()
            assert remapper.applied == [] and remapper.journal.open_steps() == []
            assert str(screen.query_one("#remap-result", Static).render()) == ""
            assert app.errors == []

    run(go())


def test_list_keys_in_the_remap_journal(tmp_path):
    """j k g G / n N Esc in the journal's list of open steps, as in every list."""
    from .test_navigation import check_list_keys

    session = uefi_remap_session(tmp_path / "journal.jsonl")

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            screen = await remap_screen(app, pilot)
            await preview(app, pilot, screen, "efi-runtime")
            await pilot.press("f2")
            await app.wait_idle(30)
            await pilot.pause()
            prompts = journal_prompts(screen)
            assert len(prompts) == 11
            journal = screen.query_one("#remap-journal")
            journal.focus()
            await pilot.pause()
            matches = [i for i, text in enumerate(prompts) if " unmap" in text]
            assert len(matches) >= 2, prompts
            await check_list_keys(pilot, journal, lambda: journal.highlighted, "unmap", matches)

    run(go())
