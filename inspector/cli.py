"""The ``kinspect`` command line: text for people, ``--json`` for scripts.

A thin builder over the command registry (:mod:`kinspect.inspector.commands`):
the global options, one subcommand per registered command, the session the
command needs, and the one error handler. Every failure a user can cause (a
bad address, a dead target, a port with nothing listening) ends as one line
on stderr and a non-zero exit status: 1 for target and address errors, 2 for
usage errors. Never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from .commands import (
    CommandResult,
    Context,
    Needs,
    Registry,
    UsageError,
    check_needs,
    connect,
    registry,
    run_command,
)
from .errors import InspectorError

__all__ = ["build_parser", "main", "run"]

DESCRIPTION = "Inspect a live x86_64 kernel: control registers, page tables."


def build_parser(commands: Registry | None = None, **options: Any) -> argparse.ArgumentParser:
    """The whole command line, built from the registry (every command, plugins too;
    ``options``: :meth:`Registry.build_parser`'s)."""
    return (commands or registry()).build_parser(
        prog="kinspect", description=DESCRIPTION, **options
    )


def _interactive() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False


def _warn(line: str) -> None:
    print(line, file=sys.stderr)


def _warn_problems(commands: Registry) -> None:
    for problem in commands.problems:
        print(f"kinspect: warning: {problem}", file=sys.stderr)
    commands.problems.clear()


def run(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    commands = registry(plugins=False)  # looked for when the command is not a built-in one
    words = list(sys.argv[1:] if argv is None else argv)
    if "-h" in words or "--help" in words:
        commands.discover_plugins()
        commands.load_plugins()  # the help lists every command: say which plugins failed first
        _warn_problems(commands)
    parser, args = commands.parse(lambda **options: build_parser(commands, **options), words)
    _warn_problems(commands)
    command = commands.get(args.command)
    assert command is not None  # argparse accepts only registered names

    def emit(text: str) -> None:
        print(text, file=out)
        out.flush()

    try:
        needs = check_needs(command, args)
    except UsageError as exc:
        parser.error(str(exc))
    session = None if needs is Needs.NOTHING else connect(args, needs=needs)
    context = Context(
        args,
        session,
        commands,
        emit=emit,
        warn=_warn,
        confirm=_confirm,
        interactive=out is sys.stdout and _interactive(),
        name=command.name,
    )
    try:
        try:
            result = run_command(command, context)
        except UsageError as exc:
            parser.error(str(exc))
        # printed before the session closes: a result makes its text or document when
        # asked (only the one printed), from what the session read
        return _print(result, args, out)
    finally:
        if session is not None:
            session.close(resume=not args.no_resume)


def _print(result: CommandResult, args: argparse.Namespace, out: TextIO) -> int:
    """The document (``--json``) or the text on ``out``; an error line on stderr."""
    if args.json:
        result.write_json(out)
        return result.status
    result.write_text(out)
    if result.error:
        print(f"kinspect: error: {result.error}", file=sys.stderr)
    return result.status


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
