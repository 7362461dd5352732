"""``pt``'s rows written from the walk's arrays are the records' own text, byte for byte.

The CLI writes ranges and leaves from arrays a run at a time (formatting's
``format_range_lines``, ``format_leaf_lines``, ``range_json_rows``,
``leaf_json_rows``, ``leaf_json_lines``; kinspect.inspector.columns), each row
from a template made by the record's own formatter (``format_range_row``,
``str(leaf)``, ``to_dict`` through ``json.dumps``). Checked here against those
formatters fed the records, row by row: on tables hypothesis builds (every
flag, both halves, 4 and 5 levels, ranges that end at 2**64, runs cut
anywhere), on the captured Linux map and on OVMF's 1 TiB identity map.
"""

from __future__ import annotations

import io
import json
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kinspect.inspector import columns, formatting
from kinspect.inspector.columns import decimal, hex18, hex_plain, marked_template
from kinspect.inspector.commands.paging import format_ranges_with_regions
from kinspect.inspector.formatting import (
    encode_leaf_rows,
    encode_range_rows,
    format_leaf_lines,
    format_range_lines,
    format_range_row,
    format_ranges,
    leaf_json_lines,
    leaf_json_rows,
    range_json_rows,
    write_json,
)
from kinspect.inspector.linux.layout import linux_regions
from kinspect.inspector.x86.control import PagingMode, decode_paging_mode
from kinspect.inspector.x86.paging import coalesce_ranges, collect_address_space
from tests.qemu_view import capture_reader
from tests.unit import test_ovmf_capture as ovmf_capture
from tests.unit import test_x86_linux_capture as linux_capture
from tests.unit.ptbuilder import NX, PAT_LARGE, PCD, PWT, RW, US, A, D, G, P, PageTables

SIZES = (1 << 12, 1 << 21, 1 << 30)
FLAGS = (RW, US, PWT, PCD, A, D, G, NX, 1 << 9, 1 << 11, 1 << 52, 1 << 58, 0xF << 59)


def text_of(matrix) -> list[str]:
    return [bytes(row[row != 0]).decode() for row in matrix]


@given(st.lists(st.integers(0, (1 << 64) - 1), max_size=40))
def test_number_columns_are_pythons_own(values):
    array = np.array([0, 1, (1 << 64) - 1, *values], dtype=np.uint64)
    numbers = [int(v) for v in array]
    assert text_of(hex18(array)) == [f"{v:#018x}" for v in numbers]
    assert text_of(hex_plain(array)) == [f"{v:#x}" for v in numbers]
    assert text_of(decimal(array)) == [str(v) for v in numbers]


def test_a_mark_must_be_in_the_text_once():
    assert marked_template("a 12 b", {"12": "x"}).pieces == ("a ", " b")
    for text in ("a b", "12 12"):
        with pytest.raises(ValueError, match="not once"):
            marked_template(text, {"12": "x"})


def test_a_column_text_ends_at_its_last_byte():
    table = columns.RowTable(("a",))
    kind = table.kind("k", columns.Template, ("<", ">"), ("a",))
    kinds = np.full(3, kind, dtype=np.intp)
    right = np.array([[0, 0, 0], [0, 0, 49], [50, 51, 52]], dtype=np.uint8)
    assert table.write(kinds, {"a": right}, "\n") == "<>\n<1>\n<234>\n"
    with pytest.raises(ValueError, match="do not end at its last column"):
        table.write(kinds, {"a": right[:, ::-1]}, "\n")


# -- tables hypothesis builds ----------------------------------------------------------------


