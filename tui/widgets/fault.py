"""The exception the CPU is in, as ``kinspect fault`` prints it (the same text)."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from .listnav import TextNav

__all__ = ["FaultView"]

NONE = "no exception: the CPU is not stopped at an IDT handler's entry (:catch 14 stops at one)"


class FaultView(VerticalScroll, TextNav):
    """``str(FaultReport)``, or one line saying why there is none at this stop."""

    NAV_WHAT = "the fault report"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.text = NONE

    def compose(self) -> ComposeResult:
        yield Static(NONE, id="fault-body")

    def show(self, text: str | None, error: str | None = None) -> None:
        """The report's text; else why the exception cannot be read; else that there is none."""
        if text is not None:
            self.text = text
            body = Text(text)
            body.highlight_regex(r"(?m)^  cause: .*$", "bold red")
        elif error is not None:
            self.text = error
            body = Text(error, style="red")
        else:
            self.text = NONE
            body = Text(NONE, style="dim")
        body.no_wrap = True  # one screen line per line: / and n scroll to a match
        self.query_one("#fault-body", Static).update(body)

    def nav_lines(self) -> list[str]:
        return self.text.splitlines()

    def export_text(self) -> str:
        return self.text + "\n"
