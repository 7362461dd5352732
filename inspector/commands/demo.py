"""``kinspect demo``: boot the demo kernel in QEMU and inspect it.

In a terminal it opens the TUI (the ``tui`` command the TUI registers, if
installed); piped, or with ``--report`` or ``--json``, it prints a report.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from ..errors import InspectorError
from ..formatting import format_json, format_translation, json_document
from . import Command, CommandResult, Context, Needs
from .paging import pt_document, regs_document, render_pt, render_regs

__all__ = ["COMMANDS"]


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep", action="store_true", help="leave QEMU running afterwards")
    parser.add_argument("--memory", help="guest RAM (default 128M, 256M with --uefi)")
    parser.add_argument(
        "--uefi",
        action="store_true",
        help="boot the demo kernel through UEFI (OVMF on q35, make -C kernel-agent uefi)",
    )
    parser.add_argument("--kernel", help="boot this kernel image instead of the demo kernel")
    parser.add_argument(
        "--report",
        action="store_true",
        help="print a report instead of opening the TUI (the default when stdout is not a "
        "terminal)",
    )


def run_demo(context: Context) -> CommandResult:
    from .. import api

    args = context.args
    kernel = args.kernel or str(api.DEMO_KERNEL)
    if args.kernel is None and not api.DEMO_KERNEL.is_file():
        raise InspectorError(f"the demo kernel is not built ({api.DEMO_KERNEL}); run `make kernel`")
    if not (args.report or args.json) and context.interactive:
        tui = context.registry.get("tui")
        if tui is None:
            raise InspectorError(
                "the TUI is not installed (no `tui` command registered): "
                "kinspect demo --report prints the report instead"
            )
        return _demo_tui(context, tui, kernel)
    return _demo_report(context, kernel)


def _elf(args: argparse.Namespace, kernel: str) -> str | None:
    elf: str | None = args.elf or (kernel if args.kernel is None else None)
    return elf


def _demo_report(context: Context, kernel: str) -> CommandResult:
    from .. import api

    args = context.args
    emit = context.emit
    qemu = _launch(args, kernel)
    try:
        session = api.attach(qemu.gdb_endpoint, elf=_elf(args, kernel), timeout=args.timeout)
        try:
            description = session.target.description
            if args.json:
                emit(format_json(json_document("regs", description, regs_document(session)))[:-1])
                emit(format_json(json_document("pt", description, pt_document(session)))[:-1])
            else:
                emit(f"attached: {description}, QEMU pid {qemu.pid}")
                emit("== registers ==")
                emit(render_regs(session))
                emit("\n== page tables ==")
                emit(render_pt(session))
                if session.symbols:
                    emit("\n== where the kernel's entry point lives ==")
                    entry = session.symbols.lookup("kernel_main")
                    if entry is not None:
                        emit(format_translation(session.translate(entry)))
                if args.uefi:
                    runtime = session.efi_memory_map().runtime
                    emit("\n== the firmware's runtime regions (kinspect efi-map) ==")
                    emit("\n".join(str(d) for d in runtime))
        finally:
            session.close(resume=True)
        if args.keep:
            uefi_hint = (
                f"  kinspect --agent {qemu.agent_endpoint} remap efi-runtime   "
                "(SetVirtualAddressMap)\n"
                if args.uefi
                else ""
            )
            emit(
                f"\nQEMU keeps running (pid {qemu.pid}). Try:\n"
                f"  kinspect --target {qemu.gdb_endpoint} --elf {kernel} vtop kernel_main\n"
                f"  kinspect --agent {qemu.agent_endpoint} --elf {kernel} pt   (no gdb)\n"
                f"{uefi_hint}"
                f"stop it with: kill {qemu.pid}"
            )
            qemu.process = None  # hand it over: do not stop it on exit
    finally:
        if not args.keep:
            qemu.stop()
    return context.result(None, None)


def _demo_tui(context: Context, tui: Command, kernel: str) -> CommandResult:
    """``kinspect demo`` in a terminal: boot the demo kernel and open the TUI on it."""
    args = context.args
    qemu = _launch(args, kernel)
    try:
        # the demo kernel's agent on COM1 beside the stub: the stub stays the primary
        # target (breakpoints, stepping), the agent applies remaps
        tui_args = argparse.Namespace(
            command="tui",
            target=qemu.gdb_endpoint,
            agent=qemu.agent_endpoint if args.kernel is None else None,
            elf=_elf(args, kernel),
            phys_base=None,
            timeout=args.timeout,
            no_resume=False,
            json=False,
            slide=None,
        )

        def hang_up(signum: int, frame: object) -> None:
            raise SystemExit(128 + signum)  # the terminal closed: stop QEMU on the way out

        signal.signal(signal.SIGHUP, hang_up)
        tui.run(Context(tui_args, None, context.registry, interactive=True, name="tui"))
        if args.keep:
            print(
                f"QEMU keeps running (pid {qemu.pid}): kinspect --target {qemu.gdb_endpoint}"
                f" --elf {kernel} tui",
                file=sys.stderr,
            )
            qemu.process = None
    finally:
        if not args.keep:
            qemu.stop()
    return context.result(None, None)


def _launch(args: argparse.Namespace, kernel: str) -> Any:
    """PVH (``-kernel``), or with ``--uefi`` the same demo kernel through OVMF."""
    from .. import api

    if args.uefi:
        if args.kernel is not None:
            raise InspectorError("--uefi boots the demo kernel's BOOTX64.EFI: drop --kernel")
        print(f"booting {api.DEMO_UEFI} through OVMF in QEMU (TCG)...", file=sys.stderr)
        return api.launch_demo(uefi=True, memory=args.memory or "256M", timeout=90.0)
    print(f"booting {kernel} in QEMU (TCG)...", file=sys.stderr)
    return api.launch_qemu(kernel, memory=args.memory or "128M", wait_ready=args.kernel is None)


COMMANDS = [
    Command(
        "demo",
        "boot the demo kernel in QEMU and inspect it",
        run_demo,
        _arguments,
        needs=Needs.NOTHING,
        on_line=False,
    ),
]
