"""Linux's ORC unwind tables (``.orc_unwind_ip``, ``.orc_unwind``, ``orc_lookup``).

ORC ("Oops Rewind Capability") is what a kernel built without frame pointers
unwinds with: objtool writes one 6-byte ``struct orc_entry`` per code range
(arch/x86/include/asm/orc_types.h), and a sorted table of the ranges' start
addresses, each an ``s32`` relative to its own slot. An entry says where the
caller's stack pointer is (``sp_reg`` + ``sp_offset``: the CFA, with the
return address just below it), where the caller's RBP was saved, and whether
the frame is a call, a full ``pt_regs`` or an IRET frame (partial ``pt_regs``).

The 16 bits after the two offsets changed meaning twice (the numbering of
the versions is drgn's, the kernel has none):

- version 1 (4.14 - 6.2): sp_reg:4, bp_reg:4, type:2 (CALL 0, REGS 1,
  REGS_PARTIAL 2), end:1;
- version 2 (6.3): sp_reg:4, bp_reg:4, type:2, signal:1, end:1;
- version 3 (6.4 on): sp_reg:4, bp_reg:4, type:3 (UNDEFINED 0, END_OF_STACK 1,
  CALL 2, REGS 3, REGS_PARTIAL 4), signal:1.

:func:`decode_orc_entry` turns any of them into one record with version 3's
meaning: a version-1 entry whose ``sp_reg`` is UNDEFINED is END_OF_STACK
when its ``end`` bit is set and UNDEFINED (no unwind data: the unwinder is
lost) when it is not; REGS and REGS_PARTIAL entries of versions 1 imply
``signal`` (the PC they lead to is exact, not a return address).

:class:`OrcTable` finds the entry of a PC as the kernel's ``orc_find`` does
(the rightmost start at or below the PC, the ``orc_lookup`` blocks first when
they are known), reading the tables through a ``read(address, size)``
callable: from a vmlinux file's sections or from the kernel's memory, a page
at a time, so only the few pages a lookup touches are ever read.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import DecodeError, InspectorError

__all__ = [
    "ORC_ENTRY_SIZE",
    "ORC_LOOKUP_BLOCK_SIZE",
    "ORC_REG_BP",
    "ORC_REG_BP_INDIRECT",
    "ORC_REG_DI",
    "ORC_REG_DX",
    "ORC_REG_PREV_SP",
    "ORC_REG_R10",
    "ORC_REG_R13",
    "ORC_REG_SP",
    "ORC_REG_SP_INDIRECT",
    "ORC_REG_UNDEFINED",
    "ORC_TYPE_CALL",
    "ORC_TYPE_END_OF_STACK",
    "ORC_TYPE_REGS",
    "ORC_TYPE_REGS_PARTIAL",
    "ORC_TYPE_UNDEFINED",
    "OrcEntry",
    "OrcTable",
    "decode_orc_entry",
    "guess_orc_version",
    "orc_version_for_release",
]

ORC_ENTRY_SIZE = 6
#: Bytes of text per ``orc_lookup`` slot (LOOKUP_BLOCK_ORDER 8).
ORC_LOOKUP_BLOCK_SIZE = 256

ORC_REG_UNDEFINED = 0
ORC_REG_PREV_SP = 1
ORC_REG_DX = 2
ORC_REG_DI = 3
ORC_REG_BP = 4
ORC_REG_SP = 5
ORC_REG_R10 = 6
ORC_REG_R13 = 7
ORC_REG_BP_INDIRECT = 8
ORC_REG_SP_INDIRECT = 9

ORC_TYPE_UNDEFINED = 0
ORC_TYPE_END_OF_STACK = 1
ORC_TYPE_CALL = 2
ORC_TYPE_REGS = 3
ORC_TYPE_REGS_PARTIAL = 4

_REG_NAMES = {
    ORC_REG_UNDEFINED: "undef",
    ORC_REG_PREV_SP: "prevsp",
    ORC_REG_DX: "dx",
    ORC_REG_DI: "di",
    ORC_REG_BP: "bp",
    ORC_REG_SP: "sp",
    ORC_REG_R10: "r10",
    ORC_REG_R13: "r13",
    ORC_REG_BP_INDIRECT: "bp(ind)",
    ORC_REG_SP_INDIRECT: "sp(ind)",
}
_TYPE_NAMES = {
    ORC_TYPE_UNDEFINED: "undefined",
    ORC_TYPE_END_OF_STACK: "end-of-stack",
    ORC_TYPE_CALL: "call",
    ORC_TYPE_REGS: "regs",
    ORC_TYPE_REGS_PARTIAL: "regs-partial",
}
_V1_TYPES = {0: ORC_TYPE_CALL, 1: ORC_TYPE_REGS, 2: ORC_TYPE_REGS_PARTIAL}

Read = Callable[[int, int], bytes]


def orc_reg_name(reg: int) -> str:
    """objtool's ``orc dump`` name of a base register (``sp``, ``bp(ind)``, ...)."""
    return _REG_NAMES.get(reg, f"reg{reg}")


