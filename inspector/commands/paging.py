"""Registers and page tables: ``regs``, ``pt``, ``vtop``, ``ptov``."""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..formatting import (
    JsonRows,
    encode_range_rows,
    format_leaf_lines,
    format_range_lines,
    format_ranges,
    format_region_heading,
    format_register,
    format_translation,
    json_document,
    leaf_json_lines,
    leaf_json_rows,
    range_json_rows,
)
from ..numbers import format_size
from ..targets.base import Capability
from . import Command, CommandResult, Context, UsageError

# The paging core and the session are imported by what runs: ``kinspect regs`` starts
# without the walker (issue 16: cold start).
if TYPE_CHECKING:
    from ..session import Session
    from ..targets.agent import AgentTarget
    from ..x86.paging import AddressSpace, CompactRange, Range, RangeList

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
    return context.result(lambda: regs_document(session), lambda: render_regs(session))


# -- pt --------------------------------------------------------------------------------------


def _pt_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--leaves", action="store_true", help="one line per leaf instead of ranges")
    parser.add_argument(
        "--compact",
        action="store_true",
        help="merge neighbours with the same permissions, attributes and page size, "
        "whatever their physical addresses (ptdump's rule)",
    )
    parser.add_argument(
        "--task",
        type=int,
        metavar="PID",
        help="a Linux task's page tables (its mm->pgd; under PTI its user copy too)",
    )
    parser.add_argument(
        "--json-lines",
        action="store_true",
        help="with --leaves: JSON Lines, streamed as the walk goes (see docs/json.md)",
    )


def _region_names(
    session: Session,
    rows: Sequence[Range] | Sequence[CompactRange] | Sequence[Range | CompactRange],
) -> list[str | None]:
    regions = session.regions()
    if regions is None:
        return [None] * len(rows)
    return [regions.name_of(_start(row)) for row in rows]


def _region_index(session: Session, ranges: RangeList) -> tuple[list[str | None], Any] | None:
    """Each range's region (``RegionMap.name_of`` of its start) as an index into names: the
    names of the stretches between region boundaries (None: no region there, nor below
    the first boundary). None on a kernel not recognized as Linux."""
    import numpy as np

    regions = session.regions()
    if regions is None:
        return None
    bounds = [b for b in regions.boundaries() if 0 <= b < 1 << 64]
    names = [None, *(regions.name_of(b) for b in bounds)]
    index = np.searchsorted(np.array(bounds, dtype=np.uint64), ranges.start, side="right")
    return names, index


def pt_document(session: Session, *, leaves: bool = False, compact: bool = False) -> dict[str, Any]:
    """``pt``'s document body (docs/json.md), every list as dicts."""
    body = _pt_head(session)
    if leaves:
        body["leaves"] = [leaf.to_dict() for leaf in session.address_space().leaves]
        return body
    ranges: Sequence[Range | CompactRange] = (
        session.compact_ranges() if compact else session.ranges()
    )
    names = _region_names(session, ranges)
    body["compact"] = compact
    body["ranges"] = [{**r.to_dict(), "region": n} for r, n in zip(ranges, names, strict=True)]
    return body


def pt_json_body(
    session: Session, *, leaves: bool = False, compact: bool = False
) -> dict[str, Any]:
    """:func:`pt_document` as the CLI writes it: its ranges or leaves as
    :class:`JsonRows`, written from the walk's arrays a run at a time (formatting)."""
    body = _pt_head(session)
    if leaves:
        body["leaves"] = leaf_json_rows(session.address_space().arrays)
        return body
    body["compact"] = compact
    if compact:
        rows = session.compact_ranges()
        pairs = list(zip(rows, _region_names(session, rows), strict=True))
        body["ranges"] = JsonRows(pairs, _range_dict, encode_range_rows)
    else:
        ranges = session.ranges()
        body["ranges"] = range_json_rows(ranges, _region_index(session, ranges))
    return body


def _pt_head(session: Session) -> dict[str, Any]:
    space = session.address_space()
    control = session.control_registers()
    return {
        "cr3": control["CR3"].value,
        "paging": control.paging.to_dict(),
        "leaf_count": len(space.leaves),
        "truncated": space.truncated,
        "problems": [p.to_dict() for p in space.problems],
    }


def _range_dict(row: tuple[Range | CompactRange, str | None]) -> dict[str, Any]:
    return {**row[0].to_dict(), "region": row[1]}


