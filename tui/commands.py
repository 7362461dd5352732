"""The ``:`` command line: the TUI's own commands in one table, the panes', then the registry's.

A verb is looked up in :data:`COMMANDS` (run control, breakpoints, catchpoints,
export, screens), then in the panes' ``COMMANDS`` (``vtop``, ``ptov``, ``mem``, ``phys``,
``efi``: the pane shown, or the first pane that answers the verb; they show
their answer in the pane), then in the command registry
(:mod:`kinspect.inspector.commands`): ``pt``, ``gdt``, ``bt``, ``efi-map``...
run as ``kinspect`` runs them, with the same parsing and the same errors, in
the thread that owns the session, and their text is shown in a screen of
its own. Every error is one line through the app's failure handler.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from textual.app import SystemCommand

from kinspect.inspector.commands import CommandResult, registry
from kinspect.inspector.errors import InspectorError
from kinspect.inspector.fault import Catchpoint
from kinspect.inspector.numbers import parse_number
from kinspect.inspector.session import Session

from .controllers import COMMANDS as CONTROLLER_COMMANDS
from .panes import PANES
from .screens.crash import open_crash
from .screens.output import OutputScreen

if TYPE_CHECKING:
    from .app import KinspectApp

__all__ = ["COMMANDS", "TuiCommand", "palette", "run_command"]


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


def _cpu(app: KinspectApp, argument: str) -> None:
    if argument.isdigit():
        app.select_cpu(int(argument))
    else:
        app.report_failure(InspectorError("cpu needs a CPU number (cpus lists them)"))


def _catch(app: KinspectApp, argument: str) -> None:
    """``catch VECTOR|all``: catchpoints on the IDT's handlers, then continue.

    The stop at the handler's entry is shown like any other; the fault pane
    explains it and is shown at once. (The registry's ``catch`` would wait for
    the stop in the owner thread; here the app waits, as for ``continue``.)
    """
    text = argument.strip()
    vector: int | None = None
    if text.lower() != "all":
        try:
            vector = parse_number(text)
        except ValueError:
            app.report_failure(InspectorError(f"{text!r} is not a vector (0..255, or 'all')"))
            return

    def done(catchpoints: list[Catchpoint]) -> None:
        for catchpoint in catchpoints:
            app.notify(str(catchpoint))
        app.action_resume()

    app.submit("catch", lambda session: session.catch(vector), done)


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
    "cpu": TuiCommand(_cpu, "a CPU number (cpus lists them)"),
    "refresh": TuiCommand(lambda app, arg: app.action_refresh()),
    "reconnect": TuiCommand(lambda app, arg: app.action_reconnect()),
    "export": TuiCommand(lambda app, arg: app.action_export_text(arg)),
    "svg": TuiCommand(lambda app, arg: app.action_export_svg(arg)),
    "help": TuiCommand(lambda app, arg: app.action_help()),
    "remap": TuiCommand(lambda app, arg: app.action_remap()),
    "catch": TuiCommand(_catch, "a vector (14, 0xe) or 'all'"),
    "triple": TuiCommand(lambda app, arg: open_crash(app, arg or None)),
    **{verb: TuiCommand(*entry) for verb, entry in CONTROLLER_COMMANDS.items()},
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
    if command is None and _registered(verb):
        command = TuiCommand(lambda app, arg: run_registered(app, text))
    if command is None:
        app.report_failure(InspectorError(f"unknown command {verb!r} (try help)"))
    elif command.needs and not argument:
        app.report_failure(InspectorError(f"{verb} needs {command.needs}"))
    else:
        command.run(app, argument)


def _registered(verb: str) -> bool:
    commands = registry()
    return verb in commands.commands or verb in commands.pending


def run_registered(app: KinspectApp, line: str) -> None:
    """A registry command, as ``kinspect`` runs it; its text in a screen, its error one line.

    The registry refuses the commands that attach a target of their own (``demo``, ``tui``).
    """
    verb = line.split()[0].lower()

    def work(session: Session) -> CommandResult:
        return registry().execute(session, line)

    def done(result: CommandResult) -> None:
        if result.text:
            app.push_screen(OutputScreen(line, result.text))
        if result.error:
            app.report_failure(InspectorError(result.error))

    app.submit(verb, work, done)


def palette(app: KinspectApp) -> Iterator[SystemCommand]:
    """The command palette (ctrl+p): run control, prompts, screens, then one entry per pane."""
    yield SystemCommand("Continue", "Let the kernel run (c)", app.action_resume)
    yield SystemCommand("Stop", "Interrupt the kernel (p)", app.action_interrupt)
    yield SystemCommand("Single step", "Execute one instruction (s)", app.action_step)
    yield SystemCommand("Next", "Step over one source line, calls included (n)", app.action_next)
    yield SystemCommand("Finish", "Run until the function returns (f)", app.action_finish)
    for title, help_text, prefix in (
        ("Breakpoint", "Break on a symbol or address (b)", "break "),
        ("vtop", "Translate a virtual address (v)", "vtop "),
        ("ptov", "Virtual aliases of a physical address (o)", "ptov "),
        ("Memory", "Hex view at an address (m)", "mem "),
        ("CPU", "Read another CPU: every view reads again ([ ])", "cpu "),
        ("Until", "Run to an address (a temporary breakpoint)", "until "),
        ("Watch", "A hardware watchpoint: ADDR [r|w|rw] [LEN]", "watch "),
        ("Write", "Write memory (asks first): ADDR HEX... or ADDR --u64 VALUE", "write "),
    ):
        yield SystemCommand(title, help_text, lambda p=prefix: app.action_prompt(p))
    yield SystemCommand(
        "Breakpoints",
        "The breakpoints with their hit counts; delete one or all (B)",
        app.action_breakpoints,
    )
    yield SystemCommand("Refresh", "Read everything again (r)", app.action_refresh)
    yield SystemCommand("Reconnect", "Attach to the target again (R)", app.action_reconnect)
    yield SystemCommand("Export text", "Save the current view as text (e)", app.action_export_text)
    yield SystemCommand("Export SVG", "Save the screen as SVG (E)", app.action_export_svg)
    yield SystemCommand(
        "Remap",
        "Map, unmap, protect, move, higher-half, efi-runtime (agent); journal, undo (7)",
        app.action_remap,
    )
    yield SystemCommand("Remap journal", "Open remap steps, undo (7)", app.action_remap)
    for pane in PANES:
        title, help_text = pane.PALETTE
        yield SystemCommand(title, help_text, lambda name=pane.NAME: app.action_tab(name))
    yield SystemCommand("Help", "Keys and commands (?)", app.action_help)