@dataclass(frozen=True, slots=True)
class OrcEntry:
    """One ``struct orc_entry``, with version 3's meaning whatever its version.

    ``flags`` is the raw 16-bit word (bits that no version defines are kept
    there, never dropped); ``version`` the layout it was decoded with.
    """

    sp_offset: int
    bp_offset: int
    sp_reg: int
    bp_reg: int
    type: int
    signal: bool
    flags: int
    version: int

    @property
    def type_name(self) -> str:
        return _TYPE_NAMES.get(self.type, f"type{self.type}")

    def __str__(self) -> str:
        """Like ``objtool orc dump``: ``sp:sp+8 bp:(und) type:call signal:0``."""
        if self.type in (ORC_TYPE_UNDEFINED, ORC_TYPE_END_OF_STACK):
            return f"type:{self.type_name}"
        sp = orc_reg_name(self.sp_reg)
        bp = "(und)"
        if self.bp_reg != ORC_REG_UNDEFINED:
            bp = f"{orc_reg_name(self.bp_reg)}{self.bp_offset:+d}"
        return f"sp:{sp}{self.sp_offset:+d} bp:{bp} type:{self.type_name} signal:{int(self.signal)}"


def decode_orc_entry(data: bytes, version: int = 1) -> OrcEntry:
    """Decode 6 bytes laid out as ORC ``version`` (1, 2 or 3; see the module's table)."""
    if len(data) != ORC_ENTRY_SIZE:
        raise DecodeError(0, f"an ORC entry is {ORC_ENTRY_SIZE} bytes, not {len(data)}")
    sp_offset, bp_offset, flags = struct.unpack("<hhH", data)
    sp_reg, bp_reg = flags & 0xF, flags >> 4 & 0xF
    if version == 3:
        kind, signal = flags >> 8 & 7, bool(flags >> 11 & 1)
    elif version in (1, 2):
        raw = flags >> 8 & 3
        end = bool(flags >> (10 if version == 1 else 11) & 1)
        if sp_reg == ORC_REG_UNDEFINED:
            kind = ORC_TYPE_END_OF_STACK if end else ORC_TYPE_UNDEFINED
        else:
            kind = _V1_TYPES.get(raw, 8 + raw)  # 3: no type of that version (kept, not named)
        if version == 1:
            signal = kind in (ORC_TYPE_REGS, ORC_TYPE_REGS_PARTIAL)
        else:
            signal = bool(flags >> 10 & 1)
    else:
        raise DecodeError(0, f"unknown ORC version {version} (1, 2 and 3 exist)")
    return OrcEntry(sp_offset, bp_offset, sp_reg, bp_reg, kind, signal, flags, version)


def orc_version_for_release(release: str) -> int | None:
    """The ORC layout of a kernel release (``6.1.0-57-amd64``), None when it does not parse."""
    match = re.match(r"(\d+)\.(\d+)", release)
    if not match:
        return None
    major, minor = int(match.group(1)), int(match.group(2))
    if (major, minor) >= (6, 4):
        return 3
    if (major, minor) == (6, 3):
        return 2
    return 1


def guess_orc_version(flag_words: list[int]) -> int:
    """The ORC layout that fits a sample of entries' flag words best.

    Most entries are calls: CALL is type 0 in versions 1 and 2 and type 2 in
    version 3. Version 2 sets bit 11 (end) where version 1 never does.
    """
    defined = [f for f in flag_words if f & 0xF]
    if not defined:
        return 1
    call_v3 = sum(1 for f in defined if f >> 8 & 7 == ORC_TYPE_CALL)
    call_v1 = sum(1 for f in defined if f >> 8 & 3 == 0)
    if call_v3 > call_v1:
        return 3
    return 2 if any(f >> 11 & 1 for f in flag_words) else 1


