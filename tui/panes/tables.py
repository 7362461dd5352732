"""Tables [3]: the paging structures as a tree, one table read per expand, the entry's walk."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets.tree import TreeNode

from kinspect.inspector.x86.paging import PageTableEntry

from ..widgets.tables import TableSpot, TableTree, describe_spot
from ..widgets.walk import WalkView
from .walking import WalkingPane

__all__ = ["TablesPane"]


class TablesPane(WalkingPane):
    NAME = "tables"
    TITLE = "Tables [3]"
    KEY = "3"
    KEY_HELP = "Tables"
    HELP = (
        "PML4 -> PDPT -> PD -> PT; Enter or Space expands (one table read each); a table "
        "entry shows the table it points to and its flags, a page's entry its walk"
    )
    PALETTE = ("Page tables", "The paging structures as a tree, read as it opens (3)")
    FOCUS = "#table-tree"
    STOP_ORDER = 30
    WALK_VIEW = "tree-walk"

    class RootRead(Message, bubble=False):
        def __init__(self, root: int, levels: int) -> None:
            super().__init__()
            self.root = root
            self.levels = levels

    class TableRead(Message, bubble=False):
        def __init__(
            self, node: TreeNode[TableSpot], entries: Sequence[PageTableEntry], generation: int
        ) -> None:
            super().__init__()
            self.node = node
            self.entries = entries
            self.generation = generation

    def __init__(self) -> None:
        super().__init__()
        self.generation = 0  # one per root read: a table read for an older tree is dropped

    def compose(self) -> ComposeResult:
        with Horizontal(classes="split"):
            yield TableTree(id="table-tree")
            with VerticalScroll(classes="walk-pane"):
                yield WalkView(id="tree-walk")

    def load(self) -> None:
        def work(session: Any) -> tuple[int, int]:
            return session.root_table(), session.paging_mode().levels

        self.read("tree", work, lambda result: self.RootRead(*result))

    def on_tables_pane_root_read(self, message: RootRead) -> None:
        self.generation += 1
        tree = self.query_one(TableTree)
        tree.load_root(message.root, message.levels)
        tree.root.expand()

    @on(TableTree.Load)
    def _load_table(self, event: TableTree.Load) -> None:
        node = event.node
        spot = node.data
        assert spot is not None and spot.table is not None
        table, level, generation = spot.table, spot.level, self.generation
        self.read(
            "table",
            lambda session: session.page_table(table, level),
            lambda entries: self.TableRead(node, entries, generation),
        )

    def on_tables_pane_table_read(self, message: TableRead) -> None:
        if message.generation == self.generation:
            self.query_one(TableTree).fill(message.node, message.entries)

    @on(TableTree.EntryHighlighted)
    def _entry_highlighted(self, event: TableTree.EntryHighlighted) -> None:
        spot = event.spot
        # a table entry: what it points to and its flags first; its first address's walk
        # below, which may stop in the table it points to (not an error: nothing mapped yet)
        about = describe_spot(spot) if spot.table is not None else ""
        self.show_walk(spot.va, title=f"walk of {spot.va:#x}", about=about)

    def export_text(self) -> str:
        return self.query_one(TableTree).export_text() + "\n" + self.walk_view.export_text()
