"""The CLI's direct JSON writer (issue 16): the same bytes as the documents of before.

``--json`` used to build every command's whole document as dicts and print
``json.dumps(document, indent=1)``; ``pt`` now writes its ranges and leaves
from per-kind templates, a run of rows at a time (formatting.JsonRows,
write_json). Each document here is compared, byte for byte and parsed, with
that old path: ``format_json`` of ``pt_document``, on the captured Linux map
and OVMF's 1 TiB identity map, through ``cli.run`` as a user runs it.
"""

from __future__ import annotations

import io
import json

import pytest

from kinspect.inspector import cli, formatting
from kinspect.inspector.commands import paging
from kinspect.inspector.formatting import (
    JsonRows,
    encode_leaf_rows,
    encode_range_rows,
    format_json,
    json_document,
    json_template,
    write_json,
)
from kinspect.inspector.session import Session
from tests.capture_target import cli_on, linux_target, ovmf_target


@pytest.fixture(scope="module")
def linux():
    """One session for the module: the capture is walked once."""
    return Session(linux_target())


@pytest.fixture(scope="module")
def ovmf():
    return Session(ovmf_target())


class Recorder(io.StringIO):
    """stdout that keeps the size of each write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[int] = []

    def write(self, text: str) -> int:
        self.writes.append(len(text))
        return super().write(text)


def run(target, *words: str) -> tuple[str, object]:
    out = Recorder()
    with cli_on(target) as session:
        assert cli.run(["--target", "capture", *words], out=out) == 0
    return out, session


def old_document(session, *, leaves=False, compact=False) -> str:
    """What ``kinspect --json pt`` printed before: the document as dicts, json.dumps'd."""
    body = paging.pt_document(session, leaves=leaves, compact=compact)
    return format_json(json_document("pt", session.target.description, body))


@pytest.mark.parametrize(
    "words", [(), ("--compact",), ("--leaves",)], ids=["ranges", "compact", "leaves"]
)
def test_pt_json_on_the_linux_capture_is_the_old_document_byte_for_byte(linux, words):
    out, session = run(linux, "--json", "pt", *words)
    written = out.getvalue()
    leaves, compact = "--leaves" in words, "--compact" in words
    document = json.loads(written)
    if leaves:  # 74,251 leaves: parsed (the bytes of leaves at every depth: below)
        body = paging.pt_document(session, leaves=True)
        assert document == json_document("pt", session.target.description, body)
    else:
        assert written == old_document(session, compact=compact)
    if leaves:
        assert document["leaf_count"] == len(document["leaves"]) == 74251
        assert len(out.writes) > 10  # written a run of leaves at a time, not as one string
        assert max(out.writes) < 4 * 1024 * 1024
    else:
        assert len(document["ranges"]) > 60000 if not words else len(document["ranges"]) < 60000


@pytest.mark.parametrize("words", [(), ("--compact",)], ids=["ranges", "compact"])
def test_pt_json_on_ovmf_is_the_old_document_byte_for_byte(ovmf, words):
    out, session = run(ovmf, "--json", "pt", *words)
    old = old_document(session, compact=bool(words))
    assert out.getvalue() == old
    assert json.loads(out.getvalue())["leaf_count"] == 524799


def test_ovmf_leaves_encode_as_their_dicts(ovmf):
    """Half a million leaves are too many to json.dumps in a unit test: the 2 MiB leaves
    around the split region, its 512 4 KiB leaves, the first and the last, in every layout."""
    with cli_on(ovmf) as session:
        leaves = session.address_space().leaves
    small = [i for i, leaf in enumerate(leaves) if leaf.size == 4096]
    assert len(small) == 512
    sample = [*leaves[:600], *leaves[small[0] - 3 : small[-1] + 4], *leaves[-600:]]
    assert {leaf.size for leaf in sample} == {4096, 2 << 20}
    for depth in (0, 2, 5):
        expected = json.dumps([leaf.to_dict() for leaf in sample], indent=1)
        expected = expected.replace("\n", "\n" + " " * (depth - 1)) if depth else expected
        if depth:  # the items as a list at depth - 1 writes them
            items = expected[expected.index("\n") + 1 : expected.rindex("\n")]
        else:
            items = None
        if items is not None:
            assert ",\n".join(encode_leaf_rows(sample, depth)) == items
    compact = [json.dumps(leaf.to_dict(), separators=(",", ":")) for leaf in sample]
    assert encode_leaf_rows(sample, None) == compact


