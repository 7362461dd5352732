"""Our CFI parser and interpreter against binutils' readelf --debug-dump=frames-interp,
row for row, on the demo kernel and on a small ELF with both .eh_frame and .debug_frame."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kinspect.inspector.dwarf import DWARF_REGISTERS, CfiRow, execute_cfi
from kinspect.inspector.symbols import SymbolTable

pytestmark = pytest.mark.integration

_NUMBERS = {name: number for number, name in DWARF_REGISTERS.items()} | {"ra": 16}
_FDE = re.compile(
    r"^[0-9a-f]+ [0-9a-f]+ [0-9a-f]+ FDE cie=[0-9a-f]+ pc=([0-9a-f]+)\.\.([0-9a-f]+)$"
)


def readelf_tables(elf: str) -> dict[tuple[str, int], list[tuple[int, str, dict[int, str]]]]:
    """(section, FDE start) -> rows (location, CFA text, {register: rule text})."""
    text = subprocess.run(
        ["readelf", "--debug-dump=frames-interp", elf], capture_output=True, text=True, check=True
    ).stdout
    tables: dict[tuple[str, int], list] = {}
    section = ""
    current = None
    columns: list[str] = []
    for line in text.splitlines():
        if line.startswith("Contents of the "):
            section = line.split()[3]
            continue
        match = _FDE.match(line)
        if match:
            current = tables.setdefault((section, int(match.group(1), 16)), [])
            continue
        stripped = line.split()
        if not stripped:
            if current is not None and columns:
                current = None
            continue
        if stripped[0] == "LOC":
            columns = stripped[2:]
            continue
        if current is not None and re.fullmatch(r"[0-9a-f]{8,16}", stripped[0]):
            rules = {
                _NUMBERS[name]: value for name, value in zip(columns, stripped[2:], strict=True)
            }
            current.append((int(stripped[0], 16), stripped[1], rules))
    return tables


def render(row: CfiRow, registers: list[int]) -> tuple[str, dict[int, str]]:
    """Our row in readelf's notation."""
    if row.cfa_expression is not None:
        cfa = "exp"
    else:
        cfa = f"{DWARF_REGISTERS[row.cfa_register]}{row.cfa_offset:+d}"
    rules = {}
    for register in registers:
        rule = row.rules.get(register)
        if rule is None or rule.kind == "undefined":
            rules[register] = "u"
        elif rule.kind == "same_value":
            rules[register] = "s"
        elif rule.kind == "offset":
            rules[register] = f"c{rule.value:+d}"
        elif rule.kind == "val_offset":
            rules[register] = f"v{rule.value:+d}"
        elif rule.kind == "register":
            rules[register] = DWARF_REGISTERS[rule.value]
        else:
            rules[register] = "exp" if rule.kind == "expression" else "vexp"
    return cfa, rules


def compare(elf: str) -> dict[str, int]:
    """Every row readelf prints equals ours at that location; count rows per section."""
    table = SymbolTable.from_elf(elf)
    fdes = {(f.section, f.start): f for f in table._fdes}
    checked: dict[str, int] = {}
    tables = readelf_tables(elf)
    assert tables, "readelf printed no FDE"
    for (section, start), rows in tables.items():
        fde = fdes[(section, start)]
        for location, cfa, rules in rows:
            assert fde.start <= location < fde.end
            ours = render(execute_cfi(fde, location), list(rules))
            assert ours == (cfa, rules), (section, hex(location))
            checked[section] = checked.get(section, 0) + 1
    assert {s for s, _ in tables} == {f.section for f in fdes.values()}
    return checked


def test_demo_kernel_eh_frame_rows_equal_readelfs(demo_kernel):
    checked = compare(demo_kernel)
    assert checked[".eh_frame"] > 100


C_SOURCE = """
int g;
__attribute__((noinline)) int leaf(int x) { return x * 3 + g; }
__attribute__((noinline)) int mid(int x)
{
    int a = leaf(x + 1), b = leaf(a), c = leaf(b);
    return a * b + c + leaf(a + b + c) * x;
}
int _start_c(void) { return mid(2); }
"""

ASM_SOURCE = """
    .text
    .globl entry
    .type entry, @function
entry:
    .cfi_startproc
    pushq %rbp
    .cfi_def_cfa_offset 16
    .cfi_offset rbp, -16
    movq %rsp, %rbp
    .cfi_def_cfa_register rbp
    pushq %rbx
    .cfi_offset rbx, -24
    call _start_c
    popq %rbx
    .cfi_restore rbx
    leave
    .cfi_def_cfa rsp, 8
    ret
    .cfi_endproc
    .size entry, . - entry
"""


def test_debug_frame_and_eh_frame_in_one_elf(tmp_path: Path):
    """C built without unwind tables puts its CFI in .debug_frame; the assembly's CFI
    still lands in .eh_frame: both are read, merged and match readelf."""
    for tool in ("gcc", "ld"):
        assert shutil.which(tool), f"{tool} is missing: run `make test` (it installs it)"
    (tmp_path / "c.c").write_text(C_SOURCE)
    (tmp_path / "a.S").write_text(ASM_SOURCE)
    flags = ["-O2", "-g", "-fno-pic", "-fno-omit-frame-pointer", "-fno-asynchronous-unwind-tables"]
    subprocess.run(["gcc", *flags, "-c", "c.c", "-o", "c.o"], cwd=tmp_path, check=True)
    subprocess.run(["gcc", "-c", "a.S", "-o", "a.o"], cwd=tmp_path, check=True)
    subprocess.run(
        ["ld", "-static", "-nostdlib", "-e", "entry", "-o", "t.elf", "a.o", "c.o"],
        cwd=tmp_path,
        check=True,
    )
    elf = str(tmp_path / "t.elf")
    checked = compare(elf)
    assert checked.get(".eh_frame", 0) >= 4 and checked.get(".debug_frame", 0) >= 1
    table = SymbolTable.from_elf(elf)
    assert table.cfi.find(table.lookup("entry")).section == ".eh_frame"
    assert table.cfi.find(table.lookup("mid")).section == ".debug_frame"
    assert table.addr2sym(table.lookup("mid")).line.file.endswith("c.c")
