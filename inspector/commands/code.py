"""Code and stack at a glance: ``disasm``, ``telescope``."""

from __future__ import annotations

import argparse

from ..errors import InspectorError
from ..session import Session
from . import Command, CommandResult, Context, UsageError, apply_slide

__all__ = ["COMMANDS"]

_SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss")


def _resolve(session: Session, text: str | None, default: str) -> int:
    """An address, a symbol, or a register of the stopped CPU (``rip``, ``$rsp``)."""
    if text is None:
        return session.registers()[default]
    name = text.strip().lstrip("$").lower()
    registers = session.registers()
    if name in registers and name not in _SEGMENTS:
        return registers[name]
    return session.resolve(text)


def _count(value: str) -> int:
    try:
        count = int(value, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 1 <= count <= 4096:
        raise argparse.ArgumentTypeError(f"{count} is out of range (1..4096)")
    return count


def _disasm_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "address",
        nargs="?",
        metavar="ADDR|SYM",
        help="where to disassemble: an address, a symbol or a register (default: RIP)",
    )
    parser.add_argument(
        "-n",
        "--count",
        type=_count,
        default=None,
        metavar="COUNT",
        help="instructions from ADDR (default 16; around RIP: 8 before it and 16 from it)",
    )
    parser.add_argument(
        "-b",
        "--before",
        type=int,
        default=None,
        metavar="N",
        help="instructions before ADDR too (default 8 at RIP, 0 elsewhere)",
    )


def run_disasm(context: Context) -> CommandResult:
    from ..context import AFTER, BEFORE, disassemble

    apply_slide(context)
    session = context.need_session()
    args = context.args
    at_rip = args.address is None
    before = args.before if args.before is not None else (BEFORE if at_rip else 0)
    if before < 0:
        raise UsageError("--before cannot be negative")
    address = _resolve(session, args.address, "rip")
    listing = disassemble(session, address, before=before, after=args.count or AFTER)
    if session.symbols is None and not context.json:
        context.warn("(no --elf: targets without names)")
    if not listing.instructions:
        error = f"{address:#x}: cannot read the code here: {listing.error or 'not mapped'}"
        return context.result({"disassembly": listing.to_dict()}, None, status=1, error=error)
    return context.result({"disassembly": listing.to_dict()}, str(listing))


def _telescope_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "address",
        nargs="?",
        metavar="ADDR|SYM",
        help="the first slot: an address, a symbol or a register (default: RSP)",
    )
    parser.add_argument(
        "-n",
        "--count",
        type=_count,
        default=16,
        metavar="COUNT",
        help="8-byte slots (default 16)",
    )


def run_telescope(context: Context) -> CommandResult:
    from ..context import telescope

    apply_slide(context)
    session = context.need_session()
    address = _resolve(session, context.args.address, "rsp")
    if address % 8:
        raise InspectorError(f"{address:#x} is not 8-byte aligned: slots are qwords")
    found = telescope(session, address, context.args.count)
    if not found.slots:
        error = f"{address:#x}: not readable ({found.error or 'not mapped'})"
        return context.result({"telescope": found.to_dict()}, None, status=1, error=error)
    return context.result({"telescope": found.to_dict()}, str(found))


COMMANDS = [
    Command(
        "disasm",
        "instructions around RIP (or at ADDR), targets resolved and named",
        run_disasm,
        _disasm_arguments,
    ),
    Command(
        "telescope",
        "stack slots at RSP (or ADDR), each value named and followed one level",
        run_telescope,
        _telescope_arguments,
    ),
]
