"""The keys every list shares: ``j``/``k``, ``g``/``G``, ``/`` then ``n``/``N``, Esc.

One implementation for every list of the TUI (the range map, the table tree,
the stack's frames, the EFI map, the breakpoints, the remap journal, and
the text views scrolled line by line). A list mixes :class:`ListNav` in
before its Textual base class and says how to count, read, move and match
its rows (four small methods); the keys, the search prompt and the match
walking are here.

``n``/``N`` belong to the list only while it has an active search: without
one the list's binding is disabled (:meth:`ListNav.check_action`), so the
key goes on to the app (step over). The app asks :meth:`ListNav.claims`
before a priority binding of its own takes a key that a list wants.
"""

from __future__ import annotations

from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import DataTable, Input, Label, OptionList

__all__ = ["ListNav", "NavOptionList", "NavTable", "SearchPrompt", "TextNav"]


class SearchPrompt(ModalScreen[str | None]):
    """``/``: one line at the bottom; Enter searches, Esc goes back to the list."""

    BINDINGS = [Binding("escape", "cancel", "Back to the list", show=False)]

    def __init__(self, what: str, text: str = "") -> None:
        super().__init__()
        self.what = what
        self.text = text

    def compose(self) -> ComposeResult:
        with Vertical(id="search-prompt"):
            yield Label(f"search {self.what} (Enter: first match, then n / N; Esc: back)")
            yield Input(self.text, placeholder="text, an address or a symbol", id="search-text")

    def on_mount(self) -> None:
        self.set_focus(self.query_one(Input))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ListNav(Widget):
    """Mixed in after a list's Textual class: ``class NavOptionList(OptionList, ListNav)``."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j", "nav_step(1)", "Down", show=False),
        Binding("k", "nav_step(-1)", "Up", show=False),
        Binding("g", "nav_first", "First row", show=False),
        Binding("G", "nav_last", "Last row", show=False),
        Binding("slash", "nav_search", "Search", show=False),
        Binding("n", "nav_match(1)", "Next match", show=False),
        Binding("N", "nav_match(-1)", "Previous match", show=False),
        Binding("escape", "nav_clear", "Clear the search", show=False),
    ]
    #: The keys a list takes only while it has an active search.
    SEARCH_KEYS: ClassVar[frozenset[str]] = frozenset({"n", "N"})
    #: What the prompt says it searches.
    NAV_WHAT: ClassVar[str] = "this list"
    #: ``/`` is the list's own; False: an app key on ``/`` takes it (the range map's
    #: search box, opened by a priority key so that the keys typed after it land there).
    OWN_SLASH: ClassVar[bool] = True

    search: str = ""  # the active search ("" none)

    # -- what a list says about itself ------------------------------------------------------

    def nav_count(self) -> int:
        raise NotImplementedError

    def nav_index(self) -> int:
        raise NotImplementedError

    def nav_go(self, index: int) -> None:
        raise NotImplementedError

    def nav_text(self, index: int) -> str:
        raise NotImplementedError

    def nav_matcher(self, text: str) -> Any:
        """A predicate on row indices for ``text`` (default: its text, case-insensitive)."""
        needle = text.lower()
        return lambda index: needle in self.nav_text(index).lower()

    # -- the keys ---------------------------------------------------------------------------

    def claims(self, key: str) -> bool:
        """Whether this list takes ``key`` now (the app's priority keys step aside)."""
        if key in self.SEARCH_KEYS:
            return bool(self.search)
        if key == "escape":
            return bool(self.search)
        if key == "slash":
            return self.OWN_SLASH
        return any(b.key == key for b in ListNav.BINDINGS if isinstance(b, Binding))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("nav_match", "nav_clear") and not self.search:
            return False  # the key goes on: n is the app's step over, Esc the app's
        return super().check_action(action, parameters)

    def action_nav_step(self, delta: int) -> None:
        count = self.nav_count()
        if count:
            self.nav_go(max(0, min(self.nav_index() + delta, count - 1)))

    def action_nav_first(self) -> None:
        if self.nav_count():
            self.nav_go(0)

    def action_nav_last(self) -> None:
        count = self.nav_count()
        if count:
            self.nav_go(count - 1)

    def action_nav_search(self) -> None:
        self.app.push_screen(SearchPrompt(self.NAV_WHAT, self.search), self._searched)

    def _searched(self, text: str | None) -> None:
        self.focus()
        if text:
            self.search_for(text)

    def search_for(self, text: str) -> bool:
        """Make ``text`` the active search and jump to its first match; False if none."""
        self.search = text
        self.refresh_bindings()
        found = self._find(self.nav_matcher(text), 0, 1, wrap=False)
        if found is None:
            self.notify(f"no match for {text!r}", severity="warning", timeout=4)
            return False
        self.nav_go(found)
        return True

    def action_nav_match(self, direction: int) -> None:
        count = self.nav_count()
        if not self.search or not count:
            return
        start = (self.nav_index() + direction) % count
        found = self._find(self.nav_matcher(self.search), start, direction, wrap=True)
        if found is None:
            self.notify(f"no match for {self.search!r}", severity="warning", timeout=4)
        else:
            self.nav_go(found)

    def action_nav_clear(self) -> None:
        self.search = ""
        self.refresh_bindings()

    def _find(self, matches: Any, start: int, direction: int, *, wrap: bool) -> int | None:
        count = self.nav_count()
        for step in range(count if wrap else count - start):
            index = (start + step * direction) % count
            if matches(index):
                return index
        return None


class TextNav(ListNav):
    """A scrolling text view as a list of lines: the "cursor" is the top line shown."""

    def nav_lines(self) -> list[str]:
        raise NotImplementedError

    def nav_count(self) -> int:
        return len(self.nav_lines())

    def nav_index(self) -> int:
        return int(self.scroll_offset.y)

    def nav_go(self, index: int) -> None:
        self.scroll_to(y=index, animate=False, immediate=True)

    def action_nav_last(self) -> None:
        self.scroll_to(y=self.max_scroll_y, animate=False, immediate=True)

    def nav_text(self, index: int) -> str:
        lines = self.nav_lines()
        return lines[index] if 0 <= index < len(lines) else ""


def _plain(value: object) -> str:
    plain = getattr(value, "plain", None)
    return plain if isinstance(plain, str) else str(value)


class NavOptionList(OptionList, ListNav):
    """An :class:`OptionList` with the shared keys (the stack's frames, the remap journal)."""

    def nav_count(self) -> int:
        return self.option_count

    def nav_index(self) -> int:
        return self.highlighted or 0

    def nav_go(self, index: int) -> None:
        # a disabled option (a note, not a row) cannot be highlighted: the nearest row can
        order = sorted(range(self.option_count), key=lambda i: (abs(i - index), i > index))
        for i in order:
            if not self.get_option_at_index(i).disabled:
                self.highlighted = i
                return

    def nav_text(self, index: int) -> str:
        return _plain(self.get_option_at_index(index).prompt)


class NavTable(DataTable[Any], ListNav):
    """A row-cursor :class:`DataTable` with the shared keys (the EFI map, the breakpoints)."""

    def nav_count(self) -> int:
        return self.row_count

    def nav_index(self) -> int:
        return self.cursor_row

    def nav_go(self, index: int) -> None:
        self.move_cursor(row=index, scroll=True)

    def nav_text(self, index: int) -> str:
        return "  ".join(_plain(cell) for cell in self.get_row_at(index))
