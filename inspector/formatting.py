"""Text for people: the tables and lines the CLI prints and the TUI shows.

Pure functions from records to strings, so the CLI and the TUI print the
same facts the same way. Layouts follow the tools readers already know:
Linux's ``/sys/kernel/debug/page_tables`` (ptdump) for ranges, the SDM's
register figures for registers. No I/O here, and no import of the decoders
at run time (the decoders take :func:`format_size` from :mod:`.numbers`).
``pt``'s long outputs are written from the walk's arrays, a run of rows at a
time, from templates these same functions make (:mod:`.columns`, numpy,
imported when such rows are written).
"""

from __future__ import annotations

import codecs
import gc
import io
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Generic, TextIO, TypeVar

from .numbers import format_size

if TYPE_CHECKING:
    from kinspect.inspector.x86.control import DecodedRegister
    from kinspect.inspector.x86.paging import (
        CompactRange,
        Leaf,
        LeafArrays,
        Range,
        RangeList,
        Translation,
    )

__all__ = [
    "HEX_ROW",
    "JSON_VERSION",
    "JsonRows",
    "format_hex_rows",
    "format_hexdump",
    "format_json",
    "format_range_row",
    "format_ranges",
    "format_register",
    "format_size",
    "format_translation",
    "json_document",
    "json_template",
    "write_json",
]

#: The version of the command line's JSON shapes (docs/json.md): the envelope's ``kinspect``.
JSON_VERSION = 1

#: Bytes per row of a hex dump.
HEX_ROW = 16


def format_ranges(ranges: Iterable[Range]) -> str:
    """A ptdump-style table of ranges, one per line, with a header.

    Columns: ``start-end``, size, the first physical address, then ``USR``, ``RW``/``ro``, ``PWT``,
    ``PCD``, ``PSE``, ``PAT``, ``GLB``, ``x``/``NX`` and the Linux level
    name of the leaves (``pte``, ``pmd``, ``pud``). USR, RW and x are the
    effective rights over the whole walk; the others are the leaf's bits.
    """
    lines = [f"{'start-end':<37} {'size':>6}  {'physical':<18} flags"]
    if hasattr(ranges, "counts"):  # a walk's RangeList: written from its arrays
        lines.append("".join(format_range_lines(ranges)).removesuffix("\n"))  # type: ignore[arg-type]
        return "\n".join(line for line in lines if line)
    lines.extend(format_range_row(r) for r in ranges)
    return "\n".join(lines)


def format_range_row(r: Range) -> str:
    """One row of :func:`format_ranges`: ``start-end  size  physical  flags``."""
    return (
        f"{r.start:#018x}-{r.end:#018x} {format_size(r.size):>6}  {r.phys:#018x} {r.flags_text()}"
    )


def format_translation(t: Translation) -> str:
    """One line per level walked, then the result or the reason it failed.

    ``PML4[511] at 0x1000ff8: PML4E 0x... P RW A -> 0x2000`` for each step;
    the last line is ``=> 0xffffffff81000000 -> 0x1000000 (2M page, ro ker x)``
    or ``fault: PD entry 3 at 0x1234018 is not present``.
    """
    lines = [f"{t.va:#x}:"]
    lines.extend(f"  {step}" for step in t.steps)
    lines.append(f"fault: {t.fault}" if t.fault is not None else f"=> {t}")
    return "\n".join(lines)


def format_register(decoded: DecodedRegister) -> str:
    """A register on one line, then one line per field that is set (name, bits, meaning).

    The first line is ``str(decoded)`` (``CR0=0x80050033 [PE MP ET NE WP AM PG]``);
    unknown bits get a line of their own so they are never missed.
    """
    lines = [str(decoded)]
    for field in decoded.fields:
        if not field.value or field.field.hidden:
            continue
        if field.width == 1:
            bits = f"bit {field.lsb}"
            value = ""
        else:
            bits = f"bits {field.lsb + field.width - 1}:{field.lsb}"
            value = f"={field.value:#x}" if field.field.as_address else f"={field.value}"
        lines.append(f"  {field.name + value:<22} {bits:<12} {field.description}")
    if decoded.unknown:
        lines.append(
            f"  {decoded.unknown:<#22x} {'':<12} bits no field names"
            " (reserved, or newer than this table)"
        )
    return "\n".join(lines)


