"""The command registry: every ``kinspect`` command, declared once, run by every face.

A command is one :class:`Command`: its name, its help, its arguments
(argparse), what it needs attached (:class:`Needs`) and a ``run`` that takes
a :class:`Context` (the parsed arguments and the session) and returns a
:class:`CommandResult`, which holds both the JSON document (``--json``)
and the text for people. The console script (``inspector/cli.py``) builds
its parser from the registry and prints results; the TUI's ``:`` line calls
:meth:`Registry.execute` with a string and shows the same result.

Built-in commands live one family per module beside this one (paging,
descriptors, stack, efi, agent, remap, demo). Other distributions add
theirs through the ``kinspect.commands`` entry-point group, the way pytest
plugins register (docs/commands.md); the TUI's own ``tui`` command comes
that way, so nothing in ``inspector/`` imports ``tui/``.
"""

from __future__ import annotations

import argparse
import contextvars
import enum
import importlib
import math
import shlex
import sys
import types
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TextIO

from ..errors import InspectorError
from ..formatting import json_document, write_json

if TYPE_CHECKING:
    from kinspect.protocols.gdbmi import MiSession

    from ..session import Session
    from ..symbols import SymbolTable

__all__ = [
    "AGENT_HELP",
    "BUILTIN_FAMILIES",
    "ENTRY_POINT_GROUP",
    "Command",
    "CommandResult",
    "Context",
    "Needs",
    "Registry",
    "UsageError",
    "add_actions",
    "add_common_options",
    "apply_slide",
    "connect",
    "parse_slide",
    "registry",
    "run_command",
]

#: The entry-point group third-party commands register in (pyproject.toml:
#: ``[project.entry-points."kinspect.commands"]``).
ENTRY_POINT_GROUP = "kinspect.commands"


def entry_points(*, group: str) -> Iterable[EntryPoint]:
    """The installed entry points of ``group`` (importlib.metadata, imported only when
    plugins are looked for: it costs a cold start 25 ms)."""
    from importlib.metadata import entry_points as installed

    found: Iterable[EntryPoint] = installed(group=group)
    return found


#: The modules of ``kinspect.inspector.commands`` that hold the built-in commands, in help order.
BUILTIN_FAMILIES = (
    "demo",
    "cpus",
    "paging",
    "descriptors",
    "memory",
    "stack",
    "code",
    "stepping",
    "faults",
    "efi",
    "agent",
    "remap",
    "edit",
    "linux",
)

AGENT_HELP = (
    "the in-kernel agent's serial line: a device (/dev/ttyUSB0), tcp:HOST:PORT, unix:PATH, "
    "pty:PATH or a pyserial URL"
)


class UsageError(InspectorError):
    """The command line is wrong (exit status 2): argparse's message, or a missing option."""


class Needs(enum.Enum):
    """What a command needs attached before it runs."""

    #: Nothing: the command attaches what it wants itself (``demo``, ``tui``), or nothing.
    NOTHING = "nothing"
    #: A target: a gdb stub (``--target``), the agent (``--agent``), or both.
    TARGET = "target"
    #: The in-kernel agent (``--agent``), with a gdb stub beside it if ``--target`` is given.
    AGENT = "agent"
    #: The in-kernel agent alone: ``--target`` is not attached (the command may use it itself).
    AGENT_ALONE = "agent alone"


Body = Mapping[str, Any] | None
Text = str | None


