"""Linux's ORC tables: struct orc_entry in its three layouts, the sorted ip table,
and the lookup the kernel's orc_find() does."""

import struct

import pytest

from kinspect.inspector.errors import DecodeError, FaultError, InspectorError
from kinspect.inspector.linux.image import extract_vmlinux
from kinspect.inspector.linux.orc import (
    ORC_REG_BP,
    ORC_REG_PREV_SP,
    ORC_REG_SP,
    ORC_REG_SP_INDIRECT,
    ORC_REG_UNDEFINED,
    ORC_TYPE_CALL,
    ORC_TYPE_END_OF_STACK,
    ORC_TYPE_REGS,
    ORC_TYPE_REGS_PARTIAL,
    ORC_TYPE_UNDEFINED,
    OrcLookup,
    OrcTable,
    decode_orc_entry,
    guess_orc_version,
    orc_version_for_release,
)


def raw(sp_offset: int, bp_offset: int, flags: int) -> bytes:
    return struct.pack("<hhH", sp_offset, bp_offset, flags)


# -- struct orc_entry ------------------------------------------------------------------


def test_version_1_call_entry_from_literal_bytes():
    # objtool's "sp:sp+8 bp:(und) type:call": sp_reg 5, bp_reg 0, type 0, end 0
    entry = decode_orc_entry(bytes.fromhex("0800 0000 0500".replace(" ", "")), 1)
    assert (entry.sp_offset, entry.bp_offset) == (8, 0)
    assert (entry.sp_reg, entry.bp_reg) == (ORC_REG_SP, ORC_REG_UNDEFINED)
    assert entry.type == ORC_TYPE_CALL and not entry.signal
    assert str(entry) == "sp:sp+8 bp:(und) type:call signal:0"


def test_version_1_bp_saved_at_prev_sp_and_negative_offsets():
    # push %rbp; mov %rsp,%rbp: CFA = bp+16, RBP saved at CFA-16
    entry = decode_orc_entry(bytes.fromhex("1000f0ff1400"), 1)
    assert entry.sp_reg == ORC_REG_BP and entry.sp_offset == 16
    assert entry.bp_reg == ORC_REG_PREV_SP and entry.bp_offset == -16
    assert str(entry) == "sp:bp+16 bp:prevsp-16 type:call signal:0"


def test_version_1_regs_types_imply_signal():
    regs = decode_orc_entry(raw(0, 0, 0x0105), 1)
    partial = decode_orc_entry(raw(8, 0, 0x0205), 1)
    assert regs.type == ORC_TYPE_REGS and regs.signal
    assert partial.type == ORC_TYPE_REGS_PARTIAL and partial.signal and partial.sp_offset == 8


def test_version_1_end_bit_tells_the_stacks_end_from_lost():
    end = decode_orc_entry(raw(0, 0, 0x0400), 1)  # UNWIND_HINT_EMPTY: sp undefined, end 1
    lost = decode_orc_entry(raw(0, 0, 0x0000), 1)  # a section terminator / unannotated code
    assert end.type == ORC_TYPE_END_OF_STACK and str(end) == "type:end-of-stack"
    assert lost.type == ORC_TYPE_UNDEFINED and str(lost) == "type:undefined"


def test_version_2_signal_and_end_bits():
    call_signal = decode_orc_entry(raw(8, 0, 0x0405), 2)  # type 0 (call), signal 1
    end = decode_orc_entry(raw(0, 0, 0x0800), 2)  # end is bit 11 in version 2
    assert call_signal.type == ORC_TYPE_CALL and call_signal.signal
    assert end.type == ORC_TYPE_END_OF_STACK
    # the same word read as version 1 is an undefined entry (bit 11 means nothing there)
    assert decode_orc_entry(raw(0, 0, 0x0800), 1).type == ORC_TYPE_UNDEFINED


def test_version_3_types_and_signal_bit():
    assert decode_orc_entry(raw(8, 0, 0x0205), 3).type == ORC_TYPE_CALL
    assert decode_orc_entry(raw(0, 0, 0x0305), 3).type == ORC_TYPE_REGS
    partial = decode_orc_entry(raw(8, 0, 0x0C05), 3)  # type 4, signal 1
    assert partial.type == ORC_TYPE_REGS_PARTIAL and partial.signal
    assert decode_orc_entry(raw(0, 0, 0x0100), 3).type == ORC_TYPE_END_OF_STACK
    assert decode_orc_entry(raw(0, 0, 0x0000), 3).type == ORC_TYPE_UNDEFINED
    indirect = decode_orc_entry(raw(8, 0, 0x0209), 3)
    assert indirect.sp_reg == ORC_REG_SP_INDIRECT and str(indirect).startswith("sp:sp(ind)+8")


