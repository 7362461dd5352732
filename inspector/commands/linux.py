"""Linux as it ships, with no files: ``kernel`` says what kinspect recognized, ``type``
prints a layout from the kernel's BTF (or the DWARF of ``--elf``), ``tasks`` lists every
task, ``modules`` the loaded modules."""

from __future__ import annotations

import argparse

from ..errors import InspectorError
from . import Command, CommandResult, Context

__all__ = ["COMMANDS"]


def run_kernel(context: Context) -> CommandResult:
    """The banner, _text and the KASLR slide, the layout bases, the paging, the symbols."""
    session = context.need_session()
    kernel = session.kernel()
    physical = session.physical_source
    body = {"kernel": kernel.to_dict(), "physical_from": physical}
    text = f"{kernel}\nphysical memory  {physical or 'not readable yet'}"
    return context.result(body, text)


def _type_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "name",
        metavar="NAME",
        help="a struct, union, enum or typedef (task_struct, struct mm_struct)",
    )


def run_type(context: Context) -> CommandResult:
    """A type's layout from the kernel's BTF (else the DWARF of ``--elf``): members,
    offsets, sizes, bitfields."""
    from ..linux.btf import format_layout

    btf = context.need_session().btf()
    name = context.args.name
    found = btf.named(name, "struct", "union") or btf.named(name)
    if found is None:
        raise InspectorError(f"{btf.origin} has no type {name!r}")
    return context.result({"type": btf.to_dict(found)}, format_layout(btf, found))


def run_tasks(context: Context) -> CommandResult:
    """Every task on init_task.tasks: pid, comm, state, CPU, kernel thread, page-table root."""
    found = context.need_session().tasks()
    return context.result(found.to_dict(), str(found))


def run_modules(context: Context) -> CommandResult:
    """The loaded modules as /proc/modules shows them, each with its layout."""
    found = context.need_session().modules()
    return context.result(found.to_dict(), str(found))


COMMANDS = [
    Command(
        "kernel",
        "the Linux kernel recognized: banner, KASLR slide, page_offset_base, vmalloc_base, "
        "vmemmap_base, paging, where the symbols come from",
        run_kernel,
    ),
    Command(
        "type",
        "a struct's layout from the kernel's own BTF (without BTF: the DWARF of --elf), "
        "as pahole prints it",
        run_type,
        _type_arguments,
    ),
    Command(
        "tasks",
        "every Linux task (init_task.tasks): pid, comm, state, CPU, kernel thread, "
        "page-table root; the current task per CPU",
        run_tasks,
    ),
    Command(
        "modules",
        "the loaded Linux modules as /proc/modules shows them, with their text, "
        "read-only and writable parts",
        run_modules,
    ),
]
