"""Read QEMU's own log of delivered exceptions (``-d int,cpu_reset -D FILE``): pure, no I/O.

QEMU 7.2 under TCG writes, for each exception it checks, interrupt it
delivers and triple fault it meets (``target/i386/tcg/seg_helper.c``)::

    check_exception old: 0xffffffff new 0xe
         0: v=0e e=0003 i=0 cpl=0 IP=0008:ffffffff8010098c pc=ffffffff8010098c SP=0010:... CR2=...
    RAX=... (the CPU state, as ``info registers`` prints it)
    check_exception old: 0x8 new 0xe
    Triple fault

``v=`` is the vector, ``e=`` the error code, ``i=1`` a software ``INT n``,
``IP=CS:RIP`` and ``SP=SS:RSP`` the interrupted context; ``CR2=`` is printed
for #PF only. ``old`` is the exception QEMU was delivering when ``new``
happened, but only for #DE, #TS, #NP, #SS, #GP, #PF and #DF (the classes
that can make a #DF; ``0xffffffff`` otherwise). A fault met while a
delivery reads the IDT, the GDT or the new stack is logged with the same
``IP`` and ``SP`` as that delivery: that is how :func:`exception_chain` tells
a nested fault from one the handler made later. A second #PF during a #PF
delivery has no ``v=`` line of its own: it becomes the #DF, whose dump
holds its CR2. The last fault, the one that made the triple fault, has no
line but ``check_exception``: its CR2 is in the paused CPU.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import DecodeError
from .qemu_text import decode_info_registers

__all__ = [
    "CpuReset",
    "Delivery",
    "ExceptionCheck",
    "ExceptionChain",
    "TripleFault",
    "exception_chain",
    "last_delivery",
    "parse_qemu_log",
]

_CHECK = re.compile(r"^check_exception old: 0x([0-9a-f]+) new 0x([0-9a-f]+)\s*$")
_DELIVERY = re.compile(
    r"^\s*(\d+): v=([0-9a-f]+) e=([0-9a-f]+) i=(\d) cpl=(\d) IP=([0-9a-f]+):([0-9a-f]+)"
    r" pc=([0-9a-f]+) SP=([0-9a-f]+):([0-9a-f]+)"
    r"(?: CR2=([0-9a-f]+)| env->regs\[R_EAX\]=([0-9a-f]+))?\s*$"
)
_DUMP_START = re.compile(r"^(RAX|EAX)=")
_DUMP_LINE = re.compile(r"^([A-Z][A-Z0-9]*\s*=|SMM: |XMM|YMM|FPR|FCW|CCS|DR\d)")
_NONE = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class ExceptionCheck:
    """``check_exception old: ... new ...``: QEMU about to raise ``new``.

    ``old`` is None when QEMU was delivering no contributory exception, #PF or #DF.
    """

    line: int
    old: int | None
    new: int

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "check", "line": self.line, "old": self.old, "new": self.new}


@dataclass(frozen=True, slots=True)
class Delivery:
    """One ``v=`` line: QEMU starts delivering ``vector``, and the CPU state it dumped."""

    line: int
    count: int
    vector: int
    error_code: int
    software: bool
    cpl: int
    cs: int
    rip: int
    pc: int
    ss: int
    rsp: int
    cr2: int | None
    #: the dump that follows (``rax``, ``rflags``, ``cr0``, ``cr2``, ``efer``...), ints only
    registers: Mapping[str, int] = field(default_factory=dict)

    def same_context(self, other: Delivery) -> bool:
        """Whether both were raised at the same instruction and stack (one nested in the other)."""
        return (self.cs, self.rip, self.ss, self.rsp) == (other.cs, other.rip, other.ss, other.rsp)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "delivery",
            "line": self.line,
            "count": self.count,
            "vector": self.vector,
            "error_code": self.error_code,
            "software": self.software,
            "cpl": self.cpl,
            "cs": self.cs,
            "rip": self.rip,
            "pc": self.pc,
            "ss": self.ss,
            "rsp": self.rsp,
            "cr2": self.cr2,
        }


@dataclass(frozen=True, slots=True)
class TripleFault:
    """``Triple fault``: a fault while delivering #DF (``-d cpu_reset``)."""

    line: int

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "triple-fault", "line": self.line}


@dataclass(frozen=True, slots=True)
class CpuReset:
    """``CPU Reset (CPU n)``."""

    line: int
    cpu: int

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "cpu-reset", "line": self.line, "cpu": self.cpu}


