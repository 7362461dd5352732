"""The walker on OVMF's own page tables: 1 TiB identity-mapped, half a million leaves.

Captured live while the firmware sat in its UEFI shell (boot services
running); the truth is QEMU's own monitor from the same stop (``info tlb``,
``info mem``). See tests/fixtures/ovmf/README.md for how it was taken.
"""

import lzma
import struct
from collections import Counter
from pathlib import Path

import pytest

from kinspect.inspector.x86.control import decode_paging_mode
from kinspect.inspector.x86.paging import coalesce_ranges, collect_address_space, translate
from tests.qemu_view import capture_reader, tlb_flags

FIXTURE = Path(__file__).parent.parent / "fixtures" / "ovmf"
CR0, CR3, CR4, EFER = 0x80010033, 0xF801000, 0x668, 0xD00
KiB4, MiB2 = 1 << 12, 1 << 21


def load_pages() -> dict[int, bytes]:
    data = lzma.decompress((FIXTURE / "pt-pages.bin.xz").read_bytes())
    pages = {}
    for offset in range(0, len(data), 16 + 4096):
        address, level = struct.unpack_from("<QB", data, offset)
        assert 1 <= level <= 4 and address & 0xFFF == 0
        pages[address] = data[offset + 16 : offset + 16 + 4096]
    return pages


def read_tlb() -> list[tuple[int, int, str]]:
    """``info tlb`` as QEMU printed it: (VA, PA, XGPDACTUW flags), one per leaf."""
    lines = []
    for line in lzma.decompress((FIXTURE / "info-tlb.txt.xz").read_bytes()).decode().splitlines():
        va, pa, flags = line.replace(":", "").split()
        lines.append((int(va, 16), int(pa, 16), flags))
    return lines


def read_info_mem() -> list[tuple[int, int, str]]:
    ranges = []
    for line in (FIXTURE / "info-mem.txt").read_text().splitlines():
        span, size, prot = line.split()
        start, end = (int(x, 16) for x in span.split("-"))
        assert end - start == int(size, 16)
        ranges.append((start, end, prot))
    return ranges


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


@pytest.fixture(scope="module")
def tlb():
    return read_tlb()


@pytest.fixture(scope="module")
def tlb_sizes(tlb):
    """Each ``info tlb`` line's page size, from QEMU's text alone.

    ``P`` is bit 7: PS in a PD entry (2 MiB), PAT in a PT entry. OVMF never
    sets PAT and uses no 1 GiB pages; the check that each page ends before
    the next line's VA proves there is no other reading of the text.
    """
    sizes = [MiB2 if "P" in flags else KiB4 for _, _, flags in tlb]
    for (va, _, _), size, (next_va, _, _) in zip(tlb, sizes, tlb[1:], strict=False):
        assert va % size == 0 and va + size <= next_va
    return sizes


def test_registers_agree_with_the_capture():
    text = (FIXTURE / "info-registers.txt").read_text()
    assert f"CR0={CR0:08x}" in text and f"CR3={CR3:016x}" in text and f"CR4={CR4:08x}" in text
    assert f"EFER={EFER:016x}" in text


def test_capture_holds_the_whole_tree(pages):
    """1 PML4, 2 PDPTs (512 GiB each), 1024 PDs (1 GiB each), 1 PT (the one split 2 MiB)."""
    data = lzma.decompress((FIXTURE / "pt-pages.bin.xz").read_bytes())
    levels = Counter(data[offset + 8] for offset in range(0, len(data), 16 + 4096))
    assert levels == {4: 1, 3: 2, 2: 1024, 1: 1}
    assert len(pages) == 1028 and CR3 in pages


def test_walk_is_complete_and_clean(space, mode):
    assert mode.levels == 4 and mode.nxe
    assert space.problems == () and not space.truncated


def test_walk_matches_info_tlb_leaf_for_leaf(space, tlb, tlb_sizes):
    """Same VA, PA, size and leaf bits (NX G PS D A PCD PWT US RW) as QEMU's walk, in order."""
    assert len(tlb) == len({va for va, _, _ in tlb}) == 524799
    got = [(leaf.va, leaf.pa, leaf.size, tlb_flags(leaf.entry.raw)) for leaf in space.leaves]
    expected = [(va, pa, size, flags) for (va, pa, flags), size in zip(tlb, tlb_sizes, strict=True)]
    assert len(got) == len(expected)
    mismatches = [(g, e) for g, e in zip(got, expected, strict=True) if g != e]
    assert mismatches == []


