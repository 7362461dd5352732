"""Registers and page tables: ``regs``, ``pt``, ``vtop``, ``ptov``."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from ..formatting import format_ranges, format_register, format_translation, json_document
from ..session import Session
from ..targets.base import Capability
from . import Command, CommandResult, Context, UsageError

if TYPE_CHECKING:
    from ..targets.agent import AgentTarget

__all__ = ["COMMANDS", "pt_document", "regs_document", "render_pt", "render_regs"]


# -- regs ------------------------------------------------------------------------------------


def regs_document(session: Session) -> dict[str, Any]:
    control = session.control_registers()
    return {
        "control": {n: r.to_dict() for n, r in control.registers.items()},
        "paging": control.paging.to_dict(),
        "general": _general(session),
    }


def _general(session: Session) -> dict[str, int]:
    return {k: v for k, v in session.registers().items() if not k.startswith(("cr", "efer"))}


def render_regs(session: Session) -> str:
    control = session.control_registers()
    general = _general(session)
    lines = [format_register(reg) for reg in control.registers.values()]
    lines.append(f"paging: {control.paging}")
    names = list(general)
    for i in range(0, len(names), 4):
        lines.append("  ".join(f"{n:>9}={general[n]:#018x}" for n in names[i : i + 4]))
    return "\n".join(lines)


def run_regs(context: Context) -> CommandResult:
    session = context.need_session()
    return context.result(regs_document(session), render_regs(session))


# -- pt --------------------------------------------------------------------------------------


def _pt_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--leaves", action="store_true", help="one line per leaf instead of ranges")
    parser.add_argument(
        "--json-lines",
        action="store_true",
        help="with --leaves: JSON Lines, streamed as the walk goes (see docs/json.md)",
    )


def pt_document(session: Session, *, leaves: bool = False) -> dict[str, Any]:
    space = session.address_space()
    control = session.control_registers()
    body: dict[str, Any] = {
        "cr3": control["CR3"].value,
        "paging": control.paging.to_dict(),
        "leaf_count": len(space.leaves),
        "truncated": space.truncated,
        "problems": [p.to_dict() for p in space.problems],
    }
    if leaves:
        body["leaves"] = [leaf.to_dict() for leaf in space.leaves]
    else:
        body["ranges"] = [r.to_dict() for r in session.ranges()]
    return body


def render_pt(session: Session, *, leaves: bool = False) -> str:
    space = session.address_space()
    control = session.control_registers()
    lines = [f"CR3={control['CR3'].value:#x}  {control.paging}"]
    if leaves:
        lines.extend(str(leaf) for leaf in space.leaves)
    else:
        lines.append(format_ranges(session.ranges()))
    lines.append(f"{len(space.leaves)} leaves in {len(session.ranges())} ranges")
    lines.extend(f"problem: {problem}" for problem in space.problems)
    if space.truncated:
        lines.append(
            "the walk stopped early (entry budget exhausted): the tables loop or are garbage"
        )
    return "\n".join(lines)


def run_pt(context: Context) -> CommandResult:
    session = context.need_session()
    leaves = bool(context.args.leaves)
    if context.args.json_lines:
        if not leaves:
            raise UsageError("--json-lines goes with --leaves (one leaf per line)")
        return _pt_json_lines(context, session)
    if not leaves and session.target.has(Capability.AGENT):
        done = _pt_by_agent_walk(context, session, session.target.agent())
        if done is not None:
            return done
    return context.result(pt_document(session, leaves=leaves), render_pt(session, leaves=leaves))


def _pt_json_lines(context: Context, session: Session) -> CommandResult:
    """``pt --leaves --json-lines``: the envelope, a line per leaf as the walk goes, the end.

    Lines are emitted a run of leaves at a time, so neither the leaves nor
    the output are ever held whole (docs/json.md, "JSON Lines").
    """
    control = session.control_registers()
    head = json_document(context.name, session.target.description, {"cr3": control["CR3"].value})
    head["paging"] = control.paging.to_dict()
    context.emit(json.dumps(head, separators=(",", ":")))
    count = 0
    problems = []
    for item in session.walk_leaves():
        if isinstance(item, list):
            count += len(item)
            context.emit(
                "\n".join(json.dumps(leaf.to_dict(), separators=(",", ":")) for leaf in item)
            )
        else:
            problems.append(item)
    end = {
        "leaf_count": count,
        "truncated": any(p.kind == "truncated" for p in problems),
        "problems": [p.to_dict() for p in problems],
    }
    context.emit(json.dumps(end, separators=(",", ":")))
    return context.result(None, None)


def _pt_by_agent_walk(
    context: Context, session: Session, target: AgentTarget
) -> CommandResult | None:
    """``pt`` from the agent's own walk: a few hundred bytes instead of every table.

    The same document as the tables walked here give (the integration tests
    compare the two). When the agent skipped entries (reserved bits,
    unreadable tables) it says only how many, so this returns None and
    ``pt`` walks the raw tables to show each problem exactly.
    """
    control = session.control_registers()
    if not control.paging.is_long_mode:
        return None
    session.stop()
    ranges = target.walk_ranges()
    stats = target.walk_stats
    if stats["problems"]:
        return None
    body: dict[str, Any] = {
        "cr3": control["CR3"].value,
        "paging": control.paging.to_dict(),
        "leaf_count": stats["leaves"],
        "truncated": False,
        "problems": [],
        "ranges": [r.to_dict() for r in ranges],
    }
    text = "\n".join(
        [
            f"CR3={control['CR3'].value:#x}  {control.paging}",
            format_ranges(ranges),
            f"{stats['leaves']} leaves in {len(ranges)} ranges",
        ]
    )
    return context.result(body, text)


# -- vtop, ptov ------------------------------------------------------------------------------


def _vtop_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("address", help="virtual address or symbol")


def run_vtop(context: Context) -> CommandResult:
    session = context.need_session()
    virtual = session.resolve(context.args.address)
    t = session.translate(virtual)
    why = None if t.ok else f"{virtual:#x} does not translate: {t.fault}"
    return context.result(t.to_dict(), format_translation(t), status=0 if t.ok else 1, error=why)


def _ptov_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("address", help="physical address")


def run_ptov(context: Context) -> CommandResult:
    session = context.need_session()
    physical = session.resolve(context.args.address)
    aliases = session.aliases(physical)
    body = {"physical": physical, "virtual": aliases}
    if not aliases:
        return context.result(
            body, None, status=1, error=f"no virtual address maps physical {physical:#x}"
        )
    symbols = session.symbols
    lines = []
    for va in aliases:
        name = f"  {symbols.format_address(va)}" if symbols and symbols.symbolize(va) else ""
        lines.append(f"{va:#018x}{name}")
    return context.result(body, "\n".join(lines))


COMMANDS = [
    Command("regs", "control and general registers, decoded", run_regs),
    Command("pt", "page tables as coalesced ranges", run_pt, _pt_arguments),
    Command("vtop", "translate a virtual address, walk shown", run_vtop, _vtop_arguments),
    Command("ptov", "every virtual address of a physical one", run_ptov, _ptov_arguments),
]
