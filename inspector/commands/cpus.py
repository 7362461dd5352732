"""The CPUs: ``cpus``, every CPU side by side (``--cpu N`` picks one for every command)."""

from __future__ import annotations

from ..cpus import format_cpus
from . import Command, CommandResult, Context, apply_slide

__all__ = ["COMMANDS"]


def run_cpus(context: Context) -> CommandResult:
    apply_slide(context)
    session = context.need_session()
    cpus = session.cpus()
    body = {"selected": session.cpu, "cpus": [cpu.to_dict() for cpu in cpus]}
    return context.result(body, format_cpus(cpus))


COMMANDS = [
    Command(
        "cpus",
        "every CPU: state, RIP, CR3, paging, GDTR/IDTR/TR bases, Linux's current task",
        run_cpus,
    ),
]
