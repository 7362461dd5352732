import json

import pytest

from kinspect.inspector.errors import InspectorError
from kinspect.inspector.x86 import control
from kinspect.inspector.x86.control import (
    decode_cr0,
    decode_cr3,
    decode_cr4,
    decode_efer,
    decode_paging_mode,
    decode_register,
    decode_rflags,
)

# Values from the real Linux 6.1 capture (tests/fixtures/linux-6.1-nokaslr).
LINUX_CR0, LINUX_CR4, LINUX_EFER, LINUX_RFLAGS = 0x80050033, 0x6F0, 0xD01, 0x246


def test_cr0_from_linux():
    cr0 = decode_cr0(LINUX_CR0)
    assert cr0.flags == ("PE", "MP", "ET", "NE", "WP", "AM", "PG")
    assert cr0.unknown == 0
    assert cr0.is_set("PG") and cr0.is_set("WP") and not cr0.is_set("CD")
    assert cr0["AM"] == 1 and cr0["TS"] == 0
    assert str(cr0) == "CR0=0x80050033 [PE MP ET NE WP AM PG]"


def test_cr0_every_architectural_bit_named():
    names = {f.name for f in decode_cr0(0).fields}
    assert names == {"PE", "MP", "EM", "TS", "ET", "NE", "WP", "AM", "NW", "CD", "PG"}
    assert decode_cr0(0xE005003F).unknown == 0


def test_cr0_unknown_bits_kept_and_shown_in_hex():
    cr0 = decode_cr0(0x80010133)
    assert cr0.unknown == 0x100
    assert str(cr0) == "CR0=0x80010133 [PE MP ET NE WP PG 0x100]"
    assert cr0.to_dict()["unknown"] == 0x100


def test_unknown_field_name_is_a_key_error():
    with pytest.raises(KeyError):
        decode_cr0(0).is_set("NXE")


def test_cr4_from_linux():
    cr4 = decode_cr4(LINUX_CR4)
    assert cr4.flags == ("PSE", "PAE", "MCE", "PGE", "OSFXSR", "OSXMMEXCPT")
    assert cr4.unknown == 0
    assert not cr4.is_set("LA57")


CR4_BITS = """VME 0 PVI 1 TSD 2 DE 3 PSE 4 PAE 5 MCE 6 PGE 7 PCE 8 OSFXSR 9 OSXMMEXCPT 10
UMIP 11 LA57 12 VMXE 13 SMXE 14 FSGSBASE 16 PCIDE 17 OSXSAVE 18 KL 19 SMEP 20 SMAP 21
PKE 22 CET 23 PKS 24 UINTR 25 LASS 27 LAM_SUP 28 FRED 32""".split()


@pytest.mark.parametrize(
    ("name", "bit"), [(n, int(b)) for n, b in zip(CR4_BITS[::2], CR4_BITS[1::2], strict=True)]
)
def test_cr4_bit_positions(name, bit):
    cr4 = decode_cr4(1 << bit)
    assert cr4.flags == (name,)
    assert cr4.unknown == 0


def test_cr4_reserved_bits_are_unknown():
    cr4 = decode_cr4((1 << 15) | (1 << 26) | (1 << 40) | 0x20)
    assert cr4.unknown == (1 << 15) | (1 << 26) | (1 << 40)
    assert str(cr4) == f"CR4={cr4.value:#x} [PAE {(1 << 15) | (1 << 26) | (1 << 40):#x}]"


def test_efer_from_linux():
    efer = decode_efer(LINUX_EFER)
    assert efer.flags == ("SCE", "LME", "LMA", "NXE")
    assert efer.unknown == 0
    assert str(efer) == "EFER=0xd01 [SCE LME LMA NXE]"


def test_efer_amd_bits_and_unknown():
    efer = decode_efer((1 << 12) | (1 << 13) | (1 << 14) | (1 << 15) | (1 << 16) | (1 << 1))
    assert efer.flags == ("SVME", "LMSLE", "FFXSR", "TCE")
    assert efer.unknown == (1 << 16) | (1 << 1)


def test_rflags_from_linux_hides_always_one_bit():
    rflags = decode_rflags(LINUX_RFLAGS)
    assert rflags.flags == ("PF", "ZF", "IF")
    assert rflags["IOPL"] == 0
    assert rflags.unknown == 0  # bit 1 is architectural, not unknown
    assert str(rflags) == "RFLAGS=0x246 [PF ZF IF]"


