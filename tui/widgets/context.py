"""The context page: registers, code, stack and frames on one screen, as pwndbg shows them.

:func:`render_context` lays the four sections out for the room there is:
at 160 columns and 40 lines or more, the registers across the top, the code
and the stack side by side, the frames below; narrower, the sections stack
vertically and each gets lines by priority (code, then a few lines of
registers, the stack, the frames), cut where its share ends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual.widgets import Static

from kinspect.inspector.disasm import Disassembly
from kinspect.inspector.telescope import Telescope
from kinspect.inspector.unwind import Backtrace
from kinspect.inspector.x86.control import GENERAL_REGISTERS

from .disasm import instruction_line
from .telescope import slot_line

__all__ = ["ContextData", "ContextView", "render_context"]

#: From this size on, code and stack go side by side.
WIDE = (160, 40)
#: In the order they are cut from the end when the room is short: RIP and the stack first.
REGISTERS = (
    "rip",
    "rsp",
    "rbp",
    *(name for name in GENERAL_REGISTERS if name not in ("rsp", "rbp")),
    *("rflags", "cs", "ss", "fs_base", "gs_base", "cr2", "cr3"),
)
CELL = 28  # "    rax 0x0000000000000000" and a gap


@dataclass(frozen=True, slots=True)
class ContextData:
    """What one stop shows: each part, or why it could not be read (``*_error``)."""

    registers: Mapping[str, int]
    changed: frozenset[str] = frozenset()
    rip_symbol: str | None = None
    disassembly: Disassembly | None = None
    disassembly_error: str | None = None
    telescope: Telescope | None = None
    telescope_error: str | None = None
    backtrace: Backtrace | None = None
    backtrace_error: str | None = None


def _header(title: str, width: int) -> Text:
    text = Text(no_wrap=True, overflow="crop")
    text.append("─[ ", style="blue")
    text.append(title, style="bold")
    text.append(" ]" + "─" * max(width - len(title) - 5, 0), style="blue")
    return text


def _register_lines(data: ContextData, width: int) -> list[Text]:
    values = data.registers
    names = [n for n in REGISTERS if n in values]
    columns = max(1, width // CELL)
    lines = []
    for i in range(0, len(names), columns):
        line = Text(no_wrap=True, overflow="crop")
        for n, name in enumerate(names[i : i + columns]):
            if n:
                line.append(" ")  # the gap CELL counts: fs_base's name fills its 7
            line.append(f"{name:>7} ", style="bold")
            line.append(
                f"{values[name]:#018x}",
                style="bold black on yellow" if name in data.changed else "",
            )
        lines.append(line)
    if data.rip_symbol:
        lines.append(Text(f"    rip = {data.rip_symbol}", style="cyan"))
    return lines


def _code_lines(data: ContextData, width: int, room: int) -> list[Text]:
    listing = data.disassembly
    if listing is None:
        return [Text(f"cannot disassemble: {data.disassembly_error}", style="red")]
    if not listing.instructions:
        return [Text(str(listing), style="yellow")]
    names = listing.symbols or (None,) * len(listing.instructions)
    symbol_width = min(max((len(n) for n in names if n), default=0), 30)
    lines = [
        instruction_line(
            insn,
            name,
            rip=insn.address == listing.at,
            symbol_width=symbol_width if width >= 90 else 0,
            raw=width >= 120,
        )
        for insn, name in zip(listing.instructions, names, strict=True)
    ]
    if listing.unreadable is not None:
        lines.append(Text(f"   {listing.unreadable:#018x} not readable: {listing.error}", "yellow"))
    at = listing.index or 0
    first = max(0, min(at - room // 3, len(lines) - room))  # RIP a third of the way down
    return lines[first : first + room]


def _stack_lines(data: ContextData, width: int) -> list[Text]:
    found = data.telescope
    if found is None:
        return [Text(f"cannot read the stack: {data.telescope_error}", style="red")]
    lines = [slot_line(slot, wide=width >= 100) for slot in found.slots]
    if found.unreadable is not None:
        lines.append(Text(f"{found.unreadable:#018x}: not readable ({found.error})", "yellow"))
    return lines


def _frame_lines(data: ContextData) -> list[Text]:
    backtrace = data.backtrace
    if backtrace is None:
        return [Text(f"cannot unwind: {data.backtrace_error}", style="red")]
    lines = [Text(str(frame), style="" if frame.mapping else "red") for frame in backtrace.frames]
    lines.append(Text(f"stopped: {backtrace.stop}: {backtrace.reason}", style="dim"))
    return lines


def _shares(wants: Sequence[int], room: int) -> list[int]:
    """Lines for each section, in priority order: each gets what it wants while there is room,
    at least one line for each that wants any."""
    given = [min(1, want) for want in wants]
    room -= sum(given)
    for i, want in enumerate(wants):
        more = max(0, min(want - given[i], room))
        given[i] += more
        room -= more
    return given


def _side_by_side(left: list[Text], right: list[Text], width: int, split: int) -> list[Text]:
    out = []
    for i in range(max(len(left), len(right))):
        line = Text(no_wrap=True, overflow="crop")
        part = left[i].copy() if i < len(left) else Text()
        part.truncate(split - 1, pad=True)
        line.append_text(part)
        line.append("│", style="blue")
        if i < len(right):
            other = right[i].copy()
            other.truncate(width - split)
            line.append_text(other)
        out.append(line)
    return out


def render_context(data: ContextData, width: int, height: int) -> list[Text]:
    """The page as lines, at most ``height`` of at most ``width`` cells."""
    width, height = max(width, 20), max(height, 4)
    registers = _register_lines(data, width)
    stack = _stack_lines(data, width)
    frames = _frame_lines(data)
    lines: list[Text] = []
    if width >= WIDE[0] and height >= WIDE[1]:
        split = width * 11 // 20
        room = height - 3 - len(registers)  # three headers
        code_room, frame_room = _shares([room - 4, len(frames)], room)
        frame_room = min(frame_room, max(4, room // 4))
        code_room = room - frame_room
        code = _code_lines(data, split, code_room)
        lines += [_header("registers", width), *registers]
        head = _header("code", split - 1)
        head.append("┬", style="blue")
        head.append_text(_header("stack", width - split))
        lines.append(head)
        lines += _side_by_side(code, stack[:code_room], width, split)[:code_room]
        lines += [_header("backtrace", width), *frames[:frame_room]]
    else:
        room = height - 4  # four headers
        want_code = len(data.disassembly.instructions) + 1 if data.disassembly else 1
        code_room, reg_room, stack_room, frame_room = _shares(
            [
                min(want_code, max(room // 2, 5)),
                min(len(registers), max(2, room // 5)),  # RIP, RSP, RBP come first
                len(stack),
                len(frames),
            ],
            room,
        )
        sections = [
            ("code", _code_lines(data, width, code_room), code_room),
            ("registers", registers, reg_room),
            ("stack", stack, stack_room),
            ("backtrace", frames, frame_room),
        ]
        order = ("registers", "code", "stack", "backtrace")  # shown in pwndbg's order
        for name in order:
            section, room_for = next((s, r) for n, s, r in sections if n == name)
            lines.append(_header(name, width))
            lines += section[:room_for]
    for line in lines:
        line.truncate(width)
    return lines[:height]


class ContextView(Static, can_focus=True):
    """The page, drawn again when its size changes."""

    DEFAULT_CSS = """
    ContextView {
        height: 1fr;
        width: 1fr;
    }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("no context yet: it is read at a stop while shown", **kwargs)
        self.data: ContextData | None = None
        self.lines: list[Text] = []

    def show(self, data: ContextData) -> None:
        self.data = data
        self._draw()

    def on_resize(self) -> None:
        if self.data is not None:
            self._draw()

    def _draw(self) -> None:
        assert self.data is not None
        width, height = self.size.width or 160, self.size.height or 40
        self.lines = render_context(self.data, width, height)
        self.update(Text("\n", no_wrap=True).join(self.lines))

    def export_text(self) -> str:
        return "\n".join(line.plain.rstrip() for line in self.lines) + "\n"
