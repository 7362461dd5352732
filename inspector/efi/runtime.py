"""UEFI runtime services from the inspector's side: where each runtime region goes
in the higher half, with which page permissions, and what the firmware's
answers (EFI_TIME, variables) mean. Pure: no I/O.

The runtime regions are mapped at ``EFI_VA_BASE + physical address``, inside
the 64 GiB Linux sets aside for EFI on x86_64 (``ffffffef00000000``, "EFI
region mapping space" in Documentation/arch/x86/x86_64/mm.rst). One offset
for every region keeps each region whole and its 2 MiB alignment intact, and
makes the new address of any physical pointer (the system table's, say)
plain arithmetic.

Permissions follow UEFI 2.10, 4.6.4 (EFI_MEMORY_ATTRIBUTES_TABLE): a page
with ``EFI_MEMORY_RO`` is read-only, one with ``EFI_MEMORY_XP`` is not
executable. Without the table, RuntimeServicesCode is writable and
executable (the firmware relocates it in place), RuntimeServicesData is
writable and not executable, and memory-mapped I/O is uncached (PCD PWT).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import InspectorError
from .memmap import MemoryAttributesTable, MemoryDescriptor

__all__ = [
    "EFI_GLOBAL_VARIABLE",
    "EFI_VA_BASE",
    "EFI_VA_SIZE",
    "EfiTime",
    "RegionMapping",
    "format_guid",
    "page_flags",
    "plan_virtual_map",
    "system_table_va",
]

#: Where the runtime regions go: EFI_VA_BASE + physical address.
EFI_VA_BASE = 0xFFFFFFEF00000000
EFI_VA_SIZE = 64 << 30
#: EFI_GLOBAL_VARIABLE (UEFI 2.10, 3.3): BootOrder, PlatformLang, ...
EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")

PAGE = 1 << 12
LARGE = 1 << 21
RUNTIME_CODE, RUNTIME_DATA, MMIO, MMIO_PORT_SPACE = 5, 6, 11, 12
EFI_MEMORY_UC, EFI_MEMORY_WC, EFI_MEMORY_WT, EFI_MEMORY_WB = 1, 2, 4, 8
EFI_MEMORY_XP = 1 << 14
EFI_MEMORY_RO = 1 << 17
#: Page-table entry bits (the remap's ``flags``).
PTE_RW, PTE_PWT, PTE_PCD, PTE_NX = 1 << 1, 1 << 3, 1 << 4, 1 << 63


def format_guid(raw: bytes) -> str:
    """An EFI_GUID as it lies in memory (mixed-endian) in its usual text form."""
    return str(uuid.UUID(bytes_le=bytes(raw)))


@dataclass(frozen=True, slots=True)
class Piece:
    """Part of a region mapped with one page size and one set of flags."""

    va: int
    pa: int
    size: int
    page_size: int
    flags: int


@dataclass(frozen=True, slots=True)
class RegionMapping:
    """Where one runtime descriptor goes, and how it is mapped there."""

    descriptor: MemoryDescriptor
    virtual_start: int
    pieces: tuple[Piece, ...]

    @property
    def physical_start(self) -> int:
        return self.descriptor.physical_start

    @property
    def size(self) -> int:
        return self.descriptor.size

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.descriptor.index,
            "type_name": self.descriptor.type_name,
            "physical_start": self.physical_start,
            "virtual_start": self.virtual_start,
            "size": self.size,
            "pieces": [
                {"va": p.va, "pa": p.pa, "size": p.size, "page_size": p.page_size, "flags": p.flags}
                for p in self.pieces
            ],
        }


def page_flags(descriptor: MemoryDescriptor, attributes: MemoryDescriptor | None) -> int:
    """PTE flags for a page of ``descriptor`` (``attributes``: its attributes-table entry)."""
    if descriptor.type in (MMIO, MMIO_PORT_SPACE) or (
        descriptor.attribute & EFI_MEMORY_UC and not descriptor.attribute & EFI_MEMORY_WB
    ):
        return PTE_RW | PTE_PCD | PTE_PWT | PTE_NX
    if attributes is not None:
        flags = 0 if attributes.attribute & EFI_MEMORY_RO else PTE_RW
        return flags | (PTE_NX if attributes.attribute & EFI_MEMORY_XP else 0)
    if descriptor.type == RUNTIME_CODE:
        return PTE_RW
    return PTE_RW | PTE_NX


def _pieces(va: int, pa: int, size: int, flags: int) -> list[Piece]:
    """2 MiB pages where both addresses are 2 MiB-aligned and a whole page fits, else 4 KiB."""
    out: list[Piece] = []
    off = 0
    while off < size:
        if (va + off) % LARGE == 0 and (pa + off) % LARGE == 0 and size - off >= LARGE:
            length = (size - off) // LARGE * LARGE
            page_size = LARGE
        else:
            next_large = min(((va + off) // LARGE + 1) * LARGE - va, size)
            length, page_size = next_large - off, PAGE
        if out and out[-1].page_size == page_size and out[-1].flags == flags:
            last = out.pop()
            out.append(Piece(last.va, last.pa, last.size + length, page_size, flags))
        else:
            out.append(Piece(va + off, pa + off, length, page_size, flags))
        off += length
    return out


def plan_virtual_map(
    descriptors: Sequence[MemoryDescriptor],
    attributes: MemoryAttributesTable | None = None,
    base: int = EFI_VA_BASE,
) -> list[RegionMapping]:
    """Each runtime descriptor at ``base`` + its physical address, split by permission."""
    if base % LARGE:
        raise InspectorError(f"the EFI base {base:#x} is not 2 MiB-aligned")
    entries = sorted(attributes.entries, key=lambda e: e.physical_start) if attributes else []
    out = []
    for d in descriptors:
        if not d.runtime:
            continue
        if d.physical_end > EFI_VA_SIZE:
            raise InspectorError(
                f"runtime region {d.physical_start:#x}-{d.physical_end:#x} lies above "
                f"{EFI_VA_SIZE >> 30} GiB: it does not fit base + physical address"
            )
        va = base + d.physical_start
        # Runs of pages with the same flags (the attributes table splits RTCode images).
        runs: list[tuple[int, int, int]] = []  # (offset, size, flags)
        for page in range(0, d.size, PAGE):
            pa = d.physical_start + page
            entry = next((e for e in entries if e.physical_start <= pa < e.physical_end), None)
            flags = page_flags(d, entry)
            if runs and runs[-1][2] == flags and runs[-1][0] + runs[-1][1] == page:
                off, size, _ = runs.pop()
                runs.append((off, size + PAGE, flags))
            else:
                runs.append((page, PAGE, flags))
        pieces: list[Piece] = []
        for off, size, flags in runs:
            pieces += _pieces(va + off, d.physical_start + off, size, flags)
        out.append(RegionMapping(d, va, tuple(pieces)))
    return out


def system_table_va(mappings: Sequence[RegionMapping], system_table: int) -> int:
    """Where EFI_SYSTEM_TABLE is after the move (the firmware does not say: it is computed)."""
    for m in mappings:
        if m.physical_start <= system_table < m.physical_start + m.size:
            return m.virtual_start + (system_table - m.physical_start)
    raise InspectorError(f"the system table at {system_table:#x} is in no runtime region")


@dataclass(frozen=True, slots=True)
class EfiTime:
    """EFI_TIME as GetTime returns it (UEFI 2.10, 8.3)."""

    year: int
    month: int
    day: int
    hour: int
    minute: int
    second: int
    nanosecond: int
    time_zone: int  # minutes from UTC; 2047 (EFI_UNSPECIFIED_TIMEZONE): local time
    daylight: int

    @classmethod
    def from_reply(cls, reply: Sequence[int]) -> EfiTime:
        if len(reply) != 9 or not all(isinstance(x, int) for x in reply):
            raise InspectorError(f"efi_get_time answered {reply!r}, not 9 integers")
        return cls(*reply)

    def problems(self) -> list[str]:
        """What is impossible in this time (UEFI 2.10, 8.3: the fields' ranges)."""
        out = []
        checks = (
            ("year", 1900, 9999),
            ("month", 1, 12),
            ("day", 1, 31),
            ("hour", 0, 23),
            ("minute", 0, 59),
            ("second", 0, 59),
            ("nanosecond", 0, 999_999_999),
        )
        for name, lo, hi in checks:
            if not lo <= getattr(self, name) <= hi:
                out.append(f"{name} {getattr(self, name)} is outside {lo}..{hi}")
        if self.time_zone != 2047 and not -1440 <= self.time_zone <= 1440:
            out.append(f"time zone {self.time_zone} is outside -1440..1440 and not 2047")
        return out

    def as_datetime(self) -> datetime:
        """The moment, in UTC when the firmware gives a zone, else as the clock reads."""
        moment = datetime(
            self.year,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
            self.nanosecond // 1000,
        )
        if self.time_zone == 2047:
            return moment
        # UEFI: Localtime = UTC - TimeZone (TimeZone in minutes).
        return (moment + timedelta(minutes=self.time_zone)).replace(tzinfo=UTC)

    def to_dict(self) -> dict[str, Any]:
        return {
            "year": self.year,
            "month": self.month,
            "day": self.day,
            "hour": self.hour,
            "minute": self.minute,
            "second": self.second,
            "nanosecond": self.nanosecond,
            "time_zone": self.time_zone,
            "daylight": self.daylight,
            "iso": self.as_datetime().isoformat(),
        }

    def __str__(self) -> str:
        zone = "(no time zone)" if self.time_zone == 2047 else f"UTC{-self.time_zone:+d} min"
        return (
            f"{self.year:04}-{self.month:02}-{self.day:02} {self.hour:02}:{self.minute:02}:"
            f"{self.second:02} {zone}"
        )
