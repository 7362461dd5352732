"""Ranges [2]: the coalesced range map (``kinspect pt``), marked against the previous stop.

Filters (user, kernel, writable, exec, W+X, changed) and a search box combine;
the walk of the range under the cursor is shown beside. ``ptov`` lists every
virtual address of a physical one in the walk pane.

On Linux (``Session.regions()``) a heading goes before each region's first
row, as ``kinspect pt`` prints them. ``z`` switches between the exact map and
the compact one (``Session.compact_ranges()``, ``kinspect pt --compact``:
neighbours with the same permissions, attributes and page size merged,
never across a region); compact is the default on a recognized kernel with
more than :data:`COMPACT_ABOVE` ranges. Filters and the search apply to the
rows of the mode shown; headings are not rows (never filtered, never
matched): each shown row keeps its region's heading above it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Checkbox, Input, Static

from kinspect.inspector.formatting import format_size
from kinspect.inspector.linux.layout import RegionMap
from kinspect.inspector.session import Session
from kinspect.inspector.x86.paging import CompactRange, Range

from ..model import RangeFilter, RangeRow, RangeRows, RangeTable, RangeTexts, range_texts
from ..widgets.prompt import PromptInput
from ..widgets.ranges import RangeList
from ..widgets.walk import WalkView
from .walking import WalkingPane

__all__ = ["RangesPane"]

FLAGS = (
    ("user", "user"),
    ("kernel", "kernel"),
    ("writable", "writable"),
    ("executable", "exec"),
    ("wx", "W+X"),
    ("changed", "changed"),
)

#: The key that switches each filter (in the pane; a shifted letter: no app key is one).
FLAG_KEYS = {
    "user": "U",
    "kernel": "K",
    "writable": "W",
    "executable": "X",
    "wx": "exclamation_mark",
    "changed": "C",
}


#: Compact by default above this many exact ranges, on a kernel whose regions are known.
COMPACT_ABOVE = 4096


def read_ranges(
    session: Session,
    last: tuple[Sequence[Range], list[CompactRange], RegionMap | None] | None = None,
) -> tuple[Sequence[Range], int, list[CompactRange], RegionMap | None, RangeTexts | None]:
    """The walk's ranges as the walk keeps them (arrays: the same object again when no
    table changed since the last walk), its problems, the compact map, the regions, and
    the ranges' text for the search when they are new (made here, in the owner thread,
    not in the UI thread at the first key of a search).

    ``last``: the ranges, compact map and regions read before; the same ranges under the
    same regions have the same compact map (it is made from them alone).
    """
    ranges = session.ranges()
    problems = len(session.address_space().problems)
    regions = session.regions()
    if last is not None and ranges is last[0] and _same_regions(regions, last[2]):
        return ranges, problems, last[1], regions, None
    return ranges, problems, session.compact_ranges(), regions, range_texts(ranges)


def _same_regions(a: RegionMap | None, b: RegionMap | None) -> bool:
    return (a.regions if a is not None else None) == (b.regions if b is not None else None)


def _pieces(row: CompactRange) -> str:
    """What ``kinspect pt --compact`` adds after a merged row."""
    return f"  ({row.pieces} ranges, {format_size(row.mapped)} mapped)"


class RangesPane(WalkingPane):
    NAME = "ranges"
    TITLE = "Ranges [2]"
    KEY = "2"
    KEY_HELP = "Ranges"
    HELP = (
        "coalesced mappings (ptdump); + added, - removed, ~ changed since the last "
        "stop; magenta = writable and executable; filters combine (AND), U K W X ! C switch "
        "them; / searches (text, an address, a symbol or a register): the rows narrow as you "
        "type, Enter jumps to the first match in the whole map, n / N to the next and previous"
    )
    PALETTE = ("Range map", "The coalesced mappings, marked against the previous stop (2)")
    FOCUS = "#range-list"
    STOP_ORDER = 20
    WALK_VIEW = "range-walk"
    GLOBAL_KEYS = (("slash", "search", "Search"),)
    COMMANDS = {**WalkingPane.COMMANDS, "ptov": "command_ptov"}
    NEEDS_ARGUMENT = {**WalkingPane.NEEDS_ARGUMENT, "ptov": "an address or a symbol"}
    BINDINGS = [
        Binding("z", "toggle_compact", "Compact/exact", show=False),
        *(
            Binding(key, f"toggle_filter('{name}')", f"Filter: {label}", show=False)
            for (name, label), key in zip(FLAGS, FLAG_KEYS.values(), strict=True)
        ),
    ]

    class Read(Message, bubble=False):
        def __init__(
            self,
            ranges: Sequence[Range],
            problems: int,
            compact: list[CompactRange] | None = None,
            regions: RegionMap | None = None,
            texts: RangeTexts | None = None,
        ) -> None:
            super().__init__()
            self.ranges = ranges
            self.problems = problems
            self.compact = compact if compact is not None else []
            self.regions = regions
            self.texts = texts  # the ranges' text (range_texts), when they are new

    class Aliases(Message, bubble=False):
        def __init__(self, pa: int, aliases: list[int]) -> None:
            super().__init__()
            self.pa = pa
            self.aliases = aliases

    def __init__(self) -> None:
        super().__init__()
        self.ranges: Sequence[Range] = []
        self.rows: Sequence[RangeRow] = []
        self.shown_rows: Sequence[RangeRow] = []
        self.range_filter = RangeFilter()
        self._wx = self._marks = self._problems = 0
        self.regions: RegionMap | None = None
        self.compact: bool | None = None  # None: not chosen yet (the default by the map's size)
        self.compact_rows: list[CompactRange] = []
        # Each mode's rows at the last stop, marked against the stop before (None: none yet)
        self._exact: RangeTable | None = None
        self._merged: RangeTable | None = None
        self._notes: dict[int, str] = {}
        self._before_search: int | None = None  # the cursor's address when / was pressed

    def compose(self) -> ComposeResult:
        with Vertical():
            with Horizontal(id="range-filters"):
                for name, label in FLAGS:
                    yield Checkbox(label, id=f"f-{name}")
                yield PromptInput(placeholder="/ search: text, address, symbol", id="range-search")
            yield Static("no ranges yet", id="range-summary")
            with Horizontal(classes="split"):
                yield RangeList(id="range-list")
                with VerticalScroll(classes="walk-pane"):
                    yield WalkView(id="range-walk")

    def on_mount(self) -> None:
        view = self.query_one(RangeList)
        view.resolve_text = self.search_text
        view.open_search = self.action_search

    # -- reading -------------------------------------------------------------------------

    def load(self) -> None:
        last = (self.ranges, self.compact_rows, self.regions) if self._exact else None
        self.read(
            "ranges", lambda session: read_ranges(session, last), lambda result: self.Read(*result)
        )

    def on_ranges_pane_read(self, message: Read) -> None:
        ranges = message.ranges
        exact = RangeTable.marked(self._exact, ranges, message.texts)
        merged = RangeTable.marked(self._merged, [row.range for row in message.compact])
        regions = message.regions
        if (
            exact is self._exact
            and merged is self._merged
            and message.problems == self._problems
            and _same_regions(regions, self.regions)
        ):
            return  # the same map, nothing marked before or now: the screen stays as it is
        self.ranges = ranges
        self.regions = regions
        self.compact_rows = message.compact
        self._exact, self._merged = exact, merged
        self._notes = {row.range.start: _pieces(row) for row in message.compact if row.pieces > 1}
        self._problems = message.problems
        self._wx = exact.count_wx()
        if self.compact is None and self.regions is not None and len(ranges) > COMPACT_ABOVE:
            self.compact = True
        self._show_mode()

    @property
    def compact_shown(self) -> bool:
        return bool(self.compact)

    def _show_mode(self) -> None:
        table = self._merged if self.compact_shown else self._exact
        if table is None:
            return
        self.rows = RangeRows(table)
        self._marks = table.changed
        self._apply_filter()

    def action_toggle_compact(self) -> None:
        """z: the compact map or the exact one (the cursor stays at its address)."""
        self.compact = not self.compact_shown
        self._show_mode()

    # -- filters -------------------------------------------------------------------------

    @on(Checkbox.Changed)
    @on(Input.Changed, "#range-search")
    def _filters_changed(self, event: Message) -> None:
        def flag(name: str) -> bool:
            return self.query_one(f"#f-{name}", Checkbox).value

        self.range_filter = RangeFilter(
            **{name: flag(name) for name, _ in FLAGS},
            text=self.search_text(self.query_one("#range-search", Input).value.strip()),
        )
        self._apply_filter()

    def search_text(self, text: str) -> str:
        """What the filter matches for ``text``: a symbol or a register becomes its address,
        as every other input takes them; anything else is matched as typed."""
        address = self.kinspect.lookup(text) if text else None
        return f"{address:#x}" if address is not None else text

    def action_toggle_filter(self, name: str) -> None:
        box = self.query_one(f"#f-{name}", Checkbox)
        box.value = not box.value

    def _apply_filter(self) -> None:
        view = self.query_one(RangeList)
        keep = view.current.range.start if view.current else None
        rows = self.rows
        self.shown_rows = rows.filter(self.range_filter) if isinstance(rows, RangeRows) else rows
        compact = self.compact_shown
        view.set_rows(
            self.shown_rows, keep=keep, regions=self.regions, notes=self._notes if compact else None
        )
        if compact:
            mode = "compact (z: exact) | "
        elif self.regions is not None or self.compact is not None:
            mode = "exact (z: compact) | "
        else:
            mode = ""  # the exact map of a kernel without regions, as before compact mode
        flt = self.range_filter
        on = [label for name, label in FLAGS if getattr(flt, name)]
        filters = f"filters {' '.join(on)} | " if on else ""
        self.query_one("#range-summary", Static).update(
            f"{filters}{mode}{len(self.shown_rows)} of {len(self.rows)} rows shown"
            f" | {len(self.ranges)} ranges"
            f" | W+X {self._wx} | changed since last stop {self._marks}"
            f" | walk problems {self._problems}",
            layout=False,  # one line (app.tcss): no layout of the whole screen at each key
        )

    # -- search: a preview while typing, a jump on Enter -------------------------------

    def action_search(self) -> None:
        self.kinspect.action_tab(self.NAME)
        view = self.query_one(RangeList)
        self._before_search = view.current.range.start if view.current else None
        self.query_one("#range-search", PromptInput).open()

    @on(Input.Submitted, "#range-search")
    def _search_submitted(self, event: Input.Submitted) -> None:
        """Enter: the whole map again, the cursor on the first match, n / N from there."""
        event.stop()
        text = event.value.strip()
        view = self.query_one(RangeList)
        self._clear_search_box()
        view.focus()
        if text:
            view.search_for(text)
        else:
            view.action_nav_clear()

    @on(PromptInput.Cancelled, "#range-search")
    def _search_cancelled(self, event: PromptInput.Cancelled) -> None:
        """Esc: the whole map again, the cursor where it was before /, the list focused."""
        event.stop()
        view = self.query_one(RangeList)
        self._clear_search_box()
        if self._before_search is not None:
            view.move_to(self._before_search)
        view.focus()

    def _clear_search_box(self) -> None:
        box = self.query_one("#range-search", Input)
        if box.value:
            box.value = ""
            self.range_filter = replace(self.range_filter, text="")
            self._apply_filter()

    @on(RangeList.Highlighted)
    def _range_highlighted(self, event: RangeList.Highlighted) -> None:
        if event.row is not None:
            r = event.row.range
            self.show_walk(
                r.start, title=f"walk of {r.start:#x} (range start)", automatic=not event.user
            )
        elif not self.pinned:  # no row: the walk of a row that is gone must not stay
            self.walk_view.show_text("no range matches: no walk to show", style="dim")

    # -- ptov -----------------------------------------------------------------------------

    def command_ptov(self, text: str) -> None:
        resolve = self.kinspect.resolve
        self.pinned = True  # from now: a reload's cursor must not replace the answer

        def work(session: Session) -> tuple[int, list[int]]:
            pa = resolve(session, text)
            return pa, session.aliases(pa)

        self.read("ptov", work, lambda result: self.Aliases(*result), while_running="fail")

    def on_ranges_pane_aliases(self, message: Aliases) -> None:
        pa, aliases = message.pa, message.aliases
        symbolize = self.kinspect.symbolize
        if not aliases:
            lines = [f"no virtual address maps physical {pa:#x}"]
        else:
            lines = [f"{len(aliases)} virtual addresses map physical {pa:#x}:"]
            for va in aliases[:200]:
                name = symbolize(va)
                lines.append(f"  {va:#018x}" + (f"  {name}" if name else ""))
            if len(aliases) > 200:
                lines.append(f"  ... and {len(aliases) - 200} more")
        self.kinspect.action_tab(self.NAME)  # shown, its list focused (not a hidden one)
        self.pinned = True
        self.walk_view.show_text("\n".join(lines))

    def export_text(self) -> str:
        return (
            str(self.query_one("#range-summary", Static).render())
            + "\n"
            + self.query_one(RangeList).export_text()
            + "\n"
            + self.walk_view.export_text()
        )