def format_hex_rows(
    address: int, data: bytes, symbolize: Callable[[int], str | None] | None = None
) -> list[tuple[str, str]]:
    """``(row text, symbols)`` per 16 bytes: ``addr: hex  |ascii|`` and the qwords' symbols.

    ``symbolize`` names the aligned quadwords that point somewhere known
    (``+0x8=kernel_main+0x12``); without it the second item is empty.
    """
    rows = []
    for offset in range(0, len(data), HEX_ROW):
        chunk = data[offset : offset + HEX_ROW]
        hexes = " ".join(chunk[i : i + 8].hex(" ") for i in range(0, len(chunk), 8))
        ascii_text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        names = []
        if symbolize is not None:
            for i in range(0, len(chunk) - 7, 8):
                value = int.from_bytes(chunk[i : i + 8], "little")
                if value > 0xFFFF:
                    name = symbolize(value)
                    if name:
                        names.append(f"+{offset + i:#x}={name}")
        rows.append((f"{address + offset:#018x}: {hexes:<48}  |{ascii_text:<16}|", " ".join(names)))
    return rows


def format_hexdump(
    address: int, data: bytes, symbolize: Callable[[int], str | None] | None = None
) -> str:
    """The hex dump as text, one row per line (:func:`format_hex_rows`, symbols appended)."""
    return "\n".join(
        row + (f"  {names}" if names else "")
        for row, names in format_hex_rows(address, data, symbolize)
    )


def json_document(command: str, target: str | None, body: Mapping[str, Any]) -> dict[str, Any]:
    """The envelope every ``--json`` document has (docs/json.md), then the command's keys."""
    return {"kinspect": JSON_VERSION, "command": command, "target": target, **body}


def format_json(document: Mapping[str, Any]) -> str:
    """A JSON document as the command line prints it: ``indent=1``, one trailing newline.

    Byte for byte what ``json.dumps(document, indent=1)`` gives, but fast:
    Python's C encoder ignores ``indent``, and the pure-Python one writes a
    whole page map (a million values) in millions of tiny chunks, several
    times slower than the text. So a large document is encoded compactly in
    C and then indented with arrays (:func:`_indent_compact`).
    """
    import json  # imported by what writes JSON: a command's text needs none

    compact = json.dumps(document, separators=(",", ":"))
    if len(compact) < _INDENT_BY_ARRAYS or "\\" in compact:
        return json.dumps(document, indent=1) + "\n"
    return _indent_compact(compact) + "\n"


_INDENT_BY_ARRAYS = 1 << 16
"""Compact documents from this size on are indented with numpy (smaller ones are not worth
its import). A document with a backslash (an escape in a string) takes the plain path."""


def _indent_compact(compact: str) -> str:
    """``json.dumps(..., indent=1)`` of the document whose compact form is ``compact``.

    ``compact`` is ``json.dumps(..., separators=(",", ":"))`` output without a
    backslash: ASCII (``ensure_ascii``), and every quote opens or closes a
    string. The structural characters are those outside strings; each gets
    what the indenting encoder writes beside it: a newline and one space per
    depth after ``[``, ``{`` and ``,`` and before ``]`` and ``}`` (not inside
    ``[]`` and ``{}``), a space after ``:``.
    """
    import numpy as np

    text = np.frombuffer(compact.encode("ascii"), dtype=np.uint8)
    wanted = np.zeros(256, dtype=bool)
    wanted[list(b'[]{},:"')] = True
    at = np.flatnonzero(wanted[text])
    chars = text[at]
    quote = chars == ord('"')
    outside = (np.cumsum(quote) & 1) == 0
    outside &= ~quote
    at = at[outside]
    chars = chars[outside]
    opener = (chars == ord("[")) | (chars == ord("{"))
    closer = (chars == ord("]")) | (chars == ord("}"))
    depth = np.cumsum(opener.astype(np.int64) - closer)
    closed_at_once = np.zeros(len(at), dtype=bool)  # an opener closed right away
    closed_at_once[:-1] = opener[:-1] & closer[1:] & (at[1:] == at[:-1] + 1)
    empty = closed_at_once.copy()  # those openers and their closers
    empty[1:] |= closed_at_once[:-1]
    newline = ((opener | closer) & ~empty) | (chars == ord(","))
    colon = chars == ord(":")
    keep = newline | colon
    lengths = np.where(newline, depth + 1, 1)[keep]
    where = (at + ~closer)[keep]  # before a closer, after anything else
    starts = np.cumsum(lengths) - lengths
    inserted = np.full(int(lengths.sum()), ord(" "), dtype=np.uint8)
    inserted[starts[newline[keep]]] = ord("\n")
    # np.insert, without its sort: the insertions are in order already
    placed = np.repeat(where, lengths) + np.arange(len(inserted))
    out = np.empty(len(text) + len(inserted), dtype=np.uint8)
    own = np.ones(len(out), dtype=bool)
    own[placed] = False
    out[placed] = inserted
    out[own] = text
    return out.tobytes().decode("ascii")


