"""Stepping as debuggers do: ``next``, ``nexti``, ``finish``, ``until ADDR``, ``watch ADDR``.

Each lets the kernel run and reports where it stopped: ``next`` over one
source line (gdb's own ``next``, from the ELF's line table), ``nexti`` over
one instruction (a call runs to its return), ``finish`` to the caller's
return address, ``until`` to an address (a temporary breakpoint), ``watch``
until the CPU touches the watched bytes (a hardware watchpoint: x86 debug
registers trap after the access, so RIP is the instruction after it).
A kernel that does not get there in ``--wait`` seconds is stopped where it is.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from ..errors import InspectorError
from ..numbers import parse_size
from ..session import Session
from ..targets.base import StopRecord
from . import Command, CommandResult, Context, apply_slide

__all__ = ["COMMANDS", "describe_arrival", "parse_watch"]


def describe_arrival(session: Session, record: StopRecord) -> tuple[dict[str, Any], str]:
    """The stop as the JSON ``stop`` object and a line: why, and RIP with its symbol and line."""
    rip = session.registers().get("rip")
    reason = str(record.get("reason") or "stopped")
    body: dict[str, Any] = {"reason": reason, "cpu": session.cpu, "rip": rip, "where": None}
    text = reason.replace("-", " ")
    if reason == "breakpoint-hit" and record.get("disp") == "del":
        text = "reached"  # until's temporary breakpoint
    elif record.get("bkptno") is not None:
        text += f" {record['bkptno']}"
    value = record.get("value")
    if isinstance(value, Mapping) and ("old" in value or "new" in value):
        body["value"] = {k: str(v) for k, v in value.items()}
        text += f" (old {value.get('old', '?')}, new {value.get('new', '?')})"
    if rip is not None:
        where = f"{rip:#x}"
        if session.symbols is not None:
            found = session.addr2sym(rip)
            body["where"] = found.to_dict()
            where = str(found)
        text += f" at {where}"
    return body, text


def _wait(parser: argparse.ArgumentParser, default: float) -> None:
    parser.add_argument(
        "--wait",
        type=float,
        default=default,
        metavar="SECONDS",
        help=f"how long the kernel may run before it is stopped where it is (default {default:g})",
    )


def _arrived(context: Context, session: Session, record: StopRecord, **extra: Any) -> CommandResult:
    body, text = describe_arrival(session, record)
    return context.result({**extra, "stop": body}, text)


def run_next(context: Context) -> CommandResult:
    apply_slide(context)
    session = context.need_session()
    line = context.name == "next"
    return _arrived(context, session, session.next(line=line, timeout=context.args.wait))


def run_finish(context: Context) -> CommandResult:
    apply_slide(context)
    session = context.need_session()
    return _arrived(context, session, session.finish(timeout=context.args.wait))


def _until_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("location", metavar="ADDR", help="an address or a symbol")
    _wait(parser, 60.0)


def run_until(context: Context) -> CommandResult:
    apply_slide(context)
    session = context.need_session()
    address = session.resolve(context.args.location)
    record = session.until(f"{address:#x}", timeout=context.args.wait)
    return _arrived(context, session, record, address=address)


def parse_watch(words: list[str]) -> tuple[str, int | None]:
    """``[r|w|rw] [LEN]`` in either order: the access (default ``w``) and the length."""
    access, length = "w", None
    for word in words:
        if word.lower() in ("r", "w", "rw", "wr"):
            access = "rw" if word.lower() == "wr" else word.lower()
            continue
        try:
            length = parse_size(word)
        except ValueError:
            raise InspectorError(
                f"watch takes ADDR [r|w|rw] [LEN]: {word!r} is neither an access nor a length"
            ) from None
    return access, length


def _watch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("location", metavar="ADDR", help="an address or a symbol")
    parser.add_argument(
        "spec",
        nargs="*",
        metavar="r|w|rw|LEN",
        help="stop on writes (w, the default), reads (r) or both (rw), of LEN bytes "
        "(1, 2, 4 or 8, aligned; default 8)",
    )
    _wait(parser, 60.0)


def run_watch(context: Context) -> CommandResult:
    apply_slide(context)
    session = context.need_session()
    access, length = parse_watch(context.args.spec)
    number, address = session.watch(context.args.location, access, length or 8)
    if not context.json:
        context.emit(f"watchpoint {number}: {access} {length or 8} bytes at {address:#x}")
    session.resume()
    record = session.arrive(f"watch {context.args.location}", context.args.wait)
    hits = next((b.hits for b in session.breakpoints() if b.number == number), 0)
    return _arrived(
        context,
        session,
        record,
        watchpoint={
            "number": number,
            "address": address,
            "length": length or 8,
            "access": access,
            "hits": hits,
        },
    )


COMMANDS = [
    Command(
        "next",
        "step over one source line, calls run to their return (gdb's next; needs --elf)",
        run_next,
        lambda parser: _wait(parser, 30.0),
    ),
    Command(
        "nexti",
        "step over one instruction: a call runs to its return",
        run_next,
        lambda parser: _wait(parser, 30.0),
    ),
    Command(
        "finish",
        "run until the current function returns to its caller",
        run_finish,
        lambda parser: _wait(parser, 30.0),
    ),
    Command(
        "until", "run until an address is reached (run to cursor)", run_until, _until_arguments
    ),
    Command(
        "watch",
        "a hardware watchpoint: run until the CPU writes (or reads) the bytes at ADDR",
        run_watch,
        _watch_arguments,
    ),
]
