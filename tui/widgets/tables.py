"""The page tables as a tree: PML5/PML4 -> PDPT -> PD -> PT, one table read per expand."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual.message import Message
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from kinspect.inspector.formatting import format_size
from kinspect.inspector.x86.paging import LEVEL_NAMES, LEVEL_SHIFT, PageTableEntry, canonicalize

from .listnav import ListNav

__all__ = ["TableSpot", "TableTree", "describe_spot"]


@dataclass(slots=True)
class TableSpot:
    """What one tree node stands for.

    ``table`` and ``level``: the table whose entries are this node's
    children (None for a leaf or a non-present entry). ``va``: the first
    virtual address under the node. ``entry`` and ``index``: the entry
    itself (None for the root, which stands for CR3).
    """

    va: int
    level: int
    table: int | None
    entry: PageTableEntry | None = None
    index: int = 0
    loaded: bool = False


def describe_spot(spot: TableSpot) -> str:
    """What a non-leaf entry is: the table it points to, its flags, what it covers.

    (Its first address need not be mapped yet: its walk would only fault.)"""
    entry = spot.entry
    assert entry is not None and spot.table is not None
    name = LEVEL_NAMES[entry.level]
    child = LEVEL_NAMES[spot.level]
    covers = 1 << LEVEL_SHIFT[entry.level]
    end = spot.va + covers - 1  # canonical: an entry never spans the hole
    lines = [
        f"{name}[{spot.index}]: a table entry, not a page",
        f"  entry      {entry.raw:#018x}",
        f"  flags      {entry.describe()}",
        f"  points to  the {child} at {spot.table:#x}",
        f"  covers     {spot.va:#018x}-{end:#018x} ({format_size(covers)})",
    ]
    if entry.reserved:
        lines.append(f"  RESERVED   {entry.reserved:#x}")
    lines.append("Enter or Space opens it (one table read); a page's entry shows its walk")
    return "\n".join(lines)


class TableTree(Tree[TableSpot], ListNav):
    """Lazy: a node's table is asked for (``Load``) only when the node is expanded."""

    NAV_WHAT = "the open tables"

    class Load(Message):
        """The app should read ``spot.table`` and call :meth:`TableTree.fill`."""

        def __init__(self, tree: TableTree, node: TreeNode[TableSpot]) -> None:
            super().__init__()
            self.tree = tree
            self.node = node

    class EntryHighlighted(Message):
        """The cursor is on an entry: show the walk of its first address."""

        def __init__(self, tree: TableTree, spot: TableSpot) -> None:
            super().__init__()
            self.tree = tree
            self.spot = spot

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("page tables", **kwargs)
        self.levels = 4

    def load_root(self, root_table: int, levels: int) -> None:
        """A new stop: forget every table read, keep the root collapsed."""
        self.levels = levels
        self.clear()
        self.root.data = TableSpot(va=0, level=levels, table=root_table)
        self.root.set_label(self._root_label(self.root.data))
        self.root.allow_expand = True
        self.root.collapse()

    def fill(self, node: TreeNode[TableSpot], entries: Sequence[PageTableEntry]) -> None:
        spot = node.data
        assert spot is not None and spot.table is not None
        spot.loaded = True
        node.set_label(self._label(spot) if spot.entry is not None else self._root_label(spot))
        node.remove_children()
        level = spot.level
        absent = 0
        for index, entry in enumerate(entries):
            if not entry.present:
                absent += 1
                continue
            va = canonicalize(spot.va | (index << LEVEL_SHIFT[level]), self.levels)
            child = TableSpot(
                va=va,
                level=level - 1,
                table=None if entry.is_leaf else entry.address,
                entry=entry,
                index=index,
            )
            label = self._label(child)
            if entry.is_leaf or entry.reserved:
                node.add_leaf(label, child)
            else:
                node.add(label, child)
        node.add_leaf(Text(f"({absent} of {len(entries)} entries not present)", style="dim"))

    @staticmethod
    def _root_label(spot: TableSpot) -> Text:
        return Text(f"CR3 -> {LEVEL_NAMES[spot.level]} at {spot.table:#x}", style="bold")

    @staticmethod
    def _label(spot: TableSpot) -> Text:
        entry = spot.entry
        assert entry is not None
        name = LEVEL_NAMES[entry.level]
        text = Text(f"{name}[{spot.index:3}] ", style="bold")
        text.append(f"{spot.va:#018x} ")
        text.append(entry.describe(), style="green")
        text.append(f" -> {entry.address:#x}")
        if entry.is_leaf:
            text.append(f" {format_size(entry.page_size)} page", style="cyan")
        if entry.reserved:
            text.append(f" RESERVED={entry.reserved:#x}", style="bold red")
        return text

    def on_tree_node_expanded(self, event: Tree.NodeExpanded[TableSpot]) -> None:
        event.stop()
        spot = event.node.data
        if spot is not None and spot.table is not None and not spot.loaded:
            event.node.set_label(Text.assemble(event.node.label, (" loading...", "italic")))
            self.post_message(self.Load(self, event.node))

    def on_tree_node_highlighted(self, event: Tree.NodeHighlighted[TableSpot]) -> None:
        event.stop()
        spot = event.node.data
        if spot is not None and spot.entry is not None:
            self.post_message(self.EntryHighlighted(self, spot))

    # -- the shared list keys (ListNav): the lines of the open tables -------------------------

    def nav_count(self) -> int:
        return self.last_line + 1

    def nav_index(self) -> int:
        return max(self.cursor_line, 0)

    def nav_go(self, index: int) -> None:
        self.cursor_line = index
        self.scroll_to_line(index, animate=False)

    def nav_text(self, index: int) -> str:
        node = self.get_node_at_line(index)
        label = node.label if node is not None else ""
        return label.plain if isinstance(label, Text) else str(label)

    def export_text(self) -> str:
        lines: list[str] = []

        def visit(node: TreeNode[TableSpot], depth: int) -> None:
            label = node.label
            lines.append("  " * depth + (label.plain if isinstance(label, Text) else str(label)))
            if node.is_expanded:
                for child in node.children:
                    visit(child, depth + 1)

        visit(self.root, 0)
        return "\n".join(lines) + "\n"
