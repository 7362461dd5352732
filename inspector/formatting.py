"""Text for people: the tables and lines the CLI prints and the TUI shows.

Pure functions from records to strings, so the CLI and the TUI print the
same facts the same way. Layouts follow the tools readers already know:
Linux's ``/sys/kernel/debug/page_tables`` (ptdump) for ranges, the SDM's
register figures for registers. No I/O here, and no import of the decoders
at run time (the decoders take :func:`format_size` from :mod:`.numbers`).
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Generic, TextIO, TypeVar

from .numbers import format_size

if TYPE_CHECKING:
    from kinspect.inspector.x86.control import DecodedRegister
    from kinspect.inspector.x86.paging import CompactRange, Leaf, Range, Translation

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

#: Rows a :class:`JsonRows` encodes per chunk written (a chunk is one string, one write).
ROWS_PER_CHUNK = 4096


class JsonRows(Generic[T]):
    """A list of a ``--json`` document, kept as its records until it is written.

    ``encode(records, depth)`` gives the text of each item, indented for
    ``depth`` (``indent=1``; ``None``: compact), exactly as ``json.dumps``
    writes ``[to_dict(r) for r in records]`` inside its brackets (joined by
    ``,`` and a newline). :func:`write_json` writes them :data:`ROWS_PER_CHUNK`
    at a time, so neither the dicts nor the whole text of half a million
    leaves (OVMF's map) are ever held; :meth:`plain` is the list of dicts
    (``CommandResult.body``).
    """

    __slots__ = ("encode", "records", "to_dict")

    def __init__(
        self,
        records: Sequence[T],
        to_dict: Callable[[T], Any],
        encode: Callable[[Sequence[T], int | None], list[str]],
    ) -> None:
        self.records = records
        self.to_dict = to_dict
        self.encode = encode

    def __len__(self) -> int:
        return len(self.records)

    def plain(self) -> list[Any]:
        return [self.to_dict(record) for record in self.records]

    def chunks(self, depth: int | None) -> Iterator[str]:
        records = self.records
        for start in range(0, len(records), ROWS_PER_CHUNK):
            yield ",\n".join(self.encode(records[start : start + ROWS_PER_CHUNK], depth))


def write_json(document: Mapping[str, Any], out: TextIO) -> None:
    """:func:`format_json` of ``document`` written on ``out``, its :class:`JsonRows` (at any
    depth of dicts) a chunk at a time: the same bytes as ``json.dumps(plain, indent=1)``
    and a newline, ``plain`` being the document with each JsonRows as its list of dicts."""
    if not _has_rows(document):
        out.write(format_json(document))
        return
    with gc_paused():
        for chunk in _encode_rows_document(document, 0):
            out.write(chunk)
    out.write("\n")


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


def _encode_rows_document(value: Any, depth: int) -> Iterator[str]:
    """``json.dumps(value, indent=1)`` at ``depth``, in pieces; JsonRows in chunks."""
    if isinstance(value, JsonRows):
        if not len(value):
            yield "[]"
            return
        inner = " " * (depth + 1)
        yield "[\n"
        first = True
        for chunk in value.chunks(depth + 1):
            yield chunk if first else ",\n" + chunk
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
    if depth is None:
        return json.dumps(list(values), separators=(",", ":"))
    return json.dumps(list(values), indent=1).replace("\n", "\n" + " " * depth)


_D, _S = _HOLE + "d", _HOLE + "s"


def encode_range_rows(
    rows: Sequence[tuple[Range | CompactRange, str | None]], depth: int | None
) -> list[str]:
    """``pt``'s ranges with their regions, as JSON (:class:`JsonRows`): each item is
    ``{**row.to_dict(), "region": name}``. One template per permissions, attributes and
    region (a few dozen in a whole Linux map); the numbers go in its holes."""
    templates: dict[tuple[int, tuple[str, ...], str | None], str] = {}
    out: list[str] = []
    append = out.append

    def template_of(row: Range | CompactRange, name: str | None) -> str:
        example = {**row.to_dict(), "region": name}
        for hole in ("start", "end", "size", "phys", "page_size", "pieces", "mapped"):
            if hole in example:
                example[hole] = _D
        return json_template(example, [_D], depth)

    if rows and hasattr(rows[0][0], "pieces"):  # compact ranges (one kind per list)
        compact: Sequence[tuple[CompactRange, str | None]] = rows  # type: ignore[assignment]
        for c, name in compact:
            r = c.range
            key = (id(r.permissions), r.attributes, name)
            template = templates.get(key)
            if template is None:
                template = templates[key] = template_of(c, name)
            append(
                template
                % (r.start, r.end, r.end - r.start, r.phys, r.page_size, c.pieces, c.mapped)
            )
        return out
    exact: Sequence[tuple[Range, str | None]] = rows  # type: ignore[assignment]
    for r, name in exact:
        key = (id(r.permissions), r.attributes, name)
        template = templates.get(key)
        if template is None:
            template = templates[key] = template_of(r, name)
        append(template % (r.start, r.end, r.end - r.start, r.phys, r.page_size))
    return out


def encode_leaf_rows(leaves: Sequence[Leaf], depth: int | None) -> list[str]:
    """Leaves as JSON (:class:`JsonRows`, ``--json-lines``): each ``leaf.to_dict()``.

    What an entry's dict says besides its raw value and address (its level,
    flags, page size, protection key, available and reserved bits) follows
    from the entry's other bits, its level and its reserved mask: one
    template per such kind of leaf (an identity map has a handful), filled
    with VA, PA, the raw entry, its address and the table path.
    """
    templates: dict[tuple[int, int, int, int, int, int], str] = {}
    paths: dict[tuple[int, ...], str] = {}
    path_depth = None if depth is None else depth + 1
    out: list[str] = []
    append = out.append
    for leaf in leaves:
        entry = leaf.entry
        raw = entry.raw
        address = entry.address
        key = (
            raw ^ address,
            entry.level,
            entry.reserved,
            leaf.size,
            leaf.level,
            id(leaf.permissions),
        )
        template = templates.get(key)
        if template is None:
            example = leaf.to_dict()
            example["va"] = example["pa"] = _D
            example["entry"]["raw"] = example["entry"]["address"] = _D
            example["table_path"] = _S
            template = templates[key] = json_template(example, [_D, _S], depth)
        path = leaf.table_path
        path_text = paths.get(path)
        if path_text is None:
            path_text = paths[path] = json_list_text(path, path_depth)
        append(template % (leaf.va, leaf.pa, raw, address, path_text))
    return out
