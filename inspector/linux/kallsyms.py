"""The kernel's own symbol tables (kallsyms), read from its memory with no files.

Linux keeps every symbol that /proc/kallsyms prints in a handful of tables that
``scripts/kallsyms.c`` writes into ``.rodata`` at build time, and that
``kernel/kallsyms.c`` reads at run time:

- ``kallsyms_offsets``: one s32 per symbol, sorted by address. With
  ``CONFIG_KALLSYMS_ABSOLUTE_PERCPU`` (x86_64 SMP) a value >= 0 is an absolute
  address (the per-CPU symbols) and a negative one is ``kallsyms_relative_base
  - 1 - value``; without it every value is an unsigned offset from that base.
- ``kallsyms_relative_base`` (u64) and ``kallsyms_num_syms`` (u32).
- ``kallsyms_names``: per symbol a length byte (a second byte when its bit 7 is set:
  ``len = (b0 & 0x7f) | b1 << 7``, the "big symbol" form of 6.1+), then that many
  token numbers; the expansion's first character is the type letter.
- ``kallsyms_markers``: the offset in the names of every 256th symbol.
- ``kallsyms_seqs_of_names`` (6.2+, and 6.1 LTS since its backport): 3 bytes per
  symbol, the name-sorted order; not needed here.
- ``kallsyms_token_table``: 256 NUL-terminated tokens, ``kallsyms_token_index``:
  256 u16 offsets of each token in that table.

Each label is 8-byte aligned. Up to 6.3 the order is offsets, relative base,
count, names, markers, [seqs], token table, token index; 6.4 moved the offsets,
the base and the seqs after the token index, and both orders are found. The
decoders here are pure (bytes in, records out); :func:`find_kallsyms` finds the
tables through a ``read_virtual(address, size)`` callable by sampling the
kernel's read-only data a page every 64 KiB for a page of offsets (then every
page of .rodata, for a kernel with fewer than ~17,000 symbols), then following
the layout from there.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, NamedTuple

from ..errors import DecodeError, InspectorError
from ..symbols import Symbol, SymbolTable

__all__ = [
    "KallsymsEntry",
    "KallsymsLayout",
    "decode_kallsyms",
    "decode_names",
    "decode_offsets",
    "decode_tokens",
    "deferred_symbol_table",
    "find_kallsyms",
    "kallsyms_symbols",
    "known_addresses",
    "parse_kallsyms_text",
    "read_layout",
    "symbol_table",
]

ReadVirtual = Callable[[int, int], bytes]

#: __START_KERNEL_map .. MODULES_VADDR: the kernel image's window (x86_64)
KERNEL_MAP_START = 0xFFFFFFFF80000000
KERNEL_MAP_END = 0xFFFFFFFFC0000000
ALIGN = 8
TOKENS = 256
#: every this many symbols a marker (kernel/kallsyms.c: ``get_symbol_pos``)
MARKER_EVERY = 256
PAGE = 4096
#: the sampling stride: finds an offsets table of 17,000 symbols or more
SAMPLE_STRIDE = 64 * 1024
#: what a read of the finder asks at once (one gdb request)
BLOCK = 64 * 1024
#: the most symbols a kernel is believed to have (allyesconfig has ~600,000)
MAX_SYMBOLS = 4_000_000


class KallsymsEntry(NamedTuple):
    """One line of /proc/kallsyms: address, type letter, name (a tuple: a kernel has
    ~100,000 of them, and a frozen dataclass takes three times longer to make)."""

    address: int
    type: str
    name: str

    def __str__(self) -> str:
        return f"{self.address:016x} {self.type} {self.name}"


@dataclass(frozen=True, slots=True)
class KallsymsLayout:
    """Where the tables are in the kernel's memory (run-time addresses) and what they hold."""

    offsets: int
    relative_base_at: int
    relative_base: int
    num_syms_at: int
    count: int
    names: int
    names_size: int
    markers: int
    token_table: int
    token_index: int
    #: kallsyms_seqs_of_names between the markers and the token table (6.2+, 6.1 LTS)
    seqs_of_names: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "offsets": self.offsets,
            "relative_base_at": self.relative_base_at,
            "relative_base": self.relative_base,
            "num_syms_at": self.num_syms_at,
            "count": self.count,
            "names": self.names,
            "names_size": self.names_size,
            "markers": self.markers,
            "token_table": self.token_table,
            "token_index": self.token_index,
            "seqs_of_names": self.seqs_of_names,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KallsymsLayout:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