def _start(row: Range | CompactRange) -> int:
    start: int = row.range.start if hasattr(row, "pieces") else row.start  # type: ignore[union-attr]
    return start


def format_ranges_with_regions(
    rows: Sequence[Range] | Sequence[CompactRange], names: Sequence[str | None]
) -> str:
    """:func:`format_ranges` with ptdump's heading (``---[ direct map ]---``) where the
    region changes; a compact row ends with how many ranges it stands for."""
    from ..x86.paging import CompactRange

    table = format_ranges([r.range if isinstance(r, CompactRange) else r for r in rows])
    header, *body = table.split("\n")
    lines = [header]
    current: str | None = None
    for row, line, name in zip(rows, body, names, strict=True):
        if name != current and name is not None:
            lines.append(format_region_heading(name))
        current = name
        if isinstance(row, CompactRange) and row.pieces > 1:
            line += f"  ({row.pieces} ranges, {format_size(row.mapped)} mapped)"
        lines.append(line)
    return "\n".join(lines)


def render_pt(session: Session, *, leaves: bool = False, compact: bool = False) -> str:
    """``pt``'s text."""
    return "".join(pt_text_parts(session, leaves=leaves, compact=compact))


def pt_text_parts(
    session: Session, *, leaves: bool = False, compact: bool = False
) -> Iterator[str]:
    """``pt``'s text in pieces that join to :func:`render_pt`: its rows a run at a time,
    written from the walk's arrays (formatting.format_range_lines, format_leaf_lines), so
    the CLI prints half a million leaves without holding their text or their records."""
    space = session.address_space()
    control = session.control_registers()
    yield f"CR3={control['CR3'].value:#x}  {control.paging}\n"
    lines = []
    if leaves:
        yield from format_leaf_lines(space.arrays)
        lines.append(f"{len(space.leaves)} leaves in {len(session.ranges())} ranges")
    elif compact:
        rows = session.compact_ranges()
        lines.append(format_ranges_with_regions(rows, _region_names(session, rows)))
        lines.append(
            f"{len(space.leaves)} leaves in {len(session.ranges())} ranges, "
            f"{len(rows)} rows compacted"
        )
    else:
        ranges = session.ranges()
        yield format_ranges([]) + "\n"  # the header
        yield from format_range_lines(ranges, _region_index(session, ranges))
        lines.append(f"{len(space.leaves)} leaves in {len(ranges)} ranges")
    source = session.physical_source
    if source is not None and "direct map" in source:
        lines.append(f"physical memory read through {source}")
    lines.extend(f"problem: {problem}" for problem in space.problems)
    if space.truncated:
        lines.append(
            "the walk stopped early (entry budget exhausted): the tables loop or are garbage"
        )
    yield "\n".join(lines)


def _space_document(space: AddressSpace, *, leaves: bool) -> dict[str, Any]:
    from ..x86.paging import coalesce_ranges

    body: dict[str, Any] = {
        "pgd": space.cr3,
        "leaf_count": len(space.leaves),
        "truncated": space.truncated,
        "problems": [p.to_dict() for p in space.problems],
    }
    if leaves:
        body["leaves"] = [leaf.to_dict() for leaf in space.leaves]
    else:
        body["ranges"] = [r.to_dict() for r in coalesce_ranges(space.leaves)]
    return body


def _space_text(title: str, space: AddressSpace, *, leaves: bool) -> list[str]:
    from ..x86.paging import coalesce_ranges

    lines = [title]
    if leaves:
        lines.extend(str(leaf) for leaf in space.leaves)
    else:
        lines.append(format_ranges(coalesce_ranges(space.leaves)))
    lines.append(f"{len(space.leaves)} leaves")
    lines.extend(f"problem: {problem}" for problem in space.problems)
    return lines


def run_pt_task(context: Context, session: Session, pid: int, *, leaves: bool) -> CommandResult:
    """``pt --task PID``: the task's own tables, both copies under PTI."""
    task, space, user = session.task_address_spaces(pid)

    def body() -> dict[str, Any]:
        return {
            "task": {"pid": task.pid, "comm": task.comm, "address": task.address},
            "paging": space.mode.to_dict(),
            "kernel_copy": _space_document(space, leaves=leaves),
            "user_copy": _space_document(user, leaves=leaves) if user else None,
        }

    def text() -> str:
        title = f"task {task.pid} ({task.comm}): mm->pgd at physical {space.cr3:#x}  {space.mode}"
        title += " (PTI: the kernel's copy)" if user else ""
        lines = _space_text(title, space, leaves=leaves)
        if user is not None:
            lines.append("")
            lines += _space_text(
                f"PTI: the user-space copy at physical {user.cr3:#x} (CR3 in user mode)",
                user,
                leaves=leaves,
            )
        return "\n".join(lines)

    return context.result(body, text)


