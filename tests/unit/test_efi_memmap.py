"""decode_memory_map on literal bytes: the stride is DescriptorSize, not sizeof."""

import struct

import pytest

from kinspect.inspector.efi.memmap import (
    EFI_MEMORY_RUNTIME,
    MemoryDescriptor,
    decode_memory_map,
    format_attributes,
)
from kinspect.inspector.errors import DecodeError


def descriptor(type_, start, pages, attribute, *, size=48, virtual=0):
    raw = struct.pack("<IIQQQQ", type_, 0, start, virtual, pages, attribute)
    return raw + b"\xa5" * (size - len(raw))  # what lies past sizeof is not ours to read


def test_48_byte_stride_as_ovmf_gives_it():
    data = descriptor(7, 0x100000, 0x700, 0xF) + descriptor(
        5, 0xF5EC000, 0x100, EFI_MEMORY_RUNTIME | 0xF
    )
    first, second = decode_memory_map(data, 48)
    assert first == MemoryDescriptor(0, 7, 0x100000, 0, 0x700, 0xF)
    assert first.type_name == "ConventionalMemory" and not first.runtime
    assert first.physical_end == 0x800000
    assert second.index == 1 and second.runtime
    assert second.type_name == "RuntimeServicesCode"
    assert str(second) == (
        "[mem 0x000000000f5ec000-0x000000000f6ebfff] RuntimeServicesCode UC|WC|WT|WB|RUNTIME"
    )


def test_the_40_byte_sizeof_stride_misreads_an_ovmf_map():
    data = descriptor(7, 0x100000, 0x700, 0xF) + descriptor(6, 0xEAA0000, 0x102, 0xF)
    with pytest.raises(DecodeError):
        decode_memory_map(data, 40)  # 96 bytes is not a whole number of 40-byte descriptors


def test_40_byte_descriptors_and_virtual_start():
    data = descriptor(6, 0x1000, 1, EFI_MEMORY_RUNTIME, size=40, virtual=0xFFFFFFFF00001000)
    (d,) = decode_memory_map(data, 40)
    assert d.virtual_start == 0xFFFFFFFF00001000 and d.size == 0x1000


def test_unknown_types_and_attribute_bits_are_kept():
    (d,) = decode_memory_map(descriptor(0x70000001, 0, 1, 0x100 | 1), 48)
    assert d.type == 0x70000001 and d.type_name == "type 0x70000001"
    assert format_attributes(d.attribute) == "UC|0x100"
    assert format_attributes(0) == "0"


def test_bad_strides_and_alignment():
    with pytest.raises(DecodeError):
        decode_memory_map(b"\0" * 32, 32)
    with pytest.raises(DecodeError) as info:
        decode_memory_map(descriptor(7, 0x1234, 1, 0), 48)
    assert info.value.offset == 8
    assert decode_memory_map(b"", 48) == ()


def test_memory_map_text_and_json():
    from kinspect.inspector.efi.memmap import MemoryMap

    data = descriptor(7, 0, 0xA0, 0xF) + descriptor(6, 0xEAA0000, 0x102, EFI_MEMORY_RUNTIME | 0xF)
    data += descriptor(11, 0xFFC00000, 0x400, EFI_MEMORY_RUNTIME | 1)
    descriptors = decode_memory_map(data, 48)
    memory_map = MemoryMap(descriptors, 48, 1, {1: (0xEAA0000, 0xFFFF88800EAA0000), 2: ()})
    assert [d.index for d in memory_map.runtime] == [1, 2]
    lines = str(memory_map).splitlines()
    assert lines[0] == (
        "UEFI memory map: 3 descriptors, 48 bytes apart (version 1); 2 runtime regions, 1282 pages"
    )
    assert lines[2].endswith("RUNTIME  mapped at 0xeaa0000, 0xffff88800eaa0000")
    assert lines[3].endswith("UC|RUNTIME  not mapped")
    document = memory_map.to_dict()
    assert document["descriptor_size"] == 48
    assert document["descriptors"][0]["mapped_at"] == []
    assert document["descriptors"][1]["mapped_at"] == [0xEAA0000, 0xFFFF88800EAA0000]
    assert document["descriptors"][1]["attributes"] == ["UC", "WC", "WT", "WB", "RUNTIME"]
    assert document["descriptors"][2]["physical_end"] == 1 << 32


def test_memory_attributes_table():
    from kinspect.inspector.efi.memmap import decode_memory_attributes_table

    header = struct.pack("<IIII", 2, 2, 48, 1)
    entries = descriptor(5, 0xF5EC000, 1, EFI_MEMORY_RUNTIME | 1 << 14) + descriptor(
        5, 0xF5ED000, 3, EFI_MEMORY_RUNTIME | 1 << 17
    )
    table = decode_memory_attributes_table(header + entries + b"\0" * 8)  # trailing bytes ignored
    assert (table.version, table.descriptor_size, table.flags) == (2, 48, 1)
    first, second = table.entries
    assert format_attributes(first.attribute) == "XP|RUNTIME"
    assert format_attributes(second.attribute) == "RO|RUNTIME"
    assert second.physical_end == 0xF5F0000
    assert str(table).splitlines()[0] == (
        "memory attributes table v2: 2 entries, 48 bytes apart, flags 0x1"
    )
    assert table.to_dict()["entries"][1]["attributes"] == ["RO", "RUNTIME"]
    with pytest.raises(DecodeError):
        decode_memory_attributes_table(header + entries[:60])  # two entries promised, 1.25 given
    with pytest.raises(DecodeError):
        decode_memory_attributes_table(header[:12])
