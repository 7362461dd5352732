"""kallsyms decoders and finder: literal bytes, tables built as scripts/kallsyms.c lays
them out, and a part of a real Debian 6.1 kernel's tables against its /proc/kallsyms."""

from __future__ import annotations

import gzip
import json
import random
import struct
from pathlib import Path

import pytest

from kinspect.inspector.errors import DecodeError, InspectorError
from kinspect.inspector.linux import kallsyms as K
from kinspect.inspector.linux.kernel import LINK_TEXT, recognize_linux
from kinspect.inspector.x86.paging import Permissions, Range

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "linux-6.1-kallsyms"
BASE = 0xFFFFFFFF81000000


# -- building tables the way scripts/kallsyms.c writes them -----------------------------

#: multi-character tokens on the byte values no name uses (the compressor's choice
#: differs; any tokens decode the same way)
MULTI = ["__x64_sys_", "asm_exc_", "_page", "fault", "do_", "init", "kallsyms_", "T", "t"]


def token_list() -> list[str]:
    used = {chr(c) for c in range(0x20, 0x7F)}
    tokens = []
    extra = iter(MULTI + [f"~{n}" for n in range(256)])
    for code in range(256):
        tokens.append(chr(code) if chr(code) in used else next(extra))
    return tokens


def encode(name: str, tokens: list[str]) -> bytes:
    multi = sorted(((t, c) for c, t in enumerate(tokens) if len(t) > 1), key=lambda tc: -len(tc[0]))
    out = bytearray()
    position = 0
    while position < len(name):
        for token, code in multi:
            if name.startswith(token, position):
                out.append(code)
                position += len(token)
                break
        else:
            out.append(ord(name[position]))
            position += 1
    length = len(out)
    head = bytes([length]) if length < 0x80 else bytes([0x80 | length & 0x7F, length >> 7])
    return head + bytes(out)


def align(data: bytearray) -> None:
    data.extend(b"\0" * (-len(data) % 8))


def build_tables(entries, *, base=BASE, seqs=False, start=0, new_layout=False):
    """The tables from ``start`` (an address): bytes and the address of each label. Up
    to 6.3: offsets, base, count, names, markers, [seqs], tokens; 6.4+ (``new_layout``):
    count, names, markers, tokens, offsets, base, seqs."""
    tokens = token_list()
    data = bytearray()
    where = {}

    def offsets_and_base():
        where["offsets"] = start + len(data)
        for e in entries:
            if e.type == "A":
                data.extend(struct.pack("<i", e.address))
            else:
                data.extend(struct.pack("<i", base - 1 - e.address))
        align(data)
        where["relative_base"] = start + len(data)
        data.extend(struct.pack("<Q", base))

    def seqs_of_names():
        data.extend(bytes(random.Random(1).randrange(256) for _ in range(3 * len(entries))))
        align(data)

    if not new_layout:
        offsets_and_base()
    where["num_syms"] = start + len(data)
    data += struct.pack("<I", len(entries))
    align(data)
    where["names"] = start + len(data)
    markers = []
    names = bytearray()
    for number, e in enumerate(entries):
        if number % 256 == 0:
            markers.append(len(names))
        names += encode(e.type + e.name, tokens)
    data += names
    align(data)
    where["markers"] = start + len(data)
    data += struct.pack(f"<{len(markers)}I", *markers)
    align(data)
    if seqs and not new_layout:
        seqs_of_names()
    where["token_table"] = start + len(data)
    offsets = []
    table = bytearray()
    for token in tokens:
        offsets.append(len(table))
        table += token.encode("latin-1") + b"\0"
    data += table
    align(data)
    where["token_index"] = start + len(data)
    data += struct.pack("<256H", *offsets)
    if new_layout:
        align(data)
        offsets_and_base()
        align(data)
        seqs_of_names()
    return bytes(data), where