def test_pt_text_is_printed_as_before(linux):
    for words in ((), ("--compact",)):
        out, session = run(linux, "pt", *words)
        compact = "--compact" in words
        assert out.getvalue() == paging.render_pt(session, compact=compact) + "\n"
    out, session = run(linux, "pt", "--leaves")
    assert len(out.writes) > 10  # a run of leaves at a time (render_pt joins the same runs)
    lines = out.getvalue().splitlines()
    leaves = session.address_space().leaves
    assert lines[1] == str(leaves[0]) and lines[-2] == str(leaves[-1])
    assert len(lines) == len(leaves) + 2


def test_json_lines_are_the_leaves_compact(linux):
    out, session = run(linux, "pt", "--leaves", "--json-lines")
    lines = out.getvalue().splitlines()
    leaves = session.address_space().leaves
    assert lines[1:-1] == [json.dumps(leaf.to_dict(), separators=(",", ":")) for leaf in leaves]


def test_regs_json_is_the_old_document(linux):
    out, session = run(linux, "--json", "regs")
    body = paging.regs_document(session)
    assert out.getvalue() == format_json(json_document("regs", session.target.description, body))


def test_a_command_makes_only_what_is_printed(linux, monkeypatch):
    """Text does not build the document, --json does not render the text."""

    def refuse(*args, **kwargs):
        raise AssertionError("not wanted")

    monkeypatch.setattr(paging, "pt_document", refuse)
    monkeypatch.setattr(paging, "pt_json_body", refuse)
    run(linux, "pt")
    monkeypatch.undo()
    monkeypatch.setattr(paging, "render_pt", refuse)
    monkeypatch.setattr(paging, "pt_text_parts", refuse)
    run(linux, "--json", "pt")


# -- the writer itself -----------------------------------------------------------------------


class Point:
    def __init__(self, x: int, name: str) -> None:
        self.x, self.name = x, name

    def to_dict(self) -> dict:
        return {"x": self.x, "name": self.name, "tags": ["a", "100%"], "empty": []}


def encode_points(points, depth):
    templates: dict[str, str] = {}
    out = []
    for p in points:
        template = templates.get(p.name)
        if template is None:
            example = {**p.to_dict(), "x": "\x01d"}
            template = templates[p.name] = json_template(example, ["\x01d"], depth)
        out.append(template % (p.x,))
    return out


@pytest.mark.parametrize("count", [0, 1, 2, 5, 7, 20])
def test_write_json_is_json_dumps_indent_1_at_any_depth(monkeypatch, count):
    monkeypatch.setattr(formatting, "ROWS_PER_CHUNK", 3)  # chunk boundaries inside the rows
    points = [Point(i * 0x1000, f'n"{i % 3}é\\') for i in range(count)]
    rows = JsonRows(points, Point.to_dict, encode_points)
    document = {
        "kinspect": 1,
        "nested": {"a": [1, {"b": None}], "rows": rows, "after": "%s"},
        "rows": rows,
        "empty": {},
        "last": True,
    }
    plain = {
        **document,
        "nested": {**document["nested"], "rows": rows.plain()},
        "rows": rows.plain(),
    }
    out = io.StringIO()
    write_json(document, out)
    assert out.getvalue() == json.dumps(plain, indent=1) + "\n"
    assert out.getvalue() == format_json(plain)


def test_ranges_encode_with_any_region_name(linux):
    with cli_on(linux) as session:
        ranges = session.ranges()[:50]
    names = [None, "direct map", 'odd "name" \\ é %d', "x" * 3]
    pairs = [(r, names[i % len(names)]) for i, r in enumerate(ranges)]
    expected = [{**r.to_dict(), "region": name} for r, name in pairs]
    assert json.loads("[" + ",".join(encode_range_rows(pairs, None)) + "]") == expected
    assert "[\n" + ",\n".join(encode_range_rows(pairs, 1)) + "\n]" == json.dumps(expected, indent=1)


def test_a_template_hole_must_be_in_the_example():
    with pytest.raises(ValueError, match="not in the example"):
        json_template({"x": 1}, ["\x01d"], 0)
