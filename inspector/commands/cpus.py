"""The CPUs: ``cpus``, every CPU side by side (``--cpu N`` picks one for every command)."""

from __future__ import annotations

import argparse

from . import Command, CommandResult, Context, apply_slide

__all__ = ["COMMANDS"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--detail",
        action="store_true",
        help="Linux's per-CPU areas too: __per_cpu_offset, gdt_page, cpu_tss_rw, IST "
        "stacks, cpu_entry_area",
    )


def run_cpus(context: Context) -> CommandResult:
    from ..cpus import format_cpus

    apply_slide(context)
    session = context.need_session()
    cpus = session.cpus(detail=context.args.detail)
    body = {"selected": session.cpu, "cpus": [cpu.to_dict() for cpu in cpus]}
    return context.result(body, format_cpus(cpus))


COMMANDS = [
    Command(
        "cpus",
        "every CPU: state, RIP, CR3, paging, GDTR/IDTR/TR bases, Linux's current task",
        run_cpus,
        arguments=add_arguments,
    ),
]
