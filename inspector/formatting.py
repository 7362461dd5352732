"""Text for people: the tables and lines the CLI prints and the TUI shows.

Pure functions from records to strings, so the CLI and the TUI print the
same facts the same way. Layouts follow the tools readers already know:
Linux's ``/sys/kernel/debug/page_tables`` (ptdump) for ranges, the SDM's
register figures for registers. No I/O here, and no import of the decoders
at run time (the decoders take :func:`format_size` from :mod:`.numbers`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .numbers import format_size

if TYPE_CHECKING:
    from kinspect.inspector.x86.control import DecodedRegister
    from kinspect.inspector.x86.paging import Range, Translation

__all__ = [
    "HEX_ROW",
    "JSON_VERSION",
    "format_hex_rows",
    "format_hexdump",
    "format_json",
    "format_range_row",
    "format_ranges",
    "format_register",
    "format_size",
    "format_translation",
    "json_document",
]

#: The version of the command line's JSON shapes (docs/json.md): the envelope's ``kinspect``.
JSON_VERSION = 1

#: Bytes per row of a hex dump.
HEX_ROW = 16


def format_ranges(ranges: Iterable[Range]) -> str:
    """A ptdump-style table of ranges, one per line, with a header.

    Columns: ``start-end``, size, the first physical address, then ``USR``, ``RW``/``ro``, ``PWT``,
    ``PCD``, ``PSE``, ``PAT``, ``GLB``, ``x``/``NX`` and the Linux level
    name of the leaves (``pte``, ``pmd``, ``pud``). USR, RW and x are the
    effective rights over the whole walk; the others are the leaf's bits.
    """
    lines = [f"{'start-end':<37} {'size':>6}  {'physical':<18} flags"]
    lines.extend(format_range_row(r) for r in ranges)
    return "\n".join(lines)


def format_range_row(r: Range) -> str:
    """One row of :func:`format_ranges`: ``start-end  size  physical  flags``."""
    return (
        f"{r.start:#018x}-{r.end:#018x} {format_size(r.size):>6}  {r.phys:#018x} {r.flags_text()}"
    )


def format_translation(t: Translation) -> str:
    """One line per level walked, then the result or the reason it failed.

    ``PML4[511] at 0x1000ff8: PML4E 0x... P RW A -> 0x2000`` for each step;
    the last line is ``=> 0xffffffff81000000 -> 0x1000000 (2M page, ro ker x)``
    or ``fault: PD entry 3 at 0x1234018 is not present``.
    """
    lines = [f"{t.va:#x}:"]
    lines.extend(f"  {step}" for step in t.steps)
    lines.append(f"fault: {t.fault}" if t.fault is not None else f"=> {t}")
    return "\n".join(lines)


def format_register(decoded: DecodedRegister) -> str:
    """A register on one line, then one line per field that is set (name, bits, meaning).

    The first line is ``str(decoded)`` (``CR0=0x80050033 [PE MP ET NE WP AM PG]``);
    unknown bits get a line of their own so they are never missed.
    """
    lines = [str(decoded)]
    for field in decoded.fields:
        if not field.value or field.field.hidden:
            continue
        if field.width == 1:
            bits = f"bit {field.lsb}"
            value = ""
        else:
            bits = f"bits {field.lsb + field.width - 1}:{field.lsb}"
            value = f"={field.value:#x}" if field.field.as_address else f"={field.value}"
        lines.append(f"  {field.name + value:<22} {bits:<12} {field.description}")
    if decoded.unknown:
        lines.append(
            f"  {decoded.unknown:<#22x} {'':<12} bits no field names"
            " (reserved, or newer than this table)"
        )
    return "\n".join(lines)


def format_hex_rows(
    address: int, data: bytes, symbolize: Callable[[int], str | None] | None = None
) -> list[tuple[str, str]]:
    """``(row text, symbols)`` per 16 bytes: ``addr: hex  |ascii|`` and the qwords' symbols.

    ``symbolize`` names the aligned quadwords that point somewhere known
    (``+0x8=kernel_main+0x12``); without it the second item is empty.
    """
    rows = []
    for offset in range(0, len(data), HEX_ROW):
        chunk = data[offset : offset + HEX_ROW]
        hexes = " ".join(chunk[i : i + 8].hex(" ") for i in range(0, len(chunk), 8))
        ascii_text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        names = []
        if symbolize is not None:
            for i in range(0, len(chunk) - 7, 8):
                value = int.from_bytes(chunk[i : i + 8], "little")
                if value > 0xFFFF:
                    name = symbolize(value)
                    if name:
                        names.append(f"+{offset + i:#x}={name}")
        rows.append((f"{address + offset:#018x}: {hexes:<48}  |{ascii_text:<16}|", " ".join(names)))
    return rows


def format_hexdump(
    address: int, data: bytes, symbolize: Callable[[int], str | None] | None = None
) -> str:
    """The hex dump as text, one row per line (:func:`format_hex_rows`, symbols appended)."""
    return "\n".join(
        row + (f"  {names}" if names else "")
        for row, names in format_hex_rows(address, data, symbolize)
    )


def json_document(command: str, target: str | None, body: Mapping[str, Any]) -> dict[str, Any]:
    """The envelope every ``--json`` document has (docs/json.md), then the command's keys."""
    return {"kinspect": JSON_VERSION, "command": command, "target": target, **body}


def format_json(document: Mapping[str, Any]) -> str:
    """A JSON document as the command line prints it: ``indent=1``, one trailing newline."""
    return json.dumps(document, indent=1) + "\n"
