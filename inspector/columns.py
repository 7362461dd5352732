"""Many rows of text at once, from columns of numbers (numpy): ``kinspect pt``'s output.

A row's text is still written by one function, the record's own (``format_range_row``,
``str(leaf)``, ``json.dumps(record.to_dict())``): it is called once per *kind* of row
(a row's kind is what its text depends on besides its numbers: permissions,
attributes, sizes, region), on a sample whose numbers are marked, and its text
becomes that kind's :class:`Template`, pieces of text between holes. Every row is
then its kind's pieces with its own numbers written into the holes, a few
thousand rows at a time: each hole is a matrix of bytes (a row a line, zero bytes
before a narrower text; text never holds a NUL byte: JSON escapes it). A run of
neighbours of one shape (kind, and the length of each number) is written in place,
its pieces once for all its rows, then each hole's column; rows of many shapes
side by side in one matrix, the zero bytes then dropped. No Python object is made
per row. (Issue 16: half a million leaves in a tenth of a second, not a minute.)
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

__all__ = [
    "Matrix",
    "RowTable",
    "Template",
    "decimal",
    "hex18",
    "hex_plain",
    "kinds_of",
    "marked_template",
    "picked",
]

Matrix: TypeAlias = npt.NDArray[np.uint8]
"""Text of many rows: one row a line of bytes, each row's text in one piece at its end (zero
bytes before a text narrower than the widest)."""

_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_ZERO = ord("0")
# 0000..9999; then the same without their leading zeros (0: none), then again (0: "0")
_QUADS = np.frombuffer(
    b"".join(b"%04d" % i for i in range(10_000))
    + b"".join((b"%d" % i if i else b"").rjust(4, b"\0") for i in range(10_000))
    + b"".join((b"%d" % i).rjust(4, b"\0") for i in range(10_000)),
    dtype=np.uint32,
)
# _LEADING[d]: keeps the last d of 16 bytes, zeroes those before
_LEADING = np.where(np.arange(16) >= 16 - np.arange(17)[:, None], 255, 0).astype(np.uint8)


def hex18(values: npt.NDArray[np.uint64]) -> Matrix:
    """``f"{value:#018x}"`` of each value (``0x`` and 16 digits)."""
    out = np.empty((len(values), 18), dtype=np.uint8)
    out[:, 0] = _ZERO
    out[:, 1] = ord("x")
    octets = values.astype(">u8").view(np.uint8).reshape(-1, 8)  # most significant first
    out[:, 2::2] = _DIGITS[octets >> 4]
    out[:, 3::2] = _DIGITS[octets & 15]
    return out


def hex_plain(values: npt.NDArray[np.uint64]) -> Matrix:
    """``f"{value:#x}"`` of each value (no leading zeros: zero bytes before the ``0x``)."""
    out = hex18(values)
    shown = out[:, 2:] != _ZERO
    shown[:, -1] = True
    first = np.argmax(shown, axis=1)  # the first digit shown, from the 16
    out[:, 2:] &= _LEADING[16 - first]
    rows = np.arange(len(values))
    out[:, :2] = 0
    out[rows, first] = _ZERO
    out[rows, first + 1] = ord("x")
    return out


def decimal(values: npt.NDArray[np.uint64]) -> Matrix:
    """``str(value)`` of each value (zero bytes before it, as wide as the widest).

    Four digits at a time from a table of ``"0000"`` to ``"9999"`` (a division
    by 10,000 each, no per-value text: numpy's own ``astype("S20")`` took three
    quarters of ``--json pt --leaves``). When the values are not all as wide, a
    value's highest four digits come from the table's second part, without
    leading zeros (its third part: the lowest four of a value below 10,000, so 0
    is ``"0"``)."""
    count = len(values)
    width = len(str(int(values.max()))) if count else 1
    groups = (width + 3) // 4
    quads = np.empty((count, groups), dtype=np.uint32)
    rest = values.astype(np.uint64, copy=False)
    every_digit = not count or len(str(int(values.min()))) == width
    ten = np.uint64(10_000)
    first = np.uint64(0 if every_digit else 2 * 10_000)
    for group in range(groups - 1, 0, -1):
        high = rest // ten
        index = rest - high * ten
        if not every_digit:
            index += (high == 0) * first
            first = np.uint64(10_000)
        np.take(_QUADS, index, out=quads[:, group])
        rest = high
    np.take(_QUADS, rest + first, out=quads[:, 0])
    text: Matrix = quads.view(np.uint8)[:, 4 * groups - width :]
    return text


def picked(texts: Sequence[str], index: npt.NDArray[np.intp]) -> Matrix:
    """``texts[i]`` for each ``i`` of ``index``."""
    return _table([t.encode() for t in texts])[index]


def _table(texts: Sequence[bytes]) -> Matrix:
    """Texts as the rows of a :data:`Matrix`, zero bytes before the shorter."""
    width = max((len(t) for t in texts), default=0)
    rows = b"".join(text.rjust(width, b"\0") for text in texts)
    return np.frombuffer(rows, dtype=np.uint8).reshape(len(texts), width)


def kinds_of(*keys: npt.NDArray[np.generic]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Rows with the same values in every key column are one kind: ``(first, kind)``,
    the first row of each kind and each row's kind (numbered in order of the keys).

    Neighbours are mostly of one kind (a run of pages), so the kinds are sorted
    out among the first rows of each run only."""
    count = len(keys[0])
    starts = _run_starts(keys)
    if len(starts) == 1:
        return starts, np.zeros(count, dtype=np.intp)
    combined = np.zeros(len(starts), dtype=np.int64)
    for key in keys:
        values, inverse = np.unique(key[starts], return_inverse=True)
        combined = combined * len(values) + inverse.reshape(-1)
    _, first, kind = np.unique(combined, return_index=True, return_inverse=True)
    runs = np.diff(np.append(starts, count))
    return starts[first], np.repeat(kind.reshape(-1), runs)


