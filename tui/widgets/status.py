"""The status line: target, run state, why it stopped, paging mode, connection health."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

__all__ = ["StatusLine"]

_STATE_STYLE = {
    "stopped": "bold black on yellow",
    "running": "bold black on green",
    "exited": "bold white on red",
    "connecting": "bold black on cyan",
}


class StatusLine(Widget):
    """One line; the app sets its attributes, it only draws them."""

    target: reactive[str] = reactive("no target")
    state: reactive[str] = reactive("connecting")
    reason: reactive[str] = reactive("")
    mode: reactive[str] = reactive("")
    health: reactive[str] = reactive("ok")
    busy: reactive[str] = reactive("")  # what the target thread is reading, "" when idle

    def render(self) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(f" {self.state.upper()} ", _STATE_STYLE.get(self.state, "reverse"))
        if self.reason:
            text.append(f" {self.reason}", "bold")
        text.append(f"  {self.target}")
        if self.mode:
            text.append(f"  | {self.mode}", "cyan")
        if self.health != "ok":
            text.append(f"  | {self.health}", "bold red")
        else:
            text.append("  | link ok", "green")
        if self.busy:
            text.append(f"  | reading {self.busy}...", "italic")
        return text

    def export_text(self) -> str:
        return self.render().plain