class _PageCache:
    """Reads through ``read`` a page at a time and keeps what it read."""

    def __init__(self, read: Read, page: int = 4096) -> None:
        self._read = read
        self._page = page
        self._pages: dict[int, bytes] = {}

    def read(self, address: int, size: int) -> bytes:
        out = bytearray()
        while size > 0:
            base = address - address % self._page
            chunk = self._pages.get(base)
            if chunk is None:
                chunk = self._read(base, self._page)
                if len(chunk) != self._page:
                    raise DecodeError(base, f"short read of the ORC tables at {base:#x}")
                self._pages[base] = chunk
            start = address - base
            piece = chunk[start : start + size]
            out += piece
            address += len(piece)
            size -= len(piece)
        return bytes(out)


@dataclass(frozen=True, slots=True)
class OrcLookup:
    """The kernel's ``orc_lookup`` fast table: ``blocks`` u32 indexes, one per 256 bytes
    of text from ``text_start`` (``_stext``); filled by ``unwind_init()`` at boot."""

    address: int
    blocks: int
    text_start: int


class OrcTable:
    """The ORC tables of one kernel image, looked up as ``orc_find`` does.

    ``ip_table`` is the run-time address of ``.orc_unwind_ip`` (``count``
    s32 entries), ``unwind_table`` that of ``.orc_unwind``; ``read`` reads
    run-time addresses. ``version`` is the entry layout (see the module).
    """

    def __init__(
        self,
        read: Read,
        ip_table: int,
        unwind_table: int,
        count: int,
        *,
        version: int | None = None,
        lookup: OrcLookup | None = None,
        source: str = "",
    ) -> None:
        if count <= 0:
            raise DecodeError(ip_table, "the ORC tables are empty")
        self._read = read
        self._cache = _PageCache(read)
        self.ip_table = ip_table
        self.unwind_table = unwind_table
        self.count = count
        self.lookup = lookup
        self.source = source
        self.first_ip = self._ip(0)
        self.last_ip = self._ip(count - 1)
        if self.last_ip < self.first_ip:
            raise DecodeError(ip_table, "the ORC ip table is not sorted")
        if version is None:
            step = max(1, count // 512)
            words = [
                struct.unpack("<H", self._cache.read(unwind_table + i * 6 + 4, 2))[0]
                for i in range(0, count, step)
            ]
            version = guess_orc_version(words)
        self.version = version

    @classmethod
    def from_elf(cls, path: str, *, slide: int = 0, version: int | None = None) -> OrcTable:
        """The tables of a vmlinux file's ``.orc_unwind_ip``/``.orc_unwind`` sections,
        moved by ``slide`` (KASLR)."""
        from elftools.common.exceptions import ELFError
        from elftools.elf.elffile import ELFFile

        try:
            with open(path, "rb") as handle:
                elf = ELFFile(handle)
                ip_section = elf.get_section_by_name(".orc_unwind_ip")
                unwind_section = elf.get_section_by_name(".orc_unwind")
                if ip_section is None or unwind_section is None:
                    raise InspectorError(f"{path} has no .orc_unwind_ip/.orc_unwind sections")
                ip_address = ip_section["sh_addr"]
                unwind_address = unwind_section["sh_addr"]
                ips, entries = ip_section.data(), unwind_section.data()
                if version is None:
                    version = _version_from_elf(elf)
        except (OSError, ELFError) as exc:
            raise InspectorError(f"cannot read the ORC tables of {path}: {exc}") from exc
        count = len(ips) // 4
        if len(entries) // ORC_ENTRY_SIZE != count:
            raise InspectorError(
                f"{path}: .orc_unwind_ip has {count} entries, .orc_unwind "
                f"{len(entries) // ORC_ENTRY_SIZE}"
            )
        blobs = ((ip_address + slide, ips), (unwind_address + slide, entries))

        def read(address: int, size: int) -> bytes:
            # whole pages are asked for: the bytes around a section read as zeros
            out = bytearray(size)
            for base, blob in blobs:
                low, high = max(address, base), min(address + size, base + len(blob))
                if low < high:
                    out[low - address : high - address] = blob[low - base : high - base]
            return bytes(out)

        return cls(
            read,
            ip_address + slide,
            unwind_address + slide,
            count,
            version=version,
            source=f"{path} (.orc_unwind sections)",
        )

    @classmethod
    def from_symbols(
        cls, read: Read, lookup: Callable[[str], int | None], *, version: int | None = None
    ) -> OrcTable | None:
        """The tables of a running kernel, found through its symbols (run-time
        addresses): ``__start_orc_unwind_ip``, ``__stop_orc_unwind_ip``,
        ``__start_orc_unwind``, and ``orc_lookup``/``lookup_num_blocks``/``_stext``
        for the fast table. None when the kernel has no ORC symbols."""
        start, stop, unwind = (
            lookup(name)
            for name in ("__start_orc_unwind_ip", "__stop_orc_unwind_ip", "__start_orc_unwind")
        )
        if start is None or stop is None or unwind is None or stop <= start:
            return None
        if version is None:
            banner = lookup("linux_banner")
            if banner is not None:
                try:
                    text = read(banner, 64).split(b"\0")[0].decode("ascii", "replace")
                    if text.startswith("Linux version "):
                        version = orc_version_for_release(text.split()[2])
                except (InspectorError, IndexError):
                    pass
        fast = None
        table, blocks, text_start = (
            lookup("orc_lookup"),
            lookup("lookup_num_blocks"),
            lookup("_stext"),
        )
        if table is not None and blocks is not None and text_start is not None:
            try:
                (count,) = struct.unpack("<I", read(blocks, 4))
                if count > 1:  # 0 until unwind_init() ran
                    fast = OrcLookup(table, count, text_start)
            except InspectorError:
                pass
        return cls(
            read,
            start,
            unwind,
            (stop - start) // 4,
            version=version,
            lookup=fast,
            source="the kernel's memory (__start_orc_unwind_ip, found by its symbols)",
        )

    def moved(self, slide: int) -> OrcTable:
        """The same tables ``slide`` bytes away (a file's tables at a KASLR kernel's
        addresses); the ip table's entries are relative, so only the bases move."""
        if slide == 0:
            return self
        read = self._read

        def moved_read(address: int, size: int) -> bytes:
            return read(address - slide, size)

        return OrcTable(
            moved_read,
            self.ip_table + slide,
            self.unwind_table + slide,
            self.count,
            version=self.version,
            source=self.source,
        )

    def matches(self, read: Read) -> bool:
        """Whether ``read`` (a running kernel's memory) holds these tables where this
        table says they are: a vmlinux file with the wrong slide does not."""
        size = min(64, 4 * self.count)
        try:
            return read(self.ip_table, size) == self._cache.read(self.ip_table, size)
        except InspectorError:
            return False

    def _ip(self, index: int) -> int:
        slot = self.ip_table + 4 * index
        relative = int.from_bytes(self._cache.read(slot, 4), "little", signed=True)
        return (slot + relative) & ((1 << 64) - 1)

    def entry(self, index: int) -> OrcEntry:
        """The ``index``-th entry of ``.orc_unwind``."""
        data = self._cache.read(self.unwind_table + ORC_ENTRY_SIZE * index, ORC_ENTRY_SIZE)
        return decode_orc_entry(data, self.version)

    def covers(self, ip: int) -> bool:
        """Whether ``ip`` lies within the kernel image the tables describe."""
        return self.first_ip <= ip <= self.last_ip

    def find(self, ip: int) -> OrcEntry | None:
        """The entry for ``ip`` (the rightmost start at or below it), None outside the
        image (a module, a BPF program, an address that is no code)."""
        if not self.covers(ip):
            return None
        first, last = 0, self.count - 1
        lookup = self.lookup
        if lookup is not None and lookup.text_start <= ip:
            block = (ip - lookup.text_start) // ORC_LOOKUP_BLOCK_SIZE
            if block < lookup.blocks - 1:
                start, stop = struct.unpack("<II", self._cache.read(lookup.address + 4 * block, 8))
                if start <= stop < self.count:
                    first, last = start, stop
        found = None
        while first <= last:
            middle = (first + last) // 2
            if self._ip(middle) <= ip:
                found = middle
                first = middle + 1
            else:
                last = middle - 1
        return None if found is None else self.entry(found)

    def __repr__(self) -> str:
        return (
            f"OrcTable(ip_table={self.ip_table:#x}, unwind_table={self.unwind_table:#x}, "
            f"count={self.count}, version={self.version})"
        )


def _version_from_elf(elf: object) -> int | None:
    """The release in the image's ``Linux version`` banner, when one is in ``.rodata``."""
    try:
        rodata = elf.get_section_by_name(".rodata")  # type: ignore[attr-defined]
        if rodata is None:
            return None
        data = rodata.data()
        index = data.find(b"Linux version ")
        if index < 0:
            return None
        release = data[index + 14 : index + 64].split(b" ")[0].decode("ascii", "replace")
        return orc_version_for_release(release)
    except Exception:
        return None
