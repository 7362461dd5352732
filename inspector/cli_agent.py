"""The ``--agent`` side of the command line: every reading command through the
in-kernel agent, and ``kinspect agent hello|regs|read|walk`` for what only the
agent offers (its handshake, IA32_PAT and the descriptor registers, raw reads,
its own page-table walk). Kept apart from cli.py, which calls in here.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from .errors import InspectorError
from .formatting import format_ranges
from .session import Session
from .targets.base import Capability
from .x86.pat import decode_pat

__all__ = ["add_agent_parser", "run_agent"]

AGENT_HELP = (
    "the in-kernel agent's serial line: a device (/dev/ttyUSB0), tcp:HOST:PORT, unix:PATH, "
    "pty:PATH or a pyserial URL"
)


def add_agent_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    agent = sub.add_parser(
        "agent", parents=[common], help="talk to the in-kernel agent (needs --agent)"
    )
    actions = agent.add_subparsers(dest="agent_command", metavar="ACTION")
    actions.required = True
    actions.add_parser("hello", parents=[common], help="handshake: versions, methods, limits")
    actions.add_parser(
        "regs", parents=[common], help="every register the agent reads (PAT, GDTR, IDTR, TR)"
    )
    read = actions.add_parser("read", parents=[common], help="hex dump of memory")
    read.add_argument("address", help="address or symbol")
    read.add_argument("length", type=lambda s: int(s, 0), help="bytes to read")
    read.add_argument("--physical", action="store_true", help="a physical address")
    actions.add_parser(
        "walk", parents=[common], help="the page tables as the agent walks and coalesces them"
    )


def _console_to_stderr(data: bytes) -> None:
    """The kernel's console text on the agent's line, passed on as it comes."""
    sys.stderr.write(data.decode(errors="replace"))
    sys.stderr.flush()


def run_agent(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    out: TextIO,
    commands: Mapping[str, Callable[[Session, argparse.Namespace, TextIO], int]],
) -> int:
    if not getattr(args, "agent", None):
        parser.error(f"agent needs --agent ({AGENT_HELP})")
    if args.command not in commands and args.command != "agent":
        parser.error(f"{args.command} does not work through the agent")
    from . import api

    if getattr(args, "target", None):
        if args.command == "agent":
            parser.error("agent talks to the agent alone: drop --target")
        # Both: the stub reads, the agent adds what the stub cannot see.
        session = api.attach_with_agent(
            args.target, args.agent, elf=args.elf, phys_base=args.phys_base, timeout=args.timeout
        )
    else:
        session = api.attach_agent(
            args.agent, elf=args.elf, timeout=args.timeout, on_console=_console_to_stderr
        )
    try:
        if args.command == "agent":
            return cmd_agent(session, args, out)
        if args.command == "pt" and not args.leaves and session.target.has(Capability.AGENT):
            done = cmd_pt_by_agent_walk(session, args, out)
            if done is not None:
                return done
        return commands[args.command](session, args, out)
    finally:
        session.close(resume=not args.no_resume)


def cmd_pt_by_agent_walk(session: Session, args: argparse.Namespace, out: TextIO) -> int | None:
    """``pt`` from the agent's own walk: a few hundred bytes instead of every table.

    The same document as ``cli.cmd_pt`` prints from the tables it walks here
    (the integration tests compare the two). When the agent skipped entries
    (reserved bits, unreadable tables) it says only how many, so this returns
    None and ``pt`` walks the raw tables to show each problem exactly.
    """
    from .cli import _dump

    target = session.target.agent()
    control = session.control_registers()
    if not control.paging.is_long_mode:
        return None
    session.stop()
    ranges = target.walk_ranges()
    stats = target.walk_stats
    if stats["problems"]:
        return None
    if args.json:
        body: dict[str, Any] = {
            "cr3": control["CR3"].value,
            "paging": control.paging.to_dict(),
            "leaf_count": stats["leaves"],
            "truncated": False,
            "problems": [],
            "ranges": [r.to_dict() for r in ranges],
        }
        _dump(out, "pt", session, body)
        return 0
    print(f"CR3={control['CR3'].value:#x}  {control.paging}", file=out)
    print(format_ranges(ranges), file=out)
    print(f"{stats['leaves']} leaves in {len(ranges)} ranges", file=out)
    return 0


def cmd_agent(session: Session, args: argparse.Namespace, out: TextIO) -> int:
    from .cli import _dump

    target = session.target.agent()  # MissingCapability unless attached to the agent alone
    action = args.agent_command
    if action == "hello":
        info = target.info
        if args.json:
            _dump(out, "agent hello", session, {"hello": info})
            return 0
        for key, value in info.items():
            shown = ", ".join(value) if isinstance(value, list) else value
            print(f"{key:>13}: {shown}", file=out)
        return 0
    if action == "regs":
        session.stop()
        regs = target.agent_registers()
        pat = decode_pat(regs["pat"])
        if args.json:
            _dump(out, "agent regs", session, {"registers": regs, "pat": pat.to_dict()})
            return 0
        names = list(regs)
        for i in range(0, len(names), 3):
            print("  ".join(f"{n:>10}={regs[n]:#018x}" for n in names[i : i + 3]), file=out)
        print(pat, file=out)
        return 0
    if action == "read":
        address = session.resolve(args.address)
        if args.length < 0 or args.length > 1 << 20:
            raise InspectorError("length must be between 0 and 1 MiB")
        if args.physical:
            data = session.read_physical(address, args.length)
        else:
            data = session.read_virtual(address, args.length)
        if args.json:
            body = {"address": address, "physical": args.physical, "data": data.hex()}
            _dump(out, "agent read", session, body)
            return 0
        for offset in range(0, len(data), 16):
            row = data[offset : offset + 16]
            text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in row)
            print(f"{address + offset:016x}  {row.hex(' '):<47}  {text}", file=out)
        return 0
    if action == "walk":
        session.stop()
        client = target.client
        sent, received = client.stats.bytes_sent, client.stats.bytes_received
        started = time.monotonic()
        ranges = target.walk_ranges()
        elapsed = time.monotonic() - started
        stats = dict(target.walk_stats)
        stats["bytes_sent"] = client.stats.bytes_sent - sent
        stats["bytes_received"] = client.stats.bytes_received - received
        stats["seconds"] = round(elapsed, 4)
        pat = decode_pat(target.agent_registers()["pat"])
        types = [pat.memory_type_of(r.attributes) for r in ranges]
        if args.json:
            body = {
                "ranges": [
                    {**r.to_dict(), "memory_type": t} for r, t in zip(ranges, types, strict=True)
                ],
                "pat": pat.to_dict(),
                "stats": stats,
            }
            _dump(out, "agent walk", session, body)
            return 0
        # The ptdump table, with each range's memory type (IA32_PAT, MTRRs aside).
        table = format_ranges(ranges).splitlines()
        if len(table) == len(ranges) + 1:
            table = [table[0] + "  type"] + [
                f"{line}  {t}" for line, t in zip(table[1:], types, strict=True)
            ]
        print("\n".join(table), file=out)
        print(
            f"{stats['leaves']} leaves in {len(ranges)} ranges; {stats['requests']} request(s), "
            f"{stats['bytes_received']} bytes received in {elapsed * 1000:.1f} ms",
            file=out,
        )
        if stats["problems"]:
            print(
                f"{stats['problems']} entries skipped (reserved bits set or table unreadable)",
                file=out,
            )
        return 0
    raise InspectorError(f"unknown agent action {action!r}")  # pragma: no cover
