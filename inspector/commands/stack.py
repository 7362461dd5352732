"""Stacks and symbols: ``bt``, ``sym``."""

from __future__ import annotations

import argparse

from ..errors import InspectorError
from ..numbers import resolve_address
from . import Command, CommandResult, Context, Needs, apply_slide, parse_slide

__all__ = ["COMMANDS"]


def _bt_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-depth", type=int, default=64, help="frames walked at most (default 64)"
    )
    parser.add_argument(
        "--task",
        type=int,
        metavar="PID",
        help="a Linux task's stack: a sleeping one from its saved context (thread.sp)",
    )


def run_bt(context: Context) -> CommandResult:
    apply_slide(context)
    session = context.need_session()
    if session.symbols is None and not context.json:
        context.warn("(no --elf: frames without names, frame pointers only)")
    if context.args.task is not None:
        backtrace = session.task_backtrace(context.args.task, max_depth=context.args.max_depth)
    else:
        backtrace = session.backtrace(max_depth=context.args.max_depth)
    return context.result({"backtrace": backtrace.to_dict()}, str(backtrace))


def _sym_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("addresses", nargs="+", metavar="ADDR", help="addresses or symbol names")


def _sym_needs(args: argparse.Namespace) -> Needs:
    """With ``--target`` the session's symbols (and slide); without, the ELF alone."""
    return Needs.TARGET if getattr(args, "target", None) else Needs.NOTHING


def run_sym(context: Context) -> CommandResult:
    args = context.args
    session = context.session
    if session is not None:
        apply_slide(context)
        found = [session.addr2sym(session.resolve(text)) for text in args.addresses]
    else:
        from ..symbols import SymbolTable

        if not args.elf:
            raise InspectorError("sym needs --elf (the kernel's ELF file)")
        symbols = SymbolTable.from_elf(args.elf)
        if getattr(args, "slide", None):
            symbols = symbols.with_slide(parse_slide(symbols, args.slide))
        found = [symbols.addr2sym(resolve_address(t, symbols.lookup)) for t in args.addresses]
    return context.result(
        {"addresses": [f.to_dict() for f in found]}, "\n".join(str(f) for f in found)
    )


COMMANDS = [
    Command("bt", "the stack frames of the stopped CPU", run_bt, _bt_arguments),
    Command(
        "sym",
        "symbol+offset and file:line of addresses",
        run_sym,
        _sym_arguments,
        needs=_sym_needs,
    ),
]
