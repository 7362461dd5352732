"""The command registry: plugins register through kinspect.commands; : lines parse as the CLI."""

from __future__ import annotations

import argparse
import io
import json
import types

import pytest

from kinspect.inspector import cli
from kinspect.inspector import commands as registry_module
from kinspect.inspector.commands import (
    Command,
    CommandResult,
    Context,
    Needs,
    Registry,
    UsageError,
    registry,
)
from kinspect.inspector.errors import InspectorError


def greet(context: Context) -> CommandResult:
    name = context.args.who
    return context.result({"greeting": f"hello {name}"}, f"hello, {name}!")


def greet_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("who", help="whom to greet")


GREET = Command("greet", "say hello (a plugin)", greet, greet_arguments, needs=Needs.NOTHING)


class FakeEntryPoint:
    """What importlib.metadata.entry_points(group=...) yields: name, value, load()."""

    def __init__(self, name, value, loaded=None, error=None):
        self.name, self.value = name, value
        self._loaded, self._error = loaded, error
        self.loads = 0

    def load(self):
        self.loads += 1
        if self._error is not None:
            raise self._error
        return self._loaded


@pytest.fixture
def plugins(monkeypatch):
    """Replace the installed entry points by the ones a test gives; a fresh default registry."""
    found: list[FakeEntryPoint] = []

    def entry_points(*, group):
        assert group == "kinspect.commands"
        return list(found)

    monkeypatch.setattr(registry_module, "entry_points", entry_points)
    monkeypatch.setattr(registry_module, "_DEFAULT", None)
    return found


