"""Range marks and filters, on literal ranges and on the real capture."""

from inspector.x86.paging import Permissions, Range
from tui.model import RangeFilter, RangeRow, RowTexts, diff_ranges, filter_rows

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
