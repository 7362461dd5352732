"""``kinspect efi-time`` and ``kinspect efi-vars``: the firmware's runtime services,
called by the in-kernel agent (a gdb stub cannot call into the firmware).

``efi-map`` (cli.py) reads what the kernel kept; these ask the firmware
itself, where the kernel has it mapped now: at its physical addresses until
``kinspect remap efi-runtime`` moves it, at the new ones after.
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any, TextIO

from .efi.runtime import EFI_GLOBAL_VARIABLE
from .formatting import format_hexdump
from .session import Session

__all__ = ["EFI_COMMANDS", "add_efi_parser"]

#: EFI_VARIABLE_* attribute bits (UEFI 2.10, 8.2).
VARIABLE_ATTRIBUTES = {
    0x1: "NV",
    0x2: "BS",
    0x4: "RT",
    0x8: "HW_ERROR",
    0x20: "TIME_AUTH",
    0x40: "APPEND",
}


def add_efi_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    sub.add_parser(
        "efi-time",
        parents=[common],
        help="GetTime, called by the agent through the firmware's current mapping (needs --agent)",
    )
    v = sub.add_parser(
        "efi-vars",
        parents=[common],
        help="the runtime-visible UEFI variables, or one read whole (needs --agent)",
    )
    v.add_argument("name", nargs="?", help="read this variable (default: list them all)")
    v.add_argument(
        "--guid",
        type=uuid.UUID,
        default=EFI_GLOBAL_VARIABLE,
        help=f"its vendor GUID (default {EFI_GLOBAL_VARIABLE}, EFI_GLOBAL_VARIABLE)",
    )


def _attributes(value: int) -> str:
    return "|".join(n for bit, n in VARIABLE_ATTRIBUTES.items() if value & bit) or "0"


def _dump(out: TextIO, command: str, session: Session, body: dict[str, Any]) -> None:
    from .cli import _dump as dump

    dump(out, command, session, body)


def cmd_efi_time(session: Session, args: argparse.Namespace, out: TextIO) -> int:
    now = session.efi_time()
    if args.json:
        _dump(out, "efi-time", session, {"efi_time": now.to_dict(), "problems": now.problems()})
    else:
        print(f"GetTime: {now}", file=out)
        for p in now.problems():
            print(f"  implausible: {p}", file=out)
    return 0 if not now.problems() else 1


def cmd_efi_vars(session: Session, args: argparse.Namespace, out: TextIO) -> int:
    if args.name:
        attributes, data = session.efi_variable(args.name, args.guid)
        if args.json:
            _dump(
                out,
                "efi-vars",
                session,
                {
                    "variable": {
                        "name": args.name,
                        "guid": str(args.guid),
                        "attributes": attributes,
                        "attribute_names": _attributes(attributes).split("|"),
                        "data": data.hex(),
                    }
                },
            )
        else:
            print(
                f"{args.name} {args.guid} {_attributes(attributes)} ({len(data)} bytes)", file=out
            )
            for line in format_hexdump(0, data).splitlines():
                print(f"  {line}", file=out)
        return 0
    names = session.efi_variable_names()
    if args.json:
        _dump(
            out, "efi-vars", session, {"variables": [{"name": n, "guid": str(g)} for n, g in names]}
        )
    else:
        print(f"{len(names)} runtime-visible variables (GetNextVariableName):", file=out)
        for n, g in names:
            print(f"  {g}  {n}", file=out)
    return 0


EFI_COMMANDS = {"efi-time": cmd_efi_time, "efi-vars": cmd_efi_vars}
