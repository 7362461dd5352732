"""No argv given to ``kinspect`` ends in a traceback (issue 17, "Tracebacks").

Hypothesis builds command lines from every command and option the CLI has,
with values that are wrong in every way we could think of (numbers out of
range, garbage sizes and flags, files that are missing, empty, directories or
not what they claim). Each runs through the public entry point,
``kinspect.inspector.cli.main(argv)``, in this process: it must return (or
exit with) 0, 1 or 2, and print no traceback. A few run as a real ``kinspect``
process too, and through a gdb stub target.

Targets are never reachable, and nothing touches the network: an agent or stub
is a unix socket path in tmp that does not exist, or 127.0.0.1 on a port that
nothing listens on. Free text never holds ':', '/' or '|' (a gdb target spec
with them could name a host, or a command to run) and never starts with '-' (an
abbreviation of --target or --agent would take the next value as a target).
"""

from __future__ import annotations

import contextlib
import io
import socket
import subprocess
import sys
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kinspect.inspector.cli import main

# Commands as the CLI spells them today; a name it no longer knows is a usage error (2).
COMMANDS = [
    [],
    ["regs"],
    ["pt"],
    ["vtop"],
    ["ptov"],
    ["gdt"],
    ["idt"],
    ["tss"],
    ["efi-map"],
    ["efi-time"],
    ["efi-vars"],
    ["bt"],
    ["sym"],
    ["agent"],
    ["agent", "hello"],
    ["agent", "regs"],
    ["agent", "read"],
    ["agent", "walk"],
    ["remap"],
    ["remap", "map"],
    ["remap", "unmap"],
    ["remap", "protect"],
    ["remap", "move"],
    ["remap", "higher-half"],
    ["remap", "efi-runtime"],
    ["remap", "undo"],
    ["remap", "journal"],
    ["tui"],  # only ever with unreachable targets, or none
    ["nonsense"],
]
# Options a command family takes (any option may still go with any command).
FAMILY_OPTIONS = {
    "remap": ["--plan", "--yes", "--force", "--journal", "--page-size", "--flags", "--drop-old"]
    + ["--base", "--keep-identity", "--seq", "--all", "--keep"],
    "agent": ["--physical"],
    "efi-vars": ["--guid"],
    "bt": ["--max-depth"],
    "pt": ["--leaves"],
}
FLAGS = [
    "--json",
    "--no-resume",
    "--leaves",
    "--physical",
    "--plan",
    "--yes",
    "--force",
    "--drop-old",
    "--keep-identity",
    "--all",
    "--keep",
    "-h",
]


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters=":/|\0"),
    max_size=12,
).filter(lambda s: not s.startswith("-"))
_numbers = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.integers(-(2**70), 2**70).map(lambda n: hex(n)),
    st.sampled_from(["0", "0x", "0x1000", "4K", "2M", "1G", "1e3", "nan", "inf", "-0", "0b101"]),
)
_values = st.one_of(_numbers, _text)


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """Files and endpoints in tmp that are wrong for what they are given as."""
    tmp = tmp_path_factory.mktemp("cli-argv")
    (tmp / "empty").write_bytes(b"")
    (tmp / "garbage").write_bytes(b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 4)
    (tmp / "journal-garbage").write_text("{not json\n\x00\x01\n")
    (tmp / "a-dir").mkdir()
    port = _closed_port()
    files = [
        tmp / "missing",
        tmp / "empty",
        tmp / "garbage",
        tmp / "journal-garbage",
        tmp / "a-dir",
    ]
    return {
        "tmp": tmp,
        "files": [str(f) for f in files],
        "agents": [
            f"unix:{tmp / 'missing.sock'}",
            f"tcp:127.0.0.1:{port}",
            "tcp:127.0.0.1:notaport",
            "tcp:127.0.0.1:99999",
            "tcp:",
            "unix:",
            f"pty:{tmp / 'missing-pty'}",
            str(tmp / "missing-tty"),
            str(tmp / "a-dir"),
            "",
        ],
        "stubs": [str(tmp / "missing.sock"), f"127.0.0.1:{port}"],
    }


@pytest.fixture
def isolated(places, monkeypatch):
    """No journal, home or working directory outside tmp; stdin at end of file."""
    tmp = places["tmp"]
    monkeypatch.chdir(tmp)
    monkeypatch.setenv("HOME", str(tmp))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp / "state"))
    monkeypatch.setenv("KINSPECT_REMAP_JOURNAL", str(tmp / "journal.jsonl"))
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    return places


