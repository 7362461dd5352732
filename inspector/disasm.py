"""x86-64 instructions from bytes: capstone decodes, we resolve and name the targets.

Pure: bytes and the address they were read from in, frozen records out (no
I/O). Capstone is the decoder (a maintained x86 disassembler, the one pwndbg,
gef and radare2 use): decoding x86 by hand is a project of its own. What we
add is the kernel's view: direct branch and call targets and RIP-relative
operands resolved to addresses and named by a ``symbolize`` callable (the
session's: the ELF's symbols, or a Linux kernel's kallsyms), as ``objdump -d``
names them (``call 0xffffffff801034a0 <demo_level3>``).

Going backwards is the hard part of x86 (instructions have no fixed length):
:func:`decode_around` starts at a known instruction boundary (a function's
start) when it can, else it tries starts further and further back until one
decodes into the address asked for, as gdb and pwndbg do.

The syntax is Intel's, as pwndbg and gef show it (``objdump -d -M intel``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InspectorError

__all__ = [
    "Disassembly",
    "Instruction",
    "MAX_INSTRUCTION",
    "decode_around",
    "decode_instructions",
    "format_instruction",
]

#: The longest x86 instruction, in bytes (SDM vol. 2, 2.3.11).
MAX_INSTRUCTION = 15

Symbolize = Callable[[int], str | None]

# capstone's instruction groups (capstone.x86_const: X86_GRP_JUMP, _CALL, _RET, _IRET)
_JUMP, _CALL, _RET, _IRET = 1, 2, 3, 5
_X86_OP_IMM, _X86_OP_MEM = 2, 3
_X86_REG_RIP = 41


@dataclass(frozen=True, slots=True)
class Instruction:
    """One decoded instruction.

    ``kind``: ``call``, ``jump`` (unconditional), ``branch`` (conditional),
    ``ret``, ``bad`` (bytes that do not decode: one ``.byte``), or empty.
    ``target``: where a direct call or jump goes; ``reference``: the
    address a RIP-relative operand names (``[rip + 0xeb89]``); each with its
    symbol (``*_name``) when it has one.
    """

    address: int
    raw: bytes
    mnemonic: str
    operands: str
    kind: str = ""
    target: int | None = None
    target_name: str | None = None
    reference: int | None = None
    reference_name: str | None = None

    @property
    def size(self) -> int:
        return len(self.raw)

    @property
    def end(self) -> int:
        return self.address + len(self.raw)

    @property
    def text(self) -> str:
        """``mnemonic operands``, the target named (``call 0x... <demo_level3>``)."""
        text = f"{self.mnemonic} {self.operands}".rstrip()
        if self.target is not None and self.target_name:
            text += f" <{self.target_name}>"
        if self.reference is not None:
            text += f"  # {self.reference:#x}" + (
                f" <{self.reference_name}>" if self.reference_name else ""
            )
        return text

    def __str__(self) -> str:
        return format_instruction(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "size": self.size,
            "bytes": self.raw.hex(),
            "mnemonic": self.mnemonic,
            "operands": self.operands,
            "kind": self.kind or None,
            "target": self.target,
            "target_name": self.target_name,
            "reference": self.reference,
            "reference_name": self.reference_name,
        }


def format_instruction(insn: Instruction, *, symbol: str | None = None, mark: str = "") -> str:
    """``=> 0xffffffff801034a0 <demo_level3+0>:  48 8b 05 ..  mov rax, ...`` on one line."""
    where = f" <{symbol}>" if symbol else ""
    return f"{mark:<3}{insn.address:#018x}{where}:  {insn.raw.hex(' '):<29}  {insn.text}"


@dataclass(frozen=True, slots=True)
class Disassembly:
    """Instructions around an address, and where reading or decoding stopped.

    ``at``: the address asked for (RIP, marked); ``start``: the first byte
    read; ``unreadable``: the first address that could not be read (page
    aligned past the first byte), with ``error`` saying why; ``synced``:
    False when no start before ``at`` decoded into it (the lines before it
    are a guess: x86 cannot be decoded backwards for sure).
    """

    at: int
    instructions: tuple[Instruction, ...]
    symbols: tuple[str | None, ...] = ()  # each instruction's symbol+offset, same order
    unreadable: int | None = None
    error: str | None = None
    synced: bool = True

    @property
    def index(self) -> int | None:
        """The position of the instruction at ``at``, None when none starts there."""
        return next(
            (i for i, insn in enumerate(self.instructions) if insn.address == self.at), None
        )

    def lines(self, mark: int | None = -1) -> list[str]:
        """One line per instruction; ``=>`` marks ``mark`` (default ``at``; None: nothing)."""
        mark = self.at if mark == -1 else mark
        names = self.symbols or (None,) * len(self.instructions)
        out = [
            format_instruction(insn, symbol=name, mark="=>" if insn.address == mark else "")
            for insn, name in zip(self.instructions, names, strict=True)
        ]
        if self.unreadable is not None:
            out.append(f"   {self.unreadable:#018x}:  not readable: {self.error or 'not mapped'}")
        return out

    def __str__(self) -> str:
        if not self.instructions and self.unreadable is not None:
            return f"{self.at:#x}: cannot read the code here: {self.error or 'not mapped'}"
        return "\n".join(self.lines())

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "instructions": [
                {**insn.to_dict(), "symbol": name}
                for insn, name in zip(
                    self.instructions,
                    self.symbols or (None,) * len(self.instructions),
                    strict=True,
                )
            ],
            "unreadable": self.unreadable,
            "error": self.error,
            "synced": self.synced,
        }


_ENGINE: Any = None


def _engine() -> Any:
    """One capstone engine, Intel syntax with details (imported on first use: cold start)."""
    global _ENGINE
    if _ENGINE is None:
        try:
            import capstone
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise InspectorError("capstone is not installed (pip install capstone)") from exc
        engine = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        engine.syntax = capstone.CS_OPT_SYNTAX_INTEL
        engine.detail = True
        engine.skipdata = True  # a byte that does not decode is one ".byte", then go on
        engine.imm_unsigned = True  # cmp r12d, 0xffffffff (as objdump), not -1
        _ENGINE = engine
    return _ENGINE


def _kind(groups: Sequence[int], mnemonic: str) -> str:
    if mnemonic == ".byte":
        return "bad"
    if _CALL in groups:
        return "call"
    if _RET in groups or _IRET in groups:
        return "ret"
    if _JUMP in groups:
        return "jump" if mnemonic in ("jmp", "ljmp") else "branch"
    return ""


def decode_instructions(
    data: bytes,
    address: int,
    *,
    symbolize: Symbolize | None = None,
    count: int | None = None,
) -> tuple[Instruction, ...]:
    """Decode ``data`` read at ``address``: every instruction that fits whole, or ``count``.

    A byte that does not start a valid instruction is one ``.byte 0x..``
    (kind ``bad``) and decoding goes on after it; an instruction cut off by
    the end of ``data`` is left out.
    """
    out: list[Instruction] = []
    for insn in _engine().disasm(bytes(data), address):
        if count is not None and len(out) >= count:
            break
        mnemonic = insn.mnemonic
        groups: Sequence[int] = () if mnemonic == ".byte" else insn.groups
        kind = _kind(groups, mnemonic)
        target = reference = None
        if kind in ("call", "jump", "branch"):
            operands = insn.operands
            if len(operands) == 1 and operands[0].type == _X86_OP_IMM:
                target = operands[0].imm & ((1 << 64) - 1)
        if mnemonic != ".byte":
            for operand in insn.operands:
                if operand.type == _X86_OP_MEM and operand.mem.base == _X86_REG_RIP:
                    reference = (insn.address + insn.size + operand.mem.disp) & ((1 << 64) - 1)
        out.append(
            Instruction(
                address=insn.address,
                raw=bytes(insn.bytes),
                mnemonic=mnemonic,
                operands=insn.op_str,
                kind=kind,
                target=target,
                target_name=symbolize(target) if symbolize and target is not None else None,
                reference=reference,
                reference_name=(
                    symbolize(reference) if symbolize and reference is not None else None
                ),
            )
        )
    end = address + len(data)
    while out and out[-1].kind == "bad" and end - out[-1].address < MAX_INSTRUCTION:
        out.pop()  # perhaps the start of an instruction the window cut off
    return tuple(out)


def decode_around(
    data: bytes,
    base: int,
    at: int,
    *,
    before: int,
    after: int,
    anchor: int | None = None,
    symbolize: Symbolize | None = None,
) -> tuple[tuple[Instruction, ...], bool]:
    """``before`` instructions before ``at`` and ``after`` from it, in ``data`` read at ``base``.

    ``anchor``: an address known to start an instruction at or before ``at``
    (the start of the function holding it); without one, or when decoding
    from it does not land on ``at``, starts further and further back are
    tried and the furthest that lands on ``at`` wins. Returns the
    instructions and whether some start before ``at`` landed on it (False:
    only ``at`` onwards can be trusted, and only that is returned).
    """
    if not base <= at <= base + len(data):
        raise ValueError(f"{at:#x} is not inside the bytes read at {base:#x}")
    tail = decode_instructions(data[at - base :], at, symbolize=symbolize, count=after)
    if before <= 0 or at == base:
        return tail, True
    starts: list[int] = []
    if anchor is not None and base <= anchor < at:
        starts.append(anchor)
    reach = min(at - base, before * MAX_INSTRUCTION)
    starts.extend(range(at - reach, at))
    engine = _engine()
    for start in starts:
        last = None
        for insn in engine.disasm_lite(bytes(data[start - base : at - base]), start):
            last = insn
            if insn[2] == ".byte":
                last = None
                break
        if last is not None and last[0] + last[1] == at:
            head = decode_instructions(data[start - base : at - base], start, symbolize=symbolize)
            return head[-before:] + tail, True
    return tail, False