def _run_starts(keys: Sequence[npt.NDArray[np.generic]]) -> npt.NDArray[np.intp]:
    """The first row of each run of rows with the same values in every key column."""
    count = len(keys[0])
    change = np.zeros(count, dtype=bool)
    if count:
        change[0] = True
    for key in keys:
        change[1:] |= key[1:] != key[:-1]
    return np.flatnonzero(change)


@dataclass(frozen=True, slots=True)
class Template:
    """A kind of row's text: ``pieces`` between its holes, named in order by ``holes``."""

    pieces: tuple[str, ...]
    holes: tuple[str, ...]

    def after(self, hole: str) -> Template:
        """The same text with a hole before it (``pt``'s region headings)."""
        return Template(("", *self.pieces), (hole, *self.holes))


def marked_template(text: str, marks: Mapping[str, str]) -> Template:
    """``text`` with each mark (``{text of a sample's number: hole name}``) made a hole.
    Each mark must be there once, none inside another."""
    found = []
    for mark, name in marks.items():
        at = text.find(mark)
        if at < 0 or text.find(mark, at + 1) >= 0:
            raise ValueError(f"the sample's {name} ({mark!r}) is not once in {text!r}")
        found.append((at, at + len(mark), name))
    found.sort()
    pieces, holes, done = [], [], 0
    for start, end, name in found:
        if start < done:
            raise ValueError(f"the sample's {name} overlaps another number in {text!r}")
        pieces.append(text[done:start])
        holes.append(name)
        done = end
    pieces.append(text[done:])
    return Template(tuple(pieces), tuple(holes))


