"""The ``:`` command line: one table of the TUI's own commands, and the panes' commands.

A verb is looked up in :data:`COMMANDS` (run control, breakpoints, export,
screens), then in the panes' ``COMMANDS`` (``vtop``, ``ptov``, ``mem``, ``phys``,
``efi``: the pane shown, or the first pane that answers the verb). Every
error is one line through the app's failure handler.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kinspect.inspector.errors import InspectorError

if TYPE_CHECKING:
    from .app import KinspectApp

__all__ = ["COMMANDS", "TuiCommand", "run_command"]


@dataclass(frozen=True, slots=True)
class TuiCommand:
    """``run(app, argument)``; ``needs``: what the argument is, when there must be one."""

    run: Callable[[KinspectApp, str], None]
    needs: str | None = None


def _delete(app: KinspectApp, argument: str, verb: str = "delete") -> None:
    words = argument.replace(",", " ").split()
    if words == ["all"]:
        app.breakpoints.delete(None)
    elif words and all(w.isdigit() for w in words):
        app.breakpoints.delete(tuple(int(w) for w in words))
    else:
        app.report_failure(
            InspectorError(f"{verb} needs breakpoint numbers or 'all' (breakpoints lists them)")
        )


def _aliases(command: TuiCommand, *names: str) -> dict[str, TuiCommand]:
    return dict.fromkeys(names, command)


COMMANDS: Mapping[str, TuiCommand] = {
    **_aliases(
        TuiCommand(lambda app, arg: app.set_breakpoint(arg), "an address or a symbol"),
        "break",
        "b",
    ),
    **_aliases(TuiCommand(lambda app, arg: app.breakpoints.open()), "breakpoints", "bl"),
    "delete": TuiCommand(_delete),
    "d": TuiCommand(lambda app, arg: _delete(app, arg, "d")),
    **_aliases(TuiCommand(lambda app, arg: app.action_resume()), "continue", "c"),
    **_aliases(TuiCommand(lambda app, arg: app.action_interrupt()), "stop", "interrupt"),
    **_aliases(TuiCommand(lambda app, arg: app.action_step()), "step", "si", "stepi"),
    "refresh": TuiCommand(lambda app, arg: app.action_refresh()),
    "reconnect": TuiCommand(lambda app, arg: app.action_reconnect()),
    "export": TuiCommand(lambda app, arg: app.action_export_text()),
    "svg": TuiCommand(lambda app, arg: app.action_export_svg()),
    "help": TuiCommand(lambda app, arg: app.action_help()),
    "remap": TuiCommand(lambda app, arg: app.action_remap()),
}


def run_command(app: KinspectApp, text: str) -> None:
    """One command line: the same verbs as the CLI, and run control."""
    verb, _, argument = text.partition(" ")
    verb = verb.lower()
    argument = argument.strip()
    command = COMMANDS.get(verb)
    panes = [pane for pane in app.panes if verb in pane.COMMANDS]
    if command is None and panes:
        active = app.active_pane
        pane = active if active in panes else panes[0]
        method = getattr(pane, pane.COMMANDS[verb])
        command = TuiCommand(lambda app, arg: method(arg), pane.NEEDS_ARGUMENT.get(verb))
    if command is None:
        app.report_failure(InspectorError(f"unknown command {verb!r} (try help)"))
    elif command.needs and not argument:
        app.report_failure(InspectorError(f"{verb} needs {command.needs}"))
    else:
        command.run(app, argument)
