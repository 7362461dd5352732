"""GDT, LDT, IDT and TSS as the session decodes them (the same text as kinspect gdt/idt/tss)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Group
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from .listnav import TextNav

__all__ = ["DescriptorsView"]

ORDER = ("GDT", "LDT", "IDT", "TSS")


class DescriptorsView(VerticalScroll, TextNav):
    """Each table's text, or why it could not be read (a stub without GDTR, say).

    One screen line per line of text (no wrapping), so ``/`` and ``n`` scroll to a match."""

    NAV_WHAT = "the descriptor tables"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tables: Mapping[str, str] = {}

    def compose(self) -> ComposeResult:
        yield Static("no descriptor tables yet", id="descriptors-body")

    def show(self, tables: Mapping[str, str], errors: Mapping[str, str]) -> None:
        self.tables = dict(tables)
        parts: list[Text] = []
        for name in ORDER:
            parts.append(Text(name, style="bold underline"))
            if name in tables:
                parts.append(Text(tables[name]))
            else:
                parts.append(Text(errors.get(name, "not read"), style="red"))
            parts.append(Text(""))
        for part in parts:
            part.no_wrap = True
        self.query_one("#descriptors-body", Static).update(Group(*parts))
        self._plain = "\n".join(p.plain for p in parts)

    def nav_lines(self) -> list[str]:
        return self.export_text().splitlines()

    def export_text(self) -> str:
        return getattr(self, "_plain", "no descriptor tables yet") + "\n"
