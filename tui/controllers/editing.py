"""Changing the kernel from the TUI: ``:write ADDR HEX...`` (or ``--u8``..``--u64 VALUE``,
``--physical``) and ``:set REG VALUE``, each after a confirmation dialog.

The bytes or the register are read first (an unmapped or non-canonical address
is refused there, with the session's error); the dialog shows old and new;
``y`` writes through ``Session.write_memory`` / ``Session.set_register`` (read
back, and appended to the writes log that ``:writes`` lists), then every view
reads again.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from kinspect.inspector.commands.edit import TYPED, encode_write, parse_value
from kinspect.inspector.errors import InspectorError
from kinspect.inspector.session import Session
from kinspect.inspector.writes import writes_log

from ..screens.confirm import ConfirmScreen

if TYPE_CHECKING:
    from ..app import KinspectApp

__all__ = ["COMMANDS", "EditingController", "parse_write"]


def parse_write(argument: str) -> tuple[str, bytes, bool]:
    """``ADDR HEX...`` or ``ADDR --u32 VALUE``, ``--physical`` anywhere: (address text,
    bytes, physical). InspectorError for anything else."""
    try:
        words = shlex.split(argument)
    except ValueError as exc:
        raise InspectorError(str(exc)) from None
    physical = False
    typed: tuple[str, str] | None = None
    rest: list[str] = []
    at = 0
    while at < len(words):
        word = words[at]
        if word == "--physical":
            physical = True
        elif word.startswith("--") and word[2:] in TYPED:
            if typed is not None or at + 1 >= len(words):
                raise InspectorError(f"{word} takes one value (and only one typed value is given)")
            typed = (word[2:], words[at + 1])
            at += 1
        elif word.startswith("--"):
            raise InspectorError(f"write takes --u8, --u16, --u32, --u64 or --physical, not {word}")
        else:
            rest.append(word)
        at += 1
    if not rest:
        raise InspectorError("write needs an address, then hex bytes or --u64 VALUE")
    return rest[0], encode_write(rest[1:], typed), physical


class EditingController:
    """write and set for the ``:`` line: read, confirm, change, read everything again."""

    def __init__(self, app: KinspectApp) -> None:
        self.app = app

    def _confirm_then(
        self, title: str, question: str, change: Callable[[Session], Any], said: str
    ) -> None:
        app = self.app

        def answered(yes: bool | None) -> None:
            if not yes:
                app.notify("nothing written")
                return

            def done(_: Any) -> None:
                app.notify(f"{said} (recorded in {writes_log()})")
                app.action_refresh()

            def failed(error: BaseException) -> None:
                app.report_failure(error)
                app.action_refresh()

            app.submit("write", change, done, failed=failed)

        app.push_screen(ConfirmScreen(title, question), answered)

    def write(self, argument: str) -> None:
        try:
            where, data, physical = parse_write(argument)
        except InspectorError as exc:
            self.app.report_failure(exc)
            return
        resolve = self.app.resolve

        def read(session: Session) -> tuple[int, bytes]:
            address = resolve(session, where)
            reader = session.read_physical if physical else session.read_virtual
            return address, reader(address, len(data))

        def ask(result: tuple[int, bytes]) -> None:
            address, old = result
            space = "physical" if physical else "virtual"
            question = f"at {space} {address:#x}\nold: {old.hex(' ')}\nnew: {data.hex(' ')}"
            self._confirm_then(
                f"Write {len(data)} bytes?",
                question,
                lambda session: session.write_memory(address, data, physical=physical),
                f"wrote {len(data)} bytes at {address:#x}",
            )

        self.app.submit("read", read, ask)

    def set_register(self, argument: str) -> None:
        words = argument.split()
        if len(words) != 2:
            self.app.report_failure(InspectorError("set needs a register and a value: set rax 0x1"))
            return
        name = words[0].lstrip("$").lower()
        name = "rflags" if name == "eflags" else name
        try:
            value = parse_value(words[1])
        except InspectorError as exc:
            self.app.report_failure(exc)
            return

        def read(session: Session) -> tuple[int, int]:
            regs = session.registers()
            if name not in regs:
                raise InspectorError(f"no register {name!r} here (the registers view lists them)")
            return session.cpu, regs[name]

        def ask(result: tuple[int, int]) -> None:
            cpu, old = result
            self._confirm_then(
                f"Set {name} on CPU {cpu}?",
                f"old: {old:#018x}\nnew: {value:#018x}",
                lambda session: session.set_register(name, value),
                f"{name} = {value:#x}",
            )

        self.app.submit("read", read, ask)


#: ``:`` verbs: (run(app, argument), what the argument is when one is needed)
COMMANDS: Mapping[str, tuple[Callable[[KinspectApp, str], None], str | None]] = {
    "write": (
        lambda app, arg: EditingController(app).write(arg),
        "an address, then hex bytes or --u8/--u16/--u32/--u64 VALUE",
    ),
    "set": (
        lambda app, arg: EditingController(app).set_register(arg),
        "a register and a value (set rax 0x1)",
    ),
}