def sample_entries(count=3000, *, percpu=20):
    rng = random.Random(count)
    entries = [K.KallsymsEntry(0x1000 * n, "A", f"percpu_{n}") for n in range(percpu)]
    address = BASE
    names = ["_text", "asm_exc_page_fault", "do_init_module", "__x64_sys_read", "x" * 300]
    for n in range(count - percpu):
        name = names[n] if n < len(names) else f"sym_{n}_{rng.randrange(10**6)}"
        entries.append(K.KallsymsEntry(address, rng.choice("tTdDbBrR") if n else "T", name))
        address += rng.choice((0, 0x10, 0x40, 0x1F0))
    return entries


def memory_reader(image: bytes, start: int):
    def read_virtual(address: int, size: int) -> bytes:
        if address < start or address + size > start + len(image):
            raise InspectorError(f"unmapped {address:#x}")
        return image[address - start : address - start + size]

    return read_virtual


# -- decoders on literal bytes -----------------------------------------------------------


def test_decode_tokens_each_ends_at_its_nul():
    table = b"T\0asm_\0exc\0" + b"z\0" * 253
    index = struct.pack("<256H", 0, 2, 7, *range(11, 11 + 2 * 253, 2))
    tokens = K.decode_tokens(table, index)
    assert tokens[:3] == ("T", "asm_", "exc")
    assert len(tokens) == 256


def test_decode_tokens_refuses_an_index_past_the_table():
    with pytest.raises(DecodeError, match="token 1 runs past"):
        K.decode_tokens(b"a\0", struct.pack("<256H", 0, 9, *([0] * 254)))


def test_decode_names_short_and_big_forms():
    tokens = [chr(c) for c in range(256)]
    tokens[1] = "Tsys_"
    long_name = "t" + "q" * 199  # 200 tokens: 0x80 | (200 & 0x7f), 200 >> 7
    data = bytes([3, 1, ord("u"), ord("p")]) + bytes([0xC8, 0x01]) + long_name.encode()
    names, end = K.decode_names(data, 2, tokens)
    assert names == ["Tsys_up", long_name]
    assert end == len(data)


def test_decode_names_truncated_says_how_far_it_got():
    tokens = [chr(c) for c in range(256)]
    with pytest.raises(DecodeError, match="after 1 of 2 names"):
        K.decode_names(bytes([1, 65, 5, 66]), 2, tokens)


def test_decode_offsets_absolute_percpu():
    data = struct.pack("<4i", 0, 0x1000, -1, -0x11)
    assert K.decode_offsets(data, 4, BASE) == [0, 0x1000, BASE, BASE + 0x10]


def test_decode_offsets_relative_only():
    data = struct.pack("<2I", 0x10, 0x3E000000)
    assert K.decode_offsets(data, 2, BASE, absolute_percpu=False) == [
        BASE + 0x10,
        BASE + 0x3E000000,
    ]


# -- the finder over built tables ------------------------------------------------------------


@pytest.mark.parametrize("seqs", [False, True], ids=["6.1", "seqs_of_names"])
def test_find_kallsyms_in_built_tables(seqs):
    entries = sample_entries()
    start = 0xFFFFFFFF82000000
    garbage = bytes(random.Random(7).randrange(256) for _ in range(0x3123))
    tables, where = build_tables(entries, seqs=seqs, start=start + len(garbage) + 5)
    image = garbage + b"\0" * 5 + tables + garbage
    layout, found = K.find_kallsyms(
        memory_reader(image, start), [(start, start + len(image))], stride=4096
    )
    assert found == entries
    assert layout.seqs_of_names is seqs
    assert (layout.offsets, layout.names, layout.token_index) == (
        where["offsets"],
        where["names"],
        where["token_index"],
    )
    assert layout.relative_base == BASE and layout.count == len(entries)


@pytest.mark.parametrize("count", [3000, 3001])
def test_find_kallsyms_in_the_6_4_layout(count):
    entries = sample_entries(count)
    start = 0xFFFFFFFF82000000
    garbage = bytes(random.Random(9).randrange(256) for _ in range(0x2345))
    tables, where = build_tables(entries, start=start + len(garbage) + 3, new_layout=True)
    image = garbage + b"\0" * 3 + tables + garbage
    read = memory_reader(image, start)
    layout, found = K.find_kallsyms(read, [(start, start + len(image))], stride=4096)
    assert found == entries
    assert (layout.offsets, layout.names, layout.num_syms_at, layout.token_table) == (
        where["offsets"],
        where["names"],
        where["num_syms"],
        where["token_table"],
    )
    assert K.read_layout(read, layout, [(start, start + len(image))]) == entries


