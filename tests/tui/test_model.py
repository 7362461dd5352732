"""Range marks and filters, on literal ranges and on the real capture."""

from kinspect.inspector.x86.paging import Permissions, Range
from kinspect.tui.model import RangeFilter, RangeRow, RowTexts, diff_ranges, filter_rows

RW_X = Permissions(True, False, True)
RO_X = Permissions(False, False, True)
RW_NX = Permissions(True, True, False)


def r(start, end, perms=RW_NX, phys=0):
    return Range(start, end, phys or start, 4096, perms, ())


def test_first_stop_marks_nothing():
    rows = diff_ranges(None, [r(0x1000, 0x2000)])
    assert [row.mark for row in rows] == [""]


def test_added_removed_changed():
    old = [r(0x1000, 0x3000), r(0x5000, 0x6000), r(0x9000, 0xA000)]
    new = [r(0x1000, 0x3000), r(0x5000, 0x6000, RO_X), r(0x7000, 0x8000)]
    rows = diff_ranges(old, new)
    assert [(row.range.start, row.mark) for row in rows] == [
        (0x1000, ""),
        (0x5000, "~"),
        (0x7000, "+"),
        (0x9000, "-"),
    ]


def test_split_range_is_changed_not_added():
    old = [r(0x1000, 0x4000)]
    new = [r(0x1000, 0x2000), r(0x2000, 0x4000, RO_X)]
    assert [row.mark for row in diff_ranges(old, new)] == ["~", "~"]


def test_frame_change_is_a_change():
    old = [r(0x1000, 0x2000, phys=0x10000)]
    new = [r(0x1000, 0x2000, phys=0x20000)]
    assert [row.mark for row in diff_ranges(old, new)] == ["~"]


def test_filters_combine_and_search_takes_an_address():
    rows = [
        RangeRow(r(0x1000, 0x2000, RW_X)),
        RangeRow(r(0x2000, 0x3000, RO_X)),
        RangeRow(r(0x3000, 0x4000, RW_NX), "+"),
    ]
    assert len(filter_rows(rows, RangeFilter(wx=True))) == 1
    assert len(filter_rows(rows, RangeFilter(executable=True))) == 2
    assert len(filter_rows(rows, RangeFilter(kernel=True, writable=True))) == 1
    assert len(filter_rows(rows, RangeFilter(user=True))) == 1
    assert len(filter_rows(rows, RangeFilter(changed=True))) == 1
    assert [x.range.start for x in filter_rows(rows, RangeFilter(text="0x2abc"))] == [0x2000]
    assert filter_rows(rows, RangeFilter(text="nx"), RowTexts(rows)) == [rows[2]]
    assert len(filter_rows(rows, RangeFilter(text="NX"))) == 1


def test_capture_partitions(truth):
    rows = [RangeRow(x) for x in truth.ranges()]
    user = filter_rows(rows, RangeFilter(user=True))
    kernel = filter_rows(rows, RangeFilter(kernel=True))
    assert len(user) + len(kernel) == len(rows) > 60000


# -- the EFI view's rows ---------------------------------------------------------------------


def efi_map(mapped_at, descriptors=None):
    from kinspect.inspector.efi.memmap import EFI_MEMORY_RUNTIME, MemoryDescriptor, MemoryMap

    descriptors = descriptors or (
        MemoryDescriptor(0, 7, 0x0, 0, 0xA0, 0xF),
        MemoryDescriptor(1, 5, 0x1E000000, 0, 0x100, 0xF | EFI_MEMORY_RUNTIME),
        MemoryDescriptor(2, 6, 0x1E200000, 0, 0x80, 0xF | EFI_MEMORY_RUNTIME),
        MemoryDescriptor(3, 11, 0xFFC00000, 0, 0x400, 0x1 | EFI_MEMORY_RUNTIME),
        MemoryDescriptor(4, 6, 0x1E400000, 0, 0x10, 0xF | EFI_MEMORY_RUNTIME),
    )
    return MemoryMap(tuple(descriptors), 48, 1, mapped_at)


def test_efi_rows_mark_how_runtime_mappings_moved():
    from kinspect.tui.model import EfiFilter, efi_rows, filter_efi_rows

    old = efi_map({1: (0xA,), 2: (0xB,), 3: (), 4: (0xC,)})
    new = efi_map({1: (0xA,), 2: (), 3: (0xD,), 4: (0xC, 0xE)})
    assert [row.mark for row in efi_rows(old)] == ["", "", "", "", ""]  # first read
    rows = efi_rows(new, old)
    assert [(row.descriptor.index, row.mapped_at, row.mark) for row in rows] == [
        (0, (), ""),  # not runtime: no mappings looked up
        (1, (0xA,), ""),
        (2, (), "-"),
        (3, (0xD,), "+"),
        (4, (0xC, 0xE), "~"),
    ]
    assert [r.descriptor.index for r in filter_efi_rows(rows, EfiFilter(runtime=True))] == [
        1,
        2,
        3,
        4,
    ]
    assert [r.descriptor.index for r in filter_efi_rows(rows, EfiFilter(changed=True))] == [2, 3, 4]
    # another map (a reconnect to another kernel): nothing is marked
    other = efi_map({1: (0xF,)}, efi_map({}).descriptors[:2])
    assert [row.mark for row in efi_rows(other, old)] == ["", ""]


def test_efi_formatting():
    from kinspect.tui.model import (
        attribute_entries_in,
        efi_address_digits,
        efi_rows,
        efi_summary,
        format_efi_row,
        format_mapped_at,
    )

    memory_map = efi_map({1: (0xFFFF88801E000000, 0x1E000000, 0xFFFFFFEF1E000000), 3: ()})
    assert efi_address_digits(memory_map.descriptors) == 8
    rows = efi_rows(memory_map)
    assert format_mapped_at(()) == "not mapped"
    assert format_mapped_at(rows[1].mapped_at, 2) == "0xffff88801e000000, 0x1e000000 (+1)"
    assert format_efi_row(rows[3], 8) == (
        "     3 MemoryMappedIO          0xffc00000-0xffffffff     1024  UC|RUNTIME  not mapped"
    )
    assert format_efi_row(rows[0], 8).endswith("  160  UC|WC|WT|WB")
    assert efi_summary(memory_map, None, rows, since=3) == (
        "5 descriptors, 48 bytes apart (version 1) | 4 runtime regions, 1424 pages (5696K): "
        "1 mapped, 3 not mapped | no memory attributes table | mappings changed since stop 3: 0"
    )
    from kinspect.inspector.efi.memmap import MemoryAttributesTable, MemoryDescriptor

    inside = MemoryDescriptor(0, 5, 0x1E010000, 0, 0x10, 1 << 17)
    outside = MemoryDescriptor(1, 5, 0x1E0F0000, 0, 0x20, 1 << 14)  # runs past the region
    table = MemoryAttributesTable(1, 48, 0, (inside, outside))
    assert attribute_entries_in(table, memory_map.descriptors[1]) == [inside]
    assert attribute_entries_in(None, memory_map.descriptors[1]) == []
