"""gdb's MI records read without pygdbmi give pygdbmi's own answer.

:func:`kinspect.protocols.gdbmi.parse_record` reads the plain records (every command's
answers) itself, so that a command line need not import pygdbmi and ``logging``; pygdbmi
stays the parser of record. Held to it here on gdb's real answers (tests/fixtures/gdb-mi:
gdb 13 on the demo kernel and the Linux guest, every command family) and on records made by
hypothesis the way gdb writes them, plus mutations of those: whenever the fast path answers,
its answer is pygdbmi's; whatever it declines, pygdbmi parses."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pygdbmi import gdbmiparser

from kinspect.protocols.gdbmi import _parse_plain, parse_record
from tests.fresh_python import fresh_python

RECORDS = Path(__file__).resolve().parent.parent / "fixtures" / "gdb-mi" / "records.txt"


def real_records() -> list[str]:
    return [line for line in RECORDS.read_text().split("\n") if line]


def test_real_records_parse_as_pygdbmi_parses_them():
    lines = real_records()
    assert len(lines) > 150
    for line in lines:
        assert parse_record(line) == gdbmiparser.parse_response(line), line


def test_every_real_record_but_a_list_of_results_takes_the_fast_path():
    """The shapes every command sees (results with and without payload, ``^running``,
    ``*stopped``, registers, memory, notifications, the three streams, gdb's own text) are
    read without pygdbmi; only ``-break-list``'s table (``body=[bkpt={...}]``, a list of
    named results, which pygdbmi reads its own way) goes to pygdbmi."""
    slow = [line for line in real_records() if _parse_plain(line) is None]
    assert slow and all("body=[bkpt={" in line for line in slow), slow
    kinds = {(r["type"], r.get("message")) for r in map(_parse_plain, real_records()) if r}
    for kind in [
        ("result", "done"),
        ("result", "running"),
        ("result", "connected"),
        ("result", "error"),
        ("notify", "stopped"),
        ("notify", "running"),
        ("notify", "thread-group-added"),
        ("console", None),
        ("log", None),
        ("target", None),
        ("output", None),
    ]:
        assert kind in kinds


@pytest.mark.parametrize(
    "line",
    [
        "^done",
        "17^done",
        "^running",
        '*running,thread-id="all"',
        '*stopped,reason="end-stepping-range",frame={addr="0x1",func="??",args=[]},'
        'thread-id="1",stopped-threads="all"',
        '5^done,register-values=[{number="0",value="0x1"},{number="1",value="0xffff"}]',
        '~"a \\"quoted\\" word\\n"',
        '@"CR0=80010011\\r\\n"',
        '&"warning: tab\\there, bell\\a, escape\\e, back\\\\slash, quote\\\'\\n"',
        '^done,value="{a = 1, b = \\"x\\"}"',
        "^done,list=[[],[[]],{}],empty={}",
        "gdb: warning: /dev/null is not a directory.",
        "Python Exception <class 'ModuleNotFoundError'>: No module named 'gdb'",
        "",
    ],
)
def test_plain_shapes(line):
    assert _parse_plain(line) is not None or line == ""
    assert parse_record(line) == gdbmiparser.parse_response(line)


@pytest.mark.parametrize(
    "line",
    [
        '~"caf\\303\\251\\n"',  # octal escapes: pygdbmi decodes the UTF-8 bytes
        '^done,thread-ids={thread-id="1",thread-id="2"}',  # pygdbmi folds repeats
        '^done,stack=[frame={level="0"},frame={level="1"}]',  # a list of results
        '^done,a="1"}',  # a stray brace ends pygdbmi's dict
        '^done,a="1",',
        '^done,a="1"junk',
        "^done,a=[1]",  # pygdbmi skips what is no value in a list
        "^done,",
        '~"unterminated',
        '~"two" "strings"',
        '~"bad \\q escape"',
        "(gdb) ",
        "^do ne",
        "٣^done",  # an Arabic-Indic digit: pygdbmi's \d takes it as a token
        '^done,a="line\nbreak"',
    ],
)
def test_other_shapes_go_to_pygdbmi(line):
    assert _parse_plain(line) is None
    try:
        expected = gdbmiparser.parse_response(line)
    except Exception as exc:  # ValueError, or TypeError on an unquoted value
        with pytest.raises(type(exc)):
            parse_record(line)
    else:
        assert parse_record(line) == expected


# -- records made the way gdb writes them ------------------------------------------------------

#: gdb's C escapes (printchar in gdb/utils.c), the octal one for any other control character.
GDB_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f", "\033": "\\e"}
GDB_ESCAPES |= {"\a": "\\a", '"': '\\"', "\\": "\\\\"}


def gdb_string(text: str, ascii_only: bool) -> tuple[str, bool]:
    """``text`` as gdb quotes it, and whether that took no octal escape."""
    out = []
    plain = True
    for char in text:
        if char in GDB_ESCAPES:
            out.append(GDB_ESCAPES[char])
        elif char < " " or char == "\x7f" or (ascii_only and not char.isascii()):
            out.append("".join(f"\\{byte:03o}" for byte in char.encode()))
            plain = False
        else:
            out.append(char)
    return '"' + "".join(out) + '"', plain


NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,10}", fullmatch=True)
TEXT = st.text(
    st.one_of(
        st.sampled_from('"\\{}[],=~^*&@ \n\r\t\a\x1b\x00\x7f'),
        st.characters(codec="utf-8"),
    ),
    max_size=12,
)


@st.composite
def mi_values(draw, depth=3):
    """(text as gdb writes it, plain): plain False when the fast path must decline
    (octal escapes, a repeated name, a list of results)."""
    ascii_only = draw(st.booleans())
    kind = draw(
        st.sampled_from(["string", "tuple", "list", "results-list"] if depth else ["string"])
    )
    if kind == "string":
        return gdb_string(draw(TEXT), ascii_only)
    if kind == "tuple":
        results, plain = draw(mi_results(depth - 1))
        return "{" + results + "}", plain
    items = draw(st.lists(mi_values(depth - 1), max_size=4))
    if kind == "results-list" and items:
        names = draw(st.lists(NAMES, min_size=len(items), max_size=len(items)))
        body = ",".join(f"{n}={v}" for n, (v, _) in zip(names, items, strict=True))
        return "[" + body + "]", False
    return "[" + ",".join(v for v, _ in items) + "]", all(p for _, p in items)


@st.composite
def mi_results(draw, depth=3, min_size=0):
    values = draw(st.lists(mi_values(depth), min_size=min_size, max_size=4))
    names = draw(st.lists(NAMES, min_size=len(values), max_size=len(values)))
    plain = len(set(names)) == len(names) and all(p for _, p in values)
    return ",".join(f"{n}={v}" for n, (v, _) in zip(names, values, strict=True)), plain


@st.composite
def mi_lines(draw):
    """(line, plain): a result or async record, a stream record, or gdb's own text."""
    kind = draw(st.sampled_from(["record", "stream", "text"]))
    if kind == "text":
        line = draw(st.text(st.characters(codec="utf-8", exclude_characters="\n"), max_size=20))
        first = line[:1]  # what no pattern of pygdbmi's starts with is output
        return line, first != "" and first not in "^*=~&@(" and not first.isdecimal()
    if kind == "stream":
        written, plain = draw(mi_values(depth=0))
        return draw(st.sampled_from("~&@")) + written, plain
    token = draw(st.one_of(st.none(), st.integers(0, 10**6)))
    line = ("" if token is None else str(token)) + draw(st.sampled_from("^*="))
    line += draw(st.sampled_from(["done", "running", "stopped", "error", "thread-group-added"]))
    results, plain = draw(st.one_of(st.just(("", True)), mi_results(min_size=1)))
    return line + ("," + results if results else ""), plain


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mi_lines())
def test_records_as_gdb_writes_them(case):
    line, plain = case
    fast = _parse_plain(line)
    assert (fast is not None) == plain, line
    assert parse_record(line) == gdbmiparser.parse_response(line)


