"""``kinspect remap``: change the page tables, stack and descriptor tables through the agent.

Every change is shown as a plan first and applied on confirmation (``--yes``
for scripts); each step is journaled before it is reported and verified by
walking again. ``undo`` restores what the open steps replaced, exactly;
``journal`` lists them (``--keep`` closes them without undoing).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import InspectorError
from ..numbers import parse_size
from . import Command, CommandResult, Context, Needs, UsageError, add_actions, connect

# The planner, the journal and the firmware's constants are imported when a remap runs or
# its arguments are built: other commands start without them (issue 16: cold start).
if TYPE_CHECKING:
    from ..remap.journal import Journal
    from ..remap.plan import Plan
    from ..remap.request import RemapRequest
    from ..session import Session

__all__ = ["COMMANDS"]


def _page_size(text: str) -> int:
    from ..remap.plan import LEVEL_OF_SIZE

    size = parse_size(text)
    if size not in LEVEL_OF_SIZE:
        raise argparse.ArgumentTypeError("page size must be 4k, 2m, 1g (or 512g for unmap)")
    return size


def _arguments(parser: argparse.ArgumentParser) -> None:
    from ..efi.runtime import EFI_VA_BASE
    from ..remap.flags import DEFAULT_FLAGS, FLAGS_HELP
    from ..remap.journal import default_journal_path

    actions = add_actions(parser, "remap_command")
    apply_opts = argparse.ArgumentParser(add_help=False)
    apply_opts.add_argument("--plan", action="store_true", help="show the plan, change nothing")
    apply_opts.add_argument("--yes", "-y", action="store_true", help="apply without asking")
    apply_opts.add_argument(
        "--force", action="store_true", help="apply even what the safety checks refuse"
    )
    apply_opts.add_argument("--journal", help=f"journal file (default {default_journal_path()})")

    m = actions.add_parser("map", parents=[apply_opts], help="map VA..VA+SIZE to PA..")
    m.add_argument("va", help="virtual address or symbol")
    m.add_argument("pa", type=parse_size, help="physical address")
    m.add_argument("size", type=parse_size, help="bytes (0x3000, 12k, 2m)")
    m.add_argument("--page-size", type=_page_size, default=0x1000, help="4k (default), 2m or 1g")
    m.add_argument(
        "--flags",
        default=DEFAULT_FLAGS["map"],
        help=f"{FLAGS_HELP} (default {DEFAULT_FLAGS['map']})",
    )
    u = actions.add_parser("unmap", parents=[apply_opts], help="clear the entries of a range")
    u.add_argument("va", help="virtual address or symbol")
    u.add_argument("size", type=parse_size)
    u.add_argument(
        "--page-size",
        type=_page_size,
        default=0x1000,
        help="level to clear: 4k (default), 2m, 1g, 512g (a PML4 entry)",
    )
    p = actions.add_parser("protect", parents=[apply_opts], help="change a range's flags")
    p.add_argument("va", help="virtual address or symbol")
    p.add_argument("size", type=parse_size)
    p.add_argument("--page-size", type=_page_size, default=0x1000)
    p.add_argument("--flags", required=True, help=f"the new flags: {FLAGS_HELP}")
    mv = actions.add_parser(
        "move",
        parents=[apply_opts],
        help="map a range's pages at a new base (same flags), verify, optionally drop the old",
    )
    mv.add_argument("va", help="virtual address or symbol")
    mv.add_argument("size", type=parse_size)
    mv.add_argument("new_va", help="the new virtual base")
    mv.add_argument("--drop-old", action="store_true", help="unmap the old range afterwards")
    actions.add_parser(
        "higher-half",
        parents=[apply_opts],
        help="move the stack and GDT/IDT/TSS to higher-half aliases, then drop the identity map",
    )
    efi = actions.add_parser(
        "efi-runtime",
        parents=[apply_opts],
        help="map the UEFI runtime regions in the higher half, SetVirtualAddressMap, verify "
        "GetTime and a variable, then drop the identity map (cannot be undone)",
    )
    efi.add_argument(
        "--base",
        type=parse_size,
        default=EFI_VA_BASE,
        help=f"new address = BASE + physical (default {EFI_VA_BASE:#x})",
    )
    efi.add_argument(
        "--keep-identity", action="store_true", help="leave the identity map in place afterwards"
    )
    undo = actions.add_parser(
        "undo",
        help="restore what this kernel's newest open step replaced (asks before undoing more)",
    )
    which = undo.add_mutually_exclusive_group()
    which.add_argument("--seq", type=int, action="append", help="only this step (repeatable)")
    which.add_argument("--all", action="store_true", help="every open step of this kernel")
    undo.add_argument("--force", action="store_true")
    undo.add_argument("--journal")
    journal = actions.add_parser(
        "journal", help="list this kernel's open steps (with --agent; every kernel's without)"
    )
    journal.add_argument(
        "--all", action="store_true", help="every step of every kernel, undone and kept too"
    )
    journal.add_argument(
        "--keep", action="store_true", help="close the listed open steps without undoing"
    )
    journal.add_argument("--journal")


def request_of(
    session: Session, args: argparse.Namespace, *, pat: int | None = None
) -> RemapRequest:
    """The :class:`RemapRequest` the command line's arguments ask for (``pat``: IA32_PAT,
    for caching names)."""
    from ..remap.flags import parse_flags
    from ..remap.request import RemapRequest

    action = args.remap_command
    if action == "higher-half":
        return RemapRequest(action)
    if action == "efi-runtime":
        return RemapRequest(action, base=args.base, keep_identity=args.keep_identity)
    va = session.resolve(args.va)
    if action == "move":
        new_va = session.resolve(args.new_va)
        return RemapRequest(action, va=va, size=args.size, new_va=new_va, drop_old=args.drop_old)
    if action == "unmap":
        return RemapRequest(action, va=va, size=args.size, page_size=args.page_size)
    flags = parse_flags(args.flags, pat=pat)
    pa = args.pa if action == "map" else 0
    return RemapRequest(action, va=va, size=args.size, pa=pa, page_size=args.page_size, flags=flags)


def run_remap(context: Context) -> CommandResult:
    from ..remap.journal import Journal

    args = context.args
    name = f"remap {args.remap_command}"
    if args.remap_command == "journal":
        if context.session is not None and context.session.remap_unavailable is None:
            return _journal(context, context.session.remapper().journal, name)
        kernel = _kernel_of(args) if getattr(args, "agent", None) else None
        return _journal(context, Journal.open(getattr(args, "journal", None), kernel=kernel), name)
    if context.session is not None:  # the TUI's session: its remapper and its journal
        session = context.session
        if session.remap_unavailable is not None:
            raise InspectorError(f"{name}: {session.remap_unavailable}")
        return _change(context, session, session.remapper(), name, hello=None)
    if not getattr(args, "agent", None):
        raise UsageError(
            "remap needs --agent (the in-kernel agent's line); --target too verifies "
            "each step through that gdb stub"
        )
    from ..remap.apply import Remapper

    journal = Journal.open(getattr(args, "journal", None))
    session = connect(args, needs=Needs.AGENT_ALONE, on_console=None)
    try:
        if session.remap_unavailable is not None:  # a read-only agent: one line, nothing sent
            raise InspectorError(f"{name}: {session.remap_unavailable}")
        target = session.target.agent()
        remapper = Remapper(target, journal, verify_walk=_gdb_walk(args))
        client = target.client
        return _change(context, session, remapper, name, hello=lambda: client.call("hello"))
    finally:
        journal.end_session()
        session.close(resume=not args.no_resume)


def _kernel_of(args: argparse.Namespace) -> str:
    """The kernel instance the agent on ``--agent`` speaks for (asked, not stopped)."""
    from ..remap.journal import kernel_identity
    from ..targets.agent import AgentTarget

    target = AgentTarget(args.agent, timeout=min(getattr(args, "timeout", None) or 2.0, 2.0))
    try:
        regs = None if target.info.get("boot_nonce") else target.agent_registers()
        return kernel_identity(target.info, regs)
    finally:
        target.close(resume=False)


def _journal(context: Context, journal: Journal, name: str) -> CommandResult:
    args = context.args
    steps = journal.all_steps(all_kernels=True) if args.all else journal.open_steps()
    if args.keep:
        journal.keep(journal.open_steps())
    elsewhere = len(journal.open_steps(all_kernels=True)) - len(journal.open_steps())
    scope = f"kernel {journal.kernel}" if journal.kernel else "every kernel"
    lines = [f"journal {journal.path}: {len(journal.open_steps())} open steps ({scope})"]
    lines += [
        f"  {s}" + ("" if journal.kernel and not args.all else f"  [{journal.kernel_of(s)}]")
        for s in steps
    ]
    if elsewhere and not args.all:
        lines.append(f"  ({elsewhere} open steps of other kernels: --all lists them)")
    if args.keep:
        lines.append(f"kept {len(steps)} steps (closed without undoing)")
    body = {
        "journal": str(journal.path),
        "kernel": journal.kernel,
        "steps": [{**s.to_dict(), "kernel": journal.kernel_of(s)} for s in steps],
        "other_kernels_open": elsewhere,
        "kept": bool(args.keep),
    }
    return context.result(body, "\n".join(lines), command=name)


def _change(
    context: Context,
    session: Session,
    remapper: Any,
    name: str,
    *,
    hello: Callable[[], Any] | None,
) -> CommandResult:
    """Undo, or plan, confirm, apply and verify.

    ``remapper``: a Remapper or its stub-assisted kin (its journal is scoped to
    the kernel it reaches); ``hello``: asks the agent whether it still answers
    after the change.
    """
    from ..remap.apply import UNFORCEABLE
    from ..remap.flags import wants_pat
    from ..remap.request import plan_request

    args = context.args
    journal: Journal = remapper.journal
    if args.remap_command == "undo":
        return _undo(context, remapper, journal, name)
    orphaned = journal.orphaned()
    if orphaned:
        context.warn(
            f"kinspect: a crashed session left {len(orphaned)} open steps in {journal.path}:"
        )
        for s in orphaned:
            context.warn(f"  {s}")
        context.warn(
            "kinspect: `kinspect remap undo` restores them, `kinspect remap journal --keep` "
            "keeps them; nothing else is applied until then"
        )
        return context.result(None, None, status=1, command=name)
    flags_text = getattr(args, "flags", None) or ""
    pat = remapper.registers().get("pat") if wants_pat(flags_text) else None
    plan: Plan = plan_request(remapper, request_of(session, args, pat=pat))
    planned = {"plan": plan.to_dict(), "applied": []}
    if not context.json:
        context.emit(str(plan))
    if args.plan:
        return context.result(
            planned if context.json else None, None, status=1 if plan.refusals else 0, command=name
        )
    if plan.refusals and not args.force:
        unforceable = plan.refusals[0].reason in UNFORCEABLE
        hint = "" if unforceable else " (--force to apply anyway)"
        context.warn(f"kinspect: not applied: {plan.refusals[0]}{hint}")
        return context.result(planned if context.json else None, None, status=1, command=name)
    if not args.yes and not context.confirm("apply? [y/N] "):
        context.warn("kinspect: not applied (--yes applies without asking)")
        return context.result(None, None, status=1, command=name)
    if plan.warnings and not args.yes:
        again = f"this change {'; '.join(plan.warnings)}: apply it anyway? [y/N] "
        if not context.confirm(again):
            context.warn("kinspect: not applied (--yes applies without asking)")
            return context.result(None, None, status=1, command=name)
    reports = []
    for step in plan.steps:
        report = remapper.run_step(step, force=args.force)
        reports.append(report)
        if not context.json:
            context.emit(str(report))
    ok = all(r.verified for r in reports)
    by = "the gdb stub's walk" if remapper.verify_walk else "the agent's walk"
    summary = (
        f"{len(reports)} steps applied and journaled in {journal.path}; "
        f"{'all verified' if ok else 'SOME NOT AS PLANNED'} (by {by})"
    )
    if hello is not None:
        summary += f"; the agent still answers (agent {hello().get('agent')})"
    body = {
        "plan": plan.to_dict(),
        "applied": [r.to_dict() for r in reports],
        "verified": ok,
        "verified_by": by,
        "journal": str(journal.path),
    }
    return context.result(body, summary, status=0 if ok else 1, command=name)


def _undo(context: Context, remapper: Any, journal: Journal, name: str) -> CommandResult:
    """``--seq``: those steps; ``--all``: every open step; else the newest, then the rest
    only when the user says so."""
    args = context.args
    open_steps = journal.open_steps()
    if args.seq:
        unknown = sorted(set(args.seq) - {s.seq for s in open_steps})
        if unknown:
            raise InspectorError(
                f"{name}: no open step #{unknown[0]} of this kernel in {journal.path} "
                "(`kinspect remap journal --all` lists every step)"
            )
        chosen = [s for s in open_steps if s.seq in args.seq]
    else:
        chosen = open_steps if args.all else open_steps[-1:]
    done = list(remapper.undo(chosen, force=args.force))
    rest = journal.open_steps()
    if rest and not args.seq and not args.all:
        if not context.json:
            for s in done:
                context.emit(f"undone: #{s.seq} {s.method} {s.description}")
        if context.confirm(f"{len(rest)} more open steps of this kernel: undo them too? [y/N] "):
            done += remapper.undo(rest, force=args.force)
            lines = [f"undone: #{s.seq} {s.method} {s.description}" for s in done[1:]]
        else:
            lines = [f"{len(rest)} open steps left (`kinspect remap undo --all` undoes them)"]
    else:
        lines = [f"undone: #{s.seq} {s.method} {s.description}" for s in done]
    return context.result(
        {"undone": [s.to_dict() for s in done], "left": len(journal.open_steps())},
        "\n".join(lines or ["nothing to undo"]),
        command=name,
    )


def _gdb_walk(args: argparse.Namespace) -> Callable[[], Any] | None:
    """With --target too, verify through the gdb stub: attach, walk, detach, per step.

    The stub stops the whole machine, agent included, so it is attached only
    while it walks; the agent is idle then (it answered the step already).
    """
    if not getattr(args, "target", None):
        return None
    from .. import api

    def walk() -> Any:
        with api.attach(args.target, elf=args.elf, timeout=args.timeout) as gdb:
            return gdb.ranges()

    return walk


COMMANDS = [
    Command(
        "remap",
        "change mappings, move the stack or the GDT/IDT through the agent (journaled)",
        run_remap,
        _arguments,
        needs=Needs.NOTHING,
    ),
]
