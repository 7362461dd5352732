"""The walker against a real kernel: Debian's Linux 6.1 under QEMU, captured live.

The truth is QEMU's own monitor (``info tlb``, ``info mem``) from the same
stop; see tests/fixtures/linux-6.1-nokaslr/README.md for how it was taken.
"""

import gzip
import struct
import time
from collections import Counter
from pathlib import Path

import pytest

from kinspect.inspector.x86.control import decode_cr0, decode_cr4, decode_efer, decode_paging_mode
from kinspect.inspector.x86.paging import (
    Leaf,
    coalesce_ranges,
    collect_address_space,
    find_aliases,
    translate,
)
from tests.qemu_view import capture_reader, tlb_flags

FIXTURE = Path(__file__).parent.parent / "fixtures" / "linux-6.1-nokaslr"
CR0, CR3, CR4, EFER = 0x80050033, 0x487C000, 0x6F0, 0xD01
TEXT, ETEXT = 0xFFFFFFFF81000000, 0xFFFFFFFF81E01D32  # _text, _etext (kallsyms, nokaslr)
PAGE_OFFSET = 0xFFFF888000000000  # page_offset_base
ESPFIX_BASE = 0xFFFFFF0000000000  # ESPFIX_BASE_ADDR, PML4 slot 510


def load_pages() -> dict[int, bytes]:
    data = gzip.decompress((FIXTURE / "pt-pages.bin.gz").read_bytes())
    pages = {}
    for offset in range(0, len(data), 16 + 4096):
        address, level = struct.unpack_from("<QB", data, offset)
        assert 1 <= level <= 4 and address & 0xFFF == 0
        pages[address] = data[offset + 16 : offset + 16 + 4096]
    return pages


def read_lines(name: str) -> list[str]:
    return gzip.decompress((FIXTURE / name).read_bytes()).decode().splitlines()


@pytest.fixture(scope="module")
def pages():
    return load_pages()


@pytest.fixture(scope="module")
def read_physical(pages):
    return capture_reader(pages)


@pytest.fixture(scope="module")
def mode():
    return decode_paging_mode(CR0, CR4, EFER)


@pytest.fixture(scope="module")
def space(read_physical, mode):
    return collect_address_space(read_physical, CR3, mode)


def test_registers_agree_with_the_capture():
    text = (FIXTURE / "info-registers.txt").read_text()
    assert f"CR0={CR0:08x}" in text and f"CR3={CR3:016x}" in text and f"CR4={CR4:08x}" in text
    assert f"EFER={EFER:016x}" in text
    assert decode_cr0(CR0).unknown == decode_cr4(CR4).unknown == decode_efer(EFER).unknown == 0


def test_capture_holds_109_table_pages(pages):
    assert len(pages) == 109


def test_walk_is_complete_and_clean(space, mode):
    assert mode.levels == 4 and mode.nxe
    assert space.problems == () and not space.truncated


def test_walk_matches_info_tlb_page_for_page(space):
    """Same VA, same PA, same leaf bits (NX G PS D A PCD PWT US RW) as QEMU's walk."""
    expected = []
    for line in read_lines("info-tlb.txt.gz"):
        va, pa, flags = line.replace(":", "").split()
        expected.append((int(va, 16), int(pa, 16), flags))
    # The README says 74,250 leaves; the file holds 74,251 lines, all distinct.
    assert len(expected) == len({va for va, _, _ in expected}) == 74251
    got = [(leaf.va, leaf.pa, tlb_flags(leaf.entry.raw)) for leaf in space.leaves]
    assert len(got) == len(expected)
    mismatches = [(g, e) for g, e in zip(got, expected, strict=True) if g != e]
    assert mismatches == []


def test_ranges_match_info_mem(space):
    """info mem merges on effective U/W (P implied) and VA contiguity, ignoring NX and PA."""
    expected = [line.split() for line in read_lines("info-mem.txt.gz")]
    assert len(expected) == 65648  # the README says 65,647
    merged: list[list[int]] = []
    last_key = None
    va_mask = (1 << 48) - 1  # QEMU compares 48-bit addresses
    for leaf in space.leaves:
        key = (leaf.permissions.user, leaf.permissions.writable)
        if merged and key == last_key and leaf.va & va_mask == merged[-1][1] & va_mask:
            merged[-1][1] = leaf.end
        else:
            merged.append([leaf.va, leaf.end, *key])
        last_key = key
    got = [
        [
            f"{start:016x}-{end:016x}",
            f"{end - start:016x}",
            ("u" if user else "-") + "r" + ("w" if writable else "-"),
        ]
        for start, end, user, writable in merged
    ]
    assert got == expected


