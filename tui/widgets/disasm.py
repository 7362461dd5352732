"""The disassembly: one line per instruction, RIP marked, the cursor's line acted on."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.actions import SkipAction
from textual.binding import Binding
from textual.message import Message
from textual.widgets.option_list import Option

from kinspect.inspector.disasm import Disassembly, Instruction

from .listnav import NavOptionList

__all__ = ["DisasmView", "instruction_line"]

#: Below this width the bytes column is left out.
BYTES_FROM = 120
KIND_STYLE = {"call": "cyan", "jump": "yellow", "branch": "yellow", "ret": "magenta", "bad": "red"}


def instruction_line(
    insn: Instruction, symbol: str | None, *, rip: bool, symbol_width: int, raw: bool
) -> Text:
    """``=> 0xffff...  <demo_level2+0x11>  e8 ..  call 0x... <demo_level3>``, styled."""
    line = Text(no_wrap=True, overflow="ellipsis")
    line.append("=> " if rip else "   ", style="bold green")
    line.append(f"{insn.address:#018x} ", style="bold green" if rip else "dim")
    if symbol_width:
        line.append(f"{'<' + symbol + '>' if symbol else '':<{symbol_width + 2}} ", style="blue")
    if raw:
        line.append(f"{insn.raw.hex(' '):<30} ", style="dim")
    line.append(f"{insn.mnemonic:<7} ", style=KIND_STYLE.get(insn.kind, "bold" if rip else ""))
    line.append(insn.operands)
    if insn.target is not None and insn.target_name:
        line.append(f" <{insn.target_name}>", style="cyan")
    if insn.reference is not None:
        name = f" <{insn.reference_name}>" if insn.reference_name else ""
        line.append(f"  # {insn.reference:#x}{name}", style="dim cyan")
    if rip:
        line.stylize("on #203020")
    return line


class DisasmView(NavOptionList):
    """Instructions as options (the cursor is the highlighted one); the keys ask the pane.
    The keys every list has (j k g G / n N) come from :class:`NavOptionList`.

    Attributes down (:meth:`show`), messages up (:class:`Act`): the pane runs
    ``until``, ``break``, follows a target or goes back.
    """

    DEFAULT_CSS = """
    DisasmView {
        height: 1fr;
        max-height: 100%;
    }
    """

    BINDINGS = [
        Binding("u,f4", "act('until')", "Run to line", show=False),
        Binding("f2,space", "act('break')", "Break on line", show=False),
        Binding("enter", "act('follow')", "Follow target", show=False),
        Binding("escape,backspace", "back", "Back", show=False),
    ]

    class Act(Message):
        """``what`` (until, break, follow) on the instruction at ``address``; ``target``:
        where it branches (follow)."""

        def __init__(self, what: str, address: int, target: int | None) -> None:
            super().__init__()
            self.what = what
            self.address = address
            self.target = target

    class Back(Message):
        """Esc: back to where the view was before the last follow."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.listing: Disassembly | None = None
        self.rip: int | None = None
        self.note = ""  # a line above the listing (where it is, why it is empty)
        self.can_go_back = False

    def show(self, listing: Disassembly, rip: int | None, note: str = "") -> None:
        self.listing, self.rip, self.note = listing, rip, note
        self._draw()

    def show_message(self, message: str, style: str = "red") -> None:
        self.listing = None
        self.clear_options()
        self.add_option(Option(Text(message, style=style), disabled=True))

    def on_resize(self) -> None:
        if self.listing is not None:
            self._draw()

    def _draw(self) -> None:
        listing = self.listing
        assert listing is not None
        keep = self.highlighted_address
        self.clear_options()
        options: list[Option] = []
        if self.note:
            options.append(Option(Text(self.note, style="bold"), disabled=True))
        if not listing.instructions:
            options.append(Option(Text(str(listing), style="yellow"), disabled=True))
            self.add_options(options)
            return
        if not listing.synced:
            options.append(
                Option(
                    Text("(nothing before this address decodes into it: shown from it)", "dim"),
                    disabled=True,
                )
            )
        width = self.size.width or 160
        names = listing.symbols or (None,) * len(listing.instructions)
        symbol_width = min(max((len(n) for n in names if n), default=0), 40)
        for insn, name in zip(listing.instructions, names, strict=True):
            line = instruction_line(
                insn,
                name,
                rip=insn.address == self.rip,
                symbol_width=symbol_width if width >= 100 else 0,
                raw=width >= BYTES_FROM,
            )
            options.append(Option(line, id=f"{insn.address:x}"))
        if listing.unreadable is not None:
            options.append(
                Option(
                    Text(f"   {listing.unreadable:#018x} not readable: {listing.error}", "yellow"),
                    disabled=True,
                )
            )
        self.add_options(options)
        target = keep if keep is not None and keep != listing.at else listing.at
        self.select_address(target if self._has(target) else listing.at)

    def _has(self, address: int) -> bool:
        try:
            self.get_option_index(f"{address:x}")
        except Exception:  # noqa: BLE001 - OptionDoesNotExist
            return False
        return True

    def select_address(self, address: int) -> None:
        if self._has(address):
            self.highlighted = self.get_option_index(f"{address:x}")

    @property
    def highlighted_instruction(self) -> Instruction | None:
        if self.listing is None or self.highlighted is None:
            return None
        option = self.get_option_at_index(self.highlighted)
        if option.id is None:
            return None
        address = int(option.id, 16)
        return next((i for i in self.listing.instructions if i.address == address), None)

    @property
    def highlighted_address(self) -> int | None:
        insn = self.highlighted_instruction
        return insn.address if insn is not None else None

    def action_act(self, what: str) -> None:
        insn = self.highlighted_instruction
        if insn is None:
            raise SkipAction()
        self.post_message(self.Act(what, insn.address, insn.target))

    NAV_WHAT = "the disassembly"

    def action_back(self) -> None:
        if self.search:  # Esc ends a search first, as in every list
            self.action_nav_clear()
            return
        if not self.can_go_back:
            raise SkipAction()  # Esc then leaves the view (the app's unfocus)
        self.post_message(self.Back())

    def export_text(self) -> str:
        if self.listing is None:
            return "no disassembly yet\n"
        head = f"{self.note}\n" if self.note else ""
        if not self.listing.instructions:
            return f"{head}{self.listing}\n"
        return head + "\n".join(self.listing.lines(mark=self.rip)) + "\n"