def test_info_tlb_is_a_1_tib_identity_map(tlb, tlb_sizes):
    """What the capture is, from QEMU's text alone: every byte of 1 TiB, VA = PA."""
    assert all(va == pa for va, pa, _ in tlb)
    assert sum(tlb_sizes) == 1 << 40 and tlb[0][0] == 0
    assert Counter(tlb_sizes) == {MiB2: 524287, KiB4: 512}


def test_ranges_match_info_mem(space):
    """info mem merges on effective U/W (P implied) and VA contiguity, ignoring NX and PA."""
    merged: list[list] = []
    for leaf in space.leaves:
        prot = ("u" if leaf.permissions.user else "-") + "r"
        prot += "w" if leaf.permissions.writable else "-"
        if merged and merged[-1][1] == leaf.va and merged[-1][2] == prot:
            merged[-1][1] = leaf.end
        else:
            merged.append([leaf.va, leaf.end, prot])
    assert [tuple(r) for r in merged] == read_info_mem()


def test_coalesced_ranges_are_the_ranges_info_tlb_implies(space, tlb, tlb_sizes):
    """Ranges derived from QEMU's lines (contiguous VA and PA, same size and flags but A/D).

    The effective rights are the leaf's own bits here: no PML4 or PDPT entry
    of OVMF clears RW or sets US or NX (checked on the captured bytes below),
    and ``info mem`` (effective U/W, checked above) agrees.
    """
    data = lzma.decompress((FIXTURE / "pt-pages.bin.xz").read_bytes())
    for offset in range(0, len(data), 16 + 4096):
        if data[offset + 8] >= 3:  # a PML4 or a PDPT
            for (raw,) in struct.iter_unpack("<Q", data[offset + 16 : offset + 16 + 4096]):
                assert not raw & 1 or (raw & 0b110 == 0b010 and not raw >> 63 and not raw & 0x80)
    expected: list[list] = []
    for (va, pa, flags), size in zip(tlb, tlb_sizes, strict=True):
        key = (size, flags.replace("A", "-").replace("D", "-"))
        last = expected[-1] if expected else None
        if last and last[1] == va and last[3] == key and last[2] + (va - last[0]) == pa:
            last[1] = va + size
        else:
            expected.append([va, va + size, pa, key])

    def key_of(r):
        p = r.permissions
        flags = (
            ("-" if p.executable else "X")
            + ("G" if "G" in r.attributes else "-")
            + ("P" if r.page_size > KiB4 or "PAT" in r.attributes else "-")
            + "--"
            + ("C" if "PCD" in r.attributes else "-")
            + ("T" if "PWT" in r.attributes else "-")
            + ("U" if p.user else "-")
            + ("W" if p.writable else "-")
        )
        return (r.page_size, flags)

    ranges = coalesce_ranges(space.leaves)
    assert [[r.start, r.end, r.phys, key_of(r)] for r in ranges] == expected
    assert len(ranges) == 26  # compact: half a million leaves, 26 ranges
    assert all(r.phys == r.start for r in ranges)
    last = ranges[-1]
    assert (last.start, last.end, last.page_size) == (0xFE00000, 1 << 40, MiB2)
    assert str(last) == (
        "0x000000000fe00000-0x0000010000000000     1048322M     RW         PSE         x  pmd"
    )


def test_translate_agrees_with_info_tlb(read_physical, mode, tlb):
    by_va = {va: (pa, flags) for va, pa, flags in tlb}
    for va in (0, 0xF65A123, 0xFEE00000, 0xFFFFFFFF, 1 << 32, (1 << 40) - 1):
        t = translate(read_physical, CR3, mode, va)
        assert t.ok, t.fault
        page = va & ~(t.page_size - 1)
        pa, flags = by_va[page]
        assert t.pa == pa + (va - page) == va
        assert tlb_flags(t.steps[-1].entry.raw) == flags
    t = translate(read_physical, CR3, mode, 1 << 40)
    assert not t.ok and "not present" in t.fault