def test_espfix_maps_one_page_65536_times(space):
    pa, count = Counter(leaf.pa for leaf in space.leaves).most_common(1)[0]
    assert count == 65536
    espfix = [leaf for leaf in space.leaves if leaf.pa == pa]
    assert all(ESPFIX_BASE <= leaf.va < ESPFIX_BASE + (1 << 39) for leaf in espfix)
    assert all(leaf.size == 4096 and not leaf.permissions.writable for leaf in espfix)
    aliases = find_aliases(space.leaves, pa + 0x10)
    # every espfix mapping, plus the page's own place in the direct map
    assert len(aliases) == 65536 + 1
    assert [va for va, _ in aliases if va < ESPFIX_BASE] == [PAGE_OFFSET + pa + 0x10]


def test_direct_map_uses_2m_pages(space):
    direct = [leaf for leaf in space.leaves if PAGE_OFFSET <= leaf.va < PAGE_OFFSET + (1 << 39)]
    assert direct[0].va == PAGE_OFFSET and direct[0].pa == 0
    mapped = Counter()
    for leaf in direct:
        mapped[leaf.size] += leaf.size
    # most of RAM through 2 MiB pages; Linux splits some into 4 KiB for rodata/NX
    assert mapped[2 << 20] > 0.9 * sum(mapped.values())
    assert mapped[1 << 30] == 0
    assert all(leaf.pa == leaf.va - PAGE_OFFSET for leaf in direct)
    # all NX except two 4 KiB pages: the real-mode trampoline Linux makes executable
    executable = [leaf.va for leaf in direct if leaf.permissions.executable]
    assert executable == [PAGE_OFFSET + 0x99000, PAGE_OFFSET + 0x9A000]


def test_kernel_text_is_2m_read_only_executable(space):
    text = [leaf for leaf in space.leaves if TEXT <= leaf.va < ETEXT & ~((2 << 20) - 1)]
    assert [leaf.va for leaf in text] == [TEXT + n * (2 << 20) for n in range(7)]
    for leaf in text:
        assert leaf.size == 2 << 20 and leaf.level == 2 and leaf.entry.ps
        assert not leaf.permissions.writable and leaf.permissions.executable
        assert not leaf.permissions.user and leaf.entry.g
        assert leaf.pa == leaf.va - TEXT + 0x1000000


def test_ptov_of_kernel_text_finds_the_direct_map_and_the_text_mapping(space):
    aliases = [va for va, _ in find_aliases(space.leaves, 0x1000123)]
    assert aliases == [PAGE_OFFSET + 0x1000123, TEXT + 0x123]


def test_translate_agrees_with_the_walk(read_physical, mode, space):
    by_va = {leaf.va: leaf for leaf in space.leaves}
    for va in (TEXT + 0x123456, PAGE_OFFSET + 0x1234567, 0x400ABC, 0xFFFFFFFFFF5FD0F0):
        t = translate(read_physical, CR3, mode, va)
        assert t.ok, t.fault
        leaf = by_va[va & ~(t.page_size - 1)]
        assert isinstance(leaf, Leaf)
        assert t.pa == leaf.pa + (va - leaf.va)
        assert t.permissions == leaf.permissions
        assert t.steps[-1].entry == leaf.entry
    t = translate(read_physical, CR3, mode, 0x1000)
    assert not t.ok and "not present" in t.fault


def test_coalesced_ranges_cover_every_leaf_once(space):
    ranges = coalesce_ranges(space.leaves)
    assert sum(r.size for r in ranges) == sum(leaf.size for leaf in space.leaves)
    assert all(a.end <= b.start for a, b in zip(ranges, ranges[1:], strict=False))
    text = next(r for r in ranges if r.start == TEXT)
    assert str(text).endswith("ro         PSE     GLB x  pmd")


def test_walk_is_fast(read_physical, mode):
    start = time.perf_counter()
    space = collect_address_space(read_physical, CR3, mode)
    elapsed = time.perf_counter() - start
    assert len(space.leaves) == 74251
    assert elapsed < 2.0, f"walking 74,251 leaves took {elapsed:.2f}s"