@st.composite
def mutated_lines(draw):
    """A record with one character inserted, removed or replaced by an MI metacharacter."""
    line, _ = draw(mi_lines())
    at = draw(st.integers(0, len(line)))
    char = draw(st.sampled_from('"\\{}[],= \n~^*&@0a'))
    how = draw(st.sampled_from(["insert", "remove", "replace"]))
    if how == "insert":
        return line[:at] + char + line[at:]
    if how == "remove":
        return line[:at] + line[at + 1 :]
    return line[:at] + char + line[at + 1 :]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_lines())
def test_what_the_fast_path_takes_is_what_pygdbmi_gives(line):
    """Whatever the fast path answers, pygdbmi answers the same (pygdbmi is asked only then:
    on some broken lines, an unclosed list, it never returns)."""
    fast = _parse_plain(line)
    if fast is not None:
        assert fast == gdbmiparser.parse_response(line), line


def test_the_fast_path_imports_neither_pygdbmi_nor_logging():
    code = (
        "import sys\n"
        "from kinspect.protocols.gdbmi import parse_record\n"
        'parse_record(\'17^done,register-values=[{number="0",value="0x1"}]\')\n'
        'parse_record(\'*stopped,frame={addr="0x1",args=[]},thread-id="1"\')\n'
        "parse_record('~\"text\\\\n\"')\n"
        "parse_record('gdb: warning: /dev/null is not a directory.')\n"
        "print(sorted(m for m in ('pygdbmi.gdbmiparser', 'logging') if m in sys.modules))\n"
        "parse_record('^done,stack=[frame={level=\"0\"}]')\n"
        "print('pygdbmi.gdbmiparser' in sys.modules)\n"
    )
    result = fresh_python(code, timeout=60)
    assert result.stdout.split("\n")[:2] == ["[]", "True"]
