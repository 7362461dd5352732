"""The help screen: every key and every command, on one page.

The keys are read from the bindings themselves (the app's, each view's and
the widgets inside it, every list's, each screen's), so a key added
anywhere appears here without a line of its own; ``key_sections`` is also
what the test holds ``tui/README.md`` to.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.dom import DOMNode
from textual.screen import ModalScreen
from textual.widgets import Static

from ..widgets.listnav import ListNav, TextNav

if TYPE_CHECKING:
    from ..app import KinspectApp

__all__ = ["HelpScreen", "KeySection", "key_name", "key_sections"]

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
    ("export [DIR], svg [DIR]", "save the view as text, the screen as SVG (into DIR from now on)"),
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


#: (section title, rows of (keys as shown, what they do)).
KeySection = tuple[str, list[tuple[str, str]]]

_NAMES = {
    "question_mark": "?",
    "colon": ":",
    "slash": "/",
    "left_square_bracket": "[",
    "right_square_bracket": "]",
    "exclamation_mark": "!",
    "escape": "Esc",
    "enter": "Enter",
    "space": "Space",
    "delete": "Delete",
    "up": "Up",
    "down": "Down",
    "left": "Left",
    "right": "Right",
    "pageup": "PageUp",
    "pagedown": "PageDown",
    "home": "Home",
    "end": "End",
    "tab": "Tab",
    "backspace": "Backspace",
}


def key_name(key: str) -> str:
    """A key as the help and the README write it: ``?``, ``Esc``, ``F2``, ``ctrl+pageup``."""
    if key in _NAMES:
        return _NAMES[key]
    if key[:1] == "f" and key[1:].isdigit():
        return key.upper()
    return key


def _own_bindings(cls: type, skip: Iterable[type] = ()) -> list[Binding]:
    """The bindings ``cls`` and its bases declare, less Textual's own (its widgets' arrows,
    the app's ctrl+q): ours, a plugin's, a subclass's."""
    skipped = set(skip)
    found: list[Binding] = []
    for base in reversed(cls.__mro__):
        if base in skipped or base.__module__.partition(".")[0] in ("textual", "builtins"):
            continue
        found.extend(b for b in base.__dict__.get("BINDINGS", ()) if isinstance(b, Binding))
    return found


def _rows(bindings: Iterable[Binding]) -> list[tuple[str, str]]:
    """One row per action: its keys together (``? F1``)."""
    rows: dict[tuple[str, str], list[str]] = {}
    for binding in bindings:
        keys = rows.setdefault((binding.action, binding.description), [])
        for key in binding.key.split(","):
            name = key_name(key.strip())
            if name not in keys:
                keys.append(name)
    return [(" ".join(keys), description) for (_action, description), keys in rows.items()]


def _screen_classes() -> list[type]:
    from .breakpoints import BreakpointsScreen
    from .crash import CrashScreen
    from .output import OutputScreen
    from .remap import RemapScreen

    return [RemapScreen, BreakpointsScreen, CrashScreen, OutputScreen]


def key_sections(app: KinspectApp) -> list[KeySection]:
    """Every key: anywhere (the app's), in every list, in each view (the pane's and the
    widgets' inside it, live), on each screen (and the widgets it composes)."""
    from ..panes.base import Pane

    sections: list[KeySection] = [("Anywhere", _rows(_own_bindings(type(app))))]
    sections[0][1].append(("ctrl+p", "command palette"))
    sections.append(("In every list", _rows(_own_bindings(ListNav))))
    nav = (ListNav, TextNav)
    for pane in app.query(Pane):
        nodes: list[DOMNode] = [pane, *pane.query("*")]
        bindings: list[Binding] = []
        seen: set[type] = set()
        for node in nodes:
            if type(node) not in seen:
                seen.add(type(node))
                bindings.extend(_own_bindings(type(node), nav))
        if bindings:
            sections.append((pane.TITLE, _rows(bindings)))
    for screen in _screen_classes():
        bindings = _own_bindings(screen)
        for widget in getattr(screen, "WIDGETS", ()):
            bindings.extend(_own_bindings(widget, nav))
        sections.append((screen.__name__.removesuffix("Screen") + " screen", _rows(bindings)))
    return sections


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark,f1", "dismiss", "Close")]

    def __init__(
        self,
        sections: Sequence[KeySection],
        views: Sequence[tuple[str, str, str]] = (),
    ) -> None:
        """``sections``: :func:`key_sections`; ``views``: (key, name, what it shows) of each
        pane; the screens are added here."""
        super().__init__()
        self._sections = list(sections)
        self._views = sorted([*views, *SCREENS], key=lambda view: view[0])

    def compose(self) -> ComposeResult:
        with HelpBody(id="help-body"):
            yield Static(Text("kinspect: a live kernel inspector", style="bold"))
            for title, rows in self._sections:
                keys = Table(title=title, box=None, show_header=False, title_justify="left")
                keys.add_column(style="bold cyan", no_wrap=True)
                keys.add_column()
                for name, text in rows:
                    keys.add_row(name, text)
                yield Static(keys)
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
            yield Static(commands)
            views = Table(title="Views", box=None, show_header=False, title_justify="left")
            views.add_column(style="bold cyan")
            views.add_column()
            for _key, name, text in self._views:
                views.add_row(name, text)
            yield Static(views)
            yield Static(Text("Escape closes this screen.", style="dim"))

    def on_mount(self) -> None:
        self.query_one(HelpBody).focus()  # it scrolls at once (Up, Down, PageUp, j, k, g, G)

    @property
    def text(self) -> str:
        """What the screen says, as plain text (tests, and the help body's search)."""
        lines = []
        for title, rows in self._sections:
            lines.append(title)
            lines.extend(f"  {name}  {text}" for name, text in rows)
        lines.extend(f"{name}  {text}" for name, text in COMMANDS)
        lines.extend(f"{name}  {text}" for _key, name, text in self._views)
        return "\n".join(lines)


class HelpBody(VerticalScroll, TextNav):
    """The help's body: focused, so it scrolls at once; j k g G / n N like every list."""

    NAV_WHAT = "the help"

    def nav_lines(self) -> list[str]:
        screen = self.screen
        return screen.text.splitlines() if isinstance(screen, HelpScreen) else []
