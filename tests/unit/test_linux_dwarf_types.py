"""Types from DWARF (``--elf``), checked against tools we did not write: pahole and gdb.

The demo kernel is built with ``-g``; pahole (apt package dwarves, installed by
scripts/bootstrap.sh) and gdb's ``ptype /o`` read its DWARF with their own
readers. Every member's bit offset, size and bitfield width, through anonymous
unions and structs, and each struct's size, must be what they say.
``demo_pte_view`` (kernel-agent/demo/paging.h) has bitfields in an anonymous
struct in an anonymous union; ``mp_item`` a union holding an unnamed struct type.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from kinspect.inspector import api
from kinspect.inspector.errors import InspectorError
from kinspect.inspector.linux.btf import Btf, BtfType, format_layout
from kinspect.inspector.linux.dwarf_types import choose_types, decode_dwarf_types

STRUCTS = (
    "demo_pte_view",  # bitfields, an anonymous union holding an anonymous struct
    "mp_item",  # a union member whose struct type has no name
    "tss",  # packed, arrays
    "agent",  # arrays of structs, nested struct types, 48 KiB
    "agent_ops",  # function pointers, const pointers
    "interrupt_frame",
    "efi_memory_descriptor",
    "hvm_start_info",
    "gdt",
)


@pytest.fixture(scope="module")
def demo_elf() -> str:
    if not api.DEMO_KERNEL.is_file():
        pytest.skip("the demo kernel is not built (make kernel)")
    return str(api.DEMO_KERNEL)


@pytest.fixture(scope="module")
def types(demo_elf) -> Btf:
    from elftools.elf.elffile import ELFFile

    with open(demo_elf, "rb") as stream:
        dwarf = ELFFile(stream).get_dwarf_info(relocate_dwarf_sections=False)
        return decode_dwarf_types(dwarf, origin=f"the DWARF of {demo_elf}")


def flatten(btf: Btf, container: BtfType, base: int = 0) -> list[tuple[str, int, int, int]]:
    """(name, bit offset from the outer struct, size, bitfield width) of every member,
    through members whose struct or union type has no name (pahole prints them inline)."""
    rows = []
    for member in container.members:
        bit = base + member.bit_offset
        inner = btf.strip(member.type)
        if inner.kind in ("struct", "union") and not inner.name:
            rows += flatten(btf, inner, bit)
        rows.append((member.name, bit, btf.sizeof(member.type), member.bitfield_size))
    return rows


_PAHOLE_MEMBER = re.compile(
    r"^\s*(?P<decl>[^/]*?);\s*/\*\s*(?P<at>\d+)(?::\s*(?P<bit>\d+))?\s+(?P<size>\d+)\s*\*/"
)


def _declared_name(decl: str) -> tuple[str, int]:
    """The member's name and bitfield width in a pahole declaration."""
    decl = re.sub(r"\s*__attribute__\(\(.*\)\)", "", decl)  # pahole's __aligned__(8)
    if decl.startswith("}"):  # the end of a type printed inline: "} bytes" or "}"
        return decl[1:].strip(), 0
    width = 0
    if re.search(r":\s*\d+$", decl):
        decl, _, bits = decl.rpartition(":")
        width = int(bits)
    pointer = re.search(r"\(\s*\*\s*(\w+)\s*\)", decl)  # int (*rx)(void *)
    if pointer:
        return pointer.group(1), width
    return re.sub(r"(\[\d*\])+$", "", decl.strip()).split()[-1].lstrip("*"), width


