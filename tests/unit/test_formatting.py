import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kinspect.inspector.formatting import (
    _INDENT_BY_ARRAYS,
    _indent_compact,
    format_json,
    format_ranges,
    format_register,
    format_size,
    format_translation,
)
from kinspect.inspector.x86.control import PagingMode, decode_cr0, decode_cr3, decode_rflags
from kinspect.inspector.x86.paging import coalesce_ranges, collect_address_space, translate
from tests.unit.ptbuilder import NX, RW, US, A, D, G, P, PageTables

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0B"),
        (512, "512B"),
        (4096, "4K"),
        (20 * 1024, "20K"),
        (1536 * 1024, "1536K"),  # like ptdump: only exact units, nothing rounded away
        (2 << 20, "2M"),
        (1 << 30, "1G"),
        (3 << 40, "3T"),
        (1 << 63, "8E"),
    ],
)
def test_format_size(n, text):
    assert format_size(n) == text


def test_format_size_rejects_negative():
    with pytest.raises(ValueError):
        format_size(-1)


def make_tables():
    pt = PageTables()
    pt.map(0x400000, 0x3000, 4096, P | US | A)
    pt.map(0x401000, 0x4000, 4096, P | US | RW | NX | A | D)
    pt.map(0xFFFFFFFF81000000, 0x1000000, 2 << 20, P | G | A)
    return pt


def test_format_ranges_is_a_ptdump_table():
    pt = make_tables()
    space = collect_address_space(pt.memory.read_physical, pt.root, PagingMode(levels=4))
    text = format_ranges(coalesce_ranges(space.leaves))
    assert text.splitlines() == [
        "start-end                               size  physical           flags",
        "0x0000000000400000-0x0000000000401000     4K  0x0000000000003000 USR ro                     x  pte",  # noqa: E501
        "0x0000000000401000-0x0000000000402000     4K  0x0000000000004000 USR RW                     NX pte",  # noqa: E501
        "0xffffffff81000000-0xffffffff81200000     2M  0x0000000001000000     ro         PSE     GLB x  pmd",  # noqa: E501
    ]


def test_format_translation_success_and_failure():
    pt = make_tables()
    mode = PagingMode(levels=4)
    ok = format_translation(translate(pt.memory.read_physical, pt.root, mode, 0xFFFFFFFF81000123))
    lines = ok.splitlines()
    assert lines[0] == "0xffffffff81000123:"
    assert lines[1].startswith("  PML4[511] at ") and "PML4E" in lines[1]
    assert lines[3].startswith("  PD[8] at ") and lines[3].endswith("-> 0x1000000 (2M page)")
    assert lines[-1] == "=> 0xffffffff81000123 -> 0x1000123 (2M page, ro ker x)"
    bad = format_translation(translate(pt.memory.read_physical, pt.root, mode, 0x402000))
    lines = bad.splitlines()
    assert lines[-2].endswith("PTE 0x0000000000000000 not present")
    assert lines[-1].startswith("fault: PT entry 2 at ") and lines[-1].endswith("is not present")


def test_format_register_lists_set_fields_and_unknown_bits():
    text = format_register(decode_cr0(0x80010133))
    lines = text.splitlines()
    assert lines[0] == "CR0=0x80010133 [PE MP ET NE WP PG 0x100]"
    assert lines[1].split()[:3] == ["PE", "bit", "0"]
    assert "Protection Enable" in lines[1]
    assert lines[-1].split()[0] == "0x100"
    assert "IOPL=3" in format_register(decode_rflags(0x3246))
    assert "bits 51:12" in format_register(decode_cr3(0x487C000))


def test_decoders_and_formatting_import_no_io_or_ui():
    """The pure layer must not pull in transports, GDB or Textual."""
    code = (
        "import sys\n"
        "import kinspect.inspector.formatting, kinspect.inspector.x86.flags, "
        "kinspect.inspector.x86.control, "
        "kinspect.inspector.x86.paging\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('socket', 'pygdbmi', 'textual', 'subprocess', 'asyncio')"
        " or m.startswith(('kinspect.inspector.targets', 'kinspect.protocols'))]\n"
        "print(','.join(sorted(bad)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == ""


# -- the JSON the command line prints: json.dumps(indent=1), byte for byte, however large ----

_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.floats(allow_nan=False),
    st.text(alphabet='ab:,[]{} "\\\n\u00e9x', max_size=6),
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(alphabet='k:,[]{}"', max_size=3), inner, max_size=4)
    ),
    max_leaves=30,
)


@given(_json_values)
@settings(max_examples=300, deadline=None)
def test_indent_by_arrays_is_json_dumps_indent_1(value):
    compact = json.dumps(value, separators=(",", ":"))
    if "\\" in compact:  # format_json takes the plain path for those
        return
    assert _indent_compact(compact) == json.dumps(value, indent=1)


def test_a_large_document_prints_as_json_dumps_indent_1():
    ranges = [
        {
            "start": i << 12,
            "attributes": ["G"] if i % 3 else [],
            "permissions": {"user": i % 2 == 0},
        }
        for i in range(5000)
    ]
    document = {"kinspect": 1, "command": "pt", "problems": [], "ranges": ranges, "empty": {}}
    assert len(json.dumps(document)) > _INDENT_BY_ARRAYS  # the array path is the one tested
    assert format_json(document) == json.dumps(document, indent=1) + "\n"
    document["reason"] = 'a "quoted" \\ path'  # a backslash: the plain path, same bytes
    assert format_json(document) == json.dumps(document, indent=1) + "\n"
