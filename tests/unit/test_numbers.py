"""The one number/size parser, the one hex dump, the one remap dispatch."""

from __future__ import annotations

import pytest

from kinspect.inspector.errors import InspectorError
from kinspect.inspector.formatting import format_hex_rows, format_hexdump, format_json
from kinspect.inspector.numbers import (
    format_size,
    maybe_number,
    parse_number,
    parse_size,
    resolve_address,
)
from kinspect.inspector.remap.request import RemapRequest, parse_request, plan_request


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0x1000", 0x1000),
        ("0X1F", 0x1F),
        ("0xffff_8880_0000_0000", 0xFFFF_8880_0000_0000),
        (" 4096 ", 4096),
        ("1_000", 1000),
        ("0o17", 0o17),
        ("0b101", 5),
        ("-0x10", -16),
    ],
)
def test_parse_number(text, value):
    assert parse_number(text) == value
    assert maybe_number(text) == value


@pytest.mark.parametrize("text", ["kernel_main", "_1", "12k", "0x", "", "010", "0xg"])
def test_what_is_not_a_number(text):
    with pytest.raises(ValueError):
        parse_number(text)
    assert maybe_number(text) is None


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0x3000", 0x3000),
        ("12k", 12 << 10),
        ("2m", 2 << 20),
        ("2M", 2 << 20),
        ("1g", 1 << 30),
        ("512g", 512 << 30),
        ("12KiB", 12 << 10),
        ("4kb", 4096),
        ("4096b", 4096),
        ("0x1b", 0x1B),  # a hex digit, not a unit (the old parser read 0x1)
        ("0x10b", 0x10B),
        ("0x1_000", 0x1000),
    ],
)
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["x", "k", "0xk", "12q", "1.5m", ""])
def test_bad_sizes(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_resolve_address_numbers_then_symbols():
    symbols = {"kernel_main": 0xFFFFFFFF80101390, "_1": 7}.get
    assert resolve_address("0x10", symbols) == 0x10
    assert resolve_address("kernel_main", symbols) == 0xFFFFFFFF80101390
    assert resolve_address("_1", symbols) == 7
    with pytest.raises(InspectorError, match="'nope' is neither a number nor a known symbol$"):
        resolve_address("nope", symbols)
    with pytest.raises(InspectorError, match=r"symbol \(pass --elf"):
        resolve_address("nope", None, hint=" (pass --elf to use symbol names)")


def test_format_size_is_ptdump_like():
    assert [format_size(n) for n in (0, 4096, 1536 << 10, 2 << 20, 1 << 30)] == [
        "0B",
        "4K",
        "1536K",
        "2M",
        "1G",
    ]


def test_the_hex_dump():
    data = bytes(range(0x41, 0x41 + 20)) + (0xFFFFFFFF80101390).to_bytes(8, "little")
    rows = format_hex_rows(0x1000, data, {0xFFFFFFFF80101390: "kernel_main"}.get)
    assert rows[0] == (
        "0x0000000000001000: 41 42 43 44 45 46 47 48 49 4a 4b 4c 4d 4e 4f 50   |ABCDEFGHIJKLMNOP|",
        "",
    )
    assert rows[1][0].startswith("0x0000000000001010: 51 52 53 54 90 13 10 80 ff ff ff ff")
    assert rows[1][0].endswith("|QRST........    |")
    assert rows[1][1] == ""  # the qword at +0x14 is not aligned
    text = format_hexdump(0, (0xFFFFFFFF80101390).to_bytes(8, "little"), {}.get)
    assert text == "0x0000000000000000: 90 13 10 80 ff ff ff ff" + " " * 25 + "  |........        |"
    named = format_hex_rows(0, (0xFFFFFFFF80101390).to_bytes(8, "little") * 2, lambda v: "k")
    assert named[0][1] == "+0x0=k +0x8=k"


def test_json_is_indent_1_with_a_newline():
    assert format_json({"kinspect": 1, "a": [1]}) == '{\n "kinspect": 1,\n "a": [\n  1\n ]\n}\n'


class FakePlanner:
    def __getattr__(self, name):  # records the call instead of planning
        return lambda *args, **kwargs: (name, args, kwargs)


def test_one_remap_dispatch_for_cli_and_tui():
    symbols = {"stack": 0x9000}.get

    def resolve(text):
        return resolve_address(text, symbols)

    request = parse_request(
        "map",
        {"va": "stack", "size": "8k", "pa": "0x2000", "page_size": "4k", "flags": "rw,nx"},
        resolve,
    )
    assert request == RemapRequest(
        "map", va=0x9000, size=0x2000, pa=0x2000, page_size=0x1000, flags=request.flags
    )
    assert plan_request(FakePlanner(), request) == (
        "plan_map",
        (0x9000, 0x2000, 0x2000),
        {"page_size": 0x1000, "flags": request.flags},
    )
    assert plan_request(FakePlanner(), RemapRequest("higher-half"))[0] == "plan_higher_half"
    efi = plan_request(
        FakePlanner(), parse_request("efi-runtime", {"keep_identity": True}, resolve)
    )
    assert efi[0] == "plan_efi_runtime" and efi[2]["drop_identity"] is False
    with pytest.raises(InspectorError, match="map: the size is missing"):
        parse_request("map", {"va": "stack"}, resolve)
    with pytest.raises(InspectorError, match="page size must be 4k, 2m, 1g"):
        parse_request("unmap", {"va": "1", "size": "1", "page_size": "8k"}, resolve)
    with pytest.raises(InspectorError, match="unknown remap 'fold'"):
        plan_request(FakePlanner(), RemapRequest("fold"))
