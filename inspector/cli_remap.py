"""``kinspect remap``: change the page tables, stack and descriptor tables through the agent.

Every change is shown as a plan first and applied on confirmation (``--yes``
for scripts); each step is journaled before it is reported and verified by
walking again. ``undo`` restores what the open steps replaced, exactly;
``journal`` lists them (``--keep`` closes them without undoing).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from .efi.runtime import EFI_VA_BASE
from .remap.journal import Journal, default_journal_path
from .remap.plan import LEVEL_OF_SIZE, parse_flags

__all__ = ["add_remap_parser", "run_remap"]

SIZE_SUFFIXES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """``0x3000``, ``12k``, ``2m``, ``1g``, ``512g``."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    if t and t[-1] in SIZE_SUFFIXES:
        return int(t[:-1], 0) * SIZE_SUFFIXES[t[-1]]
    return int(t, 0)


def _page_size(text: str) -> int:
    size = parse_size(text)
    if size not in LEVEL_OF_SIZE:
        raise argparse.ArgumentTypeError("page size must be 4k, 2m, 1g (or 512g for unmap)")
    return size


def add_remap_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    remap = sub.add_parser(
        "remap",
        parents=[common],
        help="change mappings, move the stack or the GDT/IDT through the agent (journaled)",
    )
    actions = remap.add_subparsers(dest="remap_command", metavar="ACTION")
    actions.required = True
    apply_opts = argparse.ArgumentParser(add_help=False)
    apply_opts.add_argument("--plan", action="store_true", help="show the plan, change nothing")
    apply_opts.add_argument("--yes", "-y", action="store_true", help="apply without asking")
    apply_opts.add_argument(
        "--force", action="store_true", help="apply even what the safety checks refuse"
    )
    apply_opts.add_argument("--journal", help=f"journal file (default {default_journal_path()})")

    m = actions.add_parser("map", parents=[common, apply_opts], help="map VA..VA+SIZE to PA..")
    m.add_argument("va", help="virtual address or symbol")
    m.add_argument("pa", type=parse_size, help="physical address")
    m.add_argument("size", type=parse_size, help="bytes (0x3000, 12k, 2m)")
    m.add_argument("--page-size", type=_page_size, default=0x1000, help="4k (default), 2m or 1g")
    m.add_argument("--flags", default="rw,nx", help="RW,US,PWT,PCD,G,NX or ro (default rw,nx)")
    u = actions.add_parser(
        "unmap", parents=[common, apply_opts], help="clear the entries of a range"
    )
    u.add_argument("va", help="virtual address or symbol")
    u.add_argument("size", type=parse_size)
    u.add_argument(
        "--page-size",
        type=_page_size,
        default=0x1000,
        help="level to clear: 4k (default), 2m, 1g, 512g (a PML4 entry)",
    )
    p = actions.add_parser("protect", parents=[common, apply_opts], help="change a range's flags")
    p.add_argument("va", help="virtual address or symbol")
    p.add_argument("size", type=parse_size)
    p.add_argument("--page-size", type=_page_size, default=0x1000)
    p.add_argument("--flags", required=True, help="the new flags: RW,US,PWT,PCD,G,NX or ro")
    mv = actions.add_parser(
        "move",
        parents=[common, apply_opts],
        help="map a range's pages at a new base (same flags), verify, optionally drop the old",
    )
    mv.add_argument("va", help="virtual address or symbol")
    mv.add_argument("size", type=parse_size)
    mv.add_argument("new_va", help="the new virtual base")
    mv.add_argument("--drop-old", action="store_true", help="unmap the old range afterwards")
    actions.add_parser(
        "higher-half",
        parents=[common, apply_opts],
        help="move the stack and GDT/IDT/TSS to higher-half aliases, then drop the identity map",
    )
    efi = actions.add_parser(
        "efi-runtime",
        parents=[common, apply_opts],
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
    undo = actions.add_parser("undo", parents=[common], help="restore what open steps replaced")
    undo.add_argument("--seq", type=int, action="append", help="only this step (repeatable)")
    undo.add_argument("--force", action="store_true")
    undo.add_argument("--journal")
    journal = actions.add_parser("journal", parents=[common], help="list the journal's open steps")
    journal.add_argument("--all", action="store_true", help="every step, undone and kept too")
    journal.add_argument("--keep", action="store_true", help="close the open steps without undoing")
    journal.add_argument("--journal")


def _emit(out: TextIO, args: argparse.Namespace, text: str, body: dict[str, Any]) -> None:
    if args.json:
        json.dump({"kinspect": 1, "command": f"remap {args.remap_command}", **body}, out, indent=1)
        out.write("\n")
    else:
        print(text, file=out)


def run_remap(parser: argparse.ArgumentParser, args: argparse.Namespace, out: TextIO) -> int:
    journal = Journal.open(getattr(args, "journal", None))
    if args.remap_command == "journal":
        steps = (
            sorted(journal.steps.values(), key=lambda s: s.seq)
            if args.all
            else journal.open_steps()
        )
        if args.keep:
            journal.keep(journal.open_steps())
        lines = [f"journal {journal.path}: {len(journal.open_steps())} open steps"]
        lines += [f"  {s}" for s in steps]
        if args.keep:
            lines.append(f"kept {len(steps)} steps (closed without undoing)")
        _emit(
            out,
            args,
            "\n".join(lines),
            {
                "journal": str(journal.path),
                "steps": [s.to_dict() for s in steps],
                "kept": bool(args.keep),
            },
        )
        return 0
    if not getattr(args, "agent", None):
        parser.error(
            "remap needs --agent (the in-kernel agent's line); --target too verifies "
            "each step through that gdb stub"
        )
    from . import api
    from .remap.apply import UNFORCEABLE, Remapper

    session = api.attach_agent(args.agent, elf=args.elf, timeout=args.timeout)
    try:
        target = session.target.agent()
        orphaned = journal.orphaned()
        remapper = Remapper(target, journal, verify_walk=_gdb_walk(args))
        if args.remap_command == "undo":
            chosen = [s for s in journal.open_steps() if not args.seq or s.seq in args.seq]
            elsewhere = [
                s
                for s in chosen
                if journal.sessions.get(s.session, {}).get("target", target.spec) != target.spec
            ]
            if elsewhere and not args.force:
                other = journal.sessions[elsewhere[0].session]["target"]
                print(
                    f"kinspect: {len(elsewhere)} open steps were applied through {other}, "
                    f"not {target.spec}; undo them there (or --force if it is the same "
                    "kernel under another name)",
                    file=sys.stderr,
                )
                return 1
            done = remapper.undo(chosen, force=args.force)
            lines = [f"undone: #{s.seq} {s.method} {s.description}" for s in done]
            _emit(
                out,
                args,
                "\n".join(lines or ["nothing to undo"]),
                {"undone": [s.to_dict() for s in done]},
            )
            return 0
        if orphaned:
            print(
                f"kinspect: a crashed session left {len(orphaned)} open steps in {journal.path}:",
                file=sys.stderr,
            )
            for s in orphaned:
                print(f"  {s}", file=sys.stderr)
            print(
                "kinspect: `kinspect remap undo` restores them, `kinspect remap journal --keep` "
                "keeps them; nothing else is applied until then",
                file=sys.stderr,
            )
            return 1
        plan = _plan(session, remapper, args)
        if args.plan or not args.json:
            if not args.json:
                print(plan, file=out)
        if args.plan:
            if args.json:
                _emit(out, args, "", {"plan": plan.to_dict(), "applied": []})
            return 0 if not plan.refusals else 1
        if plan.refusals and not args.force:
            unforceable = plan.refusals[0].reason in UNFORCEABLE
            hint = "" if unforceable else " (--force to apply anyway)"
            print(f"kinspect: not applied: {plan.refusals[0]}{hint}", file=sys.stderr)
            if args.json:
                _emit(out, args, "", {"plan": plan.to_dict(), "applied": []})
            return 1
        if not args.yes and not _confirm():
            print("kinspect: not applied (--yes applies without asking)", file=sys.stderr)
            return 1
        reports = []
        for step in plan.steps:
            report = remapper.run_step(step, force=args.force)
            reports.append(report)
            if not args.json:
                print(report, file=out)
                out.flush()
        alive = target.client.call("hello")
        ok = all(r.verified for r in reports)
        by = "the gdb stub's walk" if remapper.verify_walk else "the agent's walk"
        summary = (
            f"{len(reports)} steps applied and journaled in {journal.path}; "
            f"{'all verified' if ok else 'SOME NOT AS PLANNED'} (by {by}); "
            f"the agent still answers (agent {alive.get('agent')})"
        )
        _emit(
            out,
            args,
            summary,
            {
                "plan": plan.to_dict(),
                "applied": [r.to_dict() for r in reports],
                "verified": ok,
                "verified_by": by,
                "journal": str(journal.path),
            },
        )
        return 0 if ok else 1
    finally:
        journal.end_session()
        session.close(resume=not args.no_resume)


def _gdb_walk(args: argparse.Namespace):
    """With --target too, verify through the gdb stub: attach, walk, detach, per step.

    The stub stops the whole machine, agent included, so it is attached only
    while it walks; the agent is idle then (it answered the step already).
    """
    if not getattr(args, "target", None):
        return None
    from . import api

    def walk():
        with api.attach(args.target, elf=args.elf, timeout=args.timeout) as gdb:
            return gdb.ranges()

    return walk


def _plan(session: Any, remapper: Any, args: argparse.Namespace):
    cmd = args.remap_command
    if cmd == "higher-half":
        return remapper.plan_higher_half()
    if cmd == "efi-runtime":
        return remapper.plan_efi_runtime(base=args.base, drop_identity=not args.keep_identity)
    va = session.resolve(args.va)
    if cmd == "map":
        return remapper.plan_map(
            va, args.pa, args.size, page_size=args.page_size, flags=parse_flags(args.flags)
        )
    if cmd == "move":
        new_va = session.resolve(args.new_va)
        return remapper.plan_move(va, args.size, new_va, drop_old=args.drop_old)
    if cmd == "unmap":
        return remapper.plan_unmap(va, args.size, page_size=args.page_size)
    return remapper.plan_protect(
        va, args.size, page_size=args.page_size, flags=parse_flags(args.flags)
    )


def _confirm() -> bool:
    if not sys.stdin.isatty():
        return False
    try:
        return input("apply? [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False
