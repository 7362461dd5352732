"""Memory as hex: 16 bytes a row, ASCII beside, and the symbol of any qword that hits one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Static

from kinspect.inspector.formatting import HEX_ROW, format_hex_rows

__all__ = ["HexView"]

ROW = HEX_ROW
ROWS = 16
WINDOW = ROW * ROWS


class HexView(Static, can_focus=True):
    """A window of memory; PageUp/PageDown ask the app (``Move``) for the next window."""

    BINDINGS = [
        Binding("pageup", "move(-1)", "Back", show=False),
        Binding("pagedown", "move(1)", "Forward", show=False),
        Binding("up", "move_row(-1)", "Row up", show=False),
        Binding("down", "move_row(1)", "Row down", show=False),
    ]

    class Move(Message):
        """Show memory ``delta`` bytes away from the current address."""

        def __init__(self, view: HexView, delta: int) -> None:
            super().__init__()
            self.view = view
            self.delta = delta

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            "no memory shown: press g and give an address (mem ADDR, phys ADDR)", **kwargs
        )
        self.address: int | None = None
        self.space = "virtual"
        self.plain = ""

    def show(
        self,
        address: int,
        space: str,
        data: bytes,
        symbolize: Callable[[int], str | None] | None = None,
        *,
        title: str = "",
        unreadable: str = "",
    ) -> None:
        """``unreadable``: a line after the rows, where reading stopped and why."""
        self.address, self.space = address, space
        text = Text()
        head = f"{space} memory at {address:#x}" + (f" ({title})" if title else "")
        text.append(head + "\n", style="bold underline")
        lines = [head]
        for row, names in format_hex_rows(address, data, symbolize):
            text.append(row)
            if names:
                text.append("  " + names, style="cyan")
            text.append("\n")
            lines.append(row + ("  " + names if names else ""))
        if unreadable:
            text.append(unreadable + "\n", style="yellow")
            lines.append(unreadable)
        self.plain = "\n".join(lines)
        self.update(text)

    def show_error(self, address: int, space: str, message: str) -> None:
        self.address, self.space = address, space
        self.plain = f"{space} memory at {address:#x}: {message}"
        self.update(Text(self.plain, style="bold red"))

    def action_move(self, direction: int) -> None:
        self.post_message(self.Move(self, direction * WINDOW))

    def action_move_row(self, direction: int) -> None:
        self.post_message(self.Move(self, direction * ROW))

    def export_text(self) -> str:
        return self.plain + "\n"
