"""DWARF call-frame information: ``.eh_frame`` and ``.debug_frame``, parsed and run.

Pure: section bytes in, records out. :func:`parse_cfi` reads the CIEs and
FDEs of either section (the formats differ in the CIE id, the meaning of
the FDE's CIE pointer and the encoding of addresses); :func:`execute_cfi`
runs a CIE's initial instructions and an FDE's instructions up to a PC and
gives the row of the CFI table that holds there (DWARF 5, 6.4.1).
:class:`CfiTable` merges both sections, because assembly CFI lands in
``.eh_frame`` even where C code uses ``.debug_frame``.

Registers are DWARF numbers (the x86_64 psABI, Figure 3.36): 0 rax, 1 rdx,
2 rcx, 3 rbx, 4 rsi, 5 rdi, 6 rbp, 7 rsp, 8-15 r8-r15, 16 the return address.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kinspect.inspector.errors import DecodeError

__all__ = [
    "DWARF_REGISTERS",
    "Cie",
    "CfiRow",
    "CfiTable",
    "Fde",
    "Rule",
    "execute_cfi",
    "parse_cfi",
]

#: DWARF register numbers of x86_64 (psABI) by name.
DWARF_REGISTERS: dict[int, str] = {
    0: "rax",
    1: "rdx",
    2: "rcx",
    3: "rbx",
    4: "rsi",
    5: "rdi",
    6: "rbp",
    7: "rsp",
    8: "r8",
    9: "r9",
    10: "r10",
    11: "r11",
    12: "r12",
    13: "r13",
    14: "r14",
    15: "r15",
    16: "rip",
}


@dataclass(frozen=True, slots=True)
class Cie:
    """A Common Information Entry: what every FDE that points at it shares."""

    offset: int
    version: int
    augmentation: str
    code_alignment: int
    data_alignment: int
    return_register: int
    fde_encoding: int
    signal_frame: bool
    initial_instructions: bytes


@dataclass(frozen=True, slots=True)
class Fde:
    """A Frame Description Entry: the CFI program for ``[start, end)``."""

    offset: int
    cie: Cie
    start: int
    end: int
    instructions: bytes
    section: str  # ".eh_frame" or ".debug_frame"


@dataclass(frozen=True, slots=True)
class Rule:
    """How to recover one register of the caller (DWARF 5, 6.4.1).

    ``kind`` is ``undefined``, ``same_value``, ``offset`` (saved at
    CFA+``value``), ``val_offset`` (is CFA+``value``), ``register`` (in
    register ``value``), ``expression`` or ``val_expression`` (``expression``
    holds the DWARF expression, which kinspect does not evaluate).
    """

    kind: str
    value: int = 0
    expression: bytes = b""

    def __str__(self) -> str:
        if self.kind in ("offset", "val_offset"):
            return f"{self.kind}(cfa{self.value:+d})"
        if self.kind == "register":
            return f"register({DWARF_REGISTERS.get(self.value, self.value)})"
        return self.kind


@dataclass(frozen=True, slots=True)
class CfiRow:
    """The CFI table's row for one PC: how to find the CFA and each saved register.

    The CFA is ``cfa_register + cfa_offset`` unless ``cfa_expression`` is set.
    """

    fde: Fde
    location: int
    cfa_register: int
    cfa_offset: int
    cfa_expression: bytes | None
    rules: Mapping[int, Rule]

    @property
    def signal_frame(self) -> bool:
        """The CIE says ``S``: this frame was entered by an interrupt or exception."""
        return self.fde.cie.signal_frame

    @property
    def return_register(self) -> int:
        return self.fde.cie.return_register

    def rule(self, register: int) -> Rule:
        """The rule for ``register``; registers without one keep their value (GCC's convention)."""
        return self.rules.get(register, Rule("same_value"))

    def __str__(self) -> str:
        name = DWARF_REGISTERS.get(self.cfa_register, str(self.cfa_register))
        cfa = "expression" if self.cfa_expression is not None else f"{name}{self.cfa_offset:+d}"
        rules = " ".join(
            f"{DWARF_REGISTERS.get(r, r)}={rule}" for r, rule in sorted(self.rules.items())
        )
        return f"{self.location:#x}: cfa={cfa} {rules}".rstrip()


# -- reading -------------------------------------------------------------------------------


class _Reader:
    def __init__(self, data: bytes, offset: int = 0) -> None:
        self.data = data
        self.pos = offset

    def need(self, n: int) -> None:
        if self.pos + n > len(self.data):
            raise DecodeError(self.pos, f"CFI runs past the end of its data ({n} bytes wanted)")

    def u(self, n: int) -> int:
        self.need(n)
        value = int.from_bytes(self.data[self.pos : self.pos + n], "little")
        self.pos += n
        return value

    def s(self, n: int) -> int:
        value = self.u(n)
        return value - (1 << (8 * n)) if value >> (8 * n - 1) else value

    def uleb(self) -> int:
        result = shift = 0
        while True:
            byte = self.u(1)
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    def sleb(self) -> int:
        result = shift = 0
        while True:
            byte = self.u(1)
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                if byte & 0x40:
                    result -= 1 << shift
                return result

    def cstring(self) -> bytes:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise DecodeError(self.pos, "unterminated string in CFI")
        value = self.data[self.pos : end]
        self.pos = end + 1
        return value

    def block(self, n: int) -> bytes:
        self.need(n)
        value = self.data[self.pos : self.pos + n]
        self.pos += n
        return value

    def pointer(self, encoding: int, section_address: int) -> int:
        """A pointer in a DW_EH_PE_* encoding (LSB 3.0, 10.5), relative to the section."""
        if encoding == 0xFF:
            return 0
        here = section_address + self.pos
        fmt = encoding & 0x0F
        if fmt == 0x00:
            value = self.u(8)
        elif fmt == 0x01:
            value = self.uleb()
        elif fmt in (0x02, 0x03, 0x04):
            value = self.u({0x02: 2, 0x03: 4, 0x04: 8}[fmt])
        elif fmt == 0x09:
            value = self.sleb()
        elif fmt in (0x0A, 0x0B, 0x0C):
            value = self.s({0x0A: 2, 0x0B: 4, 0x0C: 8}[fmt])
        else:
            raise DecodeError(self.pos, f"unknown pointer encoding {encoding:#x}")
        application = encoding & 0x70
        if application == 0x10:  # pcrel
            value += here
        elif application not in (0x00,):
            raise DecodeError(self.pos, f"unsupported pointer application {application:#x}")
        return value & ((1 << 64) - 1)


def parse_cfi(data: bytes, section_address: int = 0, *, eh_frame: bool = True) -> list[Fde]:
    """Every FDE of a ``.eh_frame`` (``eh_frame=True``) or ``.debug_frame`` section.

    ``section_address`` is the section's ``sh_addr``, the base of
    PC-relative pointers in ``.eh_frame``. Raises :class:`DecodeError` on
    malformed entries.
    """
    section = ".eh_frame" if eh_frame else ".debug_frame"
    cies: dict[int, Cie] = {}
    fdes: list[Fde] = []
    r = _Reader(data)
    while r.pos + 4 <= len(data):
        start = r.pos
        length = r.u(4)
        if length == 0:
            if eh_frame:
                break  # the terminator
            continue
        wide = length == 0xFFFFFFFF
        if wide:
            length = r.u(8)
        body = r.pos
        end = body + length
        if end > len(data):
            raise DecodeError(start, f"{section} entry of {length} bytes runs past the section")
        id_size = 8 if wide else 4
        id_pos = r.pos
        cie_id = r.u(id_size)
        is_cie = cie_id == 0 if eh_frame else cie_id == (1 << (8 * id_size)) - 1
        if is_cie:
            cies[start] = _parse_cie(r, start, end, eh_frame)
        else:
            cie_offset = id_pos - cie_id if eh_frame else cie_id
            cie = cies.get(cie_offset)
            if cie is None:
                sub = _Reader(data, cie_offset)
                cie = _parse_cie_at(sub, cie_offset, eh_frame)
                cies[cie_offset] = cie
            encoding = cie.fde_encoding if eh_frame else 0x00
            pc_begin = r.pointer(encoding, section_address)
            pc_range = r.pointer(encoding & 0x0F, section_address)
            if "z" in cie.augmentation:
                r.pos += r.uleb()
            fdes.append(Fde(start, cie, pc_begin, pc_begin + pc_range, data[r.pos : end], section))
        r.pos = end
    return fdes


def _parse_cie_at(r: _Reader, offset: int, eh_frame: bool) -> Cie:
    length = r.u(4)
    wide = length == 0xFFFFFFFF
    if wide:
        length = r.u(8)
    end = r.pos + length
    r.u(8 if wide else 4)
    return _parse_cie(r, offset, end, eh_frame)


def _parse_cie(r: _Reader, offset: int, end: int, eh_frame: bool) -> Cie:
    version = r.u(1)
    augmentation = r.cstring().decode("ascii", "replace")
    if version >= 4 and not eh_frame:
        r.u(1)  # address_size
        r.u(1)  # segment_selector_size
    code_alignment = r.uleb()
    data_alignment = r.sleb()
    return_register = r.u(1) if version == 1 else r.uleb()
    fde_encoding = 0x00
    signal = False
    if augmentation.startswith("z"):
        aug_length = r.uleb()
        aug_end = r.pos + aug_length
        for letter in augmentation[1:]:
            if letter == "R":
                fde_encoding = r.u(1)
            elif letter == "P":
                personality_encoding = r.u(1)
                r.pointer(personality_encoding & 0x7F, 0)
            elif letter == "L":
                r.u(1)
            elif letter == "S":
                signal = True
            else:
                break  # unknown letter: the length lets us skip the rest
        r.pos = aug_end
    elif "S" in augmentation:
        signal = True
    return Cie(
        offset,
        version,
        augmentation,
        code_alignment,
        data_alignment,
        return_register,
        fde_encoding,
        signal,
        r.data[r.pos : end],
    )


# -- running ------------------------------------------------------------------------------------


@dataclass
class _State:
    cfa_register: int = 7
    cfa_offset: int = 8
    cfa_expression: bytes | None = None
    rules: dict[int, Rule] = field(default_factory=dict)

    def copy(self) -> _State:
        return _State(self.cfa_register, self.cfa_offset, self.cfa_expression, dict(self.rules))


def execute_cfi(fde: Fde, pc: int) -> CfiRow:
    """The CFI row that holds at ``pc`` (which must lie in ``[fde.start, fde.end)``).

    Runs the CIE's initial instructions, then the FDE's, stopping at the
    first advance past ``pc``. Raises :class:`DecodeError` on an unknown
    opcode or truncated instructions.
    """
    cie = fde.cie
    state = _State()
    initial: dict[int, Rule] = {}
    location = fde.start
    _run(cie.initial_instructions, cie, state, initial, None, pc, [fde.start])
    initial = dict(state.rules)
    loc = [location]
    _run(fde.instructions, cie, state, initial, fde, pc, loc)
    return CfiRow(
        fde, loc[0], state.cfa_register, state.cfa_offset, state.cfa_expression, dict(state.rules)
    )


def _run(
    program: bytes,
    cie: Cie,
    state: _State,
    initial: dict[int, Rule],
    fde: Fde | None,
    pc: int,
    loc: list[int],
) -> None:
    r = _Reader(program)
    stack: list[_State] = []
    da, ca = cie.data_alignment, cie.code_alignment

    def advance(delta: int) -> bool:
        new = loc[0] + delta * ca
        if new > pc:
            return False
        loc[0] = new
        return True

    def restore(reg: int) -> None:
        if reg in initial:
            state.rules[reg] = initial[reg]
        else:
            state.rules.pop(reg, None)

    while r.pos < len(program):
        opcode = r.u(1)
        high, low = opcode & 0xC0, opcode & 0x3F
        if high == 0x40:
            if not advance(low):
                return
        elif high == 0x80:
            state.rules[low] = Rule("offset", r.uleb() * da)
        elif high == 0xC0:
            restore(low)
        elif opcode == 0x00:
            pass
        elif opcode == 0x01:
            new = r.pointer(cie.fde_encoding & 0x0F, 0)
            if new > pc:
                return
            loc[0] = new
        elif opcode in (0x02, 0x03, 0x04):
            if not advance(r.u({0x02: 1, 0x03: 2, 0x04: 4}[opcode])):
                return
        elif opcode == 0x05:
            reg = r.uleb()
            state.rules[reg] = Rule("offset", r.uleb() * da)
        elif opcode == 0x06:
            restore(r.uleb())
        elif opcode == 0x07:
            state.rules[r.uleb()] = Rule("undefined")
        elif opcode == 0x08:
            state.rules[r.uleb()] = Rule("same_value")
        elif opcode == 0x09:
            reg = r.uleb()
            state.rules[reg] = Rule("register", r.uleb())
        elif opcode == 0x0A:
            stack.append(state.copy())
        elif opcode == 0x0B:
            if not stack:
                raise DecodeError(r.pos - 1, "DW_CFA_restore_state with nothing remembered")
            saved = stack.pop()
            # The remembered state holds the CFA rule too (DWARF 5, 6.4.2.4; GCC, readelf).
            state.cfa_register, state.cfa_offset = saved.cfa_register, saved.cfa_offset
            state.cfa_expression, state.rules = saved.cfa_expression, saved.rules
        elif opcode == 0x0C:
            state.cfa_register = r.uleb()
            state.cfa_offset = r.uleb()
            state.cfa_expression = None
        elif opcode == 0x0D:
            state.cfa_register = r.uleb()
            state.cfa_expression = None
        elif opcode == 0x0E:
            state.cfa_offset = r.uleb()
        elif opcode == 0x0F:
            state.cfa_expression = r.block(r.uleb())
        elif opcode == 0x10:
            reg = r.uleb()
            state.rules[reg] = Rule("expression", 0, r.block(r.uleb()))
        elif opcode == 0x11:
            reg = r.uleb()
            state.rules[reg] = Rule("offset", r.sleb() * da)
        elif opcode == 0x12:
            state.cfa_register = r.uleb()
            state.cfa_offset = r.sleb() * da
            state.cfa_expression = None
        elif opcode == 0x13:
            state.cfa_offset = r.sleb() * da
        elif opcode == 0x14:
            reg = r.uleb()
            state.rules[reg] = Rule("val_offset", r.uleb() * da)
        elif opcode == 0x15:
            reg = r.uleb()
            state.rules[reg] = Rule("val_offset", r.sleb() * da)
        elif opcode == 0x16:
            reg = r.uleb()
            state.rules[reg] = Rule("val_expression", 0, r.block(r.uleb()))
        elif opcode == 0x2E:
            r.uleb()  # DW_CFA_GNU_args_size
        elif opcode == 0x2F:
            reg = r.uleb()
            state.rules[reg] = Rule("offset", -r.uleb() * da)
        else:
            raise DecodeError(r.pos - 1, f"unknown CFA opcode {opcode:#04x}")


class CfiTable:
    """The FDEs of ``.eh_frame`` and ``.debug_frame`` merged, looked up by PC.

    Where both describe a PC, ``.eh_frame`` wins (it is what the code was
    built to unwind with at run time); ``slide`` shifts every range.
    """

    def __init__(self, fdes: Iterable[Fde], *, slide: int = 0) -> None:
        # Searched from the back: among FDEs at one start, .eh_frame's comes last.
        ordered = sorted(fdes, key=lambda f: (f.start, f.section == ".eh_frame"))
        self.fdes = [f for f in ordered if f.end > f.start]
        self._starts = [f.start for f in self.fdes]
        self.slide = slide

    def __len__(self) -> int:
        return len(self.fdes)

    def find(self, pc: int) -> Fde | None:
        """The FDE covering ``pc`` (a run-time address), or None."""
        unslid = pc - self.slide
        index = bisect.bisect_right(self._starts, unslid) - 1
        # FDEs may nest or overlap (one per section); look back a little.
        for fde in self.fdes[max(0, index - 4) : index + 1][::-1]:
            if fde.start <= unslid < fde.end:
                return fde
        return None

    def row(self, pc: int) -> CfiRow | None:
        """The CFI row for run-time ``pc``, or None when no FDE covers it."""
        fde = self.find(pc)
        if fde is None:
            return None
        return execute_cfi(fde, pc - self.slide)

    def to_dict(self) -> dict[str, Any]:
        return {"fdes": len(self.fdes), "slide": self.slide}
