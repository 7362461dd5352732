"""The stack telescope: one line per 8-byte slot, each value named, placed and followed."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Static

from kinspect.inspector.telescope import SLOT, Slot, Telescope

__all__ = ["TelescopeView", "slot_line"]

#: Slots shown (and read) at once.
SLOTS = 32


def slot_line(slot: Slot, *, wide: bool = True) -> Text:
    """``+0x008  0xffff... rsp  0xffffffff8010b6e2  <start64+0x2c>  [... ro x]``, styled."""
    line = Text(no_wrap=True, overflow="ellipsis")
    line.append(f"{slot.offset:+#06x} ", style="dim")
    line.append(f"{slot.address:#018x} ", style="dim")
    line.append(f"{','.join(slot.registers):<4} ", style="bold green")
    style = "cyan" if slot.symbol else ("" if slot.mapping else "dim")
    line.append(f"{slot.value:#018x}", style=style)
    if slot.symbol:
        line.append(f"  <{slot.symbol}>", style="cyan")
    if slot.string is not None:
        line.append(f"  -> {slot.string!r}", style="green")
    elif slot.points_to is not None:
        line.append(f"  -> {slot.points_to:#x}", style="yellow")
        if slot.points_to_symbol:
            line.append(f" <{slot.points_to_symbol}>", style="cyan")
    if slot.mapping and wide:
        line.append(f"  [{slot.mapping}]", style="blue")
    return line


class TelescopeView(Static, can_focus=True):
    """The slots from an address (RSP by default); Up/Down/PageUp/PageDown ask for others."""

    DEFAULT_CSS = """
    TelescopeView {
        height: 1fr;
        padding: 0 1;
    }
    """

    BINDINGS = [
        Binding("up,k", "move(-1)", "Slot up", show=False),
        Binding("down,j", "move(1)", "Slot down", show=False),
        Binding("pageup", f"move(-{SLOTS})", "Back", show=False),
        Binding("pagedown", f"move({SLOTS})", "Forward", show=False),
    ]

    class Move(Message):
        """Show the slots ``delta`` bytes away."""

        def __init__(self, delta: int) -> None:
            super().__init__()
            self.delta = delta

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("no stack yet: the telescope at RSP is read at the next stop", **kwargs)
        self.telescope: Telescope | None = None
        self.plain = ""

    def show(self, telescope: Telescope, title: str) -> None:
        self.telescope = telescope
        wide = (self.size.width or 160) >= 100
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(title + "\n", style="bold underline")
        for slot in telescope.slots:
            text.append_text(slot_line(slot, wide=wide))
            text.append("\n")
        if telescope.unreadable is not None:
            text.append(
                f"{telescope.unreadable:#018x}: not readable ({telescope.error})\n", style="yellow"
            )
        self.plain = "\n".join([title, *telescope.lines()])
        self.update(text)

    def show_error(self, message: str) -> None:
        self.telescope = None
        self.plain = message
        self.update(Text(message, style="bold red"))

    def action_move(self, slots: int) -> None:
        self.post_message(self.Move(slots * SLOT))

    def export_text(self) -> str:
        return self.plain + "\n"
