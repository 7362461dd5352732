"""The firmware: ``efi-map`` (what the kernel kept), ``efi-time`` and ``efi-vars``.

``efi-time`` and ``efi-vars`` call the firmware's runtime services through
the in-kernel agent (a gdb stub cannot call into the firmware), where the
kernel has them mapped now: at their physical addresses until ``kinspect
remap efi-runtime`` moves them, at the new ones after.
"""

from __future__ import annotations

import argparse

from ..formatting import format_hexdump
from . import Command, CommandResult, Context, Needs

__all__ = ["COMMANDS", "VARIABLE_ATTRIBUTES"]

#: EFI_VARIABLE_* attribute bits (UEFI 2.10, 8.2).
VARIABLE_ATTRIBUTES = {
    0x1: "NV",
    0x2: "BS",
    0x4: "RT",
    0x8: "HW_ERROR",
    0x20: "TIME_AUTH",
    0x40: "APPEND",
}


def _attributes(value: int) -> str:
    return "|".join(n for bit, n in VARIABLE_ATTRIBUTES.items() if value & bit) or "0"


def run_efi_map(context: Context) -> CommandResult:
    session = context.need_session()
    memory_map = session.efi_memory_map()
    attributes = session.efi_memory_attributes()
    body = {
        "efi_memory_map": memory_map.to_dict(),
        "efi_memory_attributes": attributes.to_dict() if attributes else None,
    }
    text = f"{memory_map}\n" + (f"\n{attributes}" if attributes else "\nno memory attributes table")
    return context.result(body, text)


def run_efi_time(context: Context) -> CommandResult:
    now = context.need_session().efi_time()
    problems = now.problems()
    text = "\n".join([f"GetTime: {now}", *(f"  implausible: {p}" for p in problems)])
    return context.result(
        {"efi_time": now.to_dict(), "problems": problems},
        text,
        status=1 if problems else 0,
    )


def _vars_arguments(parser: argparse.ArgumentParser) -> None:
    import uuid

    from ..efi.runtime import EFI_GLOBAL_VARIABLE

    parser.add_argument("name", nargs="?", help="read this variable (default: list them all)")
    parser.add_argument(
        "--guid",
        type=uuid.UUID,
        default=EFI_GLOBAL_VARIABLE,
        help=f"its vendor GUID (default {EFI_GLOBAL_VARIABLE}, EFI_GLOBAL_VARIABLE)",
    )


def run_efi_vars(context: Context) -> CommandResult:
    session = context.need_session()
    args = context.args
    if args.name:
        attributes, data = session.efi_variable(args.name, args.guid)
        body = {
            "variable": {
                "name": args.name,
                "guid": str(args.guid),
                "attributes": attributes,
                "attribute_names": _attributes(attributes).split("|"),
                "data": data.hex(),
            }
        }
        lines = [f"{args.name} {args.guid} {_attributes(attributes)} ({len(data)} bytes)"]
        lines += [f"  {line}" for line in format_hexdump(0, data).splitlines()]
        return context.result(body, "\n".join(lines))
    names = session.efi_variable_names()
    lines = [f"{len(names)} runtime-visible variables (GetNextVariableName):"]
    lines += [f"  {g}  {n}" for n, g in names]
    return context.result(
        {"variables": [{"name": n, "guid": str(g)} for n, g in names]}, "\n".join(lines)
    )


def _firmware(name: str) -> str:
    return f"{name} calls the firmware through the in-kernel agent: give --agent"


COMMANDS = [
    Command(
        "efi-map",
        "the UEFI memory map the kernel kept (runtime regions and where they are mapped)",
        run_efi_map,
    ),
    Command(
        "efi-time",
        "GetTime, called by the agent through the firmware's current mapping (needs --agent)",
        run_efi_time,
        needs=Needs.AGENT,
        missing=_firmware("efi-time"),
    ),
    Command(
        "efi-vars",
        "the runtime-visible UEFI variables, or one read whole (needs --agent)",
        run_efi_vars,
        _vars_arguments,
        needs=Needs.AGENT,
        missing=_firmware("efi-vars"),
    ),
]
