"""The range map's region headings and compact mode, on the Linux 6.1 capture.

What the pane shows is compared with ``kinspect pt`` and ``pt --compact`` as the
CLI renders them (``render_pt``) on an independent session over the same bytes
and the same regions: the same rows, the same headings in the same order.
"""

from __future__ import annotations

from kinspect.inspector.commands.paging import render_pt
from kinspect.inspector.session import Session
from kinspect.tui.app import make_app
from kinspect.tui.panes.ranges import COMPACT_ABOVE, RangesPane
from kinspect.tui.widgets.ranges import RangeList

from .conftest import run
from .fakes import MemoryTarget, memory_session, regions_session
from .test_app import SIZE, started


def cli_headings(session: Session, *, compact: bool) -> list[str]:
    return [
        line for line in render_pt(session, compact=compact).splitlines() if line.startswith("---[")
    ]


def heading_lines(view: RangeList) -> list[str]:
    return [line for line in view.export_text().splitlines() if line.startswith("---[")]


def summary(app) -> str:
    return str(app.query_one("#range-summary").render())


async def settle(app, pilot):
    await app.wait_idle()
    await pilot.pause()


def test_a_large_linux_map_is_compact_under_headings_and_z_shows_the_exact_one():
    truth = regions_session(Session(MemoryTarget()))
    exact, compact = truth.ranges(), truth.compact_ranges()
    assert len(exact) > COMPACT_ABOVE and len(compact) < 500

    async def go():
        app = make_app(regions_session())
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            await pilot.press("2")
            await settle(app, pilot)
            view = app.query_one(RangeList)
            assert view.has_focus
            assert [row.range for row in view.rows] == [c.range for c in compact]
            assert summary(app).startswith(f"compact (z: exact) | {len(compact)} of {len(compact)}")
            headings = heading_lines(view)
            assert headings == cli_headings(truth, compact=True)
            assert "---[ direct map ]---" in headings and "---[ kernel text/data ]---" in headings
            # a merged row says what it stands for, as pt --compact does
            merged = next(c for c in compact if c.pieces > 1)
            assert f"({merged.pieces} ranges," in view.export_text()
            # the cursor is on a range, never on a heading; a click on a heading picks
            # the range under it
            assert view.current is not None and view.current.range == compact[0].range
            await pilot.click("#range-list", offset=(2, 0))  # line 0: the first heading
            await settle(app, pilot)
            assert view.cursor == 0

            await pilot.press("z")
            await settle(app, pilot)
            assert [row.range for row in view.rows] == exact
            assert summary(app).startswith(f"exact (z: compact) | {len(exact)} of {len(exact)}")
            assert heading_lines(view) == cli_headings(truth, compact=False)

            await pilot.press("z")
            await settle(app, pilot)
            assert len(view.rows) == len(compact)
            assert app.query_one(RangesPane).compact is True

    run(go())


def test_filters_and_search_keep_working_and_each_shown_row_keeps_its_heading():
    truth = regions_session(Session(MemoryTarget()))
    regions = truth.regions()
    compact = [c.range for c in truth.compact_ranges()]

    async def go():
        app = make_app(regions_session())
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            await pilot.press("2")
            await pilot.click("#f-executable")
            await settle(app, pilot)
            view = app.query_one(RangeList)
            executable = [r for r in compact if r.permissions.executable]
            assert executable and [row.range for row in view.rows] == executable
            names = []
            for r in executable:
                name = regions.name_of(r.start)
                if name is not None and (not names or names[-1] != name):
                    names.append(name)
            assert heading_lines(view) == [f"---[ {name} ]---" for name in names]
            await pilot.click("#f-executable")
            # headings are not rows: a region's name matches nothing in the search
            app.query_one("#range-search").value = "vmemmap"
            await settle(app, pilot)
            assert view.rows == [] and heading_lines(view) == []
            app.query_one("#range-search").value = "0xffffffff81000000"
            await settle(app, pilot)
            assert len(view.rows) == 1 and view.rows[0].range.start <= 0xFFFFFFFF81000000
            assert heading_lines(view) == ["---[ kernel text/data ]---"]

    run(go())


def test_without_regions_the_map_stays_exact_with_no_headings_and_z_compacts_it():
    truth = Session(MemoryTarget())
    exact, compact = truth.ranges(), truth.compact_ranges()
    assert truth.regions() is None and len(exact) > COMPACT_ABOVE

    async def go():
        app = make_app(memory_session())
        async with app.run_test(size=SIZE) as pilot:
            await started(app, pilot)
            await pilot.press("2")
            await settle(app, pilot)
            view = app.query_one(RangeList)
            assert [row.range for row in view.rows] == exact
            assert heading_lines(view) == [] and summary(app).startswith(f"{len(exact)} of")
            await pilot.press("z")
            await settle(app, pilot)
            assert [row.range for row in view.rows] == [c.range for c in compact]
            assert heading_lines(view) == []
            assert summary(app).startswith(f"compact (z: exact) | {len(compact)} of")

    run(go())
