import json
import struct

import pytest

from kinspect.inspector.x86.paging import PageTableEntry, decode_entry, decode_table


def test_pte_with_nx_at_bit_63():
    e = decode_entry(0x80000000001FF063, 1)
    assert e.present and e.rw and not e.us and e.accessed and e.dirty and e.nx
    assert e.is_leaf and e.page_size == 4096
    assert e.address == 0x1FF000
    assert e.reserved == 0
    assert e.flags == ("P", "RW", "A", "D", "NX")
    assert str(e) == "PTE 0x80000000001ff063 P RW A D NX -> 0x1ff000"


def test_pt_bit_7_is_pat_not_ps():
    e = decode_entry(0x1000 | 0x81, 1)
    assert e.pat and not e.ps and e.is_leaf
    assert e.flags == ("P", "PAT")
    assert e.is_set("PAT")
    with pytest.raises(KeyError):
        e.is_set("PS")


def test_2mib_leaf_pat_is_bit_12_and_address_aligned():
    e = decode_entry(0x8000000001E010E3 | (1 << 8), 2)  # P RW A D PS G PAT, 0x1e00000
    assert e.ps and e.is_leaf and e.page_size == 2 << 20
    assert e.pat and e.g and e.nx
    assert e.address == 0x1E00000
    assert e.reserved == 0
    assert e.flags == ("P", "RW", "A", "D", "PS", "G", "PAT", "NX")


def test_2mib_leaf_bits_20_13_are_reserved():
    e = decode_entry(0x200000 | (1 << 13) | (1 << 20) | 0x83, 2)
    assert e.reserved == (1 << 13) | (1 << 20)
    assert e.address == 0x200000
    assert "RESERVED=0x102000" in str(e)


def test_1gib_leaf_pat_and_reserved_bits_29_13():
    ok = decode_entry(0x40000000 | (1 << 12) | 0x83, 3)
    assert ok.is_leaf and ok.page_size == 1 << 30 and ok.pat and ok.address == 0x40000000
    assert ok.reserved == 0
    bad = decode_entry(0x40000000 | (1 << 21) | (1 << 29) | 0x83, 3)
    assert bad.reserved == (1 << 21) | (1 << 29)


def test_non_leaf_pd_entry_keeps_bit_12_as_address():
    e = decode_entry(0x1234F000 | 0x27, 2)
    assert not e.is_leaf and not e.pat
    assert e.address == 0x1234F000 and e.reserved == 0
    assert e.page_size == 0


@pytest.mark.parametrize("level", [4, 5])
def test_ps_is_reserved_in_pml4_and_pml5(level):
    e = decode_entry(0x5000 | 0x83, level)
    assert e.reserved == 0x80
    assert not e.is_leaf and not e.ps


def test_address_bits_above_maxphyaddr_are_reserved():
    raw = (1 << 45) | 0x3000 | 0x3
    assert decode_entry(raw, 1).reserved == 0  # MAXPHYADDR 52 by default
    e = decode_entry(raw, 1, maxphyaddr=40)
    assert e.reserved == 1 << 45
    assert e.address == 0x3000


def test_nx_is_reserved_when_nxe_is_off():
    raw = 0x80000000001FF063
    assert decode_entry(raw, 1, nxe=True).reserved == 0
    assert decode_entry(raw, 1, nxe=False).reserved == 1 << 63


def test_protection_key_and_available_bits():
    raw = (0xB << 59) | (0x55 << 52) | (0b101 << 9) | 0x7000 | 0x7
    e = decode_entry(raw, 1)
    assert e.protection_key == 0xB
    assert e.available == (0x55 << 52) | (0b101 << 9)
    assert e.reserved == 0
    assert e.address == 0x7000
    assert "PK=11" in str(e) and "AVL=5" in str(e) and "AVL_HI=85" in str(e)
    # protection keys only exist in leaves
    assert decode_entry(raw, 2).protection_key == 0


def test_not_present_entry_ignores_all_other_bits():
    e = decode_entry(0xFFFFFFFFFFFFFFFE, 4)
    assert not e.present and e.reserved == 0 and e.address == 0
    assert "->" not in str(e)


def test_entry_repr_is_a_constructor():
    e = decode_entry(0x80000000001FF063, 1)
    assert eval(repr(e), {"PageTableEntry": PageTableEntry}) == e


def test_entry_to_dict():
    d = decode_entry(0x80000000001FF063, 1).to_dict()
    assert d == {
        "raw": 0x80000000001FF063,
        "level": 1,
        "level_name": "PT",
        "present": True,
        "leaf": True,
        "page_size": 4096,
        "address": 0x1FF000,
        "flags": ["P", "RW", "A", "D", "NX"],
        "protection_key": 0,
        "available": 0,
        "reserved": 0,
    }
    json.dumps(d)


def test_bad_arguments():
    with pytest.raises(ValueError):
        decode_entry(0, 6)
    with pytest.raises(ValueError):
        decode_entry(1 << 64, 1)
    with pytest.raises(ValueError):
        decode_table(b"\0" * 8, 1)


def test_decode_table():
    data = struct.pack("<512Q", *([0] * 511 + [0x2003]))
    entries = decode_table(data, 4)
    assert len(entries) == 512 and entries[511].address == 0x2000 and not entries[0].present