def run_in_process(argv: list[str]) -> tuple[int, str]:
    """main(argv) with stderr captured: (exit status, stderr); a raised exception fails."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = main(argv)
        except SystemExit as exc:  # argparse: usage errors and --help
            status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException as exc:  # noqa: BLE001 - the property under test
            pytest.fail(f"kinspect {argv!r} raised {exc!r}\nstderr:\n{err.getvalue()}")
    return status, err.getvalue()


def check(argv: list[str]) -> None:
    status, stderr = run_in_process(argv)
    assert "Traceback" not in stderr, f"kinspect {argv!r}:\n{stderr}"
    assert status in (0, 1, 2), f"kinspect {argv!r} exited {status}:\n{stderr}"


@st.composite
def command_lines(draw, places):
    """A command, an agent (or none), options with values, positionals, in any order."""
    files = st.sampled_from(places["files"])
    with_value = {
        "--elf": files,
        "--journal": files,
        "--phys-base": _values,
        "--slide": st.one_of(_values, _text.map(lambda s: f"{s}=0x1000")),
        "--timeout": st.sampled_from(["0.05", "0", "-1", "1e-9", "abc", ""]),
        "--max-depth": _values,
        "--guid": st.one_of(_text, st.uuids().map(str)),
        "--page-size": _values,
        "--flags": st.one_of(
            st.sampled_from(["ro", "r", "rw", "rx", "rwx", "nx", "RW,NX", "user", ",", ""]), _text
        ),
        "--base": _values,
        "--seq": _values,
    }
    argv: list[str] = []
    if draw(st.booleans()):
        argv += ["--agent", draw(st.sampled_from(places["agents"]))]
    command = draw(st.sampled_from(COMMANDS))
    family = FAMILY_OPTIONS.get(command[0] if command else "", [])
    names = sorted(set(with_value) | set(FLAGS))
    rest: list[str] = draw(st.lists(_values, max_size=3))  # positionals first, as people write
    for _ in range(draw(st.integers(0, 3))):
        name = draw(
            st.sampled_from(family) if family and draw(st.booleans()) else st.sampled_from(names)
        )
        rest += [name, draw(with_value[name])] if name in with_value else [name]
    return argv + command + rest


@settings(
    max_examples=100,
    deadline=timedelta(seconds=3),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_no_argv_ends_in_a_traceback(isolated, data):
    check(data.draw(command_lines(isolated)))


# Cases worth keeping whatever hypothesis draws ({agent}: an unreachable agent).
FIXED = [
    ["--help"],
    ["remap", "--help"],
    ["tui"],
    ["--agent", "{agent}", "regs"],
    ["--agent", "{agent}", "remap", "map", "0x1000", "0x1000", "4K", "--plan"],
    ["--agent", "{agent}", "remap", "protect", "0x1000", "4K", "--flags", "ro", "--plan"],
    ["--agent", "{agent}", "agent", "read", "0xffffffff80000000", "16"],
    ["--agent", "{agent}", "efi-vars", "--guid", "not-a-guid"],
    ["sym", "--elf", "{garbage}", "start"],
    ["sym", "--elf", "{empty}", "0x1000"],
    ["--timeout", "-1", "--agent", "{agent}", "regs"],
    ["--timeout", "nan", "--agent", "{agent}", "regs"],
    ["--timeout", "inf", "--agent", "{agent}", "regs"],
    ["--agent", "tcp:127.0.0.1:99999", "regs"],
    # A journal that is a directory, not text, or JSON that is not a record (issue 17).
    ["remap", "journal", "--journal", "{a_dir}"],
    ["remap", "undo", "--journal", "{a_dir}"],
    ["remap", "journal", "--journal", "{garbage}"],
    ["remap", "journal", "--journal", "{not_a_record}"],
    ["remap", "journal", "--journal", "{missing_field}"],
]


@pytest.fixture
def fixed_places(isolated):
    tmp = isolated["tmp"]
    (tmp / "not-a-record").write_text("[1, 2]\n")
    (tmp / "missing-field").write_text('{"kind": "step", "state": "applied"}\n')
    return {
        "a_dir": str(tmp / "a-dir"),
        "not_a_record": str(tmp / "not-a-record"),
        "missing_field": str(tmp / "missing-field"),
        "agent": isolated["agents"][0],
        "garbage": isolated["files"][2],
        "empty": isolated["files"][1],
    }


def test_fixed_command_lines(fixed_places, isolated):
    for argv in FIXED:
        check([a.format(**fixed_places) for a in argv])


@pytest.mark.parametrize(
    "argv",
    [
        ["--target", "{stub_socket}", "regs"],
        ["--target", "{stub_port}", "--timeout", "2", "pt"],
        ["--agent", "{agent}", "--json", "regs"],
    ],
    ids=["stub-socket", "stub-port", "agent"],
)
def test_a_kinspect_process_fails_in_one_line(argv, isolated, tmp_path):
    """A real process, through gdb for --target: a one-line error and status 1, no traceback."""
    values = {
        "stub_socket": isolated["stubs"][0],
        "stub_port": isolated["stubs"][1],
        "agent": isolated["agents"][1],
    }
    result = subprocess.run(
        [sys.executable, "-m", "kinspect.inspector.cli", *[a.format(**values) for a in argv]],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
