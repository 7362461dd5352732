"""The ``kinspect`` command line: text for people, ``--json`` for scripts.

A thin builder over the command registry (:mod:`kinspect.inspector.commands`):
the global options, one subcommand per registered command, the session the
command needs, and the one error handler. Every failure a user can cause (a
bad address, a dead target, a port with nothing listening) ends as one line
on stderr and a non-zero exit status: 1 for target and address errors, 2 for
usage errors. Never a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from .errors import InspectorError

if TYPE_CHECKING:  # imported when used: main starts gdb before anything else
    import argparse

    from kinspect.protocols.gdbmi import MiSession

    from .commands import CommandResult, Needs, Registry
    from .session import Session

__all__ = ["build_parser", "connect", "main", "run"]

DESCRIPTION = "Inspect a live x86_64 kernel: control registers, page tables."


def build_parser(commands: Registry | None = None, **options: Any) -> argparse.ArgumentParser:
    """The whole command line, built from the registry (every command, plugins too;
    ``options``: :meth:`Registry.build_parser`'s)."""
    from .commands import registry

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


def connect(args: argparse.Namespace, *, needs: Needs, gdb: MiSession | None = None) -> Session:
    """The session the command runs on (:func:`kinspect.inspector.commands.connect`)."""
    from .commands import connect as attach

    return attach(args, needs=needs, gdb=gdb)


def run(
    argv: Sequence[str] | None = None,
    out: TextIO = sys.stdout,
    *,
    gdb: MiSession | None = None,
) -> int:
    """Run one command line; its exit status. ``gdb``: one started for ``--target``
    before the commands were imported (:func:`main`), for the session to take."""
    # imported here, not with this module: main starts gdb first
    from .commands import Context, Needs, UsageError, check_needs, registry, run_command

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
    if needs is Needs.NOTHING and gdb is not None:
        gdb.close()  # the command attaches what it wants itself (the TUI), or nothing
    session = None if needs is Needs.NOTHING else connect(args, needs=needs, gdb=gdb)
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
    """The ``kinspect`` command. Without ``argv`` it is this process's whole life (the
    console script, ``python -m``): gdb for ``--target`` starts before anything else
    is imported, so that its own start (40 ms or more) overlaps ours, and nothing waits
    for gdb's exit or for a last garbage collection once the target is detached."""
    whole_process = argv is None
    if whole_process:
        # numpy's OpenBLAS starts a thread per core at import, which spin for 70-90 ms of
        # CPU that gdb and QEMU want (pt's import of numpy cost 160 ms of CPU, 90 without
        # them): kinspect decodes arrays and never calls BLAS. A setting of the user's stays.
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    words = list(sys.argv[1:] if argv is None else argv)
    gdb = _start_gdb_first(words) if whole_process else None
    try:
        return run(words, gdb=gdb)
    except InspectorError as exc:
        print(f"kinspect: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kinspect: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    finally:
        if gdb is not None:
            gdb.close()  # if no session took it (closing twice is harmless)
        if whole_process:
            import gc

            gc.freeze()  # the objects left die with the process: no collection walks them


def _start_gdb_first(words: Sequence[str]) -> MiSession | None:
    """gdb, started at once when the command line names a gdb stub alone (``--target``
    without ``--agent``, no help asked); None otherwise, or when it cannot start (the
    session starts its own then, and says why)."""

    def given(option: str) -> bool:
        return any(w == option or w.startswith(f"{option}=") for w in words)

    if not given("--target") or given("--agent") or "-h" in words or "--help" in words:
        return None
    from kinspect.protocols.gdbmi import start_gdb

    gdb = start_gdb()
    if gdb is None:
        return None
    gdb.wait_on_close = False  # this process ends once the target is detached
    return gdb


if __name__ == "__main__":
    sys.exit(main())