class CommandResult:
    """What a command found: the JSON keys after the envelope, the text, the exit status.

    ``body`` None: no document (``--json`` prints nothing); ``text`` None: no
    text. ``status`` 1 says the fact asked for is a failure (an address that
    does not translate); ``error``, when set, is the one line that says why
    (the CLI prints it on stderr after the text; ``--json`` prints only the
    document).

    ``body`` and ``text`` may each be given as a function that makes it,
    called once, when first asked: the CLI asks for one of the two (a whole
    Linux map's document costs as much as its text). ``json_body`` (a
    function too) is the body as the CLI writes it, where that differs in
    form only: its long lists as :class:`~kinspect.inspector.formatting.JsonRows`,
    written a run of rows at a time. ``text_parts`` gives the text in pieces
    that join to ``text``, for the CLI to print as they come (half a million
    leaves are never one string).
    """

    __slots__ = (
        "_body",
        "_text",
        "command",
        "error",
        "json_body",
        "status",
        "target",
        "text_parts",
    )

    def __init__(
        self,
        command: str,
        target: str | None,
        body: Body | Callable[[], Body],
        text: Text | Callable[[], Text],
        status: int = 0,
        error: str | None = None,
        *,
        json_body: Callable[[], Body] | None = None,
        text_parts: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        self.command = command
        self.target = target
        self._body = body
        self._text = text
        self.status = status
        self.error = error
        self.json_body = json_body
        self.text_parts = text_parts

    @property
    def body(self) -> Body:
        if callable(self._body):
            self._body = self._body()
        return self._body

    @property
    def text(self) -> Text:
        if callable(self._text):
            self._text = self._text()
        return self._text

    @property
    def document(self) -> dict[str, Any] | None:
        """The ``--json`` document: the envelope (docs/json.md), then ``body``."""
        body = self.body
        if body is None:
            return None
        return json_document(self.command, self.target, body)

    def write_json(self, out: TextIO) -> None:
        """The ``--json`` document on ``out`` (nothing when there is none)."""
        body = self.json_body() if self.json_body is not None else self.body
        if body is not None:
            write_json(json_document(self.command, self.target, body), out)

    def write_text(self, out: TextIO) -> None:
        """The text on ``out`` and a newline (nothing when there is none)."""
        if self.text_parts is None or not callable(self._text):
            text = self.text
            if text is not None:
                out.write(text + "\n")
            return
        for part in self.text_parts():
            out.write(part)
        out.write("\n")

    def with_text(self, text: Text) -> CommandResult:
        """The same result with another text."""
        return CommandResult(
            self.command,
            self.target,
            self._body,
            text,
            self.status,
            self.error,
            json_body=self.json_body,
        )

    def __repr__(self) -> str:
        return (
            f"CommandResult(command={self.command!r}, target={self.target!r}, "
            f"status={self.status!r}, error={self.error!r})"
        )


def _ignore(text: str) -> None:
    pass


def _no(question: str) -> bool:
    return False


@dataclass(slots=True)
class Context:
    """What a command runs with.

    ``emit`` writes text for people as it comes (a long remap reports each
    step as it is applied; :meth:`Registry.execute` collects it into the
    result's text); ``warn`` is a line for stderr; ``confirm`` asks a yes/no
    question (False when nobody can answer).
    """

    args: argparse.Namespace
    session: Session | None
    registry: Registry
    emit: Callable[[str], None] = _ignore
    warn: Callable[[str], None] = _ignore
    confirm: Callable[[str], bool] = _no
    interactive: bool = False
    name: str = ""

    @property
    def json(self) -> bool:
        return bool(getattr(self.args, "json", False))

    def need_session(self) -> Session:
        if self.session is None:  # pragma: no cover - the registry attaches one first
            raise InspectorError(f"{self.name} needs a target")
        return self.session

    def result(
        self,
        body: Body | Callable[[], Body],
        text: Text | Callable[[], Text],
        *,
        status: int = 0,
        error: str | None = None,
        command: str | None = None,
        json_body: Callable[[], Body] | None = None,
        text_parts: Callable[[], Iterable[str]] | None = None,
    ) -> CommandResult:
        """A result of this command on this context's target (see :class:`CommandResult`)."""
        target = self.session.target.description if self.session is not None else None
        return CommandResult(
            command or self.name,
            target,
            body,
            text,
            status,
            error,
            json_body=json_body,
            text_parts=text_parts,
        )


Arguments = Callable[[argparse.ArgumentParser], None]


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


@dataclass(frozen=True, slots=True)
class Command:
    """One command: declared once, run by the CLI, the TUI's ``:`` line and the API.

    ``needs``: a :class:`Needs`, or a function of the parsed arguments
    (``sym`` needs a target only when ``--target`` is given). ``missing``: the
    usage error when what it needs is not given (default: say which option).
    ``on_line``: False for a command that attaches its own target and takes the
    terminal (``demo``, ``tui``), which :meth:`Registry.execute` refuses.
    """

    name: str
    help: str
    run: Callable[[Context], CommandResult]
    arguments: Arguments = _no_arguments
    needs: Needs | Callable[[argparse.Namespace], Needs] = Needs.TARGET
    missing: str | None = None
    family: str = ""
    on_line: bool = True

    def needs_for(self, args: argparse.Namespace) -> Needs:
        return self.needs if isinstance(self.needs, Needs) else self.needs(args)


# -- parsing ---------------------------------------------------------------------------------


class _HelpShown(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class _RaisingParser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` instead of exiting (the TUI's ``:`` line)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if status:
            raise UsageError((message or "").strip() or "usage error")
        raise _HelpShown(message or "")

    def print_help(self, file: Any = None) -> None:
        raise _HelpShown(self.format_help())


class _NotParsed(Exception):
    pass


class _FirstPassParser(argparse.ArgumentParser):
    """The try at a built-in command (:meth:`Registry.parse`): while ``trying``, an error
    or a help raises :class:`_NotParsed` instead of printing and exiting."""

    trying = True

    def error(self, message: str) -> NoReturn:
        if self.trying:
            raise _NotParsed(message)
        super().error(message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if self.trying:
            raise _NotParsed(message)
        super().exit(status, message)

    def print_help(self, file: Any = None) -> None:
        if self.trying:
            raise _NotParsed("help")
        super().print_help(file)


def add_common_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The options every command takes, before or after the command's name.

    The copy given to the subcommands has suppressed defaults (``suppress``),
    so an option given before the command is not reset by the subcommand's parser.
    """
    parser.add_argument(
        "--target",
        "-t",
        help="GDB remote stub: host:port, a unix socket path, or any spec gdb's "
        "'target remote' takes",
    )
    parser.add_argument(
        "--agent",
        "-a",
        help="the in-kernel agent's serial line instead of a gdb stub: a device, "
        "tcp:HOST:PORT, unix:PATH, pty:PATH or a pyserial URL",
    )
    parser.add_argument("--elf", help="the kernel's ELF file, for symbols")
    parser.add_argument(
        "--kallsyms",
        metavar="FILE",
        help="a copy of Linux's /proc/kallsyms or its System.map, for symbols (default: "
        "a Linux kernel's own kallsyms tables, read from its memory)",
    )
    parser.add_argument(
        "--phys-base",
        type=lambda s: int(s, 0),
        help="virtual base of the kernel's direct map, to read physical memory on stubs "
        "other than QEMU's",
    )
    parser.add_argument("--json", action="store_true", help="print JSON (see docs/json.md)")
    parser.add_argument(
        "--cpu",
        type=_cpu_index,
        metavar="N",
        help="read CPU N: its registers, descriptor tables, page tables and stack "
        "(default: the CPU that stopped; `kinspect cpus` lists them)",
    )
    parser.add_argument(
        "--slide",
        help="load slide of the kernel (KASLR): a number, or SYMBOL=ADDRESS to compute it",
    )
    parser.add_argument(
        "--no-resume",
        action="store_true",
        help="leave the kernel stopped on exit (default: let it run again)",
    )
    timeout_help = "seconds per target request (default 10)"
    if suppress:  # the parser's argument_default (SUPPRESS) applies
        parser.add_argument("--timeout", type=_seconds, help=timeout_help)
    else:
        parser.add_argument("--timeout", type=_seconds, help=timeout_help, default=10.0)


def _seconds(text: str) -> float:
    """A timeout: a positive, finite number of seconds (argparse's type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of seconds")
    return value


def _cpu_index(text: str) -> int:
    try:
        index = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a CPU number: {text!r}") from None
    if index < 0:
        raise argparse.ArgumentTypeError(f"not a CPU number: {text!r}")
    return index


def run_command(command: Command, context: Context, *, keep_cpu: bool = False) -> CommandResult:
    """Run ``command`` on the CPU ``--cpu`` names (when given and a session is attached).

    ``keep_cpu``: select the session's CPU of before again afterwards (the TUI's ``:``
    line: ``gdt --cpu 2`` shows CPU 2 and leaves the views on theirs).
    """
    cpu = getattr(context.args, "cpu", None)
    session = context.session
    if cpu is None or session is None:
        return command.run(context)
    previous = session.cpu
    session.select_cpu(cpu)
    try:
        return command.run(context)
    finally:
        if keep_cpu and session.state == "stopped" and session.cpu == cpu:
            session.select_cpu(previous)


def _common(parser_class: type[argparse.ArgumentParser], *, suppress: bool) -> Any:
    common = parser_class(add_help=False, argument_default=argparse.SUPPRESS if suppress else None)
    add_common_options(common, suppress=suppress)
    return common


#: The common options' parser while a command adds its arguments (for :func:`add_actions`).
_building_parents: contextvars.ContextVar[tuple[argparse.ArgumentParser, ...]] = (
    contextvars.ContextVar("kinspect_building_parents", default=())
)


class Actions:
    """The sub-actions of a command (``agent hello``, ``remap map``): :func:`add_actions`."""

    def __init__(self, actions: Any, parents: list[argparse.ArgumentParser]) -> None:
        self._actions = actions
        self._parents = parents

    def add_parser(
        self, name: str, *, parents: Iterable[argparse.ArgumentParser] = (), **kwargs: Any
    ) -> argparse.ArgumentParser:
        """A sub-action's parser, with the common options as the command's own parser has."""
        made: argparse.ArgumentParser = self._actions.add_parser(
            name, parents=[*self._parents, *parents], **kwargs
        )
        return made


def add_actions(parser: argparse.ArgumentParser, dest: str, *, metavar: str = "ACTION") -> Actions:
    """Required sub-actions that take the common options too (``kinspect agent hello --json``)."""
    actions = parser.add_subparsers(dest=dest, metavar=metavar)
    actions.required = True
    return Actions(actions, list(_building_parents.get()))


# -- attaching -------------------------------------------------------------------------------


def console_to_stderr(data: bytes) -> None:
    """The kernel's console text on the agent's line, passed on as it comes."""
    sys.stderr.write(data.decode(errors="replace"))
    sys.stderr.flush()


def connect(
    args: argparse.Namespace,
    *,
    needs: Needs = Needs.TARGET,
    on_console: Callable[[bytes], None] | None = console_to_stderr,
    gdb: MiSession | None = None,
) -> Session:
    """A session on what the global options name (``--target``, ``--agent``, both).

    ``gdb``: one already started for ``--target`` (the command line starts it before its
    own imports); the session's target takes it, or it is closed here."""
    target = getattr(args, "target", None)
    agent = getattr(args, "agent", None)
    if not target or agent:
        if gdb is not None:
            gdb.close()  # only a stub alone is attached through the gdb started first
        gdb = None
    elif gdb is None:
        from kinspect.protocols.gdbmi import start_gdb

        gdb = start_gdb()  # before the session's modules are imported: the starts overlap
    try:
        return _attach(args, target, agent, needs, on_console, gdb)
    except BaseException:
        if gdb is not None:
            gdb.close()  # the target closes it when it was made; closing twice is harmless
        raise


def _attach(
    args: argparse.Namespace,
    target: str | None,
    agent: str | None,
    needs: Needs,
    on_console: Callable[[bytes], None] | None,
    gdb: MiSession | None,
) -> Session:
    from .. import api

    timeout = getattr(args, "timeout", None) or 10.0
    elf = getattr(args, "elf", None)
    kallsyms = getattr(args, "kallsyms", None)
    phys_base = getattr(args, "phys_base", None)
    if (
        agent and target and needs is not Needs.AGENT_ALONE
    ):  # the stub reads and runs, the agent adds what it cannot see
        return api.attach_with_agent(
            target, agent, elf=elf, phys_base=phys_base, timeout=timeout, kallsyms=kallsyms
        )
    if agent:
        return api.attach_agent(
            agent, elf=elf, timeout=timeout, on_console=on_console, kallsyms=kallsyms
        )
    if not target:
        raise UsageError("give --target (a gdb stub) or --agent (the in-kernel agent)")
    return api.attach(
        target,
        elf=elf,
        phys_base=phys_base,
        timeout=timeout,
        kallsyms=kallsyms,
        gdb=gdb or "gdb",
    )


def check_needs(command: Command, args: argparse.Namespace) -> Needs:
    """What ``command`` needs with these arguments; :class:`UsageError` when it is not given."""
    needs = command.needs_for(args)
    target = getattr(args, "target", None)
    agent = getattr(args, "agent", None)
    if needs is Needs.TARGET and not (target or agent):
        raise UsageError(
            command.missing
            or f"{command.name} needs --target (a gdb stub: host:port or a socket path)"
        )
    if needs in (Needs.AGENT, Needs.AGENT_ALONE) and not agent:
        raise UsageError(command.missing or f"{command.name} needs --agent ({AGENT_HELP})")
    return needs


# -- the registry ----------------------------------------------------------------------------


class EntryPoint(Protocol):
    """What the registry uses of an ``importlib.metadata.EntryPoint``."""

    @property
    def name(self) -> str: ...
    @property
    def value(self) -> str: ...
    def load(self) -> Any: ...


@dataclass
class Registry:
    """Commands by name, in the order they were added.

    ``pending``: plugin entry points found but not imported yet (by name, which
    is the name of the command they give): a plugin is imported when its
    command runs, when ``--help`` lists everything, or by :meth:`load_plugins`,
    so ``kinspect regs`` imports no plugin (nor the TUI). ``problems``: one
    line per plugin that failed to load or clashed with a registered name.
    """

    commands: dict[str, Command] = field(default_factory=dict)
    pending: dict[str, EntryPoint] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    #: :meth:`discover_plugins` ran (it runs once)
    discovered: bool = False
    #: plugins are looked for when first needed: a name not registered (:meth:`get`)
    deferred: bool = False

    def add(self, command: Command) -> None:
        if command.name in self.commands:
            raise InspectorError(f"command {command.name!r} is registered twice")
        self.commands[command.name] = command

    def get(self, name: str) -> Command | None:
        """The command ``name``, its plugin found and imported first if need be."""
        if name not in self.commands and self.deferred:
            self.discover_plugins()
        if name not in self.commands and name in self.pending:
            self.load_plugin(name)
        return self.commands.get(name)

    def __iter__(self) -> Iterator[Command]:
        return iter(self.commands.values())

    def __contains__(self, name: object) -> bool:
        return name in self.commands

    # -- loading

    def load_builtins(self) -> None:
        for family in BUILTIN_FAMILIES:
            module = importlib.import_module(f"{__name__}.{family}")
            for command in module.COMMANDS:
                self.add(replace(command, family=command.family or family))

    def discover_plugins(self) -> None:
        """Note the ``kinspect.commands`` entry points (imports nothing), once."""
        if self.discovered:
            return
        self.discovered = True
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            if entry.name in self.commands or entry.name in self.pending:
                self.problems.append(
                    f"plugin {entry.name!r} ({entry.value}): the name {entry.name!r} "
                    "is already registered; ignored"
                )
                continue
            self.pending[entry.name] = entry

    def load_plugins(self) -> None:
        """Import every plugin found (:meth:`discover_plugins`)."""
        for name in list(self.pending):
            self.load_plugin(name)

    def load_plugin(self, name: str) -> None:
        """Import one plugin; a broken one adds a line to ``problems``, never a traceback.

        The entry point names a :class:`Command`, an iterable of them, or a
        module with a ``COMMANDS`` list.
        """
        entry = self.pending.pop(name)
        try:
            commands = list(_commands_of(entry.load()))
        except Exception as exc:  # a plugin's bug must not take kinspect down
            self.problems.append(
                f"plugin {entry.name!r} ({entry.value}) does not load: {type(exc).__name__}: {exc}"
            )
            return
        for command in commands:
            if command.name in self.commands:
                self.problems.append(
                    f"plugin {entry.name!r} ({entry.value}): command {command.name!r} "
                    "is already registered; ignored"
                )
                continue
            self.add(replace(command, family=command.family or f"plugin {entry.name}"))

    # -- parsing

    def add_parsers(
        self,
        sub: Any,
        parents: list[argparse.ArgumentParser],
        only: Container[str] | None = None,
    ) -> None:
        """One subparser per command on ``sub`` (from ``add_subparsers``).

        ``only``: the commands that get a parser; the others none (a command line
        names one command: building every command's arguments cost a cold start
        20 ms, and a bare parser for each of the others 4 ms more, most of it
        argparse asking gettext for its headings). A line naming no command of
        ``only`` does not parse then: the full parser says why.
        """
        for command in self:
            if only is not None and command.name not in only:
                continue
            parser = sub.add_parser(command.name, parents=parents, help=command.help)
            token = _building_parents.set(tuple(parents))
            try:
                command.arguments(parser)
            finally:
                _building_parents.reset(token)
        for name, entry in self.pending.items():  # parsed again once the plugin is loaded
            parser = sub.add_parser(name, help=f"(plugin {entry.value})", add_help=False)
            parser.add_argument("plugin_arguments", nargs=argparse.REMAINDER)

    def parse(
        self, parser_of: Callable[..., argparse.ArgumentParser], argv: list[str]
    ) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
        """Parse ``argv``; when it names a plugin not loaded yet, load it and parse again.

        ``parser_of(**options)`` builds the parser (:meth:`build_parser`'s options). A
        built-in command is parsed first with its own arguments only and without looking
        for plugins; anything else (help, a plugin, a mistake) is parsed with every
        command and plugin known. A plugin that does not load is an
        :class:`InspectorError` (its problem line).
        """
        if "-h" in argv or "--help" in argv:
            self.discover_plugins()
            self.load_plugins()  # the help lists every command
        elif not self.discovered and any(word in self.commands for word in argv):
            parsed = self._parse_builtin(parser_of, argv)
            if parsed is not None:
                return parsed
        self.discover_plugins()
        parser = parser_of()
        args = parser.parse_args(argv)
        if args.command in self.pending:
            before = len(self.problems)
            self.load_plugin(args.command)
            if args.command not in self.commands:
                problems = self.problems[before:] or [
                    f"plugin {args.command!r} gives no such command"
                ]
                del self.problems[before:]
                raise InspectorError(problems[0])
            parser = parser_of()
            args = parser.parse_args(argv)
        return parser, args

    def _parse_builtin(
        self, parser_of: Callable[..., argparse.ArgumentParser], argv: list[str]
    ) -> tuple[argparse.ArgumentParser, argparse.Namespace] | None:
        """``argv`` parsed as a built-in command with only its arguments built; None when
        it does not parse so (the full parse then says why, or finds the plugin)."""
        parser = parser_of(only=frozenset(argv), parser_class=_FirstPassParser)
        try:
            args = parser.parse_args(argv)
        except _NotParsed:
            return None
        if args.command not in self.commands:
            return None
        assert isinstance(parser, _FirstPassParser)
        parser.trying = False  # from now on its errors are the user's: print them and exit
        return parser, args

    def build_parser(
        self,
        prog: str = "kinspect",
        description: str | None = None,
        parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser,
        only: Container[str] | None = None,
    ) -> argparse.ArgumentParser:
        """The whole command line: the global options, then one subcommand per command
        (``only``: with the arguments of these commands only, :meth:`add_parsers`)."""
        parser = parser_class(
            prog=prog,
            description=description,
            parents=[_common(parser_class, suppress=False)],
        )
        sub = parser.add_subparsers(dest="command", metavar="COMMAND")
        sub.required = True
        self.add_parsers(sub, [_common(parser_class, suppress=True)], only)
        return parser

    # -- running

    def run(self, context: Context) -> CommandResult:
        """Run the command named by ``context.args.command`` with what the context holds."""
        command = self.commands.get(context.args.command)
        if command is None:
            raise UsageError(f"unknown command {context.args.command!r}")
        context.name = command.name
        return command.run(context)

    def execute(self, session: Session | None, line: str) -> CommandResult:
        """Run one command line (``"vtop demo_level3"``) on ``session``: the TUI's ``:`` line.

        The same parsing as ``kinspect``: a bad line raises :class:`UsageError`
        with argparse's message (nothing exits); a failing target raises
        :class:`InspectorError`; ``-h`` returns the help as the result's text.
        """
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if not words:
            raise UsageError("no command given")
        self.load_plugins()
        parser = self.build_parser(prog="", parser_class=_RaisingParser)
        lines: list[str] = []
        try:  # _RaisingParser prints nothing: errors and help come back as exceptions
            args = parser.parse_args(words)
        except _HelpShown as shown:
            return CommandResult(words[0], None, None, shown.text.rstrip("\n"))
        command = self.commands[args.command]
        if not command.on_line:
            raise UsageError(
                f"{command.name} runs from the command line only (kinspect {command.name})"
            )
        needs = command.needs_for(args)
        if needs is not Needs.NOTHING and session is None:
            raise UsageError(f"{command.name} needs a target")
        context = Context(
            args,
            session,
            self,
            emit=lines.append,
            warn=lines.append,
            name=command.name,
        )
        result = run_command(command, context, keep_cpu=True)
        text = result.text  # made here, in the caller's worker thread, not where it is shown
        if lines:
            text = "\n".join([*lines, *([text] if text is not None else [])])
            result = result.with_text(text)
        return result


def _commands_of(loaded: object) -> list[Command]:
    """What an entry point gives: a Command, a list of them, or a module with ``COMMANDS``."""
    if isinstance(loaded, Command):
        return [loaded]
    listed = loaded.__dict__.get("COMMANDS") if isinstance(loaded, types.ModuleType) else loaded
    if isinstance(listed, (list, tuple)) and listed:
        if all(isinstance(c, Command) for c in listed):
            return list(listed)
    raise TypeError(
        f"{loaded!r} is not a kinspect Command, a list of them, or a module with COMMANDS"
    )


_DEFAULT: Registry | None = None


def registry(*, plugins: bool = True) -> Registry:
    """The registry of this process: the built-in commands, then the plugins found (once).

    ``plugins`` False: not looked for yet (the command line looks when its command is
    not a built-in one: :meth:`Registry.parse`).
    """
    global _DEFAULT
    if _DEFAULT is None:
        made = Registry(deferred=True)
        made.load_builtins()
        _DEFAULT = made
    if plugins:
        _DEFAULT.discover_plugins()
    return _DEFAULT


def apply_slide(context: Context) -> None:
    """``--slide 0x200000`` or ``--slide _text=0xffffffff9a000000`` on the context's session."""
    text = getattr(context.args, "slide", None)
    if not text:
        return
    session = context.need_session()
    session.set_slide(parse_slide(session.symbols, text))


def parse_slide(symbols: SymbolTable | None, text: str) -> int:
    """The slide ``--slide`` gives: a number, or ``SYMBOL=ADDRESS`` (its run-time address)."""
    if symbols is None:
        raise InspectorError("--slide needs the kernel's symbols: pass --elf")
    name, sep, value = text.partition("=")
    try:
        return symbols.slide_for(name, int(value, 0)) if sep else int(text, 0)
    except ValueError:
        raise InspectorError(f"--slide {text!r}: give a number or SYMBOL=ADDRESS") from None