def run_pt(context: Context) -> CommandResult:
    session = context.need_session()
    leaves = bool(context.args.leaves)
    if context.args.task is not None:
        return run_pt_task(context, session, context.args.task, leaves=leaves)
    if context.args.json_lines:
        if not leaves:
            raise UsageError("--json-lines goes with --leaves (one leaf per line)")
        return _pt_json_lines(context, session)
    compact = bool(context.args.compact)
    if leaves and compact:
        raise UsageError("--compact merges ranges, --leaves shows leaves: pick one")
    if not leaves and not compact and session.target.has(Capability.AGENT):
        done = _pt_by_agent_walk(context, session, session.target.agent())
        if done is not None:
            return done
    # Made when asked for: the CLI writes the document or prints the text, never both.
    return context.result(
        lambda: pt_document(session, leaves=leaves, compact=compact),
        lambda: render_pt(session, leaves=leaves, compact=compact),
        json_body=lambda: pt_json_body(session, leaves=leaves, compact=compact),
        text_parts=lambda: pt_text_parts(session, leaves=leaves, compact=compact),
    )


def _pt_json_lines(context: Context, session: Session) -> CommandResult:
    """``pt --leaves --json-lines``: the envelope, a line per leaf as the walk goes, the end.

    Lines are emitted a run of leaves at a time, so neither the leaves nor
    the output are ever held whole (docs/json.md, "JSON Lines").
    """
    import json  # only what writes JSON imports it

    control = session.control_registers()
    head = json_document(context.name, session.target.description, {"cr3": control["CR3"].value})
    head["paging"] = control.paging.to_dict()
    context.emit(json.dumps(head, separators=(",", ":")))
    space = session.address_space()
    for lines in leaf_json_lines(space.arrays, last_newline=False):
        context.emit(lines)
    problems = space.problems
    count = len(space.leaves)
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
        "compact": False,
        "ranges": [{**r.to_dict(), "region": None} for r in ranges],
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
    parser.add_argument(
        "--task", type=int, metavar="PID", help="through a Linux task's own tables (mm->pgd)"
    )


def run_vtop(context: Context) -> CommandResult:
    session = context.need_session()
    virtual = session.resolve(context.args.address)
    if context.args.task is not None:
        t = session.task_translate(context.args.task, virtual)
    else:
        t = session.translate(virtual)
    why = None if t.ok else f"{virtual:#x} does not translate: {t.fault}"
    return context.result(t.to_dict(), format_translation(t), status=0 if t.ok else 1, error=why)


def _ptov_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("address", help="physical address")
    parser.add_argument(
        "--all-tasks",
        action="store_true",
        help="search every Linux task's tables too and name the owner of each mapping",
    )


def run_ptov(context: Context) -> CommandResult:
    session = context.need_session()
    physical = session.resolve(context.args.address)
    if context.args.all_tasks:
        return _ptov_all_tasks(context, session, physical)
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


def _ptov_all_tasks(context: Context, session: Session, physical: int) -> CommandResult:
    found = session.task_aliases(physical)
    owners = [
        {"virtual": va, "pid": task.pid if task else None, "comm": task.comm if task else None}
        for va, task in found
    ]
    body = {"physical": physical, "virtual": [va for va, _ in found], "owners": owners}
    if not found:
        return context.result(
            body, None, status=1, error=f"no task's tables map physical {physical:#x}"
        )
    lines = [
        f"{va:#018x}  " + (f"pid {task.pid} ({task.comm})" if task else "kernel (every task)")
        for va, task in found
    ]
    return context.result(body, "\n".join(lines))


COMMANDS = [
    Command("regs", "control and general registers, decoded", run_regs),
    Command("pt", "page tables as coalesced ranges", run_pt, _pt_arguments),
    Command("vtop", "translate a virtual address, walk shown", run_vtop, _vtop_arguments),
    Command("ptov", "every virtual address of a physical one", run_ptov, _ptov_arguments),
]
