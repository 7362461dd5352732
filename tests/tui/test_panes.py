"""The app is built from its panes, and the ``:`` line runs the command registry.

Each view is one pane class in ``kinspect.tui.panes.PANES``: its tab, its
number key, its line in the help screen and its palette entry all come from
that list. Verbs the TUI does not answer itself run as ``kinspect`` runs them
(checked against the registry on an independent session). A lost link is
known by its class (``TargetLost``), whatever its message says.
"""

from __future__ import annotations

from textual.widgets import Static, TabbedContent

from kinspect.inspector.commands import UsageError, registry
from kinspect.inspector.errors import TargetError, TargetLost
from kinspect.tui.app import make_app
from kinspect.tui.panes import PANES
from kinspect.tui.screens.help import HelpScreen
from kinspect.tui.screens.output import OutputScreen
from kinspect.tui.widgets.status import StatusLine
from kinspect.tui.widgets.text import render_plain

from .conftest import run
from .fakes import memory_session

SIZE = (160, 48)


async def started(app, pilot):
    await app.wait_idle(30)
    await pilot.pause()
    assert app.stops == 1, app.errors


def test_every_pane_has_its_tab_key_help_line_and_palette_entry(session):
    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            tabs = app.query_one(TabbedContent)
            assert [pane.id for pane in app.panes] == [pane.NAME for pane in PANES]
            for pane in PANES:
                await pilot.press(pane.KEY)
                await app.wait_idle()
                await pilot.pause()
                assert tabs.active == pane.NAME
                assert app.current_view_text().startswith(app.query_one(StatusLine).export_text())
            titles = {c.title for c in app.get_system_commands(app.screen)}
            assert {pane.PALETTE[0] for pane in PANES} <= titles
            await pilot.press("question_mark")
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            help_text = "\n".join(render_plain(s.content, 200) for s in app.screen.query(Static))
            for pane in PANES:
                assert pane.TITLE in help_text and pane.KEY_HELP in help_text
            assert app.errors == []

    run(go())


def test_the_command_line_runs_registry_commands_as_the_cli_does(session):
    truth = memory_session()  # an independent session on the same capture

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            app.run_command("gdt")
            await app.wait_idle()
            await pilot.pause()
            assert isinstance(app.screen, OutputScreen), app.errors
            expected = registry().execute(truth, "gdt").text
            assert expected and app.screen.text == expected
            assert "gdt" in str(app.screen.query_one("#output-title", Static).render())
            await pilot.press("escape")
            await pilot.pause()
            assert not isinstance(app.screen, OutputScreen)
            assert app.errors == []

            # the same parsing, the same error as kinspect's
            try:
                registry().execute(truth, "pt --no-such-option")
            except UsageError as exc:
                usage = str(exc)
            else:
                raise AssertionError("the registry took a bad option")
            app.run_command("pt --no-such-option")
            await app.wait_idle()
            await pilot.pause()
            assert app.errors == [usage]

            try:  # attaches a target of its own: refused, as the registry refuses it
                registry().execute(truth, "demo")
            except UsageError as exc:
                refused = str(exc)
            else:
                raise AssertionError("the registry ran demo on the : line")
            app.run_command("demo")
            await app.wait_idle()
            app.run_command("frobnicate")
            await app.wait_idle()
            await pilot.pause()
            assert app.errors[1:] == [refused, "unknown command 'frobnicate' (try help)"]
            assert not isinstance(app.screen, OutputScreen)

    run(go())


def test_a_lost_link_is_known_by_its_class_not_by_its_words(session):
    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            status = app.query_one(StatusLine)
            # words that once meant "lost", on an error that is not: the link is fine
            session.target.fail = TargetError("the range is not connected to anything")
            await pilot.press("r")
            await app.wait_idle()
            await pilot.pause()
            assert app.errors == ["the range is not connected to anything"]
            assert status.health == "ok" and status.state == "stopped"
            # no such words, but the class says the link is dead
            session.target.fail = TargetLost("the stub hung up")
            await pilot.press("r")
            await app.wait_idle()
            await pilot.pause()
            assert app.errors[-1] == "the stub hung up"
            assert status.state == "exited" and "R reconnects" in status.health

    run(go())