def pahole(elf: str, name: str) -> tuple[list[tuple[str, int, int, int]], int]:
    text = subprocess.run(
        ["pahole", "-C", name, elf], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    rows = []
    for line in text.splitlines():
        found = _PAHOLE_MEMBER.match(line)
        if found is None:
            continue
        member, width = _declared_name(found["decl"])
        at = int(found["at"]) * 8 + int(found["bit"] or 0)
        rows.append((member, at, int(found["size"]), width))
    size = re.search(r"/\* size: (\d+),", text)
    assert rows and size, text
    return rows, int(size.group(1))


@pytest.mark.skipif(shutil.which("pahole") is None, reason="pahole is not installed (apt dwarves)")
@pytest.mark.parametrize("name", STRUCTS)
def test_layouts_equal_paholes(types, demo_elf, name):
    rows, size = pahole(demo_elf, name)
    ours = types.struct(name)
    assert sorted(flatten(types, ours)) == sorted(rows)
    assert types.sizeof(ours.id) == size


def gdb_ptype(elf: str, name: str) -> list[tuple[str, int, int]]:
    """(name, bit offset, size) of each member ``ptype /o`` gives an offset to."""
    text = subprocess.run(
        ["gdb", "-nx", "-batch", "-ex", f"ptype /o struct {name}", elf],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    rows = []
    for line in text.splitlines():
        found = re.match(r"^/\*\s+(\d+)(?::\s*(\d+))?\s+\|\s+(\d+)\s\*/\s+(.*);$", line)
        if found:
            member, _ = _declared_name(found[4])
            rows.append((member, int(found[1]) * 8 + int(found[2] or 0), int(found[3])))
    total = re.findall(r"total size \(bytes\):\s+(\d+)", text)
    assert rows and total, text
    rows.append(("(size)", 0, int(total[-1])))
    return rows


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
@pytest.mark.parametrize("name", ["demo_pte_view", "mp_item", "tss", "interrupt_frame"])
def test_offsets_equal_gdbs_ptype(types, demo_elf, name):
    ours = types.struct(name)
    # gdb gives offsets to struct members only (a union's members share the union's)
    expected = gdb_ptype(demo_elf, name)
    flat = {(member, bit): size for member, bit, size, _width in flatten(types, ours)}
    for member, bit, size in expected[:-1]:
        assert flat.get((member, bit)) == size, (member, bit, size)
    assert expected[-1] == ("(size)", 0, types.sizeof(ours.id))


def test_fields_by_path_through_anonymous_members(types):
    frame = types.field("demo_pte_view", "frame")  # in the anonymous struct in the union
    assert (frame.offset, frame.bit_offset, frame.bitfield_size) == (9, 4, 40)
    nx = types.field("demo_pte_view", "nx")
    assert (nx.offset, nx.bit_offset, nx.bitfield_size) == (15, 7, 1)
    assert types.offset("demo_pte_view", "raw") == 8
    assert types.offset("demo_pte_view", "name[2]") == 19
    assert types.offset("mp_item", "v.bytes.len") == 16
    assert types.offset("tss", "ist[1]") == 44
    with pytest.raises(InspectorError, match=r"the DWARF of .* has no struct task_struct"):
        types.struct("task_struct")
    text = format_layout(types, types.struct("demo_pte_view"))
    assert "uint8_t level:3;" in text and "size: 24" in text
    assert "const struct agent_efi *efi;" in format_layout(types, types.struct("agent_ops"))


def fake_btf(origin: str) -> Btf:
    return Btf([BtfType(0, "unknown", "void")], origin=origin)


def test_the_kernels_btf_first_then_dwarf_then_one_line_why_neither():
    btf, dwarf = fake_btf("the kernel's BTF"), fake_btf("the DWARF of vmlinux")
    asked = []

    def no_btf() -> Btf:
        asked.append("btf")
        raise InspectorError("the kernel has no BTF (built without CONFIG_DEBUG_INFO_BTF)")

    def from_dwarf() -> Btf:
        asked.append("dwarf")
        return dwarf

    # BTF present: chosen, the DWARF not even read
    assert choose_types(lambda: btf, from_dwarf) is btf and asked == []
    # no BTF: the ELF's DWARF
    assert choose_types(no_btf, from_dwarf) is dwarf and asked == ["btf", "dwarf"]
    # neither: one line with both reasons
    with pytest.raises(InspectorError) as error:
        choose_types(no_btf, None)
    assert str(error.value) == (
        "no types: the kernel has no BTF (built without CONFIG_DEBUG_INFO_BTF); "
        "pass --elf with a vmlinux built with -g"
    )

    def no_dwarf() -> Btf:
        raise InspectorError("vmlinux has no DWARF (built without -g?)")

    with pytest.raises(InspectorError) as error:
        choose_types(no_btf, no_dwarf)
    assert "\n" not in str(error.value)
    assert str(error.value).endswith("; and vmlinux has no DWARF (built without -g?)")


BITS_C = """
struct bits {
    unsigned long long p:1, rw:1, frame:40, nx:1;
    unsigned char level:3, leaf:1;
    short s:9;
    int m[2][3];
    union { int a; struct { char b:4, c:4; }; };
};
struct bits v;
"""


@pytest.mark.skipif(
    shutil.which("pahole") is None or shutil.which("gcc") is None,
    reason="pahole (apt dwarves) or gcc is not installed",
)
@pytest.mark.parametrize("version", [2, 3, 4, 5])
def test_bitfields_of_every_dwarf_version_equal_paholes(tmp_path, version):
    """gcc writes DW_AT_bit_offset (from the storage unit's top) up to DWARF 4 and
    DW_AT_data_bit_offset in DWARF 5: both must land on pahole's bits."""
    from elftools.elf.elffile import ELFFile

    source = tmp_path / "bits.c"
    source.write_text(BITS_C)
    obj = tmp_path / "bits.o"
    subprocess.run(
        ["gcc", "-c", "-g", f"-gdwarf-{version}", "-O0", str(source), "-o", str(obj)],
        check=True,
        timeout=60,
    )
    with open(obj, "rb") as stream:
        btf = decode_dwarf_types(ELFFile(stream).get_dwarf_info())  # a .o: relocated
    rows, size = pahole(str(obj), "bits")
    assert sorted(flatten(btf, btf.struct("bits"))) == sorted(rows)
    assert btf.sizeof(btf.struct("bits").id) == size
    assert btf.declaration(btf.field("bits", "m").type, "m") == "int m[2][3]"
    assert btf.offset("bits", "m[1]") == 8 + 12
    frame = btf.field("bits", "frame")
    assert (frame.offset, frame.bit_offset, frame.bitfield_size) == (0, 2, 40)
