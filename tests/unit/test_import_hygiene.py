"""The headless layers never load the TUI toolkit (harlequin's import-hygiene test)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.fresh_python import fresh_python

HEADLESS = [
    "kinspect.inspector.api",
    "kinspect.inspector.cli",
    "kinspect.inspector.session",
    "kinspect.inspector.targets.gdb",
    "kinspect.inspector.targets.qemu",
    "kinspect.inspector.x86.paging",
    "kinspect.protocols.gdbmi",
    "kinspect.protocols.qmp",
    "kinspect.tui.link",  # the TUI's own pure parts
    "kinspect.tui.model",
]


@pytest.mark.parametrize("module", HEADLESS)
def test_headless_module_does_not_import_textual(module):
    code = f"import sys, {module}; print('textual' in sys.modules)"
    result = fresh_python(code, timeout=60)
    assert result.stdout.strip() == "False"


def test_protocols_import_nothing_of_ours():
    code = (
        "import sys, kinspect.protocols.gdbmi, kinspect.protocols.qmp; "
        "print(sorted(m for m in sys.modules"
        " if m.startswith(('kinspect.inspector', 'kinspect.tui'))))"
    )
    result = fresh_python(code, timeout=60)
    assert result.stdout.strip() == "[]"


def test_the_command_line_starts_without_the_heavy_libraries():
    """Cold start (issue 16): the commands are registered and a session can be made without
    Textual, numpy, pyelftools or the fault and Linux analyses; a command that needs one
    imports it when it runs."""
    code = (
        "import sys\n"
        "from kinspect.inspector import api, cli, session\n"
        "from kinspect.inspector.commands import registry\n"
        "registry()\n"
        "heavy = ('textual', 'numpy', 'elftools', 'kinspect.inspector.fault',"
        " 'kinspect.inspector.linux.kernel', 'kinspect.inspector.tables')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    result = fresh_python(code, timeout=60)
    assert result.stdout.strip() == "[]"


#: What ``kinspect regs`` must not import (issue 16, cold start): the TUI, numpy, the
#: paging core, the unwinder and symbol tables, the plugins' metadata scan, the agent's wire
#: format, the descriptor decoders, and every command family's own analyses.
NOT_FOR_REGS = (
    "textual",
    "numpy",
    "elftools",
    "importlib.metadata",
    "kinspect.inspector.x86.paging",
    "kinspect.inspector.unwind",
    "kinspect.inspector.symbols",
    "kinspect.inspector.dwarf",
    "kinspect.inspector.fault",
    "kinspect.inspector.tables",
    "kinspect.inspector.cpus",
    "kinspect.inspector.efi.runtime",
    "kinspect.inspector.remap.plan",
    "kinspect.inspector.linux.btf",
    "kinspect.inspector.linux.kernel",
    "kinspect.protocols.agent_wire",
    "kinspect.inspector.x86.descriptors",  # the segment registers' names are in x86.control
    "uuid",  # only the EFI commands' GUIDs
    "pygdbmi.gdbmiparser",  # gdb's plain records are read without it (protocols/gdbmi.py)
    "logging",  # pygdbmi's
    "kinspect.inspector.writes",  # only the commands that write, and `writes`
    "kinspect.inspector.targets.qemu",  # QEMU's launcher: attaching needs none of it
)


#: ... and what a command printing text needs none of: the JSON encoder (``--json`` imports it).
NOT_FOR_TEXT = (*NOT_FOR_REGS, "json")


def test_regs_runs_without_the_heavy_modules():
    """``kinspect regs`` through the command line's own code (cli.run: the registry, the
    parser, the command, the output), on a target that needs no gdb: nothing of
    NOT_FOR_REGS is imported; ``pt`` then imports the paging core when it runs."""
    code = (
        "import io, sys\n"
        "from kinspect.inspector import cli\n"
        "from tests.capture_target import CaptureTarget, cli_on\n"
        "registers = {'cr0': 0x80050033, 'cr3': 0x1000, 'cr4': 0x6F0, 'efer': 0xD01}\n"
        "out = io.StringIO()\n"
        "with cli_on(CaptureTarget({}, registers, 'none')):\n"
        "    assert cli.run(['--target', 'x', 'regs'], out=out) == 0\n"
        "    assert cli.run(['--target', 'x', '--json', 'regs'], out=out) == 0\n"
        "assert 'CR0=0x80050033' in out.getvalue()\n"
        f"print(sorted(m for m in {NOT_FOR_REGS!r} if m in sys.modules))\n"
        "with cli_on(CaptureTarget({}, registers, 'none')):\n"
        "    cli.run(['--target', 'x', 'pt'], out=io.StringIO())\n"
        "print('kinspect.inspector.x86.paging' in sys.modules)\n"
    )
    result = fresh_python(code, timeout=60)
    assert result.stdout.split("\n")[:2] == ["[]", "True"]


def test_a_builtin_command_parses_with_its_own_arguments_only():
    """The registry builds the named command's arguments and looks for no plugin; a plugin's
    name, help or a mistake take the full parser (tests/unit/test_commands.py)."""
    code = (
        "import sys\n"
        "from kinspect.inspector import cli\n"
        "from kinspect.inspector.commands import registry\n"
        "commands = registry(plugins=False)\n"
        "parser, args = commands.parse(lambda **o: cli.build_parser(commands, **o),"
        " ['--target', 'x', 'vtop', '0x1000'])\n"
        "print(args.command, args.address, commands.discovered,"
        " 'importlib.metadata' in sys.modules)\n"
    )
    result = fresh_python(code, timeout=60)
    assert result.stdout.split() == ["vtop", "0x1000", "False", "False"]


def test_regs_through_gdb_starts_gdb_first_and_imports_no_heavy_module():
    """``kinspect regs`` as the process runs it (cli.main without argv) on a real gdb and a
    GDB stub (tests/fake_stub.py, which has no control registers: regs then says so): gdb
    starts before the commands are imported (its own start overlaps theirs), one gdb only,
    and the attach imports nothing of NOT_FOR_TEXT: the look at the line before gdb's
    connect imports the agent's wire format only for a line that is no gdb stub."""
    code = (
        "import sys\n"
        "from tests.fake_stub import FakeStub\n"
        "from kinspect.protocols import gdbmi\n"
        "started = []\n"
        "start = gdbmi.MiSession.__init__\n"
        "def spy(self, *args, **kwargs):\n"
        "    started.append('kinspect.inspector.commands' in sys.modules)\n"
        "    start(self, *args, **kwargs)\n"
        "gdbmi.MiSession.__init__ = spy\n"
        "stub = FakeStub({})\n"
        "sys.argv = ['kinspect', '--target', stub.endpoint, 'regs']\n"
        "from kinspect.inspector import cli\n"
        "status = cli.main()\n"
        f"print(status, started, sorted(m for m in {NOT_FOR_TEXT!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "1 [False] []", result.stderr
    assert result.stderr.strip() == (
        "kinspect: error: the stub does not report cr0, cr3, cr4, efer; "
        "kinspect needs the control registers to walk page tables"
    )


def test_recognizing_linux_reads_no_dwarf():
    """``pt`` on Linux recognizes the kernel for its region headings (kallsyms, the layout,
    a symbol table): the DWARF decoder and pyelftools come only with call-frame
    information, read from an ELF."""
    code = (
        "import sys\n"
        "import kinspect.inspector.linux.kernel, kinspect.inspector.linux.layout\n"
        "from kinspect.inspector.symbols import SymbolTable\n"
        "print(sorted(m for m in ('kinspect.inspector.dwarf', 'elftools') if m in sys.modules))\n"
    )
    result = fresh_python(code, timeout=60)
    assert result.stdout.strip() == "[]"


def test_the_command_line_starts_numpy_without_blas_threads():
    """The kinspect process (cli.main without argv) has OpenBLAS start no thread pool when
    numpy is imported (its threads spin for most of numpy's import CPU; kinspect calls no
    BLAS); an OPENBLAS_NUM_THREADS the user set is kept; cli.run, which a program calls,
    sets nothing."""
    code = (
        "import os, sys\n"
        "from kinspect.inspector import cli\n"
        "assert cli.run(['writes']) == 0\n"
        "print(os.environ.get('OPENBLAS_NUM_THREADS'))\n"
        "sys.argv = ['kinspect', 'writes']\n"
        "assert cli.main() == 0\n"
        "print(os.environ.get('OPENBLAS_NUM_THREADS'))\n"
    )
    for given, expected in ((None, ["None", "1"]), ("3", ["3", "3"])):
        env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
        env["KINSPECT_WRITES_LOG"] = os.devnull
        if given is not None:
            env["OPENBLAS_NUM_THREADS"] = given
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.split("\n")[1::2][:2] == expected, result.stdout
