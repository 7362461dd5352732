"""What a debugger's context shows, read from a session: the code around RIP, the stack at RSP.

One call per fact, made by every face: ``kinspect disasm`` and ``kinspect
telescope`` print these records, the TUI's disassembly, memory and context
views show the same ones. The decoding is :mod:`.disasm` and
:mod:`.telescope` (pure); this module only reads the bytes and hands them the
session's symbols and mappings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .disasm import MAX_INSTRUCTION, Disassembly, decode_around
from .errors import InspectorError
from .readable import PAGE, read_readable
from .telescope import Telescope, read_telescope

if TYPE_CHECKING:
    from .session import Session

__all__ = [
    "AFTER",
    "BEFORE",
    "SLOTS",
    "describe_mapping",
    "disassemble",
    "symbolizer",
    "telescope",
]

#: Instructions shown before and from RIP by default.
BEFORE, AFTER = 8, 16
#: Stack slots shown by default.
SLOTS = 16
#: How far back a function's start is trusted as a place to start decoding.
_ANCHOR_REACH = 0x1000

Symbolize = Callable[[int], str | None]


def symbolizer(session: Session) -> Symbolize:
    """``name+0x12`` for an address inside a symbol of the session (the ELF's, or Linux's
    kallsyms), None elsewhere (an unsized label further than 0x100 away names nothing)."""
    symbols = session.symbols
    if symbols is None:
        return lambda address: None
    return symbols.name_of


def describe_mapping(session: Session) -> tuple[Callable[[int], str | None], Callable[[int], bool]]:
    """``address -> "direct map 0x...-0x... RW NX"`` (Linux's region name, then the mapped
    range and its rights; None where nothing is mapped), and ``address -> executable``."""
    lookup = session.mapping()
    try:
        regions = session.regions()
    except InspectorError:
        regions = None

    def describe(address: int) -> str | None:
        found = lookup(address) if lookup is not None else None
        if found is None:
            return None
        name = regions.name_of(address) if regions is not None else None
        return f"{name} {found}" if name else found

    def executable(address: int) -> bool:
        found = lookup(address) if lookup is not None else None
        return found is not None and found.endswith(" x")

    return describe, executable


def disassemble(
    session: Session,
    address: int | None = None,
    *,
    before: int = BEFORE,
    after: int = AFTER,
) -> Disassembly:
    """``before`` instructions before ``address`` (RIP by default) and ``after`` from it.

    Decoding backwards starts at the function holding ``address`` when the
    symbols name one. A page that cannot be read ends the listing there (the
    record says where); code that cannot be read at all is a record with no
    instructions, not an error.
    """
    if address is None:
        address = session.registers()["rip"]
    symbolize = symbolizer(session)
    anchor = None
    symbols = session.symbols
    if symbols is not None and before > 0:
        found = symbols.symbolize(address)
        if found is not None and found[0].kind == "func" and found[1] <= _ANCHOR_REACH:
            anchor = address - found[1]
    read = session.read_virtual
    tail = read_readable(read, address, after * MAX_INSTRUCTION)
    if not tail.data:
        return Disassembly(address, (), (), address, tail.error or "not mapped", True)
    head_bytes = b""
    low = address
    if before > 0:
        low = min(anchor if anchor is not None else address, address - before * MAX_INSTRUCTION)
        low = max(low, address - _ANCHOR_REACH)
        head = read_readable(read, low, address - low)
        if not head.complete:  # the page before is not readable: start at this page
            low = max(low, address & ~(PAGE - 1))
            head = read_readable(read, low, address - low)
            if not head.complete:
                low = address
        head_bytes = head.data if low < address else b""
    data = head_bytes + tail.data
    instructions, synced = decode_around(
        data, low, address, before=before, after=after, anchor=anchor, symbolize=symbolize
    )
    unreadable = tail.unreadable
    if (
        unreadable is not None
        and instructions
        and instructions[-1].end + MAX_INSTRUCTION < (unreadable)
    ):
        unreadable = None  # the listing ended well before the unreadable page
    return Disassembly(
        address,
        instructions,
        tuple(symbolize(insn.address) for insn in instructions),
        unreadable,
        tail.error if unreadable is not None else None,
        synced,
    )


def telescope(session: Session, address: int | None = None, count: int = SLOTS) -> Telescope:
    """``count`` stack slots from ``address`` (RSP by default), each dereferenced one level."""
    registers = session.registers()
    if address is None:
        address = registers["rsp"]
    describe, executable = describe_mapping(session)
    return read_telescope(
        session.read_virtual,
        address,
        count,
        symbolize=symbolizer(session),
        mapping=describe,
        executable=executable,
        registers={name: registers[name] for name in ("rsp", "rbp") if name in registers},
    )
