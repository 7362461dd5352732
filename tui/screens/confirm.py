"""A yes/no question before kinspect changes the kernel (``:write``, ``:set``).

It shows what will change (old and new) and answers True only for ``y`` or
the Write button; ``n``, Escape and the Cancel button answer False.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

__all__ = ["ConfirmScreen"]


class ConfirmScreen(ModalScreen[bool]):
    """``title``, then the lines of ``question``; y writes, n or Escape does not."""

    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    #confirm-body {
        width: auto; max-width: 100%; height: auto;
        border: thick $warning; background: $surface; padding: 1 2;
    }
    #confirm-buttons { height: auto; margin-top: 1; }
    #confirm-buttons Button { margin-right: 2; }
    """

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, title: str, question: str, *, yes: str = "Write") -> None:
        super().__init__()
        self.title_text = title
        self.question = question
        self.yes = yes

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-body"):
            yield Static(Text(self.title_text, style="bold"), id="confirm-title")
            yield Static(Text(self.question, no_wrap=True), id="confirm-question")
            with Horizontal(id="confirm-buttons"):
                yield Button(f"{self.yes} (y)", variant="warning", id="confirm-yes")
                yield Button("Cancel (n)", id="confirm-no")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "confirm-yes")
