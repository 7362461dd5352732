"""Range marks and filters, on literal ranges and on the real capture."""

from dataclasses import replace

from kinspect.inspector.x86.paging import Permissions, Range, RangeList
from kinspect.tui.model import (
    RangeFilter,
    RangeRow,
    RangeRows,
    RangeTable,
    RowTexts,
    diff_ranges,
    filter_rows,
    format_range_row,
)

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


# -- the range map's rows as arrays (RangeTable, RangeRows): what the list functions give --


def as_arrays(ranges):
    return RangeList.from_ranges(ranges)


def changed_map(ranges):
    """The capture's ranges with frames moved, permissions changed, some gone, one new."""
    new = list(ranges)
    for i in range(0, len(new), 997):
        new[i] = replace(new[i], phys=new[i].phys + 0x1000)
    for i in range(5, len(new), 2003):
        new[i] = replace(new[i], permissions=RO_X)
    del new[100:130]
    del new[-3:]
    gap = next(i for i in range(1, len(new)) if new[i].start - new[i - 1].end >= 0x2000)
    new.insert(gap, r(new[gap - 1].end, new[gap - 1].end + 0x1000))
    return new


def texts_of(rows):
    return [format_range_row(row).lower() for row in rows]


def test_range_table_marks_the_capture_as_diff_ranges_does(truth):
    old = list(truth.ranges())
    new = changed_map(old)
    for before, after in ((old, new), (new, old), (new, new[::2]), ([], new), (new, [])):
        table = RangeTable.marked(RangeTable.marked(None, as_arrays(before)), as_arrays(after))
        rows = RangeRows(table)
        want = diff_ranges(before, after)
        assert rows == want and list(rows) == want
        assert table.changed == sum(1 for row in want if row.mark)
        wx = sum(1 for x in after if x.permissions.writable and x.permissions.executable)
        assert table.count_wx() == wx
        plain = RangeTable.marked(RangeTable.marked(None, before), after)  # lists: diff_ranges
        assert RangeRows(plain) == want and plain.count_wx() == wx
        if want:
            assert {row.mark for row in want} - {""}
            assert [b.decode().rstrip("\n") for b in table.texts()] == texts_of(want)


def test_range_table_filters_and_searches_the_capture_as_filter_rows_does(truth):
    old = list(truth.ranges())
    new = changed_map(old)
    rows = RangeRows(RangeTable.marked(RangeTable.marked(None, as_arrays(old)), as_arrays(new)))
    plain = diff_ranges(old, new)
    filters = [
        RangeFilter(user=True),
        RangeFilter(kernel=True, writable=True),
        RangeFilter(executable=True),
        RangeFilter(wx=True),
        RangeFilter(changed=True),
        RangeFilter(changed=True, text="glb"),
        RangeFilter(text="PMD"),
        RangeFilter(text="usr rw"),
        RangeFilter(text="~ 0xffff"),
        RangeFilter(text="  2m"),
        RangeFilter(text=f"{new[7000].start + 5:#x}"),
        RangeFilter(text="no such text"),
        RangeFilter(),
    ]
    for flt in filters:
        want = filter_rows(plain, flt, RowTexts(plain))
        shown = filter_rows(rows, flt)
        assert shown == want, flt
        narrower = shown.filter(RangeFilter(kernel=True))
        assert narrower == filter_rows(want, RangeFilter(kernel=True)), flt
    for address in (0, new[300].start, new[300].end - 1, new[-1].end, (1 << 64) - 1):
        index = rows.index_of(address)
        assert rows[index].range.end > address or index == len(rows) - 1


def test_unchanged_ranges_give_the_same_table_and_marks_are_cleared_at_the_next_stop(truth):
    arrays = truth.ranges()
    first = RangeTable.marked(None, arrays)
    assert RangeTable.marked(first, arrays) is first  # the walk's very arrays: nothing to do
    changed = RangeTable.marked(first, as_arrays(changed_map(list(arrays))))
    again = RangeTable.marked(changed, changed.walked)
    assert again is not changed and not again.changed and len(again) == len(changed.walked)
    small = [r(0x1000, 0x2000), r(0x3000, 0x4000)]
    plain = RangeTable.marked(None, small)
    assert RangeTable.marked(plain, list(small)) is plain  # equal lists (the compact map)


def test_range_texts_of_a_range_that_ends_at_the_top_of_the_address_space():
    top = [
        Range(0xFFFFFFFFFFE00000, 1 << 64, 0x200000, 0x200000, RW_X, ("G",)),
        Range(0xFFFFFFFF81000000, 0xFFFFFFFF81000000 + 0x1000 * 300001, 0, 4096, RO_X, ()),
    ]
    top.sort(key=lambda x: x.start)
    table = RangeTable.marked(None, as_arrays(top))
    assert [b.decode().rstrip("\n") for b in table.texts()] == texts_of([RangeRow(x) for x in top])
    assert RangeRows(table).filter(RangeFilter(text=f"{(1 << 64) - 1:#x}"))[0].range == top[1]


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
