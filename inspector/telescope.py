"""The stack telescope: each 8-byte slot at RSP dereferenced, as pwndbg's ``telescope``.

Each slot's value is named when it is a symbol (a return address, a
global), placed in the mapping it points into (Linux's region name and the
mapped range with its rights: ``direct map 0xffff888000000000-... RW NX``),
and followed one level: what it points to, a pointer (with its symbol) or a
string.

:func:`decode_telescope` is pure (the slots' bytes and the bytes each
pointer points to in, records out); :func:`read_telescope` is the walk that
reads them through a ``read(address, size)`` callable, the way the page
walkers take ``read_physical``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .readable import Readable, read_readable

__all__ = [
    "SLOT",
    "Slot",
    "Telescope",
    "decode_telescope",
    "read_telescope",
]

#: Bytes per slot.
SLOT = 8
#: Bytes read where a slot points (a qword, or the start of a string).
PEEK = 32
#: Printable characters that make a string.
MIN_STRING = 4

Symbolize = Callable[[int], str | None]
Describe = Callable[[int], str | None]


@dataclass(frozen=True, slots=True)
class Slot:
    """One slot: where it is, its value and what the value is.

    ``mapping``: the mapping the value points into (None: not a mapped
    address); ``points_to``: the qword there, with its symbol; ``string``:
    the text there when it reads as one; ``registers``: the registers that
    hold this slot's address (``rsp``, ``rbp``).
    """

    address: int
    offset: int
    value: int
    symbol: str | None = None
    mapping: str | None = None
    points_to: int | None = None
    points_to_symbol: str | None = None
    string: str | None = None
    registers: tuple[str, ...] = ()

    def describe(self) -> str:
        """What the value is, after the value itself: symbol, where it points, its mapping."""
        parts = []
        if self.symbol:
            parts.append(f"<{self.symbol}>")
        if self.string is not None:
            parts.append(f"-> {self.string!r}")
        elif self.points_to is not None:
            parts.append(
                f"-> {self.points_to:#x}"
                + (f" <{self.points_to_symbol}>" if self.points_to_symbol else "")
            )
        if self.mapping:
            parts.append(f"[{self.mapping}]")
        return "  ".join(parts)

    def __str__(self) -> str:
        names = ",".join(self.registers)
        return f"{self.offset:+#06x}  {self.address:#018x} {names:<7} {self.value:#018x}  " + (
            self.describe()
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "offset": self.offset,
            "value": self.value,
            "symbol": self.symbol,
            "mapping": self.mapping,
            "points_to": self.points_to,
            "points_to_symbol": self.points_to_symbol,
            "string": self.string,
            "registers": list(self.registers),
        }


@dataclass(frozen=True, slots=True)
class Telescope:
    """The slots from ``address``; ``unreadable``: where reading stopped (a page start), and why."""

    address: int
    slots: tuple[Slot, ...]
    unreadable: int | None = None
    error: str | None = None

    def lines(self) -> list[str]:
        out = [str(slot) for slot in self.slots]
        if self.unreadable is not None:
            out.append(f"{self.unreadable:#018x}: not readable ({self.error or 'not mapped'})")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "slots": [slot.to_dict() for slot in self.slots],
            "unreadable": self.unreadable,
            "error": self.error,
        }


def _string(data: bytes) -> str | None:
    """The printable text at the start of ``data`` (at least MIN_STRING characters), or None."""
    end = 0
    while end < len(data) and 32 <= data[end] < 127:
        end += 1
    if end < MIN_STRING or (end < len(data) and data[end] not in (0, 10)):
        return None  # too short, or followed by binary: not a string
    return data[:end].decode("ascii")


def decode_telescope(
    data: bytes,
    address: int,
    *,
    symbolize: Symbolize | None = None,
    mapping: Describe | None = None,
    pointed: Mapping[int, bytes] | None = None,
    registers: Mapping[str, int] | None = None,
    unreadable: int | None = None,
    error: str | None = None,
) -> Telescope:
    """The slots of ``data`` read at ``address`` (whole qwords only).

    ``pointed``: the bytes read where a value points (a value absent from it
    is not followed); ``registers``: names to put beside the slots they
    point at (``rsp``, ``rbp``).
    """
    pointed = pointed or {}
    at_slot: dict[int, list[str]] = {}
    for name, value in (registers or {}).items():
        at_slot.setdefault(value, []).append(name)
    slots = []
    for offset in range(0, len(data) - SLOT + 1, SLOT):
        value = int.from_bytes(data[offset : offset + SLOT], "little")
        where = address + offset
        points_to = points_to_symbol = string = None
        peek = pointed.get(value)
        if peek:
            string = _string(peek)
            if string is None and len(peek) >= SLOT:
                points_to = int.from_bytes(peek[:SLOT], "little")
                points_to_symbol = symbolize(points_to) if symbolize else None
        slots.append(
            Slot(
                address=where,
                offset=offset,
                value=value,
                symbol=symbolize(value) if symbolize and value > 0xFFFF else None,
                mapping=mapping(value) if mapping else None,
                points_to=points_to,
                points_to_symbol=points_to_symbol,
                string=string,
                registers=tuple(at_slot.get(where, ())),
            )
        )
    return Telescope(address, tuple(slots), unreadable, error)


def read_telescope(
    read: Callable[[int, int], bytes],
    address: int,
    count: int,
    *,
    symbolize: Symbolize | None = None,
    mapping: Describe | None = None,
    executable: Callable[[int], bool] | None = None,
    registers: Mapping[str, int] | None = None,
) -> Telescope:
    """``count`` slots from ``address``, each followed one level where it points into a mapping.

    Reading stops at the first page that cannot be read (the slots before it
    are shown). A value is followed only when ``mapping`` says it is mapped,
    and not when it is code with a symbol (a return address: its name says
    more than the bytes there); ``executable(value)`` says which is code.
    """
    window: Readable = read_readable(read, address, count * SLOT)
    pointed: dict[int, bytes] = {}
    data = window.data
    for offset in range(0, len(data) - SLOT + 1, SLOT):
        value = int.from_bytes(data[offset : offset + SLOT], "little")
        if value in pointed or mapping is None or mapping(value) is None:
            continue
        if executable is not None and executable(value) and symbolize and symbolize(value):
            continue
        pointed[value] = read_readable(read, value, PEEK).data
    return decode_telescope(
        data,
        address,
        symbolize=symbolize,
        mapping=mapping,
        pointed=pointed,
        registers=registers,
        unreadable=window.unreadable,
        error=window.error,
    )