Event = ExceptionCheck | Delivery | TripleFault | CpuReset


def _dump(lines: list[str], start: int) -> tuple[dict[str, int], int]:
    """The register dump from ``lines[start]``: (int registers, index after it)."""
    end = start
    while end < len(lines) and _DUMP_LINE.match(lines[end]):
        end += 1
    try:
        decoded = decode_info_registers("\n".join(lines[start:end]))
    except DecodeError:
        decoded = {}
    return {k: v for k, v in decoded.items() if isinstance(v, int)}, end


def parse_qemu_log(text: str) -> tuple[Event, ...]:
    """The events of a QEMU log, in order; lines it does not know are skipped."""
    lines = text.splitlines()
    events: list[Event] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        number = i + 1
        i += 1
        if match := _CHECK.match(line):
            old = int(match.group(1), 16)
            events.append(
                ExceptionCheck(number, None if old == _NONE else old, int(match.group(2), 16))
            )
        elif match := _DELIVERY.match(line):
            g = match.groups()
            registers: dict[str, int] = {}
            if i < len(lines) and _DUMP_START.match(lines[i]):
                registers, i = _dump(lines, i)
            events.append(
                Delivery(
                    line=number,
                    count=int(g[0]),
                    vector=int(g[1], 16),
                    error_code=int(g[2], 16),
                    software=g[3] == "1",
                    cpl=int(g[4]),
                    cs=int(g[5], 16),
                    rip=int(g[6], 16),
                    pc=int(g[7], 16),
                    ss=int(g[8], 16),
                    rsp=int(g[9], 16),
                    cr2=None if g[10] is None else int(g[10], 16),
                    registers=registers,
                )
            )
        elif line.strip() == "Triple fault":
            events.append(TripleFault(number))
        elif match := re.match(r"^CPU Reset \(CPU (\d+)\)", line):
            events.append(CpuReset(number, int(match.group(1))))
    return tuple(events)


def last_delivery(events: tuple[Event, ...], vector: int | None = None) -> Delivery | None:
    """The last delivery (of ``vector`` when given)."""
    for event in reversed(events):
        if isinstance(event, Delivery) and (vector is None or event.vector == vector):
            return event
    return None


@dataclass(frozen=True, slots=True)
class ExceptionChain:
    """The deliveries that led to a triple fault, outermost first, and the fault that ended it.

    ``deliveries[0]`` is the first event (an exception at an instruction, or an
    interrupt); each next one happened while the one before was being delivered
    (same RIP and RSP). ``final`` is the vector raised while delivering the last
    one (a #DF): the fault that made the triple fault. ``cr2s`` holds the CR2 QEMU
    logged for each #PF of the chain, in order, including a #PF that became a #DF
    (the #DF's dump); the final #PF's CR2 is not in the log.
    """

    deliveries: tuple[Delivery, ...]
    final: int | None
    triple: bool
    #: for each delivery, the exception QEMU checked just before it (``check_exception``'s
    #: ``new``): the fault that became a #DF for a #DF, None for an interrupt
    raised: tuple[int | None, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "raised": list(self.raised),
            "deliveries": [d.to_dict() for d in self.deliveries],
            "final": self.final,
            "triple": self.triple,
        }


def exception_chain(events: tuple[Event, ...]) -> ExceptionChain | None:
    """The chain that ended in the last ``Triple fault``, or None when there was none.

    Walks back from the triple fault over the deliveries raised at the same RIP
    and RSP as the last one (nested in each other's delivery).
    """
    triple_at = None
    for index in range(len(events) - 1, -1, -1):
        if isinstance(events[index], TripleFault):
            triple_at = index
            break
    if triple_at is None:
        return None
    final = None
    for event in reversed(events[:triple_at]):
        if isinstance(event, ExceptionCheck):
            final = event.new
            break
    chain: list[Delivery] = []
    raised: list[int | None] = []
    before = events[:triple_at]
    for index in range(len(before) - 1, -1, -1):
        event = before[index]
        if isinstance(event, CpuReset):
            break
        if not isinstance(event, Delivery):
            continue
        if chain and not event.same_context(chain[-1]):
            break
        chain.append(event)
        previous = before[index - 1] if index else None
        raised.append(previous.new if isinstance(previous, ExceptionCheck) else None)
    chain.reverse()
    raised.reverse()
    return ExceptionChain(tuple(chain), final, True, tuple(raised))
