"""The one flags parser of ``remap map``/``protect`` (CLI and TUI): mprotect's names, NX
unless x is named, caching by PAT, and the plan's warnings when a change adds write or
execute."""

import pytest

from kinspect.inspector.errors import InspectorError
from kinspect.inspector.remap.flags import (
    DEFAULT_FLAGS,
    DEFAULT_PAT,
    FlagsError,
    Permission,
    escalation,
    format_flags,
    parse_flags,
    wants_pat,
)
from kinspect.inspector.remap.plan import FLAG_BITS, plan_map, plan_protect
from kinspect.inspector.remap.request import parse_request
from kinspect.inspector.x86.paging import Permissions, Range

RW, US, PWT, PCD, G, NX = (FLAG_BITS[n] for n in ("RW", "US", "PWT", "PCD", "G", "NX"))
#: Linux's IA32_PAT: 0 WB, 1 WC, 2 UC-, 3 UC, 4 WB, 5 WP, 6 UC-, 7 WT.
LINUX_PAT = 0x0407050600070106


@pytest.mark.parametrize(
    ("text", "bits"),
    [
        ("r", NX),
        ("ro", NX),
        ("R", NX),
        ("rw", RW | NX),
        ("RW", RW | NX),
        ("w", RW | NX),
        ("rx", 0),
        ("x", 0),
        ("xr", 0),
        ("rwx", RW),
        ("rw,x", RW),
        ("rw+x", RW),
        ("rw x", RW),
        ("rw,nx", RW | NX),
        ("r,nx", NX),
        ("r,user", US | NX),
        ("r,us", US | NX),
        ("r,u", US | NX),
        ("rw,global", RW | G | NX),
        ("rw,g", RW | G | NX),
        ("g", G | NX),  # no access named: r
        ("rw,wb", RW | NX),
        ("rw,wt", RW | PWT | NX),
        ("rw,uc-", RW | PCD | NX),
        ("rw,ucminus", RW | PCD | NX),
        ("rw,uc", RW | PWT | PCD | NX),
        ("rw,pwt", RW | PWT | NX),
        ("rw,pcd", RW | PCD | NX),
        ("RW,US,PWT,PCD,G", RW | US | PWT | PCD | G | NX),
        (" rx , global ", G),
    ],
)
def test_every_name(text, bits):
    assert parse_flags(text) == bits


@pytest.mark.parametrize("text", ["r", "ro", "rw", "rw,g", "user", "RW+G+PCD"])
def test_a_page_is_executable_only_when_x_is_named(text):
    assert parse_flags(text) & NX


def test_caching_follows_the_pat_it_is_given():
    assert parse_flags("rw,wc", pat=LINUX_PAT) == RW | PWT | NX  # entry 1 is WC on Linux
    assert parse_flags("rw,uc-", pat=LINUX_PAT) == RW | PCD | NX
    with pytest.raises(FlagsError, match="no PAT entry 0-3 holds WC"):
        parse_flags("rw,wc")  # the power-on PAT has no WC
    with pytest.raises(FlagsError, match="WP"):
        parse_flags("rw,wp", pat=DEFAULT_PAT)
    assert wants_pat("rw,wc") and wants_pat("r+UC-") and not wants_pat("rw,pcd,g")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no flags named"),
        (" , ", "no flags named"),
        ("rwz", "unknown flag 'rwz'"),
        ("rrw", "unknown flag"),
        ("exec", "unknown flag"),
        ("rx,nx", "both x"),
        ("rw,uc,wt", "two caching types"),
        ("rw,uc,pcd", "caching type"),
    ],
)
def test_bad_flags_are_one_clear_error(text, message):
    with pytest.raises(FlagsError, match=message) as error:
        parse_flags(text)
    assert isinstance(error.value, InspectorError) and isinstance(error.value, ValueError)
    assert "\n" not in str(error.value)


def test_the_defaults_keep_nx_and_parse():
    assert parse_flags(DEFAULT_FLAGS["map"]) == RW | NX
    assert parse_flags(DEFAULT_FLAGS["protect"]) == NX
    assert format_flags(parse_flags(DEFAULT_FLAGS["protect"])) == "P NX"


def test_escalation_names_what_is_added():
    ro, rw, rx = Permission(False, False), Permission(True, False), Permission(False, True)
    assert escalation(NX, [rw, rx]) == []  # taking away is never an escalation
    assert escalation(RW | NX, [ro]) == ["adds write to pages that were read-only"]
    assert escalation(0, [ro]) == ["adds execute to pages that were not executable (or not mapped)"]
    assert escalation(RW, [rx])[0].startswith("makes the pages writable AND executable")
    assert escalation(RW | NX, [None]) == []  # fresh data pages: rw is the default
    assert escalation(0, [None]) != []  # a fresh executable mapping is said


KERNEL = 0xFFFFFFFF80100000
CODE = Range(KERNEL, KERNEL + 0x2000, 0x100000, 0x1000, Permissions(False, False, True), ())
DATA = Range(
    KERNEL + 0x2000, KERNEL + 0x4000, 0x102000, 0x1000, Permissions(True, False, False), ()
)


def test_protect_plans_say_when_they_add_write_or_execute():
    ro = plan_protect([CODE, DATA], [], KERNEL, 0x1000, 0x1000, parse_flags("ro"))
    assert not ro.warnings and "WARNING" not in str(ro)
    assert ro.steps[0].expect[0].executable is False  # ro keeps (here: makes) NX
    wx = plan_protect([CODE, DATA], [], KERNEL, 0x1000, 0x1000, parse_flags("rwx"))
    assert any("W+X" in w for w in wx.warnings)
    assert any("adds write" in w for w in wx.warnings)
    assert "WARNING: makes the pages writable AND executable (W+X)" in str(wx)
    assert wx.to_dict()["warnings"] == list(wx.warnings)
    x = plan_protect([CODE, DATA], [], KERNEL + 0x2000, 0x1000, 0x1000, parse_flags("rx"))
    assert x.warnings == ("adds execute to pages that were not executable (or not mapped)",)


def test_map_plans_say_when_they_alias_code_writable():
    fresh = KERNEL + 0x100000
    data = plan_map([CODE, DATA], [], fresh, 0x200000, 0x1000, 0x1000, parse_flags("rw"))
    assert data.warnings == ()
    alias = plan_map([CODE, DATA], [], fresh, 0x100000, 0x1000, 0x1000, parse_flags("rw"))
    assert alias.warnings == (f"makes a writable alias of executable pages mapped at {KERNEL:#x}",)
    code = plan_map([CODE, DATA], [], fresh, 0x102000, 0x1000, 0x1000, parse_flags("rx"))
    assert "adds execute" in code.warnings[0]
    assert "executable alias of writable pages" in code.warnings[1]


def test_the_form_parser_shares_the_flags_parser():
    fields = {"va": "0x1000", "size": "4k", "page_size": "4k", "flags": "ro"}
    request = parse_request("protect", fields, lambda text: int(text, 0))
    assert request.flags == NX
    with pytest.raises(InspectorError, match="unknown flag"):
        parse_request("protect", {**fields, "flags": "rwz"}, lambda text: int(text, 0))
    wc = parse_request(
        "map", {**fields, "pa": "0", "flags": "rw,wc"}, lambda t: int(t, 0), pat=LINUX_PAT
    )
    assert wc.flags == RW | PWT | NX