# -- the direct writer: whole documents with large lists, written a run of rows at a time ----

T = TypeVar("T")

Chunk = str | bytes | memoryview
"""A piece of a document as :func:`write_json` writes it: text, or its UTF-8 bytes."""

#: Rows a :class:`JsonRows` encodes per chunk written (a chunk is one string, one write).
ROWS_PER_CHUNK = 4096


class JsonRows(Generic[T]):
    """A list of a ``--json`` document, kept as its records until it is written.

    ``encode(records, depth)`` gives the text of each item, indented for
    ``depth`` (``indent=1``; ``None``: compact), exactly as ``json.dumps``
    writes ``[to_dict(r) for r in records]`` inside its brackets (joined by
    ``,`` and a newline); or that text whole, as its bytes (one item).
    :func:`write_json` writes them :data:`ROWS_PER_CHUNK` at a time, so neither
    the dicts nor the whole text of half a million leaves (OVMF's map) are ever
    held; :meth:`plain` is the list of dicts
    (``CommandResult.body``).
    """

    __slots__ = ("chunk", "encode", "records", "to_dict")

    def __init__(
        self,
        records: Sequence[T],
        to_dict: Callable[[T], Any],
        encode: Callable[[Sequence[T], int | None], Sequence[Chunk]],
        chunk: int | None = None,
    ) -> None:
        self.records = records
        self.to_dict = to_dict
        self.encode = encode
        self.chunk = chunk

    def __len__(self) -> int:
        return len(self.records)

    def plain(self) -> list[Any]:
        return [self.to_dict(record) for record in self.records]

    def chunks(self, depth: int | None) -> Iterator[Chunk]:
        records = self.records
        chunk = self.chunk or ROWS_PER_CHUNK
        for start in range(0, len(records), chunk):
            items = self.encode(records[start : start + chunk], depth)
            yield items[0] if len(items) == 1 else ",\n".join(items)  # type: ignore[arg-type]


def write_json(document: Mapping[str, Any], out: TextIO) -> None:
    """:func:`format_json` of ``document`` written on ``out``, its :class:`JsonRows` (at any
    depth of dicts) a chunk at a time: the same bytes as ``json.dumps(plain, indent=1)``
    and a newline, ``plain`` being the document with each JsonRows as its list of dicts."""
    if not _has_rows(document):
        out.write(format_json(document))
        return
    write = _chunk_writer(out)
    with gc_paused():
        for chunk in _encode_rows_document(document, 0):
            write(chunk)
    write("\n")


def _chunk_writer(out: TextIO) -> Callable[[Chunk], object]:
    """``write`` of text and of UTF-8 bytes on ``out``: the bytes straight to its binary
    buffer when it has one in UTF-8 (a file, a pipe, the terminal: no decoding the rows
    only for the stream to encode them again), else decoded. Newlines are ``\\n``, as
    on the streams the command line writes (no ``newline=`` translation)."""
    if isinstance(out, io.TextIOWrapper) and codecs.lookup(out.encoding).name == "utf-8":
        out.flush()
        binary = out.buffer

        def write_bytes(chunk: Chunk) -> object:
            return binary.write(chunk.encode() if isinstance(chunk, str) else chunk)

        return write_bytes

    def write_text(chunk: Chunk) -> object:
        return out.write(chunk if isinstance(chunk, str) else str(chunk, "utf-8"))

    return write_text