@st.composite
def tables(draw):
    """Runs of pages (contiguous VA, contiguous or not PA, one size and flags a run) in
    both halves, the last page of the address space among the places they may start."""
    levels = draw(st.sampled_from([4, 5]))
    pt = PageTables(levels=levels)
    top = 1 << (48 if levels == 4 else 57)
    for _ in range(draw(st.integers(0, 6))):
        size = draw(st.sampled_from(SIZES))
        count = draw(st.integers(1, 6 if size < 1 << 30 else 2))
        place = draw(st.sampled_from(["low", "high", "top"]))
        if place == "top":
            first = top - count * size
        else:
            first = draw(st.integers(0, (top // 2 - count * size) // size)) * size
            first += top // 2 if place == "high" else 0
        flags = P
        for flag in draw(st.lists(st.sampled_from(FLAGS), max_size=5)):
            flags |= flag
        if draw(st.booleans()):
            flags |= PAT_LARGE if size > 4096 else 1 << 7
        pa = draw(st.integers(0, (1 << 40) // size - count)) * size
        step = size if draw(st.booleans()) else 3 * size
        for n in range(count):
            va = first + n * size
            canonical = va | (((1 << 64) - top) if va >= top // 2 else 0)
            pt.map(canonical, pa + n * step, size, flags)
    if draw(st.booleans()):  # a table level that takes rights away
        pt.set_flags(0, levels, set_=NX)
    mode = PagingMode(levels=levels, nxe=True)
    return collect_address_space(pt.memory.read_physical, pt.root, mode)


def regions_for(draw, count):
    names = draw(st.lists(st.sampled_from([None, "direct map", 'odd "é" %d \\', "x"]), min_size=1))
    index = draw(st.lists(st.integers(0, len(names) - 1), min_size=count, max_size=count))
    return names, np.array(index, dtype=np.intp)


def json_list(name, items):
    return json.dumps({name: items}, indent=1) + "\n"


def written(document):
    out = io.StringIO()
    write_json(document, out)
    return out.getvalue()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(space=tables(), chunk=st.sampled_from([1, 2, 3, 4096]), data=st.data())
def test_rows_from_arrays_are_the_records_text(space, chunk, data):
    leaves = list(space.leaves)
    ranges = coalesce_ranges(space.leaves)
    records = list(ranges)
    names, index = regions_for(data.draw, len(records))
    row_names = [names[i] for i in index]
    with mock.patch.object(formatting, "ROWS_PER_CHUNK", chunk):
        # pt
        plain = "".join(f"{format_range_row(r)}\n" for r in records)
        assert "".join(format_range_lines(ranges)) == plain
        header = format_ranges([])
        fast = header + "\n" + "".join(format_range_lines(ranges, (names, index)))
        assert fast.removesuffix("\n") == format_ranges_with_regions(records, row_names)
        assert format_ranges(ranges) == format_ranges(records)
        # pt --leaves
        assert "".join(format_leaf_lines(space.arrays)) == "".join(f"{x}\n" for x in leaves)
        # --json pt, --json pt --leaves, --json-lines
        dicts = [{**r.to_dict(), "region": n} for r, n in zip(records, row_names, strict=True)]
        assert written({"ranges": range_json_rows(ranges, (names, index))}) == json_list(
            "ranges", dicts
        )
        leaf_dicts = [leaf.to_dict() for leaf in leaves]
        assert written({"leaves": leaf_json_rows(space.arrays)}) == json_list("leaves", leaf_dicts)
        lines = "".join(json.dumps(d, separators=(",", ":")) + "\n" for d in leaf_dicts)
        assert "".join(leaf_json_lines(space.arrays)) == lines
    # the records' encoders (compact ranges, the API) at any depth
    for depth in (None, 0, 3):
        expected = [formatting._json_at(d, depth) for d in leaf_dicts]
        assert encode_leaf_rows(leaves, depth) == expected
        pairs = list(zip(records, row_names, strict=True))
        assert encode_range_rows(pairs, depth) == [formatting._json_at(d, depth) for d in dicts]


@pytest.mark.parametrize("way", ["by runs", "dropping zeros"])
def test_rows_written_either_way_are_the_records_text(way):
    """RowTable writes a chunk run by run when its rows come in few runs of one shape, else
    as one matrix whose zero bytes it drops: each way alone gives the same text."""
    runs = (1 << 30, 1) if way == "by runs" else (0, 1 << 30)
    with (
        mock.patch.object(columns, "RUNS_AT_MOST", runs[0]),
        mock.patch.object(columns, "BYTES_PER_RUN", runs[1]),
    ):
        test_rows_from_arrays_are_the_records_text()
        test_a_range_to_the_end_of_the_address_space()


def test_a_range_to_the_end_of_the_address_space():
    pt = PageTables()
    pt.map(0xFFFF_FFFF_FFE0_0000, 0x200000, 1 << 21, P | RW)
    pt.map(0xFFFF_FFFF_FFC0_0000, 0x000000, 1 << 21, P | RW)
    space = collect_address_space(pt.memory.read_physical, pt.root, PagingMode(4, nxe=True))
    ranges = coalesce_ranges(space.leaves)
    (last,) = ranges
    assert last.end == 1 << 64
    assert "".join(format_range_lines(ranges)) == format_range_row(last) + "\n"
    dicts = [{**last.to_dict(), "region": None}]
    assert written({"ranges": range_json_rows(ranges)}) == json_list("ranges", dicts)


# -- the captures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def linux():
    c = linux_capture
    mode = decode_paging_mode(c.CR0, c.CR4, c.EFER)
    return collect_address_space(capture_reader(c.load_pages()), c.CR3, mode)


@pytest.fixture(scope="module")
def ovmf():
    c = ovmf_capture
    mode = decode_paging_mode(c.CR0, c.CR4, c.EFER)
    return collect_address_space(capture_reader(c.load_pages()), c.CR3, mode)


def test_the_linux_capture_as_the_records_write_it(linux):
    ranges = coalesce_ranges(linux.leaves)
    records = list(ranges)
    assert len(records) > 60000
    regions = linux_regions(  # the capture's kernel has no KASLR: the default layout
        levels=4, page_offset_base=None, vmalloc_base=None, vmemmap_base=None, text=None, end=None
    )
    row_names = [regions.name_of(r.start) for r in records]
    names = sorted(set(row_names), key=str)
    index = np.array([names.index(n) for n in row_names], dtype=np.intp)
    fast = format_ranges([]) + "\n" + "".join(format_range_lines(ranges, (names, index)))
    text = format_ranges_with_regions(records, row_names)
    assert fast.removesuffix("\n") == text
    assert text.count("---[") >= 5
    leaves = "".join(format_leaf_lines(linux.arrays))
    assert leaves == "".join(f"{leaf}\n" for leaf in linux.leaves)


def test_ovmf_leaves_as_the_records_write_them(ovmf):
    """Half a million records are too many for a unit test: the first and last runs, and
    the 512 4 KiB leaves amid the 2 MiB ones, in text and in JSON."""
    arrays = ovmf.arrays
    small = np.flatnonzero(arrays.size == 4096)
    assert len(small) == 512
    for start, stop in ((0, 5000), (int(small[0]) - 3, int(small[-1]) + 4), (-5000, None)):
        first = start % len(arrays)
        end = len(arrays) if stop is None else stop
        records = arrays.records(first, end)
        assert "".join(format_leaf_lines(arrays, first, end)) == "".join(
            f"{leaf}\n" for leaf in records
        )
        table = formatting._LeafJson(arrays)
        for depth in (None, 2):
            expected = [formatting._json_at(leaf.to_dict(), depth) for leaf in records]
            join = ",\n" if depth is not None else "\n"
            assert table.text(first, end, depth) == join.join(expected)


@given(st.lists(st.integers(0, (1 << 64) - 1), max_size=6), st.sampled_from([None, 0, 1, 4]))
def test_a_table_path_is_written_as_json_dumps_writes_it(path, depth):
    if depth is None:
        expected = json.dumps(path, separators=(",", ":"))
    else:
        expected = json.dumps(path, indent=1).replace("\n", "\n" + " " * depth)
    assert formatting.json_list_text(tuple(path), depth) == expected