def test_find_kallsyms_split_over_two_mappings():
    entries = sample_entries()
    start = 0xFFFFFFFF82000000
    tables, _ = build_tables(entries, start=start + 0x1000)
    image = b"\xff" * 0x1000 + tables + b"\0" * 0x1000
    middle = start + 0x6000
    regions = [(middle, start + len(image)), (start, middle)]  # any order, contiguous
    _, found = K.find_kallsyms(memory_reader(image, start), regions, stride=4096)
    assert found == entries


def test_find_kallsyms_says_where_it_looked():
    start = 0xFFFFFFFF82000000
    image = bytes(random.Random(3).randrange(256) for _ in range(0x20000))
    with pytest.raises(DecodeError, match="no kallsyms tables found .*0xffffffff82000000"):
        K.find_kallsyms(memory_reader(image, start), [(start, start + len(image))])


# -- a real kernel's tables --------------------------------------------------------------------


def load_fixture():
    with gzip.open(FIXTURE / "kallsyms-chunks.json.gz", "rt") as stream:
        doc = json.load(stream)
    with gzip.open(FIXTURE / "proc-kallsyms-chunks.txt.gz", "rt") as stream:
        lines = stream.read().splitlines()
    return doc, lines


def test_debian_6_1_groups_decode_to_its_proc_kallsyms():
    doc, lines = load_fixture()
    table, index = bytes.fromhex(doc["token_table"]), bytes.fromhex(doc["token_index"])
    decoded = []
    for chunk in doc["chunks"]:
        decoded += K.decode_kallsyms(
            bytes.fromhex(chunk["offsets"]),
            bytes.fromhex(chunk["names"]),
            table,
            index,
            chunk["count"],
            doc["relative_base"],
        )
    assert [str(e) for e in decoded] == lines
    assert len(lines) == 6 * 256 + 58
    by_name = {e.name: e for e in decoded}
    assert by_name["_text"].type == "T" and by_name["_text"].address == doc["relative_base"]
    assert by_name["fixed_percpu_data"] == K.KallsymsEntry(0, "A", "fixed_percpu_data")


def test_debian_6_1_token_table():
    doc, _ = load_fixture()
    tokens = K.decode_tokens(bytes.fromhex(doc["token_table"]), bytes.fromhex(doc["token_index"]))
    # byte values that names use stand for themselves; the others for compressed strings
    assert [tokens[c] for c in b"09AZ_az"] == list("09AZ_az")
    assert sum(len(t) > 1 for t in tokens) > 100


# -- symbol tables and files ---------------------------------------------------------------------


def test_symbol_table_sizes_reach_the_next_address():
    entries = [
        K.KallsymsEntry(BASE, "T", "_text"),
        K.KallsymsEntry(BASE, "T", "startup_64"),
        K.KallsymsEntry(BASE + 0x40, "t", "helper"),
        K.KallsymsEntry(BASE + 0x100, "D", "data"),
    ]
    table = K.symbol_table(entries)
    assert table.format_address(BASE + 0x3F) in ("_text+0x3f", "startup_64+0x3f")
    assert table.format_address(BASE + 0x41) == "helper+0x1"
    assert table.lookup("helper") == BASE + 0x40
    assert table.names_at(BASE) == ["_text", "startup_64"]
    symbol, offset = table.symbolize(BASE + 0x50)
    assert (symbol.name, symbol.size, symbol.kind, offset) == ("helper", 0xC0, "func", 0x10)