class RowTable:
    """Rows of one layout: the templates of its kinds, and its rows written from columns.

    ``holes`` names every hole a template may have, in the order they come; a
    template may lack some (a row written whole, ``2**64`` past a uint64): that
    hole is left out of its rows. Templates are made once per kind, kept by key
    (:meth:`kind`), so a layout's rows can be written a run at a time.
    """

    def __init__(self, holes: Sequence[str]) -> None:
        self.holes = tuple(holes)
        self.templates: list[Template] = []
        self._keys: dict[Hashable, int] = {}
        self._gaps: list[list[bytes]] = []  # each template's text before each hole, and after
        self._pieces: list[Matrix] | None = None
        self._present: npt.NDArray[np.bool_] | None = None
        self._frames: dict[tuple[bytes | int, ...], tuple[Matrix, list[int]]] = {}

    def kind(self, key: Hashable, make: Callable[..., Template], *args: Any) -> int:
        """The number of the kind ``key``, its template ``make(*args)`` the first time."""
        number = self._keys.get(key)
        if number is None:
            template = make(*args)
            order = [self.holes.index(hole) for hole in template.holes]
            if order != sorted(order):
                raise ValueError(f"holes {template.holes} out of the order {self.holes}")
            number = self._keys[key] = len(self.templates)
            self.templates.append(template)
            mine = [b""] * (len(self.holes) + 1)
            gap = 0
            for text, hole in zip(template.pieces, (*template.holes, None), strict=True):
                mine[gap] = text.encode()
                if hole is not None:
                    gap = self.holes.index(hole) + 1
            self._gaps.append(mine)
            self._pieces = None
        return number

    def _matrices(self) -> tuple[list[Matrix], npt.NDArray[np.bool_]]:
        """Piece ``j`` of every template (the text before hole ``j``; the last: after the
        last hole), and which holes each template has."""
        if self._pieces is None or self._present is None:
            present = np.zeros((len(self.templates), len(self.holes)), dtype=bool)
            for number, template in enumerate(self.templates):
                present[number, [self.holes.index(hole) for hole in template.holes]] = True
            self._pieces = [_table(texts) for texts in zip(*self._gaps, strict=True)]
            self._present = present
        return self._pieces, self._present

    def write(
        self,
        kinds: npt.NDArray[np.intp],
        columns: Mapping[str, Matrix],
        end: str,
        *,
        last: bool = True,
    ) -> str:
        """The rows of kinds ``kinds`` (template numbers) with the numbers of ``columns``
        (a matrix per hole name, a row per row), each row followed by ``end`` (``last``
        False: not the last row; ``end`` is then what joins them)."""
        text: str = self.write_bytes(kinds, columns, end, last=last).tobytes().decode()
        return text

    def write_bytes(
        self,
        kinds: npt.NDArray[np.intp],
        columns: Mapping[str, Matrix],
        end: str,
        *,
        last: bool = True,
    ) -> Matrix:
        """:meth:`write` as its UTF-8 bytes (one row of bytes, a file writes it as is).

        Each row's text in a column ends at the column's last byte (:data:`Matrix`;
        a ValueError if not). Neighbouring rows are mostly of one shape (their
        kind and the length of each text: a run of pages), and a run of rows of
        one shape is a matrix without a zero byte, written straight in place: its
        pieces at once, then each column. Rows of many shapes are written as one
        matrix whose zero bytes are then dropped (a pass over every byte).
        """
        pieces, present = self._matrices()
        tail = end.encode()
        count = len(kinds)
        texts: list[Matrix] = []  # each hole's column
        firsts: list[npt.NDArray[np.intp]] = []  # where each row's text starts in it
        for j, hole in enumerate(self.holes):
            column = columns[hole]
            if not present[:, j].all():  # some kinds lack this hole: its rows have no text
                column = column.copy()
                column[~present[kinds, j]] = 0
            texts.append(column)
            width = column.shape[1]
            if width and column[:, 0].all():  # every row's text as wide as the column
                first = np.zeros(count, dtype=np.intp)
            elif width:
                nonzero = column != 0
                first = np.argmax(nonzero, axis=1)
                empty = ~nonzero[:, -1]
                if empty.any():
                    if nonzero[empty].any():
                        raise ValueError(f"the texts of {hole} do not end at its last column")
                    first[empty] = width
            else:
                first = np.zeros(count, dtype=np.intp)
            firsts.append(first)
        starts = _run_starts([kinds, *firsts])
        width = sum(piece.shape[1] for piece in pieces) + sum(text.shape[1] for text in texts)
        if len(starts) > RUNS_AT_MOST + count * width // BYTES_PER_RUN:
            return self._write_dropping_zeros(kinds, texts, tail, last)
        widths = [text.shape[1] for text in texts]
        bounds = [*starts.tolist(), count]
        runs = []
        size = 0
        for r, shape in enumerate(np.stack([kinds[starts], *(f[starts] for f in firsts)], 1)):
            kind, *places = shape.tolist()
            lengths = [width - place for width, place in zip(widths, places, strict=True)]
            frame, at = self._frame(kind, lengths, tail)
            rows = bounds[r + 1] - bounds[r]
            runs.append((frame, zip(at, places, lengths, texts, strict=True), size, rows))
            size += rows * len(frame)
        out = np.empty(size, dtype=np.uint8)
        for r, (frame, holes, offset, rows) in enumerate(runs):
            block = out[offset : offset + rows * len(frame)].reshape(rows, len(frame))
            block[:] = frame
            a, b = bounds[r], bounds[r + 1]
            for where, place, length, text in holes:
                if length:
                    block[:, where : where + length] = text[a:b, place:]
        return out if last or not count else out[: len(out) - len(tail)]

    def _frame(self, kind: int, lengths: list[int], tail: bytes) -> tuple[Matrix, list[int]]:
        """A row of kind ``kind`` whose holes hold texts of ``lengths``: its pieces, zero
        bytes for its holes, ``tail``; and where each hole starts."""
        key: tuple[bytes | int, ...] = (tail, kind, *lengths)
        found = self._frames.get(key)
        if found is None:
            gaps = self._gaps[kind]
            parts: list[bytes] = []
            at = []
            size = 0
            for piece, length in zip(gaps, lengths, strict=False):
                at.append(size + len(piece))
                parts += (piece, bytes(length))
                size += len(piece) + length
            parts += (gaps[-1], tail)
            if len(self._frames) > 1 << 12:
                self._frames.clear()
            found = self._frames[key] = (np.frombuffer(b"".join(parts), dtype=np.uint8), at)
        return found

    def _write_dropping_zeros(
        self, kinds: npt.NDArray[np.intp], texts: Sequence[Matrix], tail: bytes, last: bool
    ) -> Matrix:
        """The rows as one matrix (each piece as wide as its widest kind, each column as
        wide as its widest number), its zero bytes dropped."""
        pieces, _ = self._matrices()
        one = len(self.templates) == 1  # one kind: its pieces are the same in every row
        ending = np.frombuffer(tail, dtype=np.uint8)
        parts: list[tuple[Matrix, bool]] = []  # a matrix, or a row for every row
        for j, column in enumerate(texts):
            parts.append((pieces[j][0] if one else pieces[j], not one))
            parts.append((column, False))
        parts.append((pieces[-1][0] if one else pieces[-1], not one))
        parts.append((ending, False))
        width = sum(part.shape[-1] for part, _ in parts)
        out = np.empty((len(kinds), width), dtype=np.uint8)
        at = 0
        for part, by_kind in parts:
            step = part.shape[-1]
            if step and by_kind:
                np.take(part, kinds, axis=0, out=out[:, at : at + step])
            elif step:
                out[:, at : at + step] = part
            at += step
        if not last and len(kinds):
            out[-1, width - len(tail) :] = 0
        flat = out.reshape(-1)
        text: Matrix = flat[flat != 0]
        return text


RUNS_AT_MOST = 8
BYTES_PER_RUN = 4096
"""Rows written run by run when there are at most ``RUNS_AT_MOST + bytes // BYTES_PER_RUN``
runs of rows of one shape, ``bytes`` the size of the matrix the other way writes (a run
costs a few numpy calls, 5 to 10 us; the other way about 2 ns a byte of that matrix)."""