def test_unknown_bits_are_kept_not_dropped():
    entry = decode_orc_entry(raw(8, 0, 0xF205), 3)  # bits 12-15: no version defines them
    assert entry.flags == 0xF205 and entry.type == ORC_TYPE_CALL
    odd = decode_orc_entry(raw(8, 0, 0x0305), 1)  # type 3 does not exist in version 1
    assert odd.type not in (ORC_TYPE_CALL, ORC_TYPE_REGS, ORC_TYPE_REGS_PARTIAL)
    assert "type" in str(odd)


def test_bad_sizes_and_versions_are_decode_errors():
    with pytest.raises(DecodeError, match="6 bytes"):
        decode_orc_entry(b"\0" * 5)
    with pytest.raises(DecodeError, match="unknown ORC version 4"):
        decode_orc_entry(b"\0" * 6, 4)


def test_version_from_the_release():
    assert orc_version_for_release("6.1.0-57-amd64") == 1
    assert orc_version_for_release("4.19.0-26-amd64") == 1
    assert orc_version_for_release("6.3.13") == 2
    assert orc_version_for_release("6.4.0") == 3
    assert orc_version_for_release("6.12.9+bpo-amd64") == 3
    assert orc_version_for_release("unknown") is None


def test_version_guessed_from_the_data():
    v1 = [0x0005] * 90 + [0x0105] * 5 + [0x0400, 0x0000]
    v2 = [0x0005] * 90 + [0x0505] * 5 + [0x0800]
    v3 = [0x0205] * 90 + [0x0B05] * 5 + [0x0100, 0x0000]
    assert (guess_orc_version(v1), guess_orc_version(v2), guess_orc_version(v3)) == (1, 2, 3)
    assert guess_orc_version([]) == 1


# -- the tables ------------------------------------------------------------------------

TEXT = 0xFFFFFFFF81000000
IP_TABLE = 0xFFFFFFFF82000000
UNWIND = 0xFFFFFFFF82100000


class Blobs:
    """Memory made of a few blobs; bytes around them in the same page read as zeros."""

    def __init__(self, *blobs: tuple[int, bytes]) -> None:
        self.blobs = list(blobs)
        self.reads: list[int] = []

    def read(self, address: int, size: int) -> bytes:
        self.reads.append(address)
        out, hit = bytearray(size), False
        for base, blob in self.blobs:
            low, high = max(address, base), min(address + size, base + len(blob))
            if low < high:
                out[low - address : high - address] = blob[low - base : high - base]
                hit = True
        if not hit:
            raise FaultError(address, "not mapped")
        return bytes(out)


def make_table(entries: list[tuple[int, bytes]], **kwargs) -> tuple[OrcTable, Blobs]:
    """An ORC table at IP_TABLE/UNWIND with ``(ip, entry bytes)`` in order."""
    ips = b"".join(struct.pack("<i", ip - (IP_TABLE + 4 * i)) for i, (ip, _) in enumerate(entries))
    units = b"".join(entry for _, entry in entries)
    memory = Blobs((IP_TABLE, ips), (UNWIND, units))
    return OrcTable(memory.read, IP_TABLE, UNWIND, len(entries), **kwargs), memory


CALL8 = raw(8, 0, 0x0005)
CALL16 = raw(16, 0, 0x0005)
UNDEFINED = raw(0, 0, 0x0000)
END = raw(0, 0, 0x0400)


def test_find_takes_the_rightmost_start_at_or_below_the_ip():
    table, _ = make_table(
        [
            (TEXT, END),
            (TEXT + 0x10, CALL8),
            (TEXT + 0x40, UNDEFINED),  # a weak terminator, sorted before the real entry
            (TEXT + 0x40, CALL16),
            (TEXT + 0x80, UNDEFINED),
        ],
        version=1,
    )
    assert table.find(TEXT).type == ORC_TYPE_END_OF_STACK
    assert table.find(TEXT + 0xF).type == ORC_TYPE_END_OF_STACK
    assert table.find(TEXT + 0x10).sp_offset == 8
    assert table.find(TEXT + 0x3F).sp_offset == 8
    assert table.find(TEXT + 0x40).sp_offset == 16  # the duplicate's real entry wins
    assert table.find(TEXT + 0x80).type == ORC_TYPE_UNDEFINED
    assert table.find(TEXT - 1) is None  # below the image: no entry, not entry 0
    assert table.find(TEXT + 0x81) is None  # past the last start: a module, not ours
    assert table.covers(TEXT + 0x80) and not table.covers(TEXT + 0x81)


