"""What a registry command printed (``:pt``, ``:gdt``, ``:bt``...), as the CLI prints it."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

__all__ = ["OutputScreen"]


class OutputScreen(ModalScreen[None]):
    """The text of one command line; Escape closes it."""

    BINDINGS = [Binding("escape,q", "dismiss", "Close")]

    def __init__(self, line: str, text: str) -> None:
        super().__init__()
        self.line = line
        self.text = text

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="output-body"):
            yield Static(Text(f": {self.line}", style="bold"), id="output-title")
            yield Static(Text(self.text, no_wrap=True), id="output-text")
            yield Static(Text("Escape closes this screen.", style="dim"))