# -- pure decoders -----------------------------------------------------------------------


def decode_tokens(table: bytes, index: bytes) -> tuple[str, ...]:
    """The 256 tokens: ``index`` is kallsyms_token_index (256 little-endian u16)."""
    if len(index) < 2 * TOKENS:
        raise DecodeError(0, f"a token index is {2 * TOKENS} bytes, got {len(index)}")
    offsets = struct.unpack_from(f"<{TOKENS}H", index)
    tokens = []
    for number, offset in enumerate(offsets):
        end = table.find(b"\0", offset)
        if offset >= len(table) or end < 0:
            raise DecodeError(offset, f"token {number} runs past the token table")
        tokens.append(table[offset:end].decode("latin-1"))
    return tuple(tokens)


def decode_names(
    names: bytes, count: int, tokens: Sequence[str], *, start: int = 0
) -> tuple[list[str], int]:
    """``count`` expanded names from ``names`` at ``start`` (type letter first), and
    the offset just past the last one."""
    expanded: list[str] = []
    append = expanded.append
    lookup = tokens.__getitem__
    position = start
    size = len(names)
    try:
        for _ in range(count):
            length = names[position]
            position += 1
            if length & 0x80:
                length = (length & 0x7F) | names[position] << 7
                position += 1
            end = position + length
            if end > size or length == 0:
                raise IndexError
            append("".join(map(lookup, names[position:end])))
            position = end
    except IndexError:
        raise DecodeError(
            position, f"kallsyms_names ends after {len(expanded)} of {count} names"
        ) from None
    return expanded, position


def decode_offsets(
    data: bytes, count: int, relative_base: int, *, absolute_percpu: bool = True
) -> list[int]:
    """Addresses from kallsyms_offsets (``kallsyms_sym_address()`` of kernel/kallsyms.c)."""
    if len(data) < 4 * count:
        raise DecodeError(len(data), f"{count} offsets need {4 * count} bytes, got {len(data)}")
    values = array("i")
    values.frombytes(data[: 4 * count])
    if not _little_endian():
        values.byteswap()
    mask = (1 << 64) - 1
    if not absolute_percpu:
        return [(relative_base + (value & 0xFFFFFFFF)) & mask for value in values]
    base = relative_base - 1
    return [value if value >= 0 else (base - value) & mask for value in values]


def decode_kallsyms(
    offsets: bytes,
    names: bytes,
    token_table: bytes,
    token_index: bytes,
    count: int,
    relative_base: int,
    *,
    absolute_percpu: bool = True,
) -> list[KallsymsEntry]:
    """Every symbol, in table order (by address), as /proc/kallsyms lists the kernel's."""
    tokens = decode_tokens(token_table, token_index)
    expanded, _ = decode_names(names, count, tokens)
    addresses = decode_offsets(offsets, count, relative_base, absolute_percpu=absolute_percpu)
    return [
        KallsymsEntry(address, name[0], name[1:])
        for address, name in zip(addresses, expanded, strict=True)
    ]


