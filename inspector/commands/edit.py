"""Changing the kernel: ``set REG VALUE``, ``write ADDR HEX...`` (or ``--u64 VALUE``...),
and ``writes``, the record of every change.

Each change is shown before it is made (old and new) and made on confirmation
(``--yes`` to skip the question; nobody to ask, as in a pipe, means no). It is
read back, and appended with the old and new bytes or values, the time, the
CPU and the target to the writes log (``$XDG_STATE_HOME/kinspect/writes.log``,
``inspector/writes.py``), which ``writes`` lists. Addresses that are not
canonical or not mapped are refused before anything is written.
"""

from __future__ import annotations

import argparse
import struct

from ..errors import InspectorError
from ..numbers import parse_number
from . import Command, CommandResult, Context, Needs, apply_slide

__all__ = ["COMMANDS", "TYPED", "encode_write", "parse_value"]

#: ``--u8`` ... ``--u64``: little-endian, as x86 stores them.
TYPED = {"u8": "<B", "u16": "<H", "u32": "<I", "u64": "<Q"}


def parse_value(text: str, bits: int = 64) -> int:
    """A value for a ``bits``-bit field: a number (negative ones in two's complement)."""
    try:
        value = parse_number(text)
    except ValueError:
        raise InspectorError(f"{text!r} is not a number") from None
    if value < 0:
        if value < -(1 << (bits - 1)):
            raise InspectorError(f"{text} does not fit {bits} bits")
        value += 1 << bits
    if value >= 1 << bits:
        raise InspectorError(f"{text} does not fit {bits} bits")
    return value


def encode_write(hex_words: list[str], typed: tuple[str, str] | None = None) -> bytes:
    """The bytes to write: hex words (``90 90``, ``deadbeef``, ``0xcc``), or one typed
    value (``("u32", "0x1234")``), not both."""
    if typed is not None:
        if hex_words:
            raise InspectorError("give hex bytes or a typed value (--u8 ... --u64), not both")
        kind, text = typed
        return struct.pack(TYPED[kind], parse_value(text, struct.calcsize(TYPED[kind]) * 8))
    if not hex_words:
        raise InspectorError("give the bytes to write (hex: 90 90, deadbeef) or --u64 VALUE")
    out = bytearray()
    for word in hex_words:
        digits = word.lower().removeprefix("0x").replace("_", "")
        if len(digits) % 2:
            raise InspectorError(f"{word!r}: hex bytes come in pairs of digits")
        try:
            out += bytes.fromhex(digits)
        except ValueError:
            raise InspectorError(f"{word!r} is not hex bytes") from None
    return bytes(out)


def _confirmed(context: Context, question: str) -> None:
    if getattr(context.args, "yes", False):
        return
    if not context.confirm(f"{question}? [y/N] "):
        raise InspectorError("nothing written: confirm at a terminal, or pass --yes")


class _FlagThenBytes(argparse.Action):
    """A flag (``--yes``, ``--physical``) that may be followed by more hex bytes: argparse
    takes a command's positionals in one go, so ``write ADDR --physical 01 02`` would
    leave ``01 02`` over; here they join the bytes."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs="*", default=False, **kwargs)  # type: ignore[arg-type]

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, True)
        if isinstance(values, list) and values:
            namespace.bytes = [*(namespace.bytes or []), *values]


def _yes(parser: argparse.ArgumentParser, *, bytes_follow: bool = False) -> None:
    if bytes_follow:
        parser.add_argument(
            "--yes", "-y", action=_FlagThenBytes, metavar="HEX", help="do not ask before writing"
        )
    else:
        parser.add_argument("--yes", "-y", action="store_true", help="do not ask before writing")


def _set_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("register", metavar="REG", help="a register: rax, rip, rflags, cr3 ...")
    parser.add_argument("value", metavar="VALUE", help="its new value (0x..., decimal, -1)")
    _yes(parser)


def run_set(context: Context) -> CommandResult:
    from ..writes import writes_log  # the writes log: imported by the commands that use it

    session = context.need_session()
    name = context.args.register.strip().lstrip("$").lower()
    value = parse_value(context.args.value)
    old = session.registers().get("rflags" if name == "eflags" else name)
    if old is None:
        raise InspectorError(f"no register {name!r} here (kinspect regs lists them)")
    _confirmed(context, f"set {name} from {old:#x} to {value:#x} on CPU {session.cpu}")
    old = session.set_register(name, value)
    body = {
        "register": name,
        "old": old,
        "new": value,
        "cpu": session.cpu,
        "log": str(writes_log()),
    }
    return context.result(body, f"{name}: {old:#x} -> {value:#x} (recorded in {writes_log()})")


def _write_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("address", metavar="ADDR", help="an address or a symbol")
    parser.add_argument("bytes", nargs="*", metavar="HEX", help="bytes in hex: 90 90, deadbeef")
    for kind in TYPED:
        parser.add_argument(
            f"--{kind}", metavar="VALUE", help=f"one {kind[1:]}-bit value, little-endian"
        )
    parser.add_argument(
        "--physical", action=_FlagThenBytes, metavar="HEX", help="a physical address"
    )
    _yes(parser, bytes_follow=True)


def run_write(context: Context) -> CommandResult:
    from ..writes import writes_log

    apply_slide(context)
    session = context.need_session()
    args = context.args
    typed = [(kind, getattr(args, kind)) for kind in TYPED if getattr(args, kind, None)]
    if len(typed) > 1:
        raise InspectorError("give one typed value (--u8, --u16, --u32 or --u64)")
    data = encode_write(list(args.bytes), typed[0] if typed else None)
    address = session.resolve(args.address)
    read = session.read_physical if args.physical else session.read_virtual
    before = read(address, len(data))  # refuses unmapped and non-canonical addresses
    space = "physical" if args.physical else "virtual"
    _confirmed(
        context,
        f"write {len(data)} bytes at {space} {address:#x}: {before.hex(' ')} -> {data.hex(' ')}",
    )
    old = session.write_memory(address, data, physical=args.physical)
    body = {
        "address": address,
        "physical": args.physical,
        "old": old.hex(),
        "new": data.hex(),
        "log": str(writes_log()),
    }
    text = f"{address:#x}: {old.hex(' ')} -> {data.hex(' ')} (recorded in {writes_log()})"
    return context.result(body, text)


def run_writes(context: Context) -> CommandResult:
    from ..writes import format_writes, read_writes, writes_log

    path = writes_log()
    records = list(read_writes(path))
    body = {"log": str(path), "writes": [r.to_dict() for r in records]}
    return context.result(body, format_writes(records, path))


COMMANDS = [
    Command("set", "set a register of the stopped CPU (asks first)", run_set, _set_arguments),
    Command(
        "write",
        "write memory: hex bytes or a typed value (asks first; recorded)",
        run_write,
        _write_arguments,
    ),
    Command(
        "writes",
        "every change kinspect made: where, old and new, when, which target",
        run_writes,
        needs=Needs.NOTHING,
    ),
]
