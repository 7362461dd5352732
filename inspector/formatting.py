"""Text for people: the tables and lines the CLI prints and the TUI shows.

Pure functions from records to strings, so the CLI and the TUI print the
same facts the same way. Layouts follow the tools readers already know:
Linux's ``/sys/kernel/debug/page_tables`` (ptdump) for ranges, the SDM's
register figures for registers. No I/O here. :func:`format_size` is the
paging decoders' own (their records print sizes), re-exported from here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from kinspect.inspector.x86.paging.entry import format_size

if TYPE_CHECKING:
    from kinspect.inspector.x86.control import DecodedRegister
    from kinspect.inspector.x86.paging import Range, Translation

__all__ = [
    "format_ranges",
    "format_register",
    "format_size",
    "format_translation",
]


def format_ranges(ranges: Iterable[Range]) -> str:
    """A ptdump-style table of ranges, one per line, with a header.

    Columns: ``start-end``, size, the first physical address, then ``USR``, ``RW``/``ro``, ``PWT``,
    ``PCD``, ``PSE``, ``PAT``, ``GLB``, ``x``/``NX`` and the Linux level
    name of the leaves (``pte``, ``pmd``, ``pud``). USR, RW and x are the
    effective rights over the whole walk; the others are the leaf's bits.
    """
    lines = [f"{'start-end':<37} {'size':>6}  {'physical':<18} flags"]
    lines.extend(
        f"{r.start:#018x}-{r.end:#018x} {format_size(r.size):>6}  {r.phys:#018x} {r.flags_text()}"
        for r in ranges
    )
    return "\n".join(lines)


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
