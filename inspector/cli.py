"""The ``kinspect`` command line: text for people, ``--json`` for scripts.

Every failure a user can cause (a bad address, a dead target, a port with
nothing listening) ends as one line on stderr and a non-zero exit status:
1 for target and address errors, 2 for usage errors. Never a traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from .cli_efi import EFI_COMMANDS
from .errors import InspectorError
from .formatting import (
    format_json,
    format_ranges,
    format_register,
    format_translation,
    json_document,
)
from .numbers import resolve_address
from .session import Session

__all__ = ["main"]


def _number(text: str) -> str:
    return text  # resolved by the session (numbers or symbols)


def _common_options(*, suppress: bool) -> argparse.ArgumentParser:
    """The options every command takes, before or after the command's name.

    The copy given to the subcommands has suppressed defaults, so an option
    given before the command is not reset by the subcommand's parser.
    """
    common = argparse.ArgumentParser(
        add_help=False, argument_default=argparse.SUPPRESS if suppress else None
    )
    common.add_argument(
        "--target",
        "-t",
        help="GDB remote stub: host:port, a unix socket path, or any spec gdb's "
        "'target remote' takes",
    )
    common.add_argument(
        "--agent",
        "-a",
        help="the in-kernel agent's serial line instead of a gdb stub: a device, "
        "tcp:HOST:PORT, unix:PATH, pty:PATH or a pyserial URL",
    )
    common.add_argument("--elf", help="the kernel's ELF file, for symbols")
    common.add_argument(
        "--phys-base",
        type=lambda s: int(s, 0),
        help="virtual base of the kernel's direct map, to read physical memory on stubs "
        "other than QEMU's",
    )
    common.add_argument("--json", action="store_true", help="print JSON (see docs/json.md)")
    common.add_argument(
        "--slide",
        help="load slide of the kernel (KASLR): a number, or SYMBOL=ADDRESS to compute it",
    )
    common.add_argument(
        "--no-resume",
        action="store_true",
        help="leave the kernel stopped on exit (default: let it run again)",
    )
    common.add_argument(
        "--timeout",
        type=float,
        help="seconds per target request (default 10)",
        **({} if suppress else {"default": 10.0}),
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_options(suppress=True)
    parser = argparse.ArgumentParser(
        prog="kinspect",
        description="Inspect a live x86_64 kernel: control registers, page tables.",
        parents=[_common_options(suppress=False)],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    demo = sub.add_parser(
        "demo", parents=[common], help="boot the demo kernel in QEMU and inspect it"
    )
    demo.add_argument("--keep", action="store_true", help="leave QEMU running afterwards")
    demo.add_argument("--memory", help="guest RAM (default 128M, 256M with --uefi)")
    demo.add_argument(
        "--uefi",
        action="store_true",
        help="boot the demo kernel through UEFI (OVMF on q35, make -C kernel-agent uefi)",
    )
    demo.add_argument("--kernel", help="boot this kernel image instead of the demo kernel")
    demo.add_argument(
        "--report",
        action="store_true",
        help="print a report instead of opening the TUI (the default when stdout is not a "
        "terminal)",
    )

    sub.add_parser("tui", parents=[common], help="the live TUI on a target (Textual)")

    sub.add_parser("regs", parents=[common], help="control and general registers, decoded")

    pt = sub.add_parser("pt", parents=[common], help="page tables as coalesced ranges")
    pt.add_argument("--leaves", action="store_true", help="one line per leaf instead of ranges")

    vtop = sub.add_parser("vtop", parents=[common], help="translate a virtual address, walk shown")
    vtop.add_argument("address", type=_number, help="virtual address or symbol")

    ptov = sub.add_parser("ptov", parents=[common], help="every virtual address of a physical one")
    ptov.add_argument("address", type=_number, help="physical address")

    sub.add_parser("gdt", parents=[common], help="the GDT and LDT, loaded selectors checked")
    sub.add_parser("idt", parents=[common], help="the IDT gate by gate, handlers symbolized")
    sub.add_parser("tss", parents=[common], help="the TSS: RSP0-2, IST1-7 and where they point")
    sub.add_parser(
        "efi-map",
        parents=[common],
        help="the UEFI memory map the kernel kept (runtime regions and where they are mapped)",
    )
    bt = sub.add_parser("bt", parents=[common], help="the stack frames of the stopped CPU")
    bt.add_argument("--max-depth", type=int, default=64, help="frames walked at most (default 64)")
    sym = sub.add_parser("sym", parents=[common], help="symbol+offset and file:line of addresses")
    sym.add_argument("addresses", nargs="+", metavar="ADDR", help="addresses or symbol names")
    from .cli_efi import add_efi_parser

    add_efi_parser(sub, common)
    from .cli_agent import add_agent_parser

    add_agent_parser(sub, common)
    from .cli_remap import add_remap_parser

    add_remap_parser(sub, common)
    return parser


# -- commands -----------------------------------------------------------------------


def cmd_regs(session: Session, args: argparse.Namespace, out: TextIO) -> int:
    control = session.control_registers()
    general = {k: v for k, v in session.registers().items() if not k.startswith(("cr", "efer"))}
    if args.json:
        _dump(
            out,
            "regs",
            session,
            {
                "control": {n: r.to_dict() for n, r in control.registers.items()},
                "paging": control.paging.to_dict(),
                "general": general,
            },
        )
        return 0
    for reg in control.registers.values():
        print(format_register(reg), file=out)
    print(f"paging: {control.paging}", file=out)
    names = list(general)
    for i in range(0, len(names), 4):
        print("  ".join(f"{n:>9}={general[n]:#018x}" for n in names[i : i + 4]), file=out)
    return 0


def cmd_pt(session: Session, args: argparse.Namespace, out: TextIO) -> int:
    space = session.address_space()
    control = session.control_registers()
    body: dict[str, Any] = {
        "cr3": control["CR3"].value,
        "paging": control.paging.to_dict(),
        "leaf_count": len(space.leaves),
        "truncated": space.truncated,
        "problems": [p.to_dict() for p in space.problems],
    }
    if args.json:
        if args.leaves:
            body["leaves"] = [leaf.to_dict() for leaf in space.leaves]
        else:
            body["ranges"] = [r.to_dict() for r in session.ranges()]
        _dump(out, "pt", session, body)
        return 0
    print(f"CR3={control['CR3'].value:#x}  {control.paging}", file=out)
    if args.leaves:
        for leaf in space.leaves:
            print(str(leaf), file=out)
    else:
        print(format_ranges(session.ranges()), file=out)
    ranges = len(session.ranges())
    print(f"{len(space.leaves)} leaves in {ranges} ranges", file=out)
    for problem in space.problems:
        print(f"problem: {problem}", file=out)
    if space.truncated:
        print(
            "the walk stopped early (entry budget exhausted): the tables loop or are garbage",
            file=out,
        )
    return 0


def cmd_vtop(session: Session, args: argparse.Namespace, out: TextIO) -> int:
    virtual = session.resolve(args.address)
    translation = session.translate(virtual)
    if args.json:
        _dump(out, "vtop", session, translation.to_dict())
    else:
        print(format_translation(translation), file=out)
    if not translation.ok:
        if args.json:
            return 1
        raise InspectorError(f"{virtual:#x} does not translate: {translation.fault}")
    return 0


def cmd_ptov(session: Session, args: argparse.Namespace, out: TextIO) -> int:
    physical = session.resolve(args.address)
    aliases = session.aliases(physical)
    if args.json:
        _dump(out, "ptov", session, {"physical": physical, "virtual": aliases})
        return 0 if aliases else 1
    if not aliases:
        raise InspectorError(f"no virtual address maps physical {physical:#x}")
    symbols = session.symbols
    for va in aliases:
        name = f"  {symbols.format_address(va)}" if symbols and symbols.symbolize(va) else ""
        print(f"{va:#018x}{name}", file=out)
    return 0


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    from . import api

    kernel = args.kernel or str(api.DEMO_KERNEL)
    elf = args.elf or (kernel if args.kernel is None else None)
    if args.kernel is None and not api.DEMO_KERNEL.is_file():
        raise InspectorError(f"the demo kernel is not built ({api.DEMO_KERNEL}); run `make kernel`")
    qemu = _launch_demo_qemu(args, kernel)
    try:
        session = api.attach(qemu.gdb_endpoint, elf=elf, timeout=args.timeout)
        try:
            if not args.json:
                print(f"attached: {session.target.description}, QEMU pid {qemu.pid}", file=out)
                print("== registers ==", file=out)
            cmd_regs(session, args, out)
            if not args.json:
                print("\n== page tables ==", file=out)
            args.leaves = False
            cmd_pt(session, args, out)
            if not args.json and session.symbols:
                print("\n== where the kernel's entry point lives ==", file=out)
                entry = session.symbols.lookup("kernel_main")
                if entry is not None:
                    print(format_translation(session.translate(entry)), file=out)
            if not args.json and getattr(args, "uefi", False):
                runtime = session.efi_memory_map().runtime
                print("\n== the firmware's runtime regions (kinspect efi-map) ==", file=out)
                print("\n".join(str(d) for d in runtime), file=out)
        finally:
            session.close(resume=True)
        if args.keep:
            uefi_hint = (
                f"  kinspect --agent {qemu.agent_endpoint} remap efi-runtime   "
                "(SetVirtualAddressMap)\n"
                if getattr(args, "uefi", False)
                else ""
            )
            print(
                f"\nQEMU keeps running (pid {qemu.pid}). Try:\n"
                f"  kinspect --target {qemu.gdb_endpoint} --elf {kernel} vtop kernel_main\n"
                f"  kinspect --agent {qemu.agent_endpoint} --elf {kernel} pt   (no gdb)\n"
                f"{uefi_hint}"
                f"stop it with: kill {qemu.pid}",
                file=out,
            )
            qemu.process = None  # hand it over: do not stop it on exit
    finally:
        if not args.keep:
            qemu.stop()
    return 0


def _launch_demo_qemu(args: argparse.Namespace, kernel: str) -> Any:
    """PVH (``-kernel``), or with ``--uefi`` the same demo kernel through OVMF."""
    from . import api

    if getattr(args, "uefi", False):
        if args.kernel is not None:
            raise InspectorError("--uefi boots the demo kernel's BOOTX64.EFI: drop --kernel")
        print(f"booting {api.DEMO_UEFI} through OVMF in QEMU (TCG)...", file=sys.stderr)
        return api.launch_demo(uefi=True, memory=args.memory or "256M", timeout=90.0)
    print(f"booting {kernel} in QEMU (TCG)...", file=sys.stderr)
    return api.launch_qemu(kernel, memory=args.memory or "128M", wait_ready=args.kernel is None)


def _apply_slide(session: Session, args: argparse.Namespace) -> None:
    """``--slide 0x200000`` or ``--slide _text=0xffffffff9a000000``."""
    text = getattr(args, "slide", None)
    if not text:
        return
    symbols = session.symbols
    if symbols is None:
        raise InspectorError("--slide needs the kernel's symbols: pass --elf")
    name, sep, value = text.partition("=")
    try:
        if sep:
            slide = symbols.slide_for(name, int(value, 0))
        else:
            slide = int(text, 0)
    except ValueError:
        raise InspectorError(f"--slide {text!r}: give a number or SYMBOL=ADDRESS") from None
    session.set_slide(slide)


def cmd_gdt(session: Session, args: argparse.Namespace, out: TextIO) -> int:
    gdt = session.gdt()
    ldt = session.ldt()
    if args.json:
        _dump(out, "gdt", session, {"gdt": gdt.to_dict(), "ldt": ldt.to_dict() if ldt else None})
        return 0
    print(gdt, file=out)
    print(ldt if ldt else "LDT: none (LDTR is null)", file=out)
    return 0


def cmd_idt(session: Session, args: argparse.Namespace, out: TextIO) -> int:
    _apply_slide(session, args)
    idt = session.idt()
    if args.json:
        _dump(out, "idt", session, {"idt": idt.to_dict()})
    else:
        print(idt, file=out)
    return 0


def cmd_tss(session: Session, args: argparse.Namespace, out: TextIO) -> int:
    _apply_slide(session, args)
    tss = session.tss()
    if args.json:
        _dump(out, "tss", session, {"tss": tss.to_dict()})
    else:
        print(tss, file=out)
    return 0


def cmd_efi_map(session: Session, args: argparse.Namespace, out: TextIO) -> int:
    memory_map = session.efi_memory_map()
    attributes = session.efi_memory_attributes()
    if args.json:
        body = {
            "efi_memory_map": memory_map.to_dict(),
            "efi_memory_attributes": attributes.to_dict() if attributes else None,
        }
        _dump(out, "efi-map", session, body)
    else:
        print(memory_map, file=out)
        print(f"\n{attributes}" if attributes else "\nno memory attributes table", file=out)
    return 0


def cmd_bt(session: Session, args: argparse.Namespace, out: TextIO) -> int:
    _apply_slide(session, args)
    if session.symbols is None and not args.json:
        print("(no --elf: frames without names, frame pointers only)", file=sys.stderr)
    backtrace = session.backtrace(max_depth=args.max_depth)
    if args.json:
        _dump(out, "bt", session, {"backtrace": backtrace.to_dict()})
    else:
        print(backtrace, file=out)
    return 0


def cmd_sym(session: Session | None, args: argparse.Namespace, out: TextIO) -> int:
    """Symbolize with a session, or with the ELF alone when no --target is given."""
    from .symbols import SymbolTable

    if session is None:
        if not args.elf:
            raise InspectorError("sym needs --elf (the kernel's ELF file)")
        symbols = SymbolTable.from_elf(args.elf)
        holder = _SymbolsOnly(symbols)
    else:
        holder = session
    _apply_slide(holder, args)  # type: ignore[arg-type]
    found = [holder.addr2sym(holder.resolve(text)) for text in args.addresses]
    if args.json:
        target = session.target.description if session else None
        out.write(
            format_json(json_document("sym", target, {"addresses": [f.to_dict() for f in found]}))
        )
    else:
        for item in found:
            print(item, file=out)
    return 0


class _SymbolsOnly:
    """What cmd_sym needs of a session, from the ELF alone."""

    def __init__(self, symbols: Any) -> None:
        self.symbols = symbols

    def set_slide(self, slide: int) -> None:
        self.symbols = self.symbols.with_slide(slide)

    def addr2sym(self, address: int) -> Any:
        return self.symbols.addr2sym(address)

    def resolve(self, text: str) -> int:
        return resolve_address(text, self.symbols.lookup)


def _interactive() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def _run_tui(connect: Callable[[], Session], *, resume: bool) -> int:
    """Open the TUI; imported here so the headless commands never load Textual."""
    from kinspect.tui.app import make_app

    session = connect()
    make_app(session, connect=connect, resume_on_exit=resume).run()
    return 0


def cmd_tui(args: argparse.Namespace) -> int:
    from . import api

    agent = getattr(args, "agent", None)

    def connect() -> Session:
        if agent and args.target:  # the stub reads and runs, the agent adds what it cannot see
            return api.attach_with_agent(
                args.target, agent, elf=args.elf, phys_base=args.phys_base, timeout=args.timeout
            )
        if agent:  # the kernel's console text would draw over the screen: dropped
            return api.attach_agent(agent, elf=args.elf, timeout=args.timeout, on_console=None)
        return api.attach(args.target, elf=args.elf, phys_base=args.phys_base, timeout=args.timeout)

    return _run_tui(connect, resume=not args.no_resume)


def cmd_demo_tui(args: argparse.Namespace) -> int:
    """``kinspect demo`` in a terminal: boot the demo kernel and open the TUI on it."""
    from . import api

    kernel = args.kernel or str(api.DEMO_KERNEL)
    elf = args.elf or (kernel if args.kernel is None else None)
    if args.kernel is None and not api.DEMO_KERNEL.is_file():
        raise InspectorError(f"the demo kernel is not built ({api.DEMO_KERNEL}); run `make kernel`")
    qemu = _launch_demo_qemu(args, kernel)
    try:

        def connect() -> Session:
            if args.kernel is None:
                # the demo kernel's agent on COM1 beside the stub: the stub stays the
                # primary target (breakpoints, stepping), the agent applies remaps (7)
                return api.attach_with_agent(
                    qemu.gdb_endpoint, qemu.agent_endpoint, elf=elf, timeout=args.timeout
                )
            return api.attach(qemu.gdb_endpoint, elf=elf, timeout=args.timeout)

        def hang_up(signum: int, frame: object) -> None:
            raise SystemExit(128 + signum)  # the terminal closed: stop QEMU on the way out

        signal.signal(signal.SIGHUP, hang_up)
        _run_tui(connect, resume=True)
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
    return 0


def _dump(out: TextIO, command: str, session: Session, body: dict[str, Any]) -> None:
    out.write(format_json(json_document(command, session.target.description, body)))


COMMANDS: dict[str, Callable[[Session, argparse.Namespace, TextIO], int]] = {
    "regs": cmd_regs,
    "pt": cmd_pt,
    "vtop": cmd_vtop,
    "ptov": cmd_ptov,
    "gdt": cmd_gdt,
    "idt": cmd_idt,
    "tss": cmd_tss,
    "efi-map": cmd_efi_map,
    "bt": cmd_bt,
    "sym": cmd_sym,
}
COMMANDS.update(EFI_COMMANDS)


def run(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        if not (args.report or args.json) and out is sys.stdout and _interactive():
            return cmd_demo_tui(args)
        return cmd_demo(args, out)
    if args.command == "tui":
        if not (args.target or getattr(args, "agent", None)):
            parser.error("tui needs --target (a gdb stub) or --agent (the in-kernel agent)")
        return cmd_tui(args)
    if args.command == "sym" and not args.target:
        return cmd_sym(None, args, out)  # symbols need only the ELF
    if args.command == "remap":
        from .cli_remap import run_remap

        return run_remap(parser, args, out)
    if args.command == "agent" or args.agent:
        from .cli_agent import run_agent

        return run_agent(parser, args, out, COMMANDS)
    if args.command in EFI_COMMANDS:
        parser.error(f"{args.command} calls the firmware through the in-kernel agent: give --agent")
    if not args.target:
        parser.error(f"{args.command} needs --target (a gdb stub: host:port or a socket path)")
    from . import api

    session = api.attach(args.target, elf=args.elf, phys_base=args.phys_base, timeout=args.timeout)
    try:
        return COMMANDS[args.command](session, args, out)
    finally:
        session.close(resume=not args.no_resume)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(argv)
    except InspectorError as exc:
        print(f"kinspect: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kinspect: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
