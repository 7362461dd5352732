"""``kinspect agent hello|regs|read|walk``: what only the in-kernel agent offers.

Its handshake, IA32_PAT and the descriptor registers, raw reads, its own
page-table walk. (Every reading command also works through ``--agent``.)
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from ..errors import InspectorError
from ..formatting import format_hexdump, format_ranges
from ..numbers import parse_number
from ..targets.base import Capability
from . import AGENT_HELP, Command, CommandResult, Context, Needs, UsageError, add_actions

if TYPE_CHECKING:
    from ..session import Session
    from ..targets.agent import AgentTarget

__all__ = ["COMMANDS"]


def _arguments(parser: argparse.ArgumentParser) -> None:
    actions = add_actions(parser, "agent_command")
    actions.add_parser("hello", help="handshake: versions, methods, limits")
    actions.add_parser("regs", help="every register the agent reads (PAT, GDTR, IDTR, TR)")
    read = actions.add_parser("read", help="hex dump of memory")
    read.add_argument("address", help="address or symbol")
    read.add_argument("length", type=parse_number, help="bytes to read")
    read.add_argument("--physical", action="store_true", help="a physical address")
    actions.add_parser("walk", help="the page tables as the agent walks and coalesces them")


def _needs(args: argparse.Namespace) -> Needs:
    if getattr(args, "target", None) and getattr(args, "agent", None):
        raise UsageError("agent talks to the agent alone: drop --target")
    return Needs.AGENT_ALONE


def _agent(session: Session) -> AgentTarget:
    if not session.target.has(Capability.AGENT):
        raise InspectorError("the agent commands need the in-kernel agent alone (--agent)")
    return session.target.agent()


def run_agent(context: Context) -> CommandResult:
    from ..x86.pat import decode_pat

    session = context.need_session()
    target = _agent(session)
    action = context.args.agent_command
    name = f"agent {action}"
    if action == "hello":
        info = target.info
        lines = []
        for key, value in info.items():
            shown = ", ".join(value) if isinstance(value, list) else value
            lines.append(f"{key:>13}: {shown}")
        return context.result({"hello": info}, "\n".join(lines), command=name)
    if action == "regs":
        session.stop()
        regs = target.agent_registers()
        pat = decode_pat(regs["pat"])
        names = list(regs)
        lines = [
            "  ".join(f"{n:>10}={regs[n]:#018x}" for n in names[i : i + 3])
            for i in range(0, len(names), 3)
        ]
        lines.append(str(pat))
        return context.result(
            {"registers": regs, "pat": pat.to_dict()}, "\n".join(lines), command=name
        )
    if action == "read":
        return _read(context, session, name)
    if action == "walk":
        return _walk(context, session, target, name)
    raise InspectorError(f"unknown agent action {action!r}")  # pragma: no cover


def _read(context: Context, session: Session, name: str) -> CommandResult:
    args = context.args
    address = session.resolve(args.address)
    if args.length < 0 or args.length > 1 << 20:
        raise InspectorError("length must be between 0 and 1 MiB")
    if args.physical:
        data = session.read_physical(address, args.length)
    else:
        data = session.read_virtual(address, args.length)
    body = {"address": address, "physical": args.physical, "data": data.hex()}
    return context.result(body, format_hexdump(address, data) if data else None, command=name)


def _walk(context: Context, session: Session, target: AgentTarget, name: str) -> CommandResult:
    from ..x86.pat import decode_pat

    session.stop()
    client = target.client
    sent, received = client.stats.bytes_sent, client.stats.bytes_received
    started = time.monotonic()
    ranges = target.walk_ranges()
    elapsed = time.monotonic() - started
    stats: dict[str, Any] = dict(target.walk_stats)
    stats["bytes_sent"] = client.stats.bytes_sent - sent
    stats["bytes_received"] = client.stats.bytes_received - received
    stats["seconds"] = round(elapsed, 4)
    pat = decode_pat(target.agent_registers()["pat"])
    types = [pat.memory_type_of(r.attributes) for r in ranges]
    body = {
        "ranges": [{**r.to_dict(), "memory_type": t} for r, t in zip(ranges, types, strict=True)],
        "pat": pat.to_dict(),
        "stats": stats,
    }
    # The ptdump table, with each range's memory type (IA32_PAT, MTRRs aside).
    table = format_ranges(ranges).splitlines()
    if len(table) == len(ranges) + 1:
        table = [table[0] + "  type"] + [
            f"{line}  {t}" for line, t in zip(table[1:], types, strict=True)
        ]
    table.append(
        f"{stats['leaves']} leaves in {len(ranges)} ranges; {stats['requests']} request(s), "
        f"{stats['bytes_received']} bytes received in {elapsed * 1000:.1f} ms"
    )
    if stats["problems"]:
        table.append(f"{stats['problems']} entries skipped (reserved bits set or table unreadable)")
    return context.result(body, "\n".join(table), command=name)


COMMANDS = [
    Command(
        "agent",
        "talk to the in-kernel agent (needs --agent)",
        run_agent,
        _arguments,
        needs=_needs,
        missing=f"agent needs --agent ({AGENT_HELP})",
    ),
]
