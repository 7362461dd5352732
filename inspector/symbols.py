"""Kernel symbols from an ELF file: names, source lines and call-frame information.

:class:`SymbolTable` reads the ELF given with ``--elf`` (pyelftools):
``.symtab`` for ``addr2sym`` and name lookups, the DWARF line tables (DWARF 5
as gcc 12 writes them, and older) for ``addr2line``, and ``.eh_frame`` plus
``.debug_frame`` merged into one :class:`~inspector.dwarf.CfiTable` for the
unwinder. Every run-time address goes through one load ``slide`` (relocated
or KASLR kernels), given or computed from a symbol whose run-time address is
known (:meth:`SymbolTable.slide_for`).
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import DecodeError, InspectorError

if TYPE_CHECKING:  # the DWARF decoder is imported when call-frame information is read
    from .dwarf import CfiTable, Fde

__all__ = ["LineTable", "SourceLine", "Symbol", "SymbolTable", "SymbolicAddress"]


@dataclass(frozen=True, slots=True)
class Symbol:
    name: str
    address: int
    size: int
    kind: str  # "func", "object", "notype"


@dataclass(frozen=True, slots=True)
class SourceLine:
    """A source position: ``file`` as the line table names it, ``path`` made absolute."""

    file: str
    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "path": self.path, "line": self.line}


@dataclass(frozen=True, slots=True)
class SymbolicAddress:
    """What ``sym ADDR`` answers: the symbol, the offset into it, and the source line."""

    address: int
    symbol: str | None
    offset: int
    line: SourceLine | None

    def __str__(self) -> str:
        text = f"{self.address:#x}"
        if self.symbol:
            text += f" {self.symbol}+{self.offset:#x}" if self.offset else f" {self.symbol}"
        if self.line:
            text += f" at {self.line}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "symbol": self.symbol,
            "offset": self.offset,
            "line": self.line.to_dict() if self.line else None,
        }


class LineTable:
    """Address ranges to source lines, from every line-number program.

    Each row covers ``[address, next row's address)`` within its sequence;
    an end-of-sequence row closes the range and covers nothing.
    """

    def __init__(self, rows: Iterable[tuple[int, SourceLine | None]]) -> None:
        ordered = sorted(rows, key=lambda r: (r[0], r[1] is not None))  # stable within an address
        self._addresses = [a for a, _ in ordered]
        self._lines = [line for _, line in ordered]

    def __len__(self) -> int:
        return len(self._addresses)

    def lookup(self, address: int) -> SourceLine | None:
        index = bisect.bisect_right(self._addresses, address) - 1
        return self._lines[index] if index >= 0 else None

    @classmethod
    def from_dwarf(cls, dwarf: Any) -> LineTable:
        rows: list[tuple[int, SourceLine | None, bool]] = []
        for cu in dwarf.iter_CUs():
            program = dwarf.line_program_for_CU(cu)
            if program is None:
                continue
            top = cu.get_top_DIE()
            comp_dir_attr = top.attributes.get("DW_AT_comp_dir")
            comp_dir = _text(comp_dir_attr.value) if comp_dir_attr else ""
            names = _file_names(program, comp_dir)
            sequence_start = len(rows)
            for entry in program.get_entries():
                state = entry.state
                if state is None:
                    continue
                if state.end_sequence:
                    # A row of this sequence at its end address covers nothing (gcc ends a
                    # function with one; the padding after it has no line).
                    while len(rows) > sequence_start and rows[-1][0] == state.address:
                        rows.pop()
                    rows.append((state.address, None, True))
                    sequence_start = len(rows)
                    continue
                file, path = names.get(state.file, ("?", "?"))
                rows.append((state.address, SourceLine(file, path, state.line), state.is_stmt))
        return cls(_pick_rows(rows))


def _pick_rows(
    rows: list[tuple[int, SourceLine | None, bool]],
) -> list[tuple[int, SourceLine | None]]:
    """One line per address, chosen the way gdb chooses it.

    gcc writes several rows at one address (views): gdb takes the last,
    unless it is not a statement boundary (``is_stmt`` clear), then the last
    row at that address that is one. An end of sequence never hides a row
    that starts at the same address.
    """
    by_address: dict[int, list[tuple[SourceLine | None, bool]]] = {}
    for address, line, is_stmt in rows:
        by_address.setdefault(address, []).append((line, is_stmt))
    result: list[tuple[int, SourceLine | None]] = []
    for address, group in by_address.items():
        lines = [(line, stmt) for line, stmt in group if line is not None]
        if not lines:
            result.append((address, None))
            continue
        chosen = lines[-1][0]
        if not lines[-1][1]:
            statements = [line for line, stmt in lines if stmt]
            if statements:
                chosen = statements[-1]
        result.append((address, chosen))
    return result


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _file_names(program: Any, comp_dir: str) -> dict[int, tuple[str, str]]:
    """File index to (name as the table gives it, absolute path); DWARF 5 counts from 0."""
    header = program.header
    version = header["version"]
    dirs = [_text(d) for d in header["include_directory"]]
    if version < 5:
        dirs = [comp_dir, *dirs]  # directory 0 is the compilation directory
    names: dict[int, tuple[str, str]] = {}
    for index, entry in enumerate(header["file_entry"], start=0 if version >= 5 else 1):
        name = _text(entry.name)
        directory = dirs[entry.dir_index] if 0 < entry.dir_index < len(dirs) else ""
        file = os.path.join(directory, name)
        path = os.path.normpath(os.path.join(comp_dir, directory, name))
        names[index] = (file, path)
    return names


def _open_elf(path: str) -> Any:
    from elftools.elf.elffile import ELFFile

    return ELFFile(open(path, "rb"))  # noqa: SIM115 - closed by the caller


def _read_fdes(path: str) -> list[Fde]:
    """``.eh_frame`` and ``.debug_frame`` of ``path``: every FDE of both."""
    from .dwarf import parse_cfi

    fdes: list[Fde] = []
    elf = _open_elf(path)
    try:
        for name, eh in ((".eh_frame", True), (".debug_frame", False)):
            section = elf.get_section_by_name(name)
            if section is None or section["sh_type"] == "SHT_NOBITS":
                continue
            try:
                fdes.extend(parse_cfi(section.data(), section["sh_addr"], eh_frame=eh))
            except DecodeError as exc:
                raise InspectorError(f"{path}: cannot parse {name}: {exc}") from exc
    finally:
        elf.stream.close()
    return fdes


def _read_lines(path: str) -> LineTable | None:
    """The DWARF line tables of ``path``, None without ``.debug_line``."""
    from elftools.common.exceptions import DWARFError

    elf = _open_elf(path)
    try:
        if not elf.has_dwarf_info() or elf.get_section_by_name(".debug_line") is None:
            return None
        try:
            return LineTable.from_dwarf(elf.get_dwarf_info(relocate_dwarf_sections=False))
        except (DWARFError, KeyError, IndexError, ValueError) as exc:
            raise InspectorError(f"{path}: cannot read the DWARF line tables: {exc}") from exc
    finally:
        elf.stream.close()


class _DebugInfo:
    """Line tables and CFI of one ELF, read on first use: a vmlinux's DWARF takes
    long to parse, and commands such as ``pt`` need only its symbols."""

    def __init__(self, path: str | None, lines: LineTable | None, fdes: list[Fde] | None) -> None:
        self.path = path
        self._lines = lines
        self._fdes = fdes
        self._lines_read = lines is not None or path is None
        self._fdes_read = fdes is not None or path is None

    @property
    def lines(self) -> LineTable | None:
        if not self._lines_read:
            self._lines = _read_elf(self.path, _read_lines)
            self._lines_read = True
        return self._lines

    @property
    def fdes(self) -> list[Fde]:
        if not self._fdes_read:
            self._fdes = _read_elf(self.path, _read_fdes)
            self._fdes_read = True
        return self._fdes or []


def _read_elf(path: str | None, reader: Any) -> Any:
    from elftools.common.exceptions import ELFError

    assert path is not None
    try:
        return reader(path)
    except OSError as exc:
        raise InspectorError(f"cannot read ELF file {path}: {exc.strerror}") from exc
    except ELFError as exc:
        raise InspectorError(f"{path} is not a valid ELF file: {exc}") from exc


class _Built:
    """The symbols by name (the last of a name wins) and in address order."""

    __slots__ = ("addresses", "by_name", "ordered")

    def __init__(self, symbols: list[Symbol]) -> None:
        self.by_name = {s.name: s for s in symbols}
        kinds = {"notype": 0, "object": 1, "func": 2}  # the last of equals wins
        self.ordered = sorted(symbols, key=lambda s: (s.address, kinds.get(s.kind, 3)))
        self.addresses = [s.address for s in self.ordered]


class _Index:
    """A table's symbols, made on first use and shared by its slid copies; ``known``
    answers a few names before then (None once the symbols are made)."""

    def __init__(
        self, build: Callable[[], list[Symbol]], known: Mapping[str, int | None] | None = None
    ) -> None:
        self._build: Callable[[], list[Symbol]] | None = build
        self._built: _Built | None = None
        self.known = known

    def built(self) -> _Built:
        if self._built is None:
            assert self._build is not None
            self._built = _Built(self._build())
            self._build = None
            self.known = None
        return self._built


class SymbolTable:
    """The symbols, line table and CFI of one ELF file, with a load slide."""

    def __init__(
        self,
        symbols: list[Symbol],
        *,
        slide: int = 0,
        lines: LineTable | None = None,
        cfi_fdes: list[Fde] | None = None,
        path: str | None = None,
        _debug: _DebugInfo | None = None,
        _index: _Index | None = None,
    ) -> None:
        self.slide = slide
        self.path = path
        self._index = _index or _Index(lambda: symbols)
        self._debug = _debug or _DebugInfo(path, lines, cfi_fdes)
        self._cfi: CfiTable | None = None

    @classmethod
    def deferred(
        cls, build: Callable[[], list[Symbol]], known: Mapping[str, int | None]
    ) -> SymbolTable:
        """A table whose symbols ``build`` makes on first use: until then ``lookup``
        answers the names in ``known`` (unslid addresses, None for a name not there), so
        that a command needing only those never pays for the ~100,000 others."""
        return cls([], _index=_Index(build, known))

    @classmethod
    def from_elf(cls, path: str, *, slide: int = 0) -> SymbolTable:
        """Read the symbols of ``path``; its line tables and CFI are read on first use.

        A kernel without DWARF still gives symbols; without CFI the unwinder
        falls back to frame pointers.
        """
        try:
            from elftools.common.exceptions import ELFError
            from elftools.elf.elffile import ELFFile
            from elftools.elf.sections import SymbolTableSection
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise InspectorError("pyelftools is not installed") from exc
        symbols: list[Symbol] = []
        try:
            with open(path, "rb") as stream:
                elf = ELFFile(stream)
                for section in elf.iter_sections():
                    if not isinstance(section, SymbolTableSection):
                        continue
                    for sym in section.iter_symbols():
                        kind = sym["st_info"]["type"]
                        if kind not in ("STT_FUNC", "STT_OBJECT", "STT_NOTYPE") or not sym.name:
                            continue
                        if sym["st_shndx"] in ("SHN_UNDEF", "SHN_ABS") and kind == "STT_NOTYPE":
                            continue
                        symbols.append(
                            Symbol(sym.name, sym["st_value"], sym["st_size"], kind[4:].lower())
                        )
        except OSError as exc:
            raise InspectorError(f"cannot read ELF file {path}: {exc.strerror}") from exc
        except ELFError as exc:
            raise InspectorError(f"{path} is not a valid ELF file: {exc}") from exc
        return cls(symbols, slide=slide, path=path)

    def with_slide(self, slide: int) -> SymbolTable:
        """The same table loaded ``slide`` bytes away from its link address."""
        return SymbolTable([], slide=slide, path=self.path, _debug=self._debug, _index=self._index)

    @property
    def _lines(self) -> LineTable | None:
        return self._debug.lines

    @property
    def _fdes(self) -> list[Fde]:
        return self._debug.fdes

    def slide_for(self, name: str, runtime_address: int) -> int:
        """The slide that puts symbol ``name`` at ``runtime_address`` (KASLR: ``_text``)."""
        symbol = self._index.built().by_name.get(name)
        if symbol is None:
            raise InspectorError(f"no symbol {name!r} in {self.path or 'the ELF file'}")
        return runtime_address - symbol.address

    # -- names ------------------------------------------------------------------------

    def lookup(self, name: str) -> int | None:
        known = self._index.known
        if known is not None and name in known:
            address = known[name]
            return None if address is None else address + self.slide
        symbol = self._index.built().by_name.get(name)
        return None if symbol is None else symbol.address + self.slide

    def name_of(self, address: int) -> str | None:
        """``name+0x12`` for an address inside a symbol, None elsewhere (an unsized label
        further than 0x100 away names nothing): what every view writes beside an address."""
        found = self.symbolize(address)
        if found is None:
            return None
        symbol, offset = found
        if symbol.size == 0 and offset > 0x100:
            return None
        return f"{symbol.name}+{offset:#x}" if offset else symbol.name

    def symbolize(self, address: int) -> tuple[Symbol, int] | None:
        """The symbol containing ``address`` and the offset into it.

        A sized symbol (function or object) that holds the address wins over
        an unsized label inside it (gdb's choice too); among symbols at one
        address a function wins over an object, and both over a label; an
        unsized label covers up to 64 KiB after it.
        """
        unslid = address - self.slide
        built = self._index.built()
        index = bisect.bisect_right(built.addresses, unslid) - 1
        label: tuple[Symbol, int] | None = None
        while index >= 0:
            symbol = built.ordered[index]
            offset = unslid - symbol.address
            if symbol.size == 0 and offset > 0x10000:
                break
            if symbol.size and offset < symbol.size:
                return symbol, offset  # a sized symbol holding it beats a label inside it
            if symbol.size == 0 and label is None:
                label = (symbol, offset)
            elif symbol.size and symbol.kind != "notype":
                break
            index -= 1
        return label

    def names_at(self, address: int) -> list[str]:
        """Every symbol name at exactly run-time ``address`` (``boot_stack_top``, ...)."""
        unslid = address - self.slide
        built = self._index.built()
        lo = bisect.bisect_left(built.addresses, unslid)
        hi = bisect.bisect_right(built.addresses, unslid)
        return sorted(s.name for s in built.ordered[lo:hi])

    def format_address(self, address: int) -> str:
        found = self.symbolize(address)
        if found is None:
            return f"{address:#x}"
        symbol, offset = found
        return f"{symbol.name}+{offset:#x}" if offset else symbol.name

    # -- lines and frames --------------------------------------------------------------

    @property
    def has_lines(self) -> bool:
        return self._lines is not None and len(self._lines) > 0

    def addr2line(self, address: int) -> SourceLine | None:
        """The source line of run-time ``address``, or None without DWARF lines for it."""
        if self._lines is None:
            return None
        return self._lines.lookup(address - self.slide)

    def addr2sym(self, address: int) -> SymbolicAddress:
        """Symbol, offset and source line of run-time ``address``."""
        found = self.symbolize(address)
        name, offset = (found[0].name, found[1]) if found else (None, 0)
        return SymbolicAddress(address, name, offset, self.addr2line(address))

    @property
    def cfi(self) -> CfiTable:
        """``.eh_frame`` and ``.debug_frame`` merged, at the current slide."""
        from .dwarf import CfiTable

        if self._cfi is None or self._cfi.slide != self.slide:
            self._cfi = CfiTable(self._fdes, slide=self.slide)
        return self._cfi
