"""The stack: frames with symbol, file:line and the mapping of each stack slot; source beside."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from kinspect.inspector.unwind import Backtrace, Frame

from .listnav import NavOptionList

__all__ = ["StackView", "source_excerpt"]

CONTEXT = 8


def source_excerpt(frame: Frame, context: int = CONTEXT) -> Text:
    """The lines around ``frame.line``, the frame's own line marked; or why there are none."""
    line = frame.line
    if line is None:
        return Text("no line information for this frame (no DWARF for it)", style="dim")
    path = Path(line.path)
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return Text(f"{line}: source not available ({exc.strerror or exc})", style="dim")
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(f"{line.path}\n", style="bold underline")
    first = max(line.line - context, 1)
    for number in range(first, min(line.line + context, len(lines)) + 1):
        mark = number == line.line
        text.append(
            f"{'>' if mark else ' '}{number:5} {lines[number - 1]}\n",
            style="bold black on yellow" if mark else "",
        )
    return text


class StackView(Horizontal):
    """Frames on the left (a short list: one option per frame), source on the right."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backtrace: Backtrace | None = None

    def compose(self) -> ComposeResult:
        yield NavOptionList(id="frames")
        with VerticalScroll(classes="walk-pane"):
            yield Static("select a frame to see its source", id="source")

    def show(self, backtrace: Backtrace) -> None:
        self.backtrace = backtrace
        frames = self.query_one("#frames", OptionList)
        frames.clear_options()
        options: list[Option] = []
        for frame in backtrace.frames:
            label = Text()
            if frame.interrupt is not None:
                label.append(f"--- {frame.interrupt} ---\n", style="magenta")
            label.append(str(frame), style="" if frame.mapping else "red")
            options.append(Option(label, id=str(frame.index)))
        frames.add_options(options)
        frames.add_option(
            Option(
                Text(f"stopped: {backtrace.stop}: {backtrace.reason}", style="dim"), disabled=True
            )
        )
        if backtrace.frames:
            frames.highlighted = 0

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        event.stop()
        if self.backtrace is None or event.option.id is None:
            return
        frame = self.backtrace.frames[int(event.option.id)]
        self.query_one("#source", Static).update(source_excerpt(frame))

    def show_error(self, message: str) -> None:
        self.backtrace = None
        self.query_one("#frames", OptionList).clear_options()
        self.query_one("#source", Static).update(Text(message, style="red"))

    def export_text(self) -> str:
        if self.backtrace is None:
            return "no stack yet\n"
        return str(self.backtrace) + "\n"