def parse_kallsyms_text(text: str, *, source: str = "the symbol file") -> list[KallsymsEntry]:
    """Lines of a /proc/kallsyms copy (``ADDR T NAME [module]``) or a System.map."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) < 3 or len(fields[1]) != 1:
                raise ValueError
            address = int(fields[0], 16)
        except ValueError:
            raise InspectorError(
                f"{source}, line {number}: not 'ADDRESS TYPE NAME' as /proc/kallsyms "
                f"or System.map write it: {line[:80]!r}"
            ) from None
        entries.append(KallsymsEntry(address, fields[1], fields[2]))
    if not entries:
        raise InspectorError(f"{source} has no symbols")
    return entries


def symbol_table(entries: Iterable[KallsymsEntry]) -> SymbolTable:
    """A :class:`SymbolTable` at run-time addresses (slide 0).

    kallsyms has no sizes: each symbol reaches the next higher address, as the kernel's
    own ``kallsyms_lookup_size_offset`` assumes; text symbols are functions.
    """
    return SymbolTable(kallsyms_symbols(entries))  # no path: lines and CFI come from an ELF


def deferred_symbol_table(
    entries: Callable[[], Iterable[KallsymsEntry]], known: Mapping[str, int | None]
) -> SymbolTable:
    """:func:`symbol_table` of what ``entries()`` gives, made on first use: until then
    only the names of ``known`` (from :func:`known_addresses`) are answered."""
    return SymbolTable.deferred(lambda: kallsyms_symbols(entries()), known)


def known_addresses(
    entries: Iterable[KallsymsEntry], names: Iterable[str]
) -> dict[str, int | None]:
    """The address :func:`symbol_table`'s ``lookup`` gives each of ``names`` (None for a
    name not there), without making the table: of several symbols of one name, the one
    last in address order (the last in ``entries`` among equal addresses)."""
    wanted = set(names)
    found: dict[str, int] = {}
    for address, _, name in entries:
        if name in wanted and (name not in found or address >= found[name]):
            found[name] = address
    return {name: found.get(name) for name in sorted(wanted)}


def kallsyms_symbols(entries: Iterable[KallsymsEntry]) -> list[Symbol]:
    """The symbols of ``entries`` in address order, each sized up to the next address."""
    ordered = list(entries)
    if any(b.address < a.address for a, b in pairwise(ordered)):
        ordered.sort(key=lambda e: e.address)
    symbols: list[Symbol] = []
    append = symbols.append
    following = 0  # the next higher address than the entries seen (walking backwards)
    for index in range(len(ordered) - 1, -1, -1):
        address, kind, name = ordered[index]
        size = following - address if following > address else 0
        append(Symbol(name, address, size, "func" if kind in "tTwW" else "object"))
        if index and ordered[index - 1].address != address:
            following = address
    symbols.reverse()
    return symbols


def _little_endian() -> bool:
    return array("i", [1]).tobytes()[0] == 1


# -- finding the tables in memory ----------------------------------------------------------


class _Memory:
    """read_virtual in 64 KiB blocks, each read once, never past the mapped spans."""

    def __init__(self, read_virtual: ReadVirtual, spans: Sequence[tuple[int, int]]) -> None:
        self._read = read_virtual
        self._spans = spans
        self._blocks: dict[int, tuple[int, bytes]] = {}
        self.bytes_read = 0

    def _block(self, address: int) -> tuple[int, bytes]:
        """The block holding ``address``, cut to its span (two spans may share a block)."""
        block = address & ~(BLOCK - 1)
        for start, end in self._spans:
            if start <= address < end:
                low, high = max(block, start), min(block + BLOCK, end)
                break
        else:
            raise DecodeError(address, "outside the kernel's mapped data")
        cached = self._blocks.get(low)
        if cached is None:
            cached = (low, self._read(low, high - low))
            self._blocks[low] = cached
            self.bytes_read += high - low
        return cached

    def sample(self, page: int) -> bytes:
        """One page alone (the search samples one page in 16: a block each would read
        them all)."""
        data = self._read(page, PAGE)
        self.bytes_read += len(data)
        return data

    def read(self, address: int, size: int) -> bytes:
        out = bytearray()
        while size > 0:
            low, data = self._block(address)
            offset = address - low
            piece = data[offset : offset + size]
            if not piece:
                raise DecodeError(address, "outside the kernel's mapped data")
            out += piece
            address += len(piece)
            size -= len(piece)
        return bytes(out)

    def u32(self, address: int) -> int:
        value: int = struct.unpack("<I", self.read(address, 4))[0]
        return value

    def u64(self, address: int) -> int:
        value: int = struct.unpack("<Q", self.read(address, 8))[0]
        return value


def _align(value: int) -> int:
    return (value + ALIGN - 1) & ~(ALIGN - 1)


def _offsets_like(words: Sequence[int]) -> int:
    """How many neighbours look like kallsyms_offsets of relative symbols: negative,
    not increasing, close together."""
    return sum(1 for a, b in pairwise(words) if a < 0 and b <= a and a - b < 1 << 24)


def _page_words(data: bytes) -> array[int]:
    words = array("i")
    words.frombytes(data[: len(data) & ~3])
    return words


def find_kallsyms(
    read_virtual: ReadVirtual,
    regions: Sequence[tuple[int, int]],
    *,
    stride: int = SAMPLE_STRIDE,
) -> tuple[KallsymsLayout, list[KallsymsEntry]]:
    """Find and decode kallsyms in ``regions`` (start, end) of the kernel's data.

    ``regions`` are the kernel image's non-executable mappings, in address order;
    contiguous ones are searched as one. Raises DecodeError when no table is found.
    """
    spans = _merge(regions)
    memory = _Memory(read_virtual, spans)
    sampled: set[int] = set()
    # a page per ``stride`` everywhere, then (a small kernel's table is shorter than the
    # stride) every other page of the first span, where .rodata is
    for step, searched in ((stride, spans), (PAGE, spans[:1])):
        for span_start, span_end in searched:
            for page in range(span_start, span_end - PAGE + 1, step):
                page = page & ~(PAGE - 1)
                if page in sampled:
                    continue
                sampled.add(page)
                words = _page_words(memory.sample(page))
                if _offsets_like(words) < len(words) * 9 // 10:
                    continue
                try:
                    layout = _layout_from_offsets_page(memory, page, span_start, span_end)
                except DecodeError:
                    continue
                return layout, _decode_layout(memory, layout)
    raise DecodeError(
        0,
        "no kallsyms tables found in the kernel's read-only data (searched "
        + ", ".join(f"{a:#x}-{b:#x}" for a, b in spans)
        + ")",
    )


def _merge(regions: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for start, end in sorted(regions):
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
        else:
            spans.append((start, end))
    return spans


def _layout_from_offsets_page(
    memory: _Memory, page: int, span_start: int, span_end: int
) -> KallsymsLayout:
    """From a page inside kallsyms_offsets: the run's end, the base, the count, the rest."""
    # walk to the end of the run of relative offsets: whole pages first, then words
    address = page
    while address + PAGE <= span_end:
        words = _page_words(memory.read(address, PAGE))
        if not (words[0] < 0 and list(words) == sorted(words, reverse=True)):
            break
        if words[0] - words[-1] >= len(words) << 24:
            break
        address += PAGE
    previous = struct.unpack("<i", memory.read(address - 4, 4))[0] if address > page else 0
    if address == page:
        previous = struct.unpack("<i", memory.read(address, 4))[0]
    while True:
        address += 4
        if address + 16 > span_end:
            raise DecodeError(address, "kallsyms_offsets run to the end of the data")
        value = struct.unpack("<i", memory.read(address, 4))[0]
        if not (previous < 0 and value <= previous and previous - value < 1 << 24):
            break
        previous = value
    # kallsyms_relative_base follows, 8-aligned; its low half may have passed for an offset
    for base_at in (_align(address) - 8, _align(address), _align(address) + 8):
        base = memory.u64(base_at)
        if not KERNEL_MAP_START <= base < KERNEL_MAP_END:
            continue
        count = memory.u32(base_at + 8)
        offsets = base_at - _align(4 * count)
        if 0 < count <= MAX_SYMBOLS and span_start <= offsets <= page:
            try:
                return _layout_after_count(memory, offsets, base_at, base, count, span_end)
            except DecodeError:
                pass
        found = _layout_before_offsets(memory, page, base_at, base, span_start)
        if found is not None:
            return found
    raise DecodeError(address, "no kallsyms_relative_base and kallsyms_num_syms after the offsets")


