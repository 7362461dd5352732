"""The UEFI memory map: EFI_MEMORY_DESCRIPTOR records (UEFI 2.10, 7.2 GetMemoryMap),
and EFI_MEMORY_ATTRIBUTES_TABLE (4.6.4), the RO/XP splits of the runtime regions.

Descriptors are ``DescriptorSize`` apart, not ``sizeof`` (48 bytes on OVMF for
a 40-byte structure), so the stride is an input, never assumed. Unknown
types and attribute bits are kept as numbers, not rejected.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from ..errors import DecodeError

__all__ = [
    "ATTRIBUTE_NAMES",
    "EFI_MEMORY_RUNTIME",
    "MEMORY_TYPES",
    "PAGE_SIZE",
    "MemoryDescriptor",
    "MemoryAttributesTable",
    "MemoryMap",
    "decode_memory_attributes_table",
    "decode_memory_map",
    "format_attributes",
]

PAGE_SIZE = 4096
#: EFI_MEMORY_ATTRIBUTES_TABLE header: Version, NumberOfEntries, DescriptorSize, Flags.
MEMATTR_HEADER = struct.Struct("<IIII")
#: Type, padding, PhysicalStart, VirtualStart, NumberOfPages, Attribute.
DESCRIPTOR = struct.Struct("<IIQQQQ")

#: EFI_MEMORY_TYPE, by value.
MEMORY_TYPES = (
    "ReservedMemoryType",
    "LoaderCode",
    "LoaderData",
    "BootServicesCode",
    "BootServicesData",
    "RuntimeServicesCode",
    "RuntimeServicesData",
    "ConventionalMemory",
    "UnusableMemory",
    "ACPIReclaimMemory",
    "ACPIMemoryNVS",
    "MemoryMappedIO",
    "MemoryMappedIOPortSpace",
    "PalCode",
    "PersistentMemory",
    "UnacceptedMemoryType",
)

EFI_MEMORY_RUNTIME = 1 << 63

#: The EFI_MEMORY_* attribute bits, by bit number.
ATTRIBUTE_NAMES = {
    0: "UC",
    1: "WC",
    2: "WT",
    3: "WB",
    4: "UCE",
    12: "WP",
    13: "RP",
    14: "XP",
    15: "NV",
    16: "MORE_RELIABLE",
    17: "RO",
    18: "SP",
    19: "CPU_CRYPTO",
    63: "RUNTIME",
}


@dataclass(frozen=True, slots=True)
class MemoryDescriptor:
    """One EFI_MEMORY_DESCRIPTOR."""

    index: int
    type: int
    physical_start: int
    virtual_start: int
    number_of_pages: int
    attribute: int

    @property
    def type_name(self) -> str:
        if self.type < len(MEMORY_TYPES):
            return MEMORY_TYPES[self.type]
        return f"type {self.type:#x}"

    @property
    def physical_end(self) -> int:
        """One past the last byte."""
        return self.physical_start + self.number_of_pages * PAGE_SIZE

    @property
    def size(self) -> int:
        return self.number_of_pages * PAGE_SIZE

    @property
    def runtime(self) -> bool:
        return bool(self.attribute & EFI_MEMORY_RUNTIME)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "type": self.type,
            "type_name": self.type_name,
            "physical_start": self.physical_start,
            "physical_end": self.physical_end,
            "virtual_start": self.virtual_start,
            "number_of_pages": self.number_of_pages,
            "attribute": self.attribute,
            "attributes": format_attributes(self.attribute).split("|"),
            "runtime": self.runtime,
        }

    def __str__(self) -> str:
        return (
            f"[mem {self.physical_start:#018x}-{self.physical_end - 1:#018x}] "
            f"{self.type_name} {format_attributes(self.attribute)}"
        )


def format_attributes(attribute: int) -> str:
    """``WB|RUNTIME``; unknown bits as hex (``UC|0x100``)."""
    names = []
    rest = attribute
    for bit, name in ATTRIBUTE_NAMES.items():
        if attribute >> bit & 1:
            names.append(name)
            rest &= ~(1 << bit)
    if rest:
        names.append(f"{rest:#x}")
    return "|".join(names) if names else "0"


def decode_memory_map(data: bytes, descriptor_size: int) -> tuple[MemoryDescriptor, ...]:
    """Descriptors ``descriptor_size`` apart in ``data`` (GetMemoryMap's buffer and MapSize)."""
    if descriptor_size < DESCRIPTOR.size:
        raise DecodeError(0, f"DescriptorSize {descriptor_size} is smaller than {DESCRIPTOR.size}")
    if len(data) % descriptor_size:
        raise DecodeError(
            len(data) - len(data) % descriptor_size,
            f"{len(data)} bytes is not a whole number of {descriptor_size}-byte descriptors",
        )
    out = []
    for index, offset in enumerate(range(0, len(data), descriptor_size)):
        type_, _pad, start, virtual, pages, attribute = DESCRIPTOR.unpack_from(data, offset)
        if start % PAGE_SIZE:
            raise DecodeError(offset + 8, f"PhysicalStart {start:#x} is not page-aligned")
        out.append(MemoryDescriptor(index, type_, start, virtual, pages, attribute))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class MemoryMap:
    """A whole map: its descriptors, the stride they were read with, and the version.

    ``mapped_at`` gives, per runtime descriptor index, the virtual addresses
    that map its first page now (filled by the session; empty when unknown).
    """

    descriptors: tuple[MemoryDescriptor, ...]
    descriptor_size: int
    descriptor_version: int
    mapped_at: dict[int, tuple[int, ...]]

    @property
    def runtime(self) -> tuple[MemoryDescriptor, ...]:
        return tuple(d for d in self.descriptors if d.runtime)

    def to_dict(self) -> dict[str, Any]:
        return {
            "descriptor_size": self.descriptor_size,
            "descriptor_version": self.descriptor_version,
            "descriptors": [
                {**d.to_dict(), "mapped_at": list(self.mapped_at.get(d.index, ()))}
                for d in self.descriptors
            ],
        }

    def __str__(self) -> str:
        runtime = self.runtime
        lines = [
            f"UEFI memory map: {len(self.descriptors)} descriptors, "
            f"{self.descriptor_size} bytes apart (version {self.descriptor_version}); "
            f"{len(runtime)} runtime regions, "
            f"{sum(d.number_of_pages for d in runtime)} pages"
        ]
        for d in self.descriptors:
            line = f"{d.index:4} {d}"
            if d.runtime:
                where = self.mapped_at.get(d.index, ())
                shown = ", ".join(f"{va:#x}" for va in where[:4])
                more = f" (+{len(where) - 4})" if len(where) > 4 else ""
                line += f"  mapped at {shown}{more}" if where else "  not mapped"
            lines.append(line)
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class MemoryAttributesTable:
    """EFI_MEMORY_ATTRIBUTES_TABLE: runtime regions split by permission (RO, XP)."""

    version: int
    descriptor_size: int
    flags: int
    entries: tuple[MemoryDescriptor, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "descriptor_size": self.descriptor_size,
            "flags": self.flags,
            "entries": [e.to_dict() for e in self.entries],
        }

    def __str__(self) -> str:
        lines = [
            f"memory attributes table v{self.version}: {len(self.entries)} entries, "
            f"{self.descriptor_size} bytes apart, flags {self.flags:#x}"
        ]
        lines += [f"{e.index:4} {e}" for e in self.entries]
        return "\n".join(lines)


def decode_memory_attributes_table(data: bytes) -> MemoryAttributesTable:
    """The header and its NumberOfEntries descriptors, DescriptorSize apart."""
    if len(data) < MEMATTR_HEADER.size:
        raise DecodeError(0, f"{len(data)} bytes is shorter than the 16-byte header")
    version, count, stride, flags = MEMATTR_HEADER.unpack_from(data)
    end = MEMATTR_HEADER.size + count * stride
    if end > len(data):
        raise DecodeError(
            MEMATTR_HEADER.size, f"{count} entries of {stride} bytes overrun {len(data)} bytes"
        )
    entries = decode_memory_map(data[MEMATTR_HEADER.size : end], stride)
    return MemoryAttributesTable(version, stride, flags, entries)
