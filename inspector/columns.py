"""Many rows of text at once, from columns of numbers (numpy): ``kinspect pt``'s output.

A row's text is still written by one function, the record's own (``format_range_row``,
``str(leaf)``, ``json.dumps(record.to_dict())``): it is called once per *kind* of row
(a row's kind is what its text depends on besides its numbers: permissions,
attributes, sizes, region), on a sample whose numbers are marked, and its text
becomes that kind's :class:`Template`, pieces of text between holes. Every row is
then its kind's pieces with its own numbers written into the holes, a few
thousand rows at a time: each piece and each hole is a matrix of bytes (a row a
line, zero bytes where a narrower text ends), the matrices side by side, the
zero bytes dropped (text never holds a NUL byte: JSON escapes it). No Python
object is made per row. (Issue 16: half a million leaves in a second, not a minute.)
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
"""Text of many rows: one row a line of bytes, zero bytes where it ends early."""

_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_ZERO = ord("0")


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
    """``f"{value:#x}"`` of each value (no leading zeros)."""
    out = hex18(values)
    digits = out[:, 2:]
    leading = np.cumsum(digits != _ZERO, axis=1) == 0
    leading[:, -1] = False
    digits[leading] = 0
    return out


def decimal(values: npt.NDArray[np.uint64]) -> Matrix:
    """``str(value)`` of each value (numpy's own conversion, zero bytes after)."""
    width = len(str(int(values.max()))) if len(values) else 1
    text: Matrix = values.astype(f"S{width}").view(np.uint8).reshape(-1, width)
    return text


def picked(texts: Sequence[str], index: npt.NDArray[np.intp]) -> Matrix:
    """``texts[i]`` for each ``i`` of ``index``."""
    return _table([t.encode() for t in texts])[index]


def _table(texts: Sequence[bytes]) -> Matrix:
    """Texts as the rows of a matrix, zero-padded to the longest."""
    table = np.zeros((len(texts), max((len(t) for t in texts), default=0)), dtype=np.uint8)
    for row, text in enumerate(texts):
        table[row, : len(text)] = np.frombuffer(text, dtype=np.uint8)
    return table


def kinds_of(*keys: npt.NDArray[np.generic]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Rows with the same values in every key column are one kind: ``(first, kind)``,
    the first row of each kind and each row's kind (numbered in order of the keys)."""
    combined = np.zeros(len(keys[0]), dtype=np.int64)
    for key in keys:
        values, inverse = np.unique(key, return_inverse=True)
        combined = combined * len(values) + inverse.reshape(-1)
    _, first, kind = np.unique(combined, return_index=True, return_inverse=True)
    return first, kind.reshape(-1)


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
        self._pieces: list[Matrix] | None = None
        self._present: npt.NDArray[np.bool_] | None = None

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
            self._pieces = None
        return number

    def _matrices(self) -> tuple[list[Matrix], npt.NDArray[np.bool_]]:
        """Piece ``j`` of every template (the text before hole ``j``; the last: after the
        last hole), and which holes each template has."""
        if self._pieces is None or self._present is None:
            count = len(self.holes)
            gaps: list[list[bytes]] = [[] for _ in range(count + 1)]
            present = np.zeros((len(self.templates), count), dtype=bool)
            for number, template in enumerate(self.templates):
                mine = [b""] * (count + 1)
                gap = 0
                for text, hole in zip(template.pieces, (*template.holes, None), strict=True):
                    mine[gap] = text.encode()
                    if hole is not None:
                        gap = self.holes.index(hole)
                        present[number, gap] = True
                        gap += 1
                for j, encoded in enumerate(mine):
                    gaps[j].append(encoded)
            self._pieces = [_table(texts) for texts in gaps]
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
        pieces, present = self._matrices()
        one = len(self.templates) == 1  # one kind: its pieces are the same in every row
        tail = np.frombuffer(end.encode(), dtype=np.uint8)
        parts: list[tuple[Matrix, bool]] = []  # a matrix, or a row for every row
        for j, hole in enumerate(self.holes):
            parts.append((pieces[j][0] if one else pieces[j], not one))
            column = columns[hole]
            has = present[kinds, j]
            if not has.all():
                column = column.copy()
                column[~has] = 0
            parts.append((column, False))
        parts.append((pieces[-1][0] if one else pieces[-1], not one))
        parts.append((tail, False))
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
        text: str = flat[flat != 0].tobytes().decode()
        return text
