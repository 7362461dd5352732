"""Registers: general registers and the decoded control registers, changes highlighted."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from kinspect.inspector.formatting import format_register
from kinspect.inspector.x86.control import GENERAL_REGISTERS
from kinspect.inspector.x86.descriptors import SEGMENT_REGISTERS

from ..link import RegisterSnapshot
from .text import render_plain

__all__ = ["RegistersView"]

GENERAL = (
    *GENERAL_REGISTERS,
    "rip",
    "rflags",
    *(name.lower() for name in SEGMENT_REGISTERS),
    *("fs_base", "gs_base", "k_gs_base", "cr2", "cr8"),
)
CHANGED_STYLE = "bold black on yellow"


class RegistersView(VerticalScroll):
    """Shows one :class:`RegisterSnapshot`; values that differ from the previous stop stand out."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.snapshot: RegisterSnapshot | None = None
        self.changed: frozenset[str] = frozenset()
        self.generation = 0  # how many snapshots were shown (tests and the benchmark wait on it)
        self.symbolize: Callable[[int], str | None] | None = None  # set by the app

    def compose(self) -> ComposeResult:
        yield Static("no registers yet", id="registers-body")

    def show(self, snapshot: RegisterSnapshot, previous: Mapping[str, int] | None) -> None:
        self.snapshot = snapshot
        values = snapshot.values
        if previous is None:
            self.changed = frozenset()
        else:
            self.changed = frozenset(k for k, v in values.items() if previous.get(k) != v)
        self.query_one("#registers-body", Static).update(self._renderable())
        self.generation += 1

    def _renderable(self) -> Group:
        snap = self.snapshot
        assert snap is not None
        values = snap.values
        table = Table(box=None, show_header=False, padding=(0, 1), expand=False)
        names = [n for n in GENERAL if n in values]
        names += sorted(n for n in values if n not in GENERAL and not n.startswith(("cr", "efer")))
        width = self.size.width or 100
        columns = max(1, min(3, (width - 2) // 30))  # name (9) + value (18) + padding
        for _ in range(columns):
            table.add_column(justify="right", style="bold")
            table.add_column()
        for i in range(0, len(names), columns):
            cells: list[Text | str] = []
            for name in names[i : i + columns]:
                style = CHANGED_STYLE if name in self.changed else ""
                cells += [name, Text(f"{values[name]:#018x}", style=style)]
            table.add_row(*cells)
        parts: list[RenderableType] = [Text("General registers", style="bold underline"), table]
        rip = values.get("rip")
        if rip is not None and self.symbolize is not None:
            where = self.symbolize(rip)
            if where:
                parts.append(Text(f"rip = {where}", style="cyan"))
        parts.append(Text(""))
        parts.append(Text("Control registers", style="bold underline"))
        if snap.control is None:
            parts.append(Text(f"unavailable: {snap.control_error}", style="red"))
        else:
            for name, reg in snap.control.registers.items():
                lines = format_register(reg).splitlines()
                changed = name.lower() in self.changed or (
                    name == "RFLAGS" and "rflags" in self.changed
                )
                parts.append(Text(lines[0], style=CHANGED_STYLE if changed else "bold"))
                for line in lines[1:]:
                    parts.append(Text(line, style="dim" if "bits no field" not in line else "red"))
            parts.append(Text(f"paging: {snap.control.paging}", style="cyan"))
        return Group(*parts)

    def on_resize(self) -> None:
        if self.snapshot is not None:
            self.query_one("#registers-body", Static).update(self._renderable())

    def export_text(self) -> str:
        if self.snapshot is None:
            return "no registers yet\n"
        return render_plain(self._renderable())