@contextmanager
def gc_paused() -> Iterator[None]:
    """Hold off Python's cycle collector while rows are encoded (two tuples a row, no cycle).

    With the walk's records alive (two million objects for OVMF's map) each
    collection the rows' tuples trigger traverses all of them: writing the
    leaves took four times longer with the collector on.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _has_rows(value: Any) -> bool:
    if isinstance(value, JsonRows):
        return True
    if isinstance(value, Mapping):
        return any(_has_rows(v) for v in value.values())
    return False


def _encode_rows_document(value: Any, depth: int) -> Iterator[Chunk]:
    """``json.dumps(value, indent=1)`` at ``depth``, in pieces; JsonRows in chunks."""
    import json

    if isinstance(value, JsonRows):
        if not len(value):
            yield "[]"
            return
        inner = " " * (depth + 1)
        yield "[\n"
        first = True
        for chunk in value.chunks(depth + 1):
            if not first:
                yield ",\n"
            yield chunk
            first = False
        yield f"\n{inner[:-1]}]"
    elif isinstance(value, Mapping) and value and _has_rows(value):
        inner = " " * (depth + 1)
        yield "{\n"
        for index, (key, item) in enumerate(value.items()):
            yield f"{',' if index else ''}{chr(10) if index else ''}{inner}{json.dumps(key)}: "
            yield from _encode_rows_document(item, depth + 1)
        yield f"\n{inner[:-1]}}}"
    else:
        yield json.dumps(value, indent=1).replace("\n", "\n" + " " * depth)


_HOLE = "\x01"


def json_template(example: Any, holes: Iterable[str], depth: int | None) -> str:
    """A ``%`` template of ``json.dumps(example, indent=1)`` at ``depth`` (``None``: compact).

    ``example`` is a record's ``to_dict()`` with some values replaced by
    hole names (``"\\x01d"`` for an int written ``%d``, ``"\\x01s"`` for text
    already encoded, written ``%s``): a row is then ``template % values``, one
    C-level format instead of building its dicts. ``holes`` lists the hole
    names, for the check that each is there once per use. Literal ``%`` are
    doubled.
    """
    import json

    if depth is None:
        text = json.dumps(example, separators=(",", ":"))
    else:
        text = " " * depth + json.dumps(example, indent=1).replace("\n", "\n" + " " * depth)
    text = text.replace("%", "%%")
    for hole in set(holes):
        marker = json.dumps(hole)
        if marker not in text:
            raise ValueError(f"hole {hole!r} not in the example")
        text = text.replace(marker, "%" + hole[1:])
    return text


def json_list_text(values: Sequence[int], depth: int | None) -> str:
    """``json.dumps(list(values), indent=1)`` for a list of ints that starts a line's value at
    ``depth`` (the key's depth): the text a ``%s`` hole takes."""
    numbers = [str(int(v)) for v in values]  # what json.dumps writes of an int
    if depth is None:
        return f"[{','.join(numbers)}]"
    if not numbers:
        return "[]"
    inner = " " * (depth + 1)
    return f"[\n{inner}" + f",\n{inner}".join(numbers) + f"\n{inner[:-1]}]"


# -- many rows at once, from the walk's arrays (issue 16) ----------------------------------
#
# ``pt`` prints up to half a million rows. Each row's text is still made by the one
# function above (format_range_row, str(leaf), a record's to_dict through json.dumps),
# once per kind of row, on a sample with marked numbers (columns.marked_template); the
# rows are that text with their own numbers written in, from the arrays, a run at a time
# (kinspect.inspector.columns). No record is made per row.

# The numbers of a kind's sample, marked in its text: any values do whose text is found
# once (the end of a sample range is its start plus its size; phys stays below).
_SAMPLE_START, _SAMPLE_PHYS = 0x7A7A7A7000, 0x3C3C3C000
_SAMPLE_VA, _SAMPLE_PA = 0xA5A5A5A5A5000, 0xC3C3C3C3C000

_U64_END = 1 << 64


def format_region_heading(name: str) -> str:
    """ptdump's line before the first range of a region: ``---[ direct map ]---``."""
    return f"---[ {name} ]---"


def format_range_lines(
    ranges: RangeList, regions: tuple[Sequence[str | None], Any] | None = None
) -> Iterator[str]:
    """:func:`format_range_row` of each range, a line each (each line ends with a newline),
    a run of lines at a time. ``regions`` (names, and each range's index in them) puts
    ptdump's heading (:func:`format_region_heading`) before a range whose region is not
    the one before it (none before the first), unless it is in none (a name of None)."""
    import numpy as np

    from .columns import RowTable, Template, hex18, kinds_of, marked_template, picked

    count = len(ranges)
    if regions is None:
        headings, shown = [""], np.zeros(count, dtype=np.intp)
    else:
        names, index = regions
        # each range's name as the index of its first place in names
        place = {name: i for i, name in reversed(list(enumerate(names)))}
        canonical = np.array([place[name] for name in names], dtype=np.intp)
        region = canonical[np.asarray(index, dtype=np.intp)]
        named = np.array([name is not None for name in names], dtype=bool)
        changed = np.ones(count, dtype=bool)  # the first range: no region before it
        changed[1:] = region[1:] != region[:-1]
        shown = np.where(changed & named[region], region + 1, 0)
        headings = ["", *(f"{format_region_heading(n)}\n" if n else "" for n in names)]
    table = RowTable(("heading", "start", "end", "phys"))

    def template(first: int, size: int) -> Template:
        sample = replace(
            ranges[first], start=_SAMPLE_START, end=_SAMPLE_START + size, phys=_SAMPLE_PHYS
        )
        marks = {
            f"{_SAMPLE_START:#018x}": "start",
            f"{_SAMPLE_START + size:#018x}": "end",
            f"{_SAMPLE_PHYS:#018x}": "phys",
        }
        return marked_template(format_range_row(sample), marks).after("heading")

    for a in range(0, count, ROWS_PER_CHUNK):
        b = min(count, a + ROWS_PER_CHUNK)
        start, page_size = ranges.start[a:b], ranges.page_size[a:b]
        size = ranges.counts[a:b].astype(np.uint64) * page_size
        end = start + size
        whole = np.zeros(b - a, dtype=np.int64)  # rows ending at 2**64: no uint64 holds it
        over = np.flatnonzero(end <= start)
        whole[over] = over + 1
        rights, attributes = ranges.rights[a:b], ranges.attributes[a:b]
        firsts, kind = kinds_of(size, rights, attributes, page_size, whole)
        numbers = np.empty(len(firsts), dtype=np.intp)
        for k, i in enumerate(firsts.tolist()):
            row = a + i
            if whole[i]:
                text = format_range_row(ranges[row])
                numbers[k] = table.kind(("whole", row), Template, ("", text), ("heading",))
            else:
                key = (int(size[i]), int(rights[i]), int(attributes[i]), int(page_size[i]))
                numbers[k] = table.kind(key, template, row, key[0])
        columns = {
            "heading": picked(headings, shown[a:b]),
            "start": hex18(start),
            "end": hex18(end),
            "phys": hex18(ranges.phys[a:b]),
        }
        yield table.write(numbers[kind], columns, "\n")


def format_leaf_lines(arrays: LeafArrays, start: int = 0, stop: int | None = None) -> Iterator[str]:
    """``str(leaf)`` of each leaf ``start:stop`` of a walk's arrays, a line each (each
    ends with a newline), a run of lines at a time."""
    import numpy as np

    from .columns import RowTable, hex18, hex_plain, kinds_of, marked_template

    table = RowTable(("va", "pa"))
    marks = {f"{_SAMPLE_VA:#018x}": "va", f"{_SAMPLE_PA:#x}": "pa"}

    def template(row: int) -> Any:
        leaf = replace(arrays.records(row, row + 1)[0], va=_SAMPLE_VA, pa=_SAMPLE_PA)
        return marked_template(str(leaf), marks)

    count = len(arrays) if stop is None else min(stop, len(arrays))
    for a in range(start, count, ROWS_PER_CHUNK):
        b = min(count, a + ROWS_PER_CHUNK)
        bits, level, rights = arrays.entry_bits(a, b), arrays.level[a:b], arrays.rights[a:b]
        size = arrays.size[a:b]
        firsts, kind = kinds_of(bits, level, rights, size)
        numbers = np.empty(len(firsts), dtype=np.intp)
        for k, i in enumerate(firsts.tolist()):
            key = (int(bits[i]), int(level[i]), int(rights[i]), int(size[i]))
            numbers[k] = table.kind(key, template, a + i)
        columns = {"va": hex18(arrays.va[a:b]), "pa": hex_plain(arrays.pa[a:b])}
        yield table.write(numbers[kind], columns, "\n")


def _json_at(value: Any, depth: int | None) -> str:
    """``json.dumps(value, indent=1)`` as an item of a list at ``depth`` writes it (its
    first line indented too); ``None``: compact."""
    import json

    if depth is None:
        return json.dumps(value, separators=(",", ":"))
    return " " * depth + json.dumps(value, indent=1).replace("\n", "\n" + " " * depth)


def _json_template(example: dict[str, Any], holes: Sequence[str], depth: int | None) -> Any:
    """The template of ``_json_at(example, depth)`` whose values ``"\\x01" + hole`` are
    the holes (a record's dict with its numbers marked)."""
    import json

    from .columns import marked_template

    return marked_template(
        _json_at(example, depth), {json.dumps(_HOLE + hole): hole for hole in holes}
    )


_ITEMS = "\x02"
"""Between the items of a list of texts written as one (no JSON text holds it raw)."""

_RANGE_HOLES = ("start", "end", "size", "phys")  # the page size: one of three, in the kind
_COMPACT_HOLES = (*_RANGE_HOLES, "pieces", "mapped")


def _encode_ranges(
    numbers: dict[str, Any],
    keys: Sequence[Any],
    sample: Callable[[int], tuple[Range | CompactRange, str | None]],
    whole: Any,
    depth: int | None,
    table: Any,
    join: str | None = None,
) -> memoryview:
    """Ranges (or compact ranges) with their regions as JSON items at ``depth``, joined
    as a list writes them (or by ``join``), as UTF-8: ``numbers`` are the holes' columns, ``keys``
    the columns that make a row's kind with its region, ``sample(i)`` row ``i``'s record
    and region name, ``whole`` the rows (nonzero) written from their record alone (2**64
    in them)."""
    import numpy as np

    from .columns import Template, decimal, kinds_of

    holes = table.holes
    firsts, kind = kinds_of(*keys, whole)
    kinds = np.empty(len(firsts), dtype=np.intp)
    for k, i in enumerate(firsts.tolist()):
        record, name = sample(i)
        example = {**record.to_dict(), "region": name}
        if whole[i]:
            text = _json_at(example, depth)
            kinds[k] = table.kind(("whole", int(whole[i])), Template, (text,), ())
            continue
        key = (tuple(int(column[i]) for column in keys), name)
        for hole in holes:
            example[hole] = _HOLE + hole
        kinds[k] = table.kind(key, _json_template, example, holes, depth)
    columns = {hole: decimal(numbers[hole]) for hole in holes}
    end = join or (",\n" if depth is not None else ",")
    return memoryview(table.write_bytes(kinds[kind], columns, end, last=False))


def encode_range_rows(
    rows: Sequence[tuple[Range | CompactRange, str | None]], depth: int | None
) -> list[str]:
    """``pt``'s ranges with their regions, as JSON (:class:`JsonRows`), from records: each
    item is ``{**row.to_dict(), "region": name}`` (``depth`` None: compact)."""
    import numpy as np

    from .columns import RowTable

    if not rows:
        return []
    compact = hasattr(rows[0][0], "pieces")
    records: list[Range] = [row.range if compact else row for row, _ in rows]  # type: ignore[union-attr,misc]
    whole = np.array([r.end >= _U64_END for r in records], dtype=np.int64)
    whole *= np.arange(1, len(rows) + 1)

    def column(values: Iterable[int]) -> Any:
        return np.array([v if v < _U64_END else 0 for v in values], dtype=np.uint64)

    numbers = {
        "start": column(r.start for r in records),
        "end": column(r.end for r in records),
        "size": column(r.end - r.start for r in records),
        "phys": column(r.phys for r in records),
    }
    if compact:
        numbers["pieces"] = column(row.pieces for row, _ in rows)  # type: ignore[union-attr]
        numbers["mapped"] = column(row.mapped for row, _ in rows)  # type: ignore[union-attr]
    kinds: dict[tuple[Any, ...], int] = {}
    key = np.array(
        [
            kinds.setdefault((r.permissions, r.attributes, r.page_size, name), len(kinds))
            for r, (_, name) in zip(records, rows, strict=True)
        ],
        dtype=np.intp,
    )
    table = RowTable(_COMPACT_HOLES if compact else _RANGE_HOLES)
    text = _encode_ranges(numbers, [key], rows.__getitem__, whole, depth, table, _ITEMS)
    return str(text, "utf-8").split(_ITEMS)


def range_json_rows(
    ranges: RangeList, regions: tuple[Sequence[str | None], Any] | None = None
) -> JsonRows[int]:
    """:func:`encode_range_rows` of a walk's ranges (arrays) and their regions (names, and
    each range's index in them): a :class:`JsonRows` of the rows' numbers, written from
    the arrays a run at a time."""
    import numpy as np

    from .columns import RowTable

    names: Sequence[str | None] = [None]
    region = np.zeros(len(ranges), dtype=np.intp)
    if regions is not None:
        names, region = regions[0], np.asarray(regions[1], dtype=np.intp)
    table = RowTable(_RANGE_HOLES)

    def to_dict(i: int) -> dict[str, Any]:
        return {**ranges[i].to_dict(), "region": names[region[i]]}

    def encode(rows: Sequence[int], depth: int | None) -> list[Chunk]:
        a, b = rows[0], rows[-1] + 1
        start, page_size = ranges.start[a:b], ranges.page_size[a:b]
        size = ranges.counts[a:b].astype(np.uint64) * page_size
        end = start + size
        whole = np.zeros(b - a, dtype=np.int64)
        over = np.flatnonzero(end <= start)
        whole[over] = over + a + 1
        numbers = {
            "start": start,
            "end": end,
            "size": size,
            "phys": ranges.phys[a:b],
        }
        keys = [ranges.rights[a:b], ranges.attributes[a:b], page_size, region[a:b]]

        def sample(i: int) -> tuple[Range | CompactRange, str | None]:
            return ranges[a + i], names[region[a + i]]

        return [_encode_ranges(numbers, keys, sample, whole, depth, table)]

    return JsonRows(range(len(ranges)), to_dict, encode)


_LEAF_HOLES = ("va", "pa", "raw", "address", "table_path")


def _encode_leaves(
    numbers: dict[str, Any],
    kind_keys: Sequence[Any],
    sample: Callable[[int], Leaf],
    paths: tuple[Sequence[tuple[int, ...]], Any],
    depth: int | None,
    table: Any,
    texts: dict[tuple[int, ...], str],
    end: str,
    last: bool,
) -> memoryview:
    """Leaves as JSON items at ``depth`` (``leaf.to_dict()``) in UTF-8, each followed by
    ``end`` (but the last, unless ``last``):
    ``numbers`` the columns of VA, PA, the entry and its address, ``kind_keys`` the
    columns that make a leaf's kind, ``sample(i)`` leaf ``i`` as a record, ``paths`` the
    table paths and each leaf's index in them (``texts``: their JSON, kept)."""
    import numpy as np

    from .columns import decimal, kinds_of, picked

    firsts, kind = kinds_of(*kind_keys)
    kinds = np.empty(len(firsts), dtype=np.intp)

    def template(i: int) -> Any:
        example = sample(i).to_dict()
        example["va"], example["pa"] = _HOLE + "va", _HOLE + "pa"
        example["entry"]["raw"] = _HOLE + "raw"
        example["entry"]["address"] = _HOLE + "address"
        example["table_path"] = _HOLE + "table_path"
        return _json_template(example, _LEAF_HOLES, depth)

    for k, i in enumerate(firsts.tolist()):
        kinds[k] = table.kind(tuple(int(column[i]) for column in kind_keys), template, i)
    path_depth = None if depth is None else depth + 1
    path_texts = []
    for path in paths[0]:
        text = texts.get(path)
        if text is None:
            text = texts[path] = json_list_text(path, path_depth)
        path_texts.append(text)
    pa = decimal(numbers["pa"])
    columns = {
        "va": decimal(numbers["va"]),
        "pa": pa,
        "raw": decimal(numbers["raw"]),
        "address": pa if numbers["address"] is numbers["pa"] else decimal(numbers["address"]),
        "table_path": picked(path_texts, paths[1]),
    }
    return memoryview(table.write_bytes(kinds[kind], columns, end, last=last))


def encode_leaf_rows(leaves: Sequence[Leaf], depth: int | None) -> list[str]:
    """Leaves as JSON (:class:`JsonRows`, ``--json-lines``), from records: each
    ``leaf.to_dict()`` (``depth`` None: compact). What an entry's dict says besides its
    raw value and address follows from its other bits, its level and reserved mask, the
    leaf's size, level and rights: one template per such kind (an identity map has a
    handful)."""
    import numpy as np

    from .columns import RowTable

    if not leaves:
        return []
    permissions: dict[Any, int] = {}
    rows = [
        (
            leaf.va,
            leaf.pa,
            leaf.entry.raw,
            leaf.entry.address,
            leaf.entry.raw ^ leaf.entry.address,
            leaf.entry.level,
            leaf.entry.reserved,
            leaf.size,
            leaf.level,
            permissions.setdefault(leaf.permissions, len(permissions)),
        )
        for leaf in leaves
    ]
    columns = [np.array(c, dtype=np.uint64) for c in zip(*rows, strict=True)]
    numbers = dict(zip(("va", "pa", "raw", "address"), columns[:4], strict=False))
    path_list: dict[tuple[int, ...], int] = {}
    index = np.array(
        [path_list.setdefault(leaf.table_path, len(path_list)) for leaf in leaves], dtype=np.intp
    )
    text = _encode_leaves(
        numbers,
        columns[4:],
        leaves.__getitem__,
        (list(path_list), index),
        depth,
        RowTable(_LEAF_HOLES),
        {},
        _ITEMS,
        False,
    )
    return str(text, "utf-8").split(_ITEMS)


def leaf_json_rows(arrays: LeafArrays) -> JsonRows[int]:
    """:func:`encode_leaf_rows` of a walk's leaves (arrays): a :class:`JsonRows` of the
    leaves' numbers, written from the arrays a run at a time."""
    table = _LeafJson(arrays)
    return JsonRows(
        range(len(arrays)),
        lambda i: arrays.records(i, i + 1)[0].to_dict(),
        lambda rows, depth: [table.encode(rows[0], rows[-1] + 1, depth)],
    )


class _LeafJson:
    """A walk's leaves as JSON items, a run at a time (templates and paths kept between
    runs, per depth)."""

    def __init__(self, arrays: LeafArrays) -> None:
        self.arrays = arrays
        self.tables: dict[int | None, Any] = {}
        self.paths: dict[int | None, dict[tuple[int, ...], str]] = {}

    def text(self, a: int, b: int, depth: int | None, end: str | None = None) -> str:
        """Leaves ``a:b``, joined by ``,`` and a newline (``depth`` None: by a newline);
        with ``end``, each followed by it instead."""
        return str(self.encode(a, b, depth, end), "utf-8")

    def encode(self, a: int, b: int, depth: int | None, end: str | None = None) -> memoryview:
        """:meth:`text` in UTF-8."""
        from .columns import RowTable

        arrays = self.arrays
        table = self.tables.get(depth)
        if table is None:
            table = self.tables[depth] = RowTable(_LEAF_HOLES)
        pa = arrays.pa[a:b]
        numbers = {"va": arrays.va[a:b], "pa": pa, "raw": arrays.raw[a:b], "address": pa}
        keys = [arrays.entry_bits(a, b), arrays.level[a:b], arrays.rights[a:b], arrays.size[a:b]]
        join = ",\n" if depth is not None else "\n"
        text = _encode_leaves(
            numbers,
            keys,
            lambda i: arrays.records(a + i, a + i + 1)[0],
            arrays.table_paths(a, b),
            depth,
            table,
            self.paths.setdefault(depth, {}),
            end or join,
            end is not None,
        )
        return text


def leaf_json_lines(arrays: LeafArrays, *, last_newline: bool = True) -> Iterator[str]:
    """``--json-lines``: each leaf's compact dict, a line each (each ends with a newline;
    ``last_newline`` False: but the last of each run, for a writer that ends each with
    its own, as ``print`` does), a run of lines at a time."""
    table = _LeafJson(arrays)
    end = "\n" if last_newline else None
    for a in range(0, len(arrays), ROWS_PER_CHUNK):
        yield table.text(a, min(len(arrays), a + ROWS_PER_CHUNK), None, end)