def test_parse_kallsyms_text_proc_and_system_map():
    text = (
        "ffffffff81000000 T _text\n"
        "ffffffffc0123000 t cleanup_module\t[floppy]\n"
        "\n"
        "0000000000000000 A fixed_percpu_data\n"
    )
    assert K.parse_kallsyms_text(text) == [
        K.KallsymsEntry(0xFFFFFFFF81000000, "T", "_text"),
        K.KallsymsEntry(0xFFFFFFFFC0123000, "t", "cleanup_module"),
        K.KallsymsEntry(0, "A", "fixed_percpu_data"),
    ]


@pytest.mark.parametrize("text", ["not a map\n", "zzzz T name\n", ""])
def test_parse_kallsyms_text_refuses_other_files(text):
    with pytest.raises(InspectorError) as info:
        K.parse_kallsyms_text(text, source="x.map")
    assert "\n" not in str(info.value) and "x.map" in str(info.value)


# -- recognition with its cache, over a built image ------------------------------------------------


def built_kernel(text=0xFFFFFFFF9A000000):
    """A kernel image: text at ``text``, data beginning with the banner and holding the
    tables and page_offset_base; the Range list its page tables would give."""
    banner = b"Linux version 6.1.0-99-amd64 (someone@somewhere) #1 SMP\n\0"
    data_start = text + 0x200000
    entries = [K.KallsymsEntry(0, "A", "fixed_percpu_data")]
    entries += [
        K.KallsymsEntry(text, "T", "_text"),
        K.KallsymsEntry(text + 0x40, "T", "asm_exc_page_fault"),
    ]
    entries += [K.KallsymsEntry(text + 0x100 + 16 * n, "t", f"f{n}") for n in range(3000)]
    entries += [
        K.KallsymsEntry(data_start + 0x100, "D", "linux_banner"),
        K.KallsymsEntry(data_start + 0x200, "D", "page_offset_base"),
    ]
    head = bytearray(0x1000)
    head[0x100 : 0x100 + len(banner)] = banner
    head[0x200:0x208] = struct.pack("<Q", 0xFFFF888000000000)
    tables, _ = build_tables(entries, base=text, start=data_start + len(head))
    image = bytes(head) + tables
    image += b"\0" * (-len(image) % 4096)
    ranges = [
        Range(text, text + 0x200000, 0x1000000, 0x200000, Permissions(False, False, True), ()),
        Range(data_start, data_start + len(image), 0, 4096, Permissions(False, False, False), ()),
    ]
    return memory_reader(image, data_start), ranges, entries


def test_recognize_linux_then_from_the_cache(tmp_path):
    read_virtual, ranges, entries = built_kernel()
    kernel, table = recognize_linux(read_virtual, ranges, la57=False, cache=tmp_path)
    assert kernel.banner == "Linux version 6.1.0-99-amd64 (someone@somewhere) #1 SMP"
    assert kernel.text == 0xFFFFFFFF9A000000 and kernel.slide == kernel.text - LINK_TEXT
    assert kernel.page_offset_base == 0xFFFF888000000000 and kernel.vmalloc_base is None
    assert not kernel.cached and kernel.symbol_count == len(entries)
    assert table.format_address(kernel.text + 0x41) == "asm_exc_page_fault+0x1"
    again, table2 = recognize_linux(read_virtual, ranges, la57=True, cache=tmp_path)
    assert again.cached and again.la57
    assert table2.lookup("f2999") == table.lookup("f2999")
    assert "kallsyms in memory" in str(again) and "(cached)" in str(again)


def test_a_stale_cache_entry_is_not_used(tmp_path):
    read_virtual, ranges, _ = built_kernel()
    recognize_linux(read_virtual, ranges, la57=False, cache=tmp_path)
    (entry,) = tmp_path.iterdir()
    with gzip.open(entry, "rt") as stream:
        header, body = stream.read().split("\n", 1)
    layout = json.loads(header)
    layout["layout"]["count"] += 1  # another build with the same banner at the same _text
    with gzip.open(entry, "wt") as stream:
        stream.write(json.dumps(layout) + "\n" + body)
    kernel, _ = recognize_linux(read_virtual, ranges, la57=False, cache=tmp_path)
    assert not kernel.cached


