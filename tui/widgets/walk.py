"""A walk, level by level: every entry read on the way and its bits by SDM name."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.text import Text
from textual.widgets import Static

from kinspect.inspector.formatting import format_size
from kinspect.inspector.x86.paging import Translation

__all__ = ["WalkView"]


class WalkView(Static):
    """Shows a :class:`Translation` (``show_walk``) or any short text (``show_text``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__("select a range or an entry to see its walk", *args, **kwargs)
        self.translation: Translation | None = None
        self.plain = ""
        self._shape: tuple[int, int] | None = None  # (lines, widest line) on screen now

    def show_walk(
        self, t: Translation, *, title: str = "", extra: str = "", about: str = ""
    ) -> None:
        """``about``: what was selected when it is not a page (a table entry): said first,
        and a walk that stops below it is what it is, not an error."""
        self.translation = t
        parts: list[Text] = []
        if about:
            parts.append(Text(about, style="bold"))
        if title:
            parts.append(Text(title, style="bold underline"))
        parts.append(Text(f"{t.va:#x}", style="bold"))
        for step in t.steps:
            e = step.entry
            line = Text(f"  {step.level_name}[{step.index}] at {step.entry_address:#x}\n    ")
            line.append(f"{e.raw:#018x} ", style="bold")
            line.append(
                e.describe() if e.present else "not present", style="green" if e.present else "red"
            )
            if e.present:
                line.append(f" -> {e.address:#x}")
                if e.is_leaf and e.level > 1:
                    line.append(f" ({format_size(e.page_size)} page)")
            if e.reserved:
                line.append(f" RESERVED={e.reserved:#x}", style="bold red")
            parts.append(line)
        if t.ok:
            parts.append(Text(f"=> {t}", style="bold green"))
        elif about:
            parts.append(Text(f"its first address is not mapped below it: {t.fault}", style="dim"))
        else:
            parts.append(Text(f"fault: {t.fault}", style="bold red"))
        if extra:
            parts.append(Text(extra))
        self.plain = "\n".join(p.plain for p in parts)
        self._show(Group(*parts))

    def show_text(self, text: str, *, style: str = "") -> None:
        self.translation = None
        self.plain = text
        self._show(Text(text, style=style))

    def _show(self, content: Group | Text) -> None:
        """``content`` on screen; the whole screen is laid out again only when its shape
        (lines, widest line) differs from what is shown: a cursor move in the range map
        shows a walk as long and as wide as the last one, and a layout of the screen at
        every key cost more than the rest of the key together."""
        lines = self.plain.split("\n")
        shape = (len(lines), max(map(len, lines)))
        self.update(content, layout=shape != self._shape)
        self._shape = shape

    def export_text(self) -> str:
        return self.plain + "\n"
