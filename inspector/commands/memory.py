"""Memory as gdb's ``x`` shows it: ``mem ADDR [LEN]`` (virtual), ``phys PADDR [LEN]``.

Hex and ASCII rows (the one hex formatter: ``formatting.format_hexdump``),
quadwords that point at symbols named. Through any target: a gdb stub (its
physical mode on QEMU's, the kernel's direct map on others) or the agent. A
range that runs into unreadable memory shows what was readable, then names
the first unreadable address exactly (the first byte of its page).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ..errors import InspectorError
from ..formatting import format_hexdump
from ..numbers import parse_size
from . import Command, CommandResult, Context, apply_slide

__all__ = ["COMMANDS", "DEFAULT_LENGTH", "MAX_LENGTH"]

DEFAULT_LENGTH = 256
MAX_LENGTH = 1 << 20


def _length(text: str) -> int:
    try:
        length = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not 0 < length <= MAX_LENGTH:
        raise argparse.ArgumentTypeError(f"a length is 1 byte to 1 MiB, not {text!r}")
    return length


def _arguments(what: str) -> Callable[[argparse.ArgumentParser], None]:
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("address", metavar="ADDR", help=f"{what}: a number or a symbol")
        parser.add_argument(
            "length",
            metavar="LEN",
            nargs="?",
            type=_length,
            default=DEFAULT_LENGTH,
            help=f"bytes to show (default {DEFAULT_LENGTH}; 4k, 0x100 ...; at most 1 MiB)",
        )

    return add


def run_memory(context: Context) -> CommandResult:
    apply_slide(context)
    session = context.need_session()
    physical = context.name == "phys"
    address = session.resolve(context.args.address)
    if address < 0:
        raise InspectorError(f"{context.args.address!r} is not an address")
    length = context.args.length
    data, fault = session.read_partial(address, length, physical=physical)
    symbolize = None
    if session.symbols is not None and not physical:
        symbols = session.symbols

        def symbolize(value: int) -> str | None:
            found = symbols.symbolize(value)
            if found is None or (found[0].size == 0 and found[1] > 0x100):
                return None
            return f"{found[0].name}+{found[1]:#x}" if found[1] else found[0].name

    body = {
        "address": address,
        "physical": physical,
        "length": length,
        "data": data.hex(),
        "unreadable": fault.address if fault is not None else None,
        "source": session.physical_source if physical else None,
    }
    text = format_hexdump(address, data, symbolize) if data else None
    if fault is None:
        return context.result(body, text)
    error = (
        f"{fault.address:#x} is unreadable ({fault.reason}): {len(data)} of {length} bytes shown"
    )
    return context.result(body, text, status=1, error=error)


COMMANDS = [
    Command(
        "mem",
        "hex dump of virtual memory, like gdb's x (ADDR [LEN])",
        run_memory,
        _arguments("a virtual address"),
    ),
    Command(
        "phys",
        "hex dump of physical memory (QEMU's physical mode, the direct map, or the agent)",
        run_memory,
        _arguments("a physical address"),
    ),
]