def test_the_orc_lookup_blocks_narrow_the_search():
    entries = [(TEXT + 0x20 * i, raw(8 * (i + 1), 0, 0x0005)) for i in range(64)]
    blocks = struct.pack("<9I", *(min(8 * i, 63) for i in range(9)))  # 8 entries a block
    lookup_at = 0xFFFFFFFF82200000
    table, memory = make_table(entries, version=1, lookup=OrcLookup(lookup_at, 9, TEXT))
    memory.blobs.append((lookup_at, blocks))
    for i in (0, 7, 8, 33, 62):
        assert table.find(TEXT + 0x20 * i + 3).sp_offset == 8 * (i + 1)
    # a fast table whose indexes run past the table is not trusted: a full search
    memory.blobs.append((lookup_at + 0x100, struct.pack("<9I", *([1000] * 9))))
    bad = OrcLookup(lookup_at + 0x100, 9, TEXT)
    table2 = OrcTable(memory.read, IP_TABLE, UNWIND, 64, version=1, lookup=bad)
    assert table2.find(TEXT + 0x20 * 5).sp_offset == 48
    assert table.find(TEXT + 0x20 * 63).sp_offset == 512  # the last start


def test_reads_go_a_page_at_a_time_and_are_kept():
    entries = [(TEXT + 0x10 * i, CALL8) for i in range(2000)]
    table, memory = make_table(entries, version=1)
    before = len(memory.reads)
    for i in range(0, 2000, 7):
        table.find(TEXT + 0x10 * i + 1)
    # 8000 + 12000 bytes of tables: a handful of pages, each read once
    assert len(memory.reads) - before <= 6
    assert all(address % 4096 == 0 for address in memory.reads)


def test_the_version_is_guessed_when_not_given():
    entries = [(TEXT + 0x10 * i, raw(8, 0, 0x0205)) for i in range(100)]  # version-3 calls
    table, _ = make_table(entries)
    assert table.version == 3 and table.find(TEXT + 5).type == ORC_TYPE_CALL


def test_from_symbols_reads_the_running_kernels_tables():
    entries = [(TEXT, END), (TEXT + 0x10, CALL8), (TEXT + 0x20, UNDEFINED)]
    _, memory = make_table(entries)
    banner = 0xFFFFFFFF82300000
    memory.blobs.append((banner, b"Linux version 6.1.0-57-amd64 (debian-kernel@...) #1\0"))
    names = {
        "__start_orc_unwind_ip": IP_TABLE,
        "__stop_orc_unwind_ip": IP_TABLE + 12,
        "__start_orc_unwind": UNWIND,
        "linux_banner": banner,
    }
    table = OrcTable.from_symbols(memory.read, names.get)
    assert table is not None and table.count == 3 and table.version == 1
    assert table.find(TEXT + 0x18).sp_offset == 8 and table.lookup is None
    assert "memory" in table.source
    assert OrcTable.from_symbols(memory.read, {}.get) is None
    assert table.matches(memory.read)
    assert not table.matches(Blobs((IP_TABLE, b"\1" * 64)).read)


def test_an_empty_table_is_refused():
    with pytest.raises(DecodeError, match="empty"):
        OrcTable(Blobs((IP_TABLE, b"\0" * 8)).read, IP_TABLE, UNWIND, 0)


# -- the vmlinux inside a vmlinuz ------------------------------------------------------


@pytest.mark.parametrize("compress", ["xz", "gzip", "bzip2"])
def test_extract_vmlinux_finds_the_compressed_elf(compress):
    import bz2
    import gzip
    import lzma

    elf = b"\x7fELF" + bytes(range(256)) * 64
    packed = {"xz": lzma.compress, "gzip": gzip.compress, "bzip2": bz2.compress}[compress](elf)
    # setup code before it, with a false gzip magic on the way (as real images have)
    image = b"MZ" + b"\0" * 500 + b"\x1f\x8b\x08junk" + b"\0" * 100 + packed + b"\0" * 64
    assert extract_vmlinux(image) == elf
    assert extract_vmlinux(elf) == elf
    with pytest.raises(InspectorError, match="no compressed vmlinux"):
        extract_vmlinux(b"MZ" + b"\0" * 100 + gzip.compress(b"not an elf"))
