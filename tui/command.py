"""``kinspect tui``: the live TUI on a target, registered as a plugin command.

pyproject.toml names :data:`COMMAND` in the ``kinspect.commands`` entry-point
group, so the command line finds the TUI the way it finds any plugin and
``kinspect.inspector`` never imports ``kinspect.tui``. Textual is imported
only when the command runs.
"""

from __future__ import annotations

import argparse

from kinspect.inspector.commands import Command, CommandResult, Context, Needs, UsageError, connect
from kinspect.inspector.session import Session

__all__ = ["COMMAND"]


def run_tui(context: Context) -> CommandResult:
    args = context.args
    if not (args.target or getattr(args, "agent", None)):
        raise UsageError("tui needs --target (a gdb stub) or --agent (the in-kernel agent)")

    def attach() -> Session:
        # the kernel's console text on the agent's line would draw over the screen: dropped
        return connect(args, on_console=None)

    from kinspect.tui.app import make_app

    session = attach()
    make_app(
        session,
        connect=attach,
        resume_on_exit=not args.no_resume,
        export_dir=getattr(args, "export_dir", None),
    ).run()
    return context.result(None, None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--export-dir",
        metavar="DIR",
        help="where e / E (and :export, :svg) save the view; default "
        "$XDG_STATE_HOME/kinspect/exports (~/.local/state/kinspect/exports)",
    )


COMMAND = Command(
    "tui",
    "the live TUI on a target (Textual)",
    run_tui,
    arguments=add_arguments,
    needs=Needs.NOTHING,
    family="tui",
    on_line=False,
)
