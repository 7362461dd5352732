"""The disassembler against binutils, and its records on literal bytes.

The oracle is ``objdump -d -M intel`` of the demo kernel (binutils, not our
code): every function's instructions must start at objdump's addresses with
objdump's lengths, and read the same once both spellings are normalized. The
normalization is written out below, one rule per difference of spelling
(never of meaning): spacing, numbers compared by value, objdump's ``*1`` and
``+0x0`` in addresses it prints from the encoding, its comments, and the
handful of instructions the two tools name differently.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from kinspect.inspector.disasm import Disassembly, decode_around, decode_instructions
from kinspect.inspector.errors import FaultError
from kinspect.inspector.readable import read_readable
from kinspect.inspector.telescope import decode_telescope, read_telescope


@pytest.fixture(scope="module")
def demo_elf() -> str:
    from kinspect.inspector import api

    if not api.DEMO_KERNEL.is_file():
        pytest.skip("the demo kernel is not built (make kernel)")
    if shutil.which("objdump") is None:
        pytest.skip("binutils' objdump is not installed")
    return str(api.DEMO_KERNEL)


def _objdump(elf: str) -> dict[int, tuple[int, str]]:
    """address -> (length, text) for every instruction of .text, as objdump prints it."""
    out = subprocess.run(
        ["objdump", "-d", "-M", "intel", "-w", "-j", ".text", elf],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = {}
    for line in out.splitlines():
        m = re.match(r"^\s*([0-9a-f]+):\t((?:[0-9a-f]{2} )+)\s*\t(.*)$", line)
        if m:
            found[int(m.group(1), 16)] = (len(m.group(2).split()), m.group(3))
    return found


def _functions(elf: str) -> list[tuple[str, int, int]]:
    out = subprocess.run(
        ["nm", "-S", "--defined-only", elf], capture_output=True, text=True, check=True
    ).stdout
    return [
        (p[3], int(p[0], 16), int(p[1], 16))
        for p in (line.split() for line in out.splitlines())
        if len(p) == 4 and p[2] in "tT" and int(p[1], 16) > 0
    ]


_NUMBER = re.compile(r"(?<![a-z0-9_.])(0x[0-9a-f]+|[0-9a-f]{16}|\d+)(?![0-9a-z_])")
_SIZES = {"byte": "b", "word": "w", "dword": "d", "qword": "q"}


def normalize(text: str) -> str:
    """One spelling for both tools (each rule: the same encoding, spelled two ways)."""
    text = re.sub(r"<[^>]*>", "", text.split("#")[0]).lower()  # objdump's <sym> and # comment
    text = " ".join(text.split()).replace(", ", ",").replace(" + ", "+").replace(" - ", "-")
    # numbers by value: 0x10, 16 and objdump's bare branch targets (16 hex digits)
    text = _NUMBER.sub(
        lambda m: hex(int(m[1], 16) if m[1].startswith("0x") or len(m[1]) == 16 else int(m[1])),
        text,
    )
    text = re.sub(r"\*0x1(?=[]+-])", "", text).replace("+0x0]", "]")  # SIB scale 1, disp8 0
    text = re.sub(r"\bds:(0x[0-9a-f]+)", r"[\1]", text)  # moffs: objdump's ds:ADDR is [ADDR]
    text = re.sub(r"^movabs(.*?)\b\w+ ptr \[", r"movabs\1[", text)  # moffs: the register sizes it
    text = re.sub(r"^rex\.\w+ ", "", text)  # a REX prefix that changes nothing, named
    text = re.sub(r"^(data16 |cs )*nop\b.*", "nop", text)  # padding: 0f 1f / 66 90 in any form
    text = re.sub(r"^\.byte 0x[0-9a-f]+$", "(bad)", text)  # no instruction: capstone's .byte
    text = {"xchg ax,ax": "nop", "pushf": "pushfq", "popf": "popfq"}.get(text, text)
    text = re.sub(  # rep stos BYTE PTR es:[rdi],al is rep stosb byte ptr [rdi],al
        r"\b(stos|movs|lods|scas|cmps) (\w+,)?(byte|word|dword|qword) ptr (?:es|ds):",
        lambda m: f"{m[1]}{_SIZES[m[3]]} {m[2] or ''}{m[3]} ptr ",
        text,
    )
    return text.replace(" ", "")


def test_every_function_of_the_demo_kernel_decodes_as_objdump_does(demo_elf):
    from elftools.elf.elffile import ELFFile

    with open(demo_elf, "rb") as stream:
        text = ELFFile(stream).get_section_by_name(".text")
        base, data = text["sh_addr"], text.data()
    truth = _objdump(demo_elf)
    functions = [f for f in _functions(demo_elf) if base <= f[1] < base + len(data)]
    assert len(functions) > 100
    names = {name for name, _, _ in functions}
    assert {"demo_level1", "demo_level2", "demo_level3", "demo_work", "kernel_main"} <= names
    checked = 0
    for name, start, size in functions:
        got = decode_instructions(data[start - base : start - base + size], start)
        assert got[-1].end == start + size, name  # decoded whole, to the symbol's end
        for insn in got:
            length, spelled = truth[insn.address]  # KeyError: an address objdump never starts at
            assert insn.size == length, (name, hex(insn.address))
            assert normalize(f"{insn.mnemonic} {insn.operands}") == normalize(spelled), (
                name,
                hex(insn.address),
                spelled,
                insn.mnemonic,
                insn.operands,
            )
            checked += 1
    assert checked > 5000


def test_call_and_jump_targets_are_objdumps_and_named_by_the_symbols(demo_elf):
    from elftools.elf.elffile import ELFFile

    from kinspect.inspector.symbols import SymbolTable

    with open(demo_elf, "rb") as stream:
        text = ELFFile(stream).get_section_by_name(".text")
        base, data = text["sh_addr"], text.data()
    symbols = SymbolTable.from_elf(demo_elf)
    truth = _objdump(demo_elf)
    for name in ("demo_level1", "demo_level2", "demo_work", "kernel_main"):
        start = symbols.lookup(name)
        size = next(s for n, a, s in _functions(demo_elf) if n == name)
        got = decode_instructions(
            data[start - base : start - base + size], start, symbolize=symbols.format_address
        )
        targets = [i for i in got if i.target is not None]
        assert targets, name
        for insn in targets:
            m = re.search(r"\b([0-9a-f]{16}) <([^>]+)>", truth[insn.address][1])
            assert m is not None, truth[insn.address]
            assert insn.target == int(m[1], 16)
            assert insn.target_name == m[2]  # objdump's name+0xoff, the same spelling
        for insn in got:
            if "rip" in insn.operands:
                m = re.search(r"# ([0-9a-f]{16})", truth[insn.address][1])
                assert m is not None and insn.reference == int(m[1], 16)


# -- records on literal bytes ----------------------------------------------------------------

CODE = 0xFFFFFFFF81000000
# push rbp; mov rbp, rsp; call +0x10; mov rax, [rip+0x100]; jne -0x10; ret; ud2
BYTES = bytes.fromhex("55 4889e5 e810000000 488b0500010000 75f0 c3 0f0b".replace(" ", ""))


def names(address):
    return {CODE + 0x19: "callee", CODE + 0x110: "counter"}.get(address)


def test_kinds_targets_and_references_on_literal_bytes():
    got = decode_instructions(BYTES, CODE, symbolize=names)
    assert [(i.mnemonic, i.size) for i in got] == [
        ("push", 1),
        ("mov", 3),
        ("call", 5),
        ("mov", 7),
        ("jne", 2),
        ("ret", 1),
        ("ud2", 2),
    ]
    assert [i.kind for i in got] == ["", "", "call", "", "branch", "ret", ""]
    call, load, jne = got[2], got[3], got[4]
    assert (call.target, call.target_name) == (CODE + 4 + 5 + 0x10, "callee")
    assert call.text == "call 0xffffffff81000019 <callee>"
    assert (load.reference, load.reference_name) == (CODE + 9 + 7 + 0x100, "counter")
    assert load.text.endswith("# 0xffffffff81000110 <counter>")
    assert jne.target == CODE + 0x10 + 2 - 0x10 and jne.target_name is None
    assert got[0].to_dict()["bytes"] == "55"


def test_bytes_that_do_not_decode_are_one_byte_each_and_a_cut_instruction_is_left_out():
    got = decode_instructions(bytes([0x06, 0x90]), CODE)  # push es: invalid in 64-bit mode
    assert [(i.mnemonic, i.kind) for i in got] == [(".byte", "bad"), ("nop", "")]
    assert decode_instructions(bytes.fromhex("90488b05"), CODE) == decode_instructions(
        b"\x90", CODE
    )


def test_decoding_backwards_lands_on_the_address_with_or_without_a_function_start():
    at = CODE + 9  # the RIP-relative load
    got, synced = decode_around(BYTES, CODE, at, before=3, after=2, anchor=CODE)
    assert synced and [i.address for i in got] == [CODE, CODE + 1, CODE + 4, at, CODE + 0x10]
    guessed, synced = decode_around(BYTES, CODE, at, before=3, after=2)
    assert synced and guessed == got
    listing = Disassembly(at, got, tuple(names(i.address) for i in got))
    assert listing.index == 3
    assert [line[:2] for line in listing.lines()] == ["  ", "  ", "  ", "=>", "  "]
    with pytest.raises(ValueError):
        decode_around(BYTES, CODE, CODE + 0x100, before=1, after=1)


def test_an_unreadable_listing_says_where_in_one_line():
    listing = Disassembly(CODE, (), (), CODE, "not mapped")
    assert str(listing) == f"{CODE:#x}: cannot read the code here: not mapped"
    cut = Disassembly(CODE, decode_instructions(b"\x90", CODE), (None,), CODE + 0x1000, "x")
    assert cut.lines()[-1].endswith(f"{CODE + 0x1000:#018x}:  not readable: x")


# -- reading what can be read, the telescope ---------------------------------------------------

STACK = 0xFFFFC90000003F80  # 0x80 bytes below the end of its mapped page


def fake_memory(pages: dict[int, bytes]):
    def read(address, size):
        out = bytearray()
        while len(out) < size:
            at = address + len(out)
            page = pages.get(at & ~0xFFF)
            if page is None:
                raise FaultError(at + 1, "cannot read virtual memory (not mapped)")  # gdb's +1
            chunk = min(size - len(out), 0x1000 - (at & 0xFFF))
            out += page[at & 0xFFF : (at & 0xFFF) + chunk]
        return bytes(out)

    return read


def test_a_window_that_runs_into_an_unmapped_page_keeps_what_was_read():
    page = bytes(range(256)) * 16
    read = fake_memory({STACK & ~0xFFF: page})
    got = read_readable(read, STACK, 256)
    assert got.data == page[0xF80:] and len(got.data) == 0x80
    assert got.unreadable == (STACK & ~0xFFF) + 0x1000  # the page's start, not gdb's +1
    assert got.describe_unreadable() == (
        "0xffffc90000004000: not readable (cannot read virtual memory (not mapped))"
    )
    whole = read_readable(read, STACK, 0x80)
    assert whole.complete and whole.data == page[0xF80:]
    nothing = read_readable(read, 0x1000, 16)
    assert nothing.data == b"" and nothing.unreadable == 0x1000


def test_the_telescope_names_follows_and_places_each_slot():
    text = 0xFFFFFFFF81000000
    heap = 0xFFFF888000001000
    slots = [
        text + 0x40,  # a return address: named, not followed
        heap,  # a pointer to a pointer
        heap + 0x10,  # a pointer to a string
        0x1234,  # a small number
        STACK + 0x20,  # a pointer into the stack itself
    ]
    page = bytearray(0x1000)
    page[0xF80 : 0xF80 + 40] = b"".join(v.to_bytes(8, "little") for v in slots)
    heap_page = bytearray(0x1000)
    heap_page[0:8] = (text + 0x80).to_bytes(8, "little")
    heap_page[0x10:0x16] = b"hello\0"
    read = fake_memory({STACK & ~0xFFF: bytes(page), heap & ~0xFFF: bytes(heap_page)})

    def mapping(address):
        if text <= address < text + 0x200000:
            return "kernel text ro x"
        if heap & ~0xFFF <= address < (heap & ~0xFFF) + 0x1000:
            return "direct map RW NX"
        if STACK & ~0xFFF <= address < (STACK & ~0xFFF) + 0x1000:
            return "stack RW NX"
        return None

    def symbolize(address):
        return {text + 0x40: "caller+0x40", text + 0x80: "handler"}.get(address)

    found = read_telescope(
        read,
        STACK,
        32,
        symbolize=symbolize,
        mapping=mapping,
        executable=lambda a: mapping(a) == "kernel text ro x",
        registers={"rsp": STACK, "rbp": STACK + 0x20},
    )
    assert len(found.slots) == 16  # 0x80 bytes readable, then the unmapped page
    assert found.unreadable == (STACK & ~0xFFF) + 0x1000
    first, pointer, string, number, inside = found.slots[:5]
    assert first.registers == ("rsp",) and first.symbol == "caller+0x40"
    assert first.points_to is None and first.mapping == "kernel text ro x"
    assert (pointer.points_to, pointer.points_to_symbol) == (text + 0x80, "handler")
    assert string.string == "hello" and string.points_to is None
    assert number.mapping is None and number.symbol is None and number.points_to is None
    assert inside.mapping == "stack RW NX" and inside.points_to == STACK + 0x20  # itself
    assert found.slots[4].registers == ("rbp",)
    assert str(first).startswith(
        f"+0x000  {STACK:#018x} rsp     {text + 0x40:#018x}  <caller+0x40>"
    )
    assert (
        found.lines()[-1]
        == "0xffffc90000004000: not readable (cannot read virtual memory (not mapped))"
    )
    assert found.to_dict()["slots"][2]["string"] == "hello"


def test_decode_telescope_takes_whole_slots_only():
    found = decode_telescope(bytes(20), STACK)
    assert [s.offset for s in found.slots] == [0, 8]
