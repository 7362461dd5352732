"""The help screen: every key and every command, on one page."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

__all__ = ["HelpScreen"]

COMMANDS = (
    ("vtop ADDR|SYMBOL", "translate a virtual address; the walk, level by level"),
    ("ptov PADDR", "every virtual address that maps a physical one"),
    ("mem ADDR|SYMBOL", "hex view of virtual memory (PageUp/PageDown move)"),
    ("phys PADDR", "hex view of physical memory"),
    ("break SYMBOL|ADDR", "a breakpoint; c continues to it"),
    ("breakpoints, bl", "the breakpoints with their hit counts (B); d deletes one, D all"),
    ("delete N...|all", "delete breakpoints by number, or every one"),
    ("continue, stop, step", "run control (also c, p, s)"),
    ("next, nexti, finish", "step over a line / an instruction, run to the return (n, f)"),
    ("until ADDR|SYMBOL", "run to an address (a temporary breakpoint)"),
    ("watch ADDR [r|w|rw] [LEN]", "a hardware watchpoint (LEN 1, 2, 4, 8): in the list (B)"),
    ("write ADDR HEX... | --u64 V", "write memory (--physical); asks first, recorded"),
    ("set REG VALUE, writes", "set a register (asks first); the record of every write"),
    ("cpu N", "read CPU N: every view reads again ([ and ] the previous and next CPU)"),
    ("refresh, reconnect", "read everything again; attach again after a lost link"),
    ("export, svg", "save the current view as text, or the screen as SVG"),
    ("remap", "the remap screen (7): forms, plan, apply, journal, undo"),
    ("efi", "the UEFI memory map (8)"),
    ("pt, regs, gdt, bt, ...", "any other kinspect command, as the CLI runs it: its text"),
)

#: The views that are screens of their own, not panes: (key, name, what it shows).
SCREENS = (
    (
        "7",
        "Remaps (7)",
        "through the agent: map, unmap, protect, move, higher-half, efi-runtime; the plan "
        "first (red: cannot be undone), F2 applies it (journaled, verified by a fresh walk); "
        "the journal's steps undo (F3)",
    ),
    (
        "B",
        "Breakpoints (B)",
        "number, enabled, hits (read again at each stop), address, where; d or Delete "
        "deletes the highlighted one, D all, r reads again",
    ),
)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark,f1", "dismiss", "Close")]

    def __init__(
        self,
        bindings: Sequence[Binding | tuple[str, ...]],
        views: Sequence[tuple[str, str, str]] = (),
    ) -> None:
        """``views``: (key, name, what it shows) of each pane; the screens are added here."""
        super().__init__()
        self._keys = [b for b in bindings if isinstance(b, Binding)]
        self._views = sorted([*views, *SCREENS], key=lambda view: view[0])

    def compose(self) -> ComposeResult:
        keys = Table(title="Keys", box=None, show_header=False, title_justify="left")
        keys.add_column(style="bold cyan")
        keys.add_column()
        for binding in self._keys:
            keys.add_row(
                binding.key.replace("question_mark", "?")
                .replace("colon", ":")
                .replace("slash", "/")
                .replace("left_square_bracket", "[")
                .replace("right_square_bracket", "]"),
                binding.description,
            )
        keys.add_row("ctrl+p", "command palette")
        commands = Table(
            title="Commands (: or the box at the bottom)",
            box=None,
            show_header=False,
            title_justify="left",
        )
        commands.add_column(style="bold cyan")
        commands.add_column()
        for name, text in COMMANDS:
            commands.add_row(name, text)
        views = Table(title="Views", box=None, show_header=False, title_justify="left")
        views.add_column(style="bold cyan")
        views.add_column()
        for _key, name, text in self._views:
            views.add_row(name, text)
        with VerticalScroll(id="help-body"):
            yield Static(Text("kinspect: a live kernel inspector", style="bold"))
            yield Static(keys)
            yield Static(commands)
            yield Static(views)
            yield Static(Text("Escape closes this screen.", style="dim"))