def test_rflags_iopl_and_all_flags():
    rflags = decode_rflags(0x3F7FD7)
    assert rflags["IOPL"] == 3
    assert rflags.flags == tuple("CF PF AF ZF SF TF IF DF OF NT RF VM AC VIF VIP ID".split())
    assert "IOPL=3" in str(rflags)
    assert decode_rflags(0x8002).unknown == 0x8000  # bit 15 is reserved


def test_cr3_without_pcide():
    cr3 = decode_cr3(0x487C018)
    assert cr3["BASE"] == 0x487C000
    assert cr3.is_set("PWT") and cr3.is_set("PCD")
    assert str(cr3) == "CR3=0x487c018 [PWT PCD BASE=0x487c000]"
    # bits 0-2 and 5-11 are ignored without PCIDE: kept as unknown
    assert decode_cr3(0x487C001).unknown == 0x1


def test_cr3_with_pcide_has_pcid_and_noflush():
    cr3 = decode_cr3(0x800000000487C005, pcide=True)
    assert cr3["PCID"] == 5
    assert cr3["BASE"] == 0x487C000
    assert cr3.is_set("NOFLUSH")
    assert cr3.unknown == 0
    with pytest.raises(KeyError):
        cr3.is_set("PWT")
    assert decode_cr3(1 << 63).unknown == 1 << 63  # no-flush only means something with PCIDE


def test_repr_reads_like_a_constructor_and_round_trips():
    for reg in (
        decode_cr0(LINUX_CR0),
        decode_cr4(LINUX_CR4),
        decode_efer(LINUX_EFER),
        decode_rflags(LINUX_RFLAGS),
        decode_cr3(0x487C000),
        decode_cr3(0x487C001, pcide=True),
    ):
        assert eval(repr(reg), vars(control)) == reg


def test_to_dict_shape_is_json():
    d = decode_rflags(0x3246).to_dict()
    assert d == {
        "name": "RFLAGS",
        "value": 0x3246,
        "flags": ["PF", "ZF", "IF"],
        "fields": {"IOPL": 3},
        "unknown": 0,
    }
    json.dumps(decode_cr3(0x487C000, pcide=True).to_dict())


def test_decode_register_by_name():
    assert decode_register("cr0", LINUX_CR0) == decode_cr0(LINUX_CR0)
    with pytest.raises(ValueError):
        decode_register("CR9", 0)
    with pytest.raises(ValueError):
        decode_cr0(1 << 64)


def test_paging_mode_linux_is_4_level():
    mode = decode_paging_mode(LINUX_CR0, LINUX_CR4, LINUX_EFER)
    assert mode.levels == 4 and mode.is_long_mode and mode.enabled
    assert mode.nxe and mode.wp and mode.pse and mode.pae and mode.pge
    assert not mode.pke and not mode.smep and not mode.smap
    assert str(mode).startswith("4-level paging [NXE WP")


def test_paging_mode_5_level_and_pke():
    mode = decode_paging_mode(LINUX_CR0, LINUX_CR4 | (1 << 12) | (1 << 22), LINUX_EFER)
    assert mode.levels == 5 and mode.pke and mode.virtual_address_bits == 57


def test_paging_mode_nxe_and_wp_off():
    mode = decode_paging_mode(LINUX_CR0 & ~(1 << 16), LINUX_CR4, LINUX_EFER & ~(1 << 11))
    assert not mode.nxe and not mode.wp


def test_paging_off_is_said_clearly():
    mode = decode_paging_mode(0x11, 0, 0)
    assert mode.levels == 0 and not mode.enabled and not mode.is_long_mode
    assert "paging is off" in str(mode)


def test_legacy_modes_are_marked_not_long_mode():
    assert decode_paging_mode(0x80000011, 0x20, 0).name == "PAE"
    assert decode_paging_mode(0x80000011, 0, 0).name == "32-bit"
    assert not decode_paging_mode(0x80000011, 0x20, 0x100).is_long_mode  # LME without LMA


def test_walker_refuses_paging_off():
    from kinspect.inspector.x86.paging import translate, walk_page_tables

    mode = decode_paging_mode(0x11, 0, 0)
    with pytest.raises(InspectorError, match="paging is off"):
        list(walk_page_tables(lambda a, n: bytes(n), 0, mode))
    with pytest.raises(InspectorError, match="paging is off"):
        translate(lambda a, n: bytes(n), 0, mode, 0)