def test_recognize_linux_with_a_system_map_slides_it(tmp_path):
    read_virtual, ranges, _ = built_kernel()
    system_map = tmp_path / "System.map"
    system_map.write_text(
        "ffffffff81000000 T _text\nffffffff81000040 T asm_exc_page_fault\n"
        "ffffffff81200100 D linux_banner\n"
    )
    kernel, table = recognize_linux(
        read_virtual, ranges, la57=False, kallsyms_file=str(system_map), cache=tmp_path
    )
    assert kernel.symbols_from == "file" and kernel.kallsyms is None
    assert table.lookup("asm_exc_page_fault") == 0xFFFFFFFF9A000040
    assert kernel.banner.startswith("Linux version 6.1.0-99-amd64")


def test_recognize_linux_refuses_a_kernel_without_a_banner():
    read_virtual, ranges, _ = built_kernel()

    def no_banner(address, size):
        return read_virtual(address, size).replace(b"Linux version", b"Other version")

    with pytest.raises(InspectorError, match="not a Linux kernel"):
        recognize_linux(no_banner, ranges, la57=False)
    with pytest.raises(InspectorError, match="no kernel image is mapped"):
        recognize_linux(read_virtual, ranges[1:], la57=False)


@pytest.mark.parametrize("at", [0, 0x1000 - 5, 0x2FF0])
def test_find_banner_anywhere_in_the_first_pages(at):
    from kinspect.inspector.linux.kernel import find_banner

    start = 0xFFFFFFFF82000000
    image = bytearray(0x4000)
    banner = b"Linux version 6.1.0-57-amd64 (x@y) #1 SMP\n"
    image[at : at + len(banner)] = banner
    read = memory_reader(bytes(image), start)
    assert find_banner(read, [(start, start + len(image))]) == banner.decode().strip()
    assert find_banner(read, [(start, start + at)]) is None


def test_two_mappings_in_one_64k_block_are_read_apart():
    entries = sample_entries()
    start = 0xFFFFFFFF82000000
    tables, _ = build_tables(entries, start=start + 0x3000)
    image = bytearray(b"\x11" * 0x3000 + tables + b"\0" * 0x1000)
    hole = (start + 0x1000, start + 0x2000)  # unmapped: reading it is an error
    base_read = memory_reader(bytes(image), start)

    def read(address, size):
        if address < hole[1] and address + size > hole[0]:
            raise InspectorError(f"unmapped {address:#x}")
        return base_read(address, size)

    regions = [(start, hole[0]), (hole[1], start + len(image))]
    _, found = K.find_kallsyms(read, regions, stride=4096)
    assert found == entries


# -- what recognition reads of the cache before a command looks a symbol up -----------------------


def counting_symbols(monkeypatch):
    """How many times the kallsyms symbols are made (patched into the kallsyms module)."""
    made = []
    original = K.kallsyms_symbols

    def counted(entries):
        made.append(1)
        return original(entries)

    monkeypatch.setattr(K, "kallsyms_symbols", counted)
    return made


def test_recognition_from_the_cache_makes_no_symbols_until_one_is_looked_up(tmp_path, monkeypatch):
    from kinspect.inspector.linux.kernel import KNOWN_SYMBOLS

    read_virtual, ranges, entries = built_kernel()
    first, _ = recognize_linux(read_virtual, ranges, la57=False, cache=tmp_path)
    expected = K.symbol_table(entries)
    made = counting_symbols(monkeypatch)
    kernel, table = recognize_linux(read_virtual, ranges, la57=False, cache=tmp_path)
    assert kernel.cached and kernel.symbol_count == len(entries)
    assert kernel.to_dict() | {"seconds": 0} == first.to_dict() | {
        "seconds": 0,
        "symbols": {**first.to_dict()["symbols"], "cached": True},
    }
    for name in KNOWN_SYMBOLS:
        assert table.lookup(name) == expected.lookup(name)
    assert table.with_slide(0x1000).lookup("_text") == expected.lookup("_text") + 0x1000
    assert made == []  # pt's region map needs no more
    assert table.lookup("f2999") == expected.lookup("f2999")
    assert table.format_address(kernel.text + 0x41) == "asm_exc_page_fault+0x1"
    slid = table.with_slide(0x1000)
    assert slid.lookup("f1") == expected.lookup("f1") + 0x1000
    assert slid.lookup("_end") is None and slid.names_at(kernel.text + 0x1000) == ["_text"]
    assert made == [1]  # once, shared by the slid copies


