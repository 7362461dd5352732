"""Kernel symbols from an ELF file (pyelftools): name to address and back."""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from .errors import InspectorError

__all__ = ["Symbol", "SymbolTable"]


@dataclass(frozen=True, slots=True)
class Symbol:
    name: str
    address: int
    size: int
    kind: str  # "func", "object", "notype"


class SymbolTable:
    """The function and object symbols of one ELF file, with a load slide."""

    def __init__(self, symbols: list[Symbol], *, slide: int = 0) -> None:
        self.slide = slide
        self._by_name = {s.name: s for s in symbols}
        self._sorted = sorted(symbols, key=lambda s: s.address)
        self._addresses = [s.address for s in self._sorted]

    @classmethod
    def from_elf(cls, path: str, *, slide: int = 0) -> SymbolTable:
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
        return cls(symbols, slide=slide)

    def lookup(self, name: str) -> int | None:
        symbol = self._by_name.get(name)
        return None if symbol is None else symbol.address + self.slide

    def symbolize(self, address: int) -> tuple[Symbol, int] | None:
        """The symbol containing ``address`` and the offset into it."""
        unslid = address - self.slide
        index = bisect.bisect_right(self._addresses, unslid) - 1
        while index >= 0:
            symbol = self._sorted[index]
            offset = unslid - symbol.address
            if symbol.size == 0 and offset > 0x10000:
                return None
            if symbol.size == 0 or offset < symbol.size:
                return symbol, offset
            if symbol.kind != "notype":
                return None
            index -= 1
        return None

    def format_address(self, address: int) -> str:
        found = self.symbolize(address)
        if found is None:
            return f"{address:#x}"
        symbol, offset = found
        return f"{symbol.name}+{offset:#x}" if offset else symbol.name
