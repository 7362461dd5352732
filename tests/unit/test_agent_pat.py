"""IA32_PAT decoding (inspector/x86/pat.py): what the agent's rdmsr makes readable."""

from __future__ import annotations

import pytest

from kinspect.inspector.x86.pat import POWER_ON_PAT, decode_pat


def test_power_on_value():
    pat = decode_pat(POWER_ON_PAT)
    assert [pat.type_name(i) for i in range(8)] == ["WB", "WT", "UC-", "UC"] * 2
    assert str(pat) == (
        "IA32_PAT=0x0007040600070406 [PA0=WB PA1=WT PA2=UC- PA3=UC PA4=WB PA5=WT PA6=UC- PA7=UC]"
    )


def test_linux_pat_and_the_leaf_bits():
    # Linux: PA0=WB PA1=WC PA2=UC- PA3=UC PA4=WB PA5=WP PA6=UC- PA7=WT
    pat = decode_pat(0x0407050600070106)
    assert pat.memory_type(pwt=False, pcd=False, pat=False) == "WB"
    assert pat.memory_type(pwt=True, pcd=False, pat=False) == "WC"
    assert pat.memory_type(pwt=True, pcd=True, pat=False) == "UC"
    assert pat.memory_type(pwt=False, pcd=False, pat=True) == "WB"
    assert pat.memory_type(pwt=True, pcd=False, pat=True) == "WP"
    assert pat.memory_type(pwt=True, pcd=True, pat=True) == "WT"
    assert pat.memory_type_of(("G", "PWT", "PCD")) == "UC"


def test_reserved_types_and_bits_are_kept():
    pat = decode_pat(0x02 | (0x03 << 8) | (0x0E << 16))
    assert pat.type_name(0) == "rsvd(2)"
    assert pat.type_name(1) == "rsvd(3)"
    assert pat.type_name(2) == "WB|0x8"  # a reserved bit above the type
    assert pat.to_dict()["entries"][:3] == ["rsvd(2)", "rsvd(3)", "WB|0x8"]
    with pytest.raises(ValueError):
        pat.entry(8)