def _layout_before_offsets(
    memory: _Memory, page: int, base_at: int, base: int, span_start: int
) -> KallsymsLayout | None:
    """6.4+: num_syms, names, markers, token table, token index, then the offsets and the
    base. The offsets begin where a token index ends: look back from ``page`` for it."""
    lowest = max(span_start + 2 * TOKENS, page - 4 * MAX_SYMBOLS)
    candidate = page & ~(ALIGN - 1)
    while candidate >= lowest:
        block_low = max(lowest, candidate - BLOCK)
        data = memory.read(block_low - 2 * TOKENS, candidate - block_low + 2 * TOKENS)
        for offsets in range(candidate, block_low - 1, -ALIGN):
            at = offsets - 2 * TOKENS - (block_low - 2 * TOKENS)
            if data[at] or data[at + 1] or not 0 < data[at + 2] | data[at + 3] << 8 < 64:
                continue
            index = struct.unpack_from(f"<{TOKENS}H", data, at)
            if any(b <= a for a, b in pairwise(index)):
                continue
            layout = _layout_from_token_index(memory, offsets, index, base_at, base, span_start)
            if layout is not None:
                return layout
        candidate = block_low - ALIGN
    return None


def _layout_from_token_index(
    memory: _Memory,
    offsets: int,
    index: tuple[int, ...],
    base_at: int,
    base: int,
    span_start: int,
) -> KallsymsLayout | None:
    token_index = offsets - 2 * TOKENS
    # the token table ends (then pads to 8) just before the index; each token after the
    # first starts right after a NUL
    window = min(TOKENS * 64, token_index - span_start)
    data = memory.read(token_index - window, window)
    for pad in range(ALIGN):
        end = window - pad  # the table's end in ``data``
        if end < 1 or data[end - 1] != 0:
            continue
        last = data.rfind(b"\0", 0, end - 1) + 1  # where the last token starts
        table = last - index[-1]
        if table < 0 or (token_index - window + table) % ALIGN:
            continue
        if all(data[table + i - 1] == 0 and data[table + i] for i in index[1:]):
            break
    else:
        return None
    token_table = token_index - window + table
    for count in ((base_at - offsets) // 4, (base_at - offsets) // 4 - 1):
        if count <= 0 or offsets + _align(4 * count) != base_at:
            continue
        marker_count = (count + MARKER_EVERY - 1) // MARKER_EVERY
        markers = token_table - _align(4 * marker_count)
        marks = struct.unpack(f"<{marker_count}I", memory.read(markers, 4 * marker_count))
        if marks[0] != 0:
            continue
        # kallsyms_num_syms, then the names: the last group starts marks[-1] in
        highest = markers - marks[-1]
        for names in range(highest & ~(ALIGN - 1), max(span_start + 8, highest - 256 * 520), -8):
            if memory.u32(names - 8) != count:
                continue
            try:
                size, starts = _walk_names(memory, names, count, markers + 1)
            except DecodeError:
                continue
            if _align(names + size) == markers and list(marks) == starts:
                return KallsymsLayout(
                    offsets=offsets,
                    relative_base_at=base_at,
                    relative_base=base,
                    num_syms_at=names - 8,
                    count=count,
                    names=names,
                    names_size=size,
                    markers=markers,
                    token_table=token_table,
                    token_index=token_index,
                    seqs_of_names=True,
                )
    return None


def _layout_after_count(
    memory: _Memory, offsets: int, base_at: int, base: int, count: int, span_end: int
) -> KallsymsLayout:
    names = base_at + 16
    names_size, starts = _walk_names(memory, names, count, span_end)
    position = names + names_size
    markers = _align(position)
    marker_count = len(starts)
    marks = struct.unpack(f"<{marker_count}I", memory.read(markers, 4 * marker_count))
    if list(marks) != starts:
        raise DecodeError(markers, "kallsyms_markers do not follow the names")
    after_markers = _align(markers + 4 * marker_count)
    for seqs, table in ((False, after_markers), (True, _align(after_markers + 3 * count))):
        index = _token_index_after(memory, table, span_end)
        if index is not None:
            return KallsymsLayout(
                offsets=offsets,
                relative_base_at=base_at,
                relative_base=base,
                num_syms_at=base_at + 8,
                count=count,
                names=names,
                names_size=names_size,
                markers=markers,
                token_table=table,
                token_index=index,
                seqs_of_names=seqs,
            )
    raise DecodeError(after_markers, "no kallsyms_token_table after the markers")


def _walk_names(memory: _Memory, names: int, count: int, span_end: int) -> tuple[int, list[int]]:
    """The names' size (lengths only) and where every 256th starts: what
    kallsyms_markers must hold."""
    position = names
    chunk_start, chunk = names, memory.read(names, min(BLOCK, span_end - names))
    starts = []
    for number in range(count):
        if position + 2 > chunk_start + len(chunk):
            chunk_start = position
            chunk = memory.read(position, min(BLOCK, span_end - position))
            if len(chunk) < 2:
                raise DecodeError(position, "kallsyms_names runs past the kernel's data")
        if number % MARKER_EVERY == 0:
            starts.append(position - names)
        length = chunk[position - chunk_start]
        position += 1
        if length & 0x80:
            length = (length & 0x7F) | chunk[position - chunk_start] << 7
            position += 1
        if length == 0:
            raise DecodeError(position, "a kallsyms name of length 0")
        position += length
    return position - names, starts


def _token_index_after(memory: _Memory, table: int, span_end: int) -> int | None:
    """Where kallsyms_token_index is, if ``table`` starts a token table that it indexes."""
    size = min(TOKENS * 64, span_end - table)
    data = memory.read(table, size)
    starts = [0]
    position = 0
    for _ in range(TOKENS):
        end = data.find(b"\0", position)
        if end <= position:  # no NUL, or an empty token
            return None
        position = end + 1
        starts.append(position)
    index = _align(table + position)
    if index + 2 * TOKENS > span_end:
        return None
    if list(struct.unpack(f"<{TOKENS}H", memory.read(index, 2 * TOKENS))) != starts[:TOKENS]:
        return None
    return index


def _decode_layout(memory: _Memory, layout: KallsymsLayout) -> list[KallsymsEntry]:
    table_size = layout.token_index - layout.token_table
    return decode_kallsyms(
        memory.read(layout.offsets, 4 * layout.count),
        memory.read(layout.names, layout.names_size),
        memory.read(layout.token_table, table_size),
        memory.read(layout.token_index, 2 * TOKENS),
        layout.count,
        layout.relative_base,
    )


def read_layout(
    read_virtual: ReadVirtual, layout: KallsymsLayout, regions: Sequence[tuple[int, int]]
) -> list[KallsymsEntry]:
    """Decode the tables at a layout found before (a cache entry that is checked)."""
    memory = _Memory(read_virtual, _merge(regions))
    if memory.u64(layout.relative_base_at) != layout.relative_base:
        raise DecodeError(layout.relative_base_at, "kallsyms_relative_base moved")
    if memory.u32(layout.num_syms_at) != layout.count:
        raise DecodeError(layout.num_syms_at, "kallsyms_num_syms changed")
    return _decode_layout(memory, layout)
