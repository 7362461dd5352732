"""Numbers from people and numbers for people: the one parser and the one size printer.

Every face (the CLI's arguments, the TUI's prompts and filters, the Python
API) reads an address or a size through :func:`parse_number` and
:func:`parse_size`, and prints a size through :func:`format_size`, so
``0x1000_0000`` or ``2m`` means the same thing everywhere. Symbols are the
caller's business: :func:`resolve_address` takes the lookup to use.

This module imports nothing of ours but the error tree, so the pure
decoders in ``x86/`` may use it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .errors import InspectorError

__all__ = [
    "SIZE_SUFFIXES",
    "format_size",
    "maybe_number",
    "parse_number",
    "parse_size",
    "resolve_address",
]

#: Binary multiples a size may end with (``12k``, ``2M``, ``1GiB``, ``512g``).
SIZE_SUFFIXES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

_UNITS = "BKMGTPE"

_SIZE = re.compile(
    r"(?P<number>[-+]?(?:0x[0-9a-f]+|0o[0-7]+|0b[01]+|[0-9]+))"
    r"(?P<unit>[kmgt]?)(?:i?b)?"
)


def parse_number(text: str) -> int:
    """An integer as people type it: ``0x1000``, ``0xffff_8880_0000_0000``, ``4096``, ``0o17``.

    Underscores may group digits anywhere after the first one, surrounding
    blanks are ignored. Raises :class:`ValueError` for anything else (a
    symbol name, even ``_1``, or a size such as ``12k``).
    """
    t = text.strip()
    if t[:1].isdigit() or (t[:1] in "+-" and t[1:2].isdigit()):
        t = t.replace("_", "")
    if t.lower().startswith(("0x", "-0x", "+0x")):
        return int(t, 16)
    return int(t, 0)


def maybe_number(text: str) -> int | None:
    """:func:`parse_number`, or None when ``text`` is not a number (a filter's free text)."""
    try:
        return parse_number(text)
    except ValueError:
        return None


def parse_size(text: str) -> int:
    """A byte count or an address: a number, optionally with a binary unit.

    ``0x3000``, ``12k``, ``2m``, ``1g``, ``512G``, ``12KiB``, ``4096b``.
    A hexadecimal ``b`` is a digit (``0x1b`` is 27), never a unit.
    Raises :class:`ValueError`.
    """
    t = text.strip().lower().replace("_", "")
    match = _SIZE.fullmatch(t)
    if match is None:
        raise ValueError(f"invalid size: {text!r} (give 0x3000, 12k, 2m or 1g)")
    number = parse_number(match["number"])
    unit = match["unit"]
    return number * SIZE_SUFFIXES[unit] if unit else number


def resolve_address(
    text: str, lookup: Callable[[str], int | None] | None, *, hint: str = ""
) -> int:
    """A number, else a symbol found by ``lookup``; :class:`InspectorError` when neither.

    ``hint`` ends the error message (``" (pass --elf to use symbol names)"``).
    """
    number = maybe_number(text)
    if number is not None:
        return number
    address = lookup(text) if lookup is not None else None
    if address is None:
        raise InspectorError(f"{text!r} is neither a number nor a known symbol{hint}")
    return address


def format_size(n: int) -> str:
    """A byte count the way ptdump prints it: the largest exact unit (``20K``, ``2M``, ``1G``).

    Like Linux, a size is only scaled while it stays a whole number, so
    1.5 MiB prints as ``1536K`` and nothing is rounded away.
    """
    if n < 0:
        raise ValueError(f"a size cannot be negative: {n}")
    unit = 0
    while n and not n & 1023 and unit < len(_UNITS) - 1:
        n >>= 10
        unit += 1
    return f"{n}{_UNITS[unit]}"