def test_a_plugin_command_is_listed_in_help_and_runs(plugins, capsys):
    entry = FakeEntryPoint("greet", "kinspect_greet:GREET", GREET)
    plugins.append(entry)
    with pytest.raises(SystemExit) as exit_info:
        cli.run(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "greet" in help_text and "say hello (a plugin)" in help_text
    for builtin in ("regs", "pt", "vtop", "ptov", "gdt", "idt", "tss", "bt", "sym", "agent"):
        assert f"    {builtin} " in help_text

    out = io.StringIO()
    assert cli.run(["greet", "world"], out=out) == 0
    assert out.getvalue() == "hello, world!\n"
    out = io.StringIO()
    assert cli.run(["--json", "greet", "you"], out=out) == 0
    assert json.loads(out.getvalue()) == {
        "kinspect": 1,
        "command": "greet",
        "target": None,
        "greeting": "hello you",
    }


def test_a_plugin_is_imported_only_when_its_command_runs(plugins):
    entry = FakeEntryPoint("greet", "kinspect_greet:GREET", GREET)
    plugins.append(entry)
    assert cli.run(["greet", "x"], out=io.StringIO()) == 0
    assert entry.loads == 1
    other = FakeEntryPoint("other", "elsewhere:OTHER", error=AssertionError("imported"))
    plugins[:] = [other]
    registry_module._DEFAULT = None
    with pytest.raises(SystemExit):  # a usage error of a built-in command
        cli.run(["vtop"])
    assert other.loads == 0


def test_a_plugin_module_with_a_commands_list_registers_them_all():
    module = types.ModuleType("greetings")
    module.COMMANDS = [GREET, Command("bye", "say bye", greet, greet_arguments)]

    made = Registry()
    made.pending["greetings"] = FakeEntryPoint("greetings", "greetings", module)
    made.load_plugins()
    assert {"greet", "bye"} <= set(made.commands) and not made.problems


def test_a_broken_plugin_is_one_line_not_a_traceback(plugins, capsys):
    plugins.append(FakeEntryPoint("broken", "kinspect_broken:X", error=ImportError("no numpy")))
    plugins.append(FakeEntryPoint("greet", "kinspect_greet:GREET", GREET))
    with pytest.raises(SystemExit):
        cli.run(["--help"])
    err = capsys.readouterr().err
    assert err == (
        "kinspect: warning: plugin 'broken' (kinspect_broken:X) does not load: "
        "ImportError: no numpy\n"
    )
    registry_module._DEFAULT = None
    assert cli.main(["broken"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("kinspect: error: plugin 'broken' (kinspect_broken:X) does not load")


def test_a_plugin_that_is_not_a_command_or_clashes_is_refused(plugins, capsys):
    plugins.append(FakeEntryPoint("junk", "junk:X", loaded=42))
    plugins.append(FakeEntryPoint("regs", "mine:REGS", GREET))
    made = registry()
    made.load_plugins()
    assert len(made.problems) == 2
    assert "already registered" in made.problems[0]
    assert "is not a kinspect Command" in made.problems[1]
    assert made.get("regs").family == "paging"  # the built-in stays


def test_the_tui_registers_through_the_entry_point_only():
    """pyproject.toml names kinspect.tui.command:COMMAND; nothing in inspector names the TUI."""
    made = Registry()
    made.load_builtins()
    assert "tui" not in made
    made.discover_plugins()
    assert "tui" in made.pending  # the editable install's entry point
    assert made.get("tui").family == "tui"


def test_execute_parses_like_the_cli_and_raises_instead_of_exiting():
    made = registry()
    with pytest.raises(UsageError, match="the following arguments are required: address"):
        made.execute(None, "vtop")
    with pytest.raises(UsageError, match="invalid choice: 'nonsense'"):
        made.execute(None, "nonsense 1")
    with pytest.raises(UsageError, match="invalid parse_size value: 'lots'"):
        made.execute(None, "remap map 0x1000 0x2000 lots")
    with pytest.raises(UsageError, match="vtop needs a target"):
        made.execute(None, "vtop 0x1000")
    with pytest.raises(UsageError, match="No closing quotation"):
        made.execute(None, "sym 'x")
    with pytest.raises(UsageError, match="demo runs from the command line only"):
        made.execute(None, "demo --keep")
    shown = made.execute(None, "vtop --help")
    assert "virtual address or symbol" in shown.text and shown.document is None


def test_execute_runs_a_command_and_gives_text_and_document(tmp_path):
    made = Registry()
    made.add(GREET)
    result = made.execute(None, "greet 'the TUI'")
    assert result.text == "hello, the TUI!"
    assert result.document == {
        "kinspect": 1,
        "command": "greet",
        "target": None,
        "greeting": "hello the TUI",
    }
    assert result.status == 0 and result.error is None


def test_sym_needs_only_the_elf(demo_elf):
    result = registry().execute(None, f"sym --elf {demo_elf} kernel_main 0x10")
    assert result.text.splitlines()[0].startswith("0x")
    assert "kernel_main" in result.text.splitlines()[0]
    assert [a["symbol"] for a in result.document["addresses"]][0] == "kernel_main"
    with pytest.raises(InspectorError, match="neither a number nor a known symbol"):
        registry().execute(None, f"sym --elf {demo_elf} no_such_symbol_here")


@pytest.fixture
def demo_elf():
    from kinspect.inspector import api

    if not api.DEMO_KERNEL.is_file():
        pytest.skip("the demo kernel is not built (make kernel)")
    return str(api.DEMO_KERNEL)


def test_usage_errors_of_the_cli_exit_2_with_one_message(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["efi-time", "--target", "x"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "kinspect: error: efi-time calls the firmware through the in-kernel agent: give --agent"
    )
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["agent", "--target", "x", "--agent", "y", "hello"])
    assert exit_info.value.code == 2
    assert "agent talks to the agent alone: drop --target" in capsys.readouterr().err


def test_demo_in_a_terminal_opens_the_registered_tui_or_says_it_is_missing(demo_elf, monkeypatch):
    """Without a `tui` command registered, `kinspect demo` says so before booting anything."""
    from kinspect.inspector import api

    def no_qemu(*args, **kwargs):
        raise AssertionError("QEMU must not start")

    monkeypatch.setattr(api, "launch_qemu", no_qemu)
    made = Registry()
    made.load_builtins()  # no plugins: no TUI
    args = cli.build_parser(made).parse_args(["demo"])
    context = Context(args, None, made, interactive=True, name="demo")
    with pytest.raises(InspectorError, match="the TUI is not installed"):
        made.run(context)

    opened = []

    def fake_tui(context: Context) -> CommandResult:
        opened.append(context.args)
        return context.result(None, None)

    class FakeQemu:
        gdb_endpoint, agent_endpoint, pid, process = "/tmp/g.sock", "unix:/tmp/a.sock", 1, None

        def stop(self):
            opened.append("stopped")

    monkeypatch.setattr(api, "launch_qemu", lambda *a, **k: FakeQemu())
    monkeypatch.setattr("signal.signal", lambda *a: None)  # demo's SIGHUP handler: not here
    made.add(Command("tui", "the TUI", fake_tui, needs=Needs.NOTHING))
    made.run(Context(args, None, made, interactive=True, name="demo"))
    tui_args, stopped = opened
    assert (tui_args.target, tui_args.agent) == ("/tmp/g.sock", "unix:/tmp/a.sock")
    assert tui_args.elf == demo_elf and stopped == "stopped"
