"""Why did it fault: ``fault`` and ``catch``.

``fault`` explains the exception the CPU is in (:mod:`inspector.fault`): at an
IDT handler's entry (a catchpoint), through an interrupt frame of the
backtrace (``--frame``), or from QEMU's own log of delivered exceptions
(``--qemu-log``, written with ``-d int,cpu_reset -D FILE``). When that log
ends in a triple fault, it prints the chain and why the last delivery failed.

``catch VECTOR|all`` sets a breakpoint on the handler the IDT names for the
vector, lets the kernel run, and explains the exception when the CPU stops
there, before the handler runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import InspectorError
from ..numbers import parse_number
from . import Command, CommandResult, Context, apply_slide

__all__ = ["COMMANDS"]


def _read_log(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text(errors="replace")
    except OSError as exc:
        raise InspectorError(f"cannot read QEMU's log {path}: {exc.strerror}") from None


def _vector(text: str) -> int:
    try:
        vector = parse_number(text)
    except ValueError:
        raise InspectorError(f"{text!r} is not a vector (0..255, or 'all')") from None
    if not 0 <= vector <= 255:
        raise InspectorError(f"a vector is 0..255, not {vector}")
    return vector


def _fault_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--frame", type=int, help="the interrupt frame crossed by frame N of `bt` (its number)"
    )
    parser.add_argument(
        "--vector", help="the vector, when the interrupt frame does not say it (e.g. 14)"
    )
    parser.add_argument(
        "--qemu-log",
        metavar="FILE",
        help="QEMU's log of delivered exceptions (-d int,cpu_reset -D FILE): the last "
        "exception, or the chain of a triple fault",
    )


def run_fault(context: Context) -> CommandResult:
    apply_slide(context)
    session = context.need_session()
    args = context.args
    log = _read_log(args.qemu_log)
    if log is not None and "Triple fault" in log:
        triple = session.triple_fault(log)
        return context.result({"triple_fault": triple.to_dict(), "fault": None}, str(triple))
    vector = None if args.vector is None else _vector(args.vector)
    report = session.fault(frame=args.frame, vector=vector, qemu_log=log)
    return context.result({"triple_fault": None, "fault": report.to_dict()}, str(report))


def _catch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("vector", metavar="VECTOR", help="a vector (14, 0xe) or 'all' (0-31)")
    parser.add_argument(
        "--wait",
        type=float,
        default=60.0,
        help="seconds to wait for the exception (default 60)",
    )


def run_catch(context: Context) -> CommandResult:
    apply_slide(context)
    session = context.need_session()
    args = context.args
    vector = None if args.vector.lower() == "all" else _vector(args.vector)
    catchpoints = session.catch(vector)
    if not context.json:
        for catchpoint in catchpoints:
            context.emit(str(catchpoint))
    session.resume()
    record = session.wait_for_stop(args.wait)
    handlers = {c.handler for c in catchpoints}
    rip = session.registers().get("rip")
    body: dict[str, Any] = {
        "catchpoints": [c.to_dict() for c in catchpoints],
        "fault": None,
        "stop": None,
    }
    if record is None or rip not in handlers:
        reason = str((record or {}).get("reason", "")) or "unknown"
        body["stop"] = {"reason": reason, "rip": rip}
        where = f" at {rip:#x}" if rip is not None else ""
        return context.result(
            body,
            f"stopped{where} ({reason}), not at a catchpoint",
            status=1,
            error="the kernel stopped elsewhere before the exception was delivered",
        )
    report = session.fault()
    body["fault"] = report.to_dict()
    return context.result(body, str(report))


COMMANDS = [
    Command(
        "fault",
        "why the CPU took the exception it is in (or the triple fault)",
        run_fault,
        _fault_arguments,
    ),
    Command(
        "catch",
        "stop when the CPU delivers an exception, before its handler runs, and explain it",
        run_catch,
        _catch_arguments,
    ),
]