def test_known_addresses_are_what_the_table_would_say():
    rng = random.Random(7)
    names = ["_text", "_end", "dup", "page_offset_base", "absent"]
    entries = [
        K.KallsymsEntry(
            BASE + rng.randrange(0, 0x1000, 0x10), "t", rng.choice(names[:4] + ["x", "y"])
        )
        for _ in range(500)
    ]
    known = K.known_addresses(entries, names)
    table = K.symbol_table(entries)
    assert known == {name: table.lookup(name) for name in names}
    assert known["absent"] is None
    deferred = K.deferred_symbol_table(lambda: entries, known)
    assert [deferred.lookup(n) for n in names] == [table.lookup(n) for n in names]
    assert deferred.lookup("x") == table.lookup("x")  # made now
    assert [deferred.lookup(n) for n in names] == [table.lookup(n) for n in names]


def rewrite_cache(directory, change):
    (entry,) = directory.iterdir()
    with gzip.open(entry, "rt") as stream:
        header, body = stream.read().split("\n", 1)
    header, body = change(json.loads(header), body)
    with gzip.open(entry, "wt") as stream:
        stream.write(json.dumps(header) + "\n" + body)


def test_a_damaged_cache_body_is_decoded_again_when_a_symbol_is_needed(tmp_path):
    read_virtual, ranges, entries = built_kernel()
    recognize_linux(read_virtual, ranges, la57=False, cache=tmp_path)
    rewrite_cache(tmp_path, lambda header, body: (header, body[: len(body) // 2]))
    kernel, table = recognize_linux(read_virtual, ranges, la57=False, cache=tmp_path)
    assert kernel.cached and kernel.page_offset_base == 0xFFFF888000000000
    assert table.lookup("f2999") == K.symbol_table(entries).lookup("f2999")
    again, table = recognize_linux(read_virtual, ranges, la57=False, cache=tmp_path)  # rewritten
    assert again.cached and table.lookup("f2999") == K.symbol_table(entries).lookup("f2999")


@pytest.mark.parametrize(
    "change",
    [
        lambda header: {**header, "version": 1},  # what kinspect wrote before the known names
        lambda header: {k: v for k, v in header.items() if k != "known"},
        lambda header: {**header, "known": {"_text": 1}},
    ],
)
def test_a_cache_of_another_format_is_rebuilt(tmp_path, change):
    read_virtual, ranges, entries = built_kernel()
    recognize_linux(read_virtual, ranges, la57=False, cache=tmp_path)
    rewrite_cache(tmp_path, lambda header, body: (change(header), body))
    kernel, table = recognize_linux(read_virtual, ranges, la57=False, cache=tmp_path)
    assert not kernel.cached and kernel.symbol_count == len(entries)
    assert table.lookup("page_offset_base") == K.symbol_table(entries).lookup("page_offset_base")
    assert recognize_linux(read_virtual, ranges, la57=False, cache=tmp_path)[0].cached


def test_kernel_image_from_range_arrays_is_the_same():
    from kinspect.inspector.linux.kernel import kernel_image
    from kinspect.inspector.x86.paging import RangeList

    _, ranges, _ = built_kernel()
    user = Range(0x400000, 0x401000, 0x5000, 4096, Permissions(False, True, True), ())
    modules = Range(
        0xFFFFFFFFC0000000, 0xFFFFFFFFC0001000, 0x6000, 4096, Permissions(True, False, True), ()
    )
    every = [user, *ranges, modules]
    assert kernel_image(RangeList.from_ranges(every)) == kernel_image(every)
    assert kernel_image(every)[0] == ranges[0].start
