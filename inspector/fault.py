"""Why did it fault: the exception the CPU is in, and the chain that ended in a triple fault.

Analysis: gathers the inputs through a :class:`~.session.Session` (registers,
the IDT, the GDT, the TSS, walks) and hands them to the pure decoders of
:mod:`.x86.exceptions`; the exception chain of a triple fault comes from
QEMU's own log (:mod:`.targets.qemu_log`). Where the exception comes from:

- the CPU stopped at the first instruction of an IDT handler (a breakpoint on
  the handler: a catchpoint): vector, error code and IRETQ frame are on the stack;
- an interrupt frame of the backtrace (``frame``): the vector is the unwinder's
  when it saw the handler's entry, else the one given, else QEMU's log's;
- QEMU's log: the last exception it delivered.

CR2 is the live register in the first two cases (a later #PF would have changed
it) and QEMU's logged value in the last.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .errors import InspectorError
from .targets.qemu_log import Delivery, Event, ExceptionChain, exception_chain, parse_qemu_log
from .x86.descriptors import ERROR_CODE_VECTORS, vector_name
from .x86.exceptions import (
    ErrorCode,
    PageFaultCause,
    SelectorFaultCause,
    StackOverflow,
    decode_error_code,
    decode_segment_load,
    describe_vector,
    explain_double_fault,
    explain_page_fault,
    explain_selector_fault,
    validate_gate,
)
from .x86.paging import Translation

if TYPE_CHECKING:
    from .session import Session

__all__ = [
    "Catchpoint",
    "ExceptionContext",
    "FaultReport",
    "TripleFaultReport",
    "catch_exceptions",
    "exception_at_stop",
    "explain_context",
    "explain_fault",
    "explain_triple_fault",
]


@dataclass(frozen=True, slots=True)
class ExceptionContext:
    """An exception as delivered: its vector, error code and the interrupted context."""

    vector: int
    error_code: int | None
    rip: int
    cs: int
    rflags: int | None
    rsp: int
    ss: int
    cr2: int | None
    source: str

    @property
    def cpl(self) -> int:
        return self.cs & 3

    def to_dict(self) -> dict[str, Any]:
        return {
            "vector": self.vector,
            "error_code": self.error_code,
            "rip": self.rip,
            "cs": self.cs,
            "cpl": self.cpl,
            "rflags": self.rflags,
            "rsp": self.rsp,
            "ss": self.ss,
            "cr2": self.cr2,
            "source": self.source,
        }


@dataclass(frozen=True, slots=True)
class FaultReport:
    """Everything ``fault`` says about one exception."""

    context: ExceptionContext
    error: ErrorCode | None
    rip_symbol: str | None
    cr2_symbol: str | None
    walk: Translation | None
    page_fault: PageFaultCause | None
    selector: SelectorFaultCause | None
    stack: StackOverflow | None

    @property
    def cause(self) -> str | None:
        """The rule broken, in a sentence, when one was found."""
        for found in (self.page_fault, self.selector, self.stack):
            if found is not None:
                return str(found)
        return None

    def __str__(self) -> str:
        c = self.context
        lines = [f"{describe_vector(c.vector)} ({c.source})"]
        if self.error is not None:
            lines.append(f"  error code {self.error}")
        where = f" {self.rip_symbol}" if self.rip_symbol else ""
        lines.append(f"  RIP {c.cs:#06x}:{c.rip:#018x}{where}")
        flags = "" if c.rflags is None else f" RFLAGS={c.rflags:#x}"
        lines.append(f"  CPL {c.cpl}, stack {c.ss:#06x}:{c.rsp:#018x}{flags}")
        if c.cr2 is not None and c.vector in (8, 14):
            named = f" {self.cr2_symbol}" if self.cr2_symbol else ""
            lines.append(f"  CR2 {c.cr2:#018x}{named}")
        if self.walk is not None:
            lines.append("  walk of CR2:")
            lines.extend(f"    {step}" for step in self.walk.steps)
            if self.walk.fault:
                lines.append(f"    => {self.walk.fault}")
        cause = self.cause
        if cause:
            lines.append(f"  cause: {cause}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "context": self.context.to_dict(),
            "name": describe_vector(self.context.vector),
            "error": None if self.error is None else self.error.to_dict(),
            "rip_symbol": self.rip_symbol,
            "cr2_symbol": self.cr2_symbol,
            "walk": None if self.walk is None else self.walk.to_dict(),
            "page_fault": None if self.page_fault is None else self.page_fault.to_dict(),
            "selector": None if self.selector is None else self.selector.to_dict(),
            "stack": None if self.stack is None else self.stack.to_dict(),
            "cause": self.cause,
        }


def _u64(data: bytes, index: int) -> int:
    return int.from_bytes(data[8 * index : 8 * index + 8], "little")


def exception_at_stop(session: Session) -> ExceptionContext | None:
    """The exception being delivered when the CPU stopped at an IDT handler's first
    instruction (a catchpoint), or None when RIP is no handler's entry."""
    regs = session.registers()
    handlers = session.idt().handlers()
    rip = regs.get("rip")
    if rip is None or rip not in handlers:
        return None
    vector = handlers[rip]
    has_error = vector in ERROR_CODE_VECTORS
    data = session.read_virtual(regs["rsp"], 48)
    base = 1 if has_error else 0
    return ExceptionContext(
        vector=vector,
        error_code=_u64(data, 0) if has_error else None,
        rip=_u64(data, base),
        cs=_u64(data, base + 1) & 0xFFFF,
        rflags=_u64(data, base + 2),
        rsp=_u64(data, base + 3),
        ss=_u64(data, base + 4) & 0xFFFF,
        cr2=regs.get("cr2"),
        source=f"stopped at the handler's entry {rip:#x}",
    )


def _from_frame(
    session: Session, frame: int | None, vector: int | None, events: tuple[Event, ...]
) -> ExceptionContext | None:
    backtrace = session.backtrace()
    frames = [f for f in backtrace.frames if f.interrupt is not None]
    if frame is not None:
        frames = [f for f in backtrace.frames if f.index == frame and f.interrupt is not None]
        if not frames:
            raise InspectorError(f"frame {frame} crosses no interrupt frame (see `bt`)")
    if not frames:
        return None
    found = frames[0].interrupt
    assert found is not None
    number = vector if vector is not None else found.vector
    if number is None:
        for event in reversed(events):
            if isinstance(event, Delivery) and event.rip == found.rip and event.cs == found.cs:
                number = event.vector
                break
    if number is None:
        raise InspectorError(
            f"the interrupt frame at {found.address:#x} does not say its vector: pass it (vector=) "
            "(the handler's entry was not seen, and QEMU's log has no delivery at "
            f"RIP {found.rip:#x})"
        )
    return ExceptionContext(
        vector=number,
        error_code=found.error_code if number in ERROR_CODE_VECTORS else None,
        rip=found.rip,
        cs=found.cs,
        rflags=found.rflags,
        rsp=found.rsp,
        ss=found.ss,
        cr2=session.registers().get("cr2"),
        source=f"interrupt frame at {found.address:#x} (frame #{frames[0].index})",
    )


def _from_log(events: tuple[Event, ...]) -> ExceptionContext | None:
    for event in reversed(events):
        if isinstance(event, Delivery) and event.vector < 32 and not event.software:
            return ExceptionContext(
                vector=event.vector,
                error_code=event.error_code if event.vector in ERROR_CODE_VECTORS else None,
                rip=event.rip,
                cs=event.cs,
                rflags=event.registers.get("rflags"),
                rsp=event.rsp,
                ss=event.ss,
                cr2=event.cr2 if event.cr2 is not None else event.registers.get("cr2"),
                source=f"QEMU's log, line {event.line}",
            )
    return None


def _symbol(session: Session, address: int) -> str | None:
    """``function+0x1d at file.c:138``, without the address it starts with."""
    if session.symbols is None:
        return None
    try:
        text = str(session.addr2sym(address))
    except InspectorError:
        return None
    prefix = f"{address:#x}"
    if text == prefix:
        return None  # no symbol holds it
    return text[len(prefix) + 1 :] if text.startswith(prefix + " ") else text


def _translate(session: Session, address: int) -> Translation | None:
    try:
        return session.translate(address)
    except InspectorError:
        return None


def explain_context(session: Session, context: ExceptionContext) -> FaultReport:
    """The report for an exception whose context is known."""
    vector = context.vector
    error = None if context.error_code is None else decode_error_code(vector, context.error_code)
    walk = page_fault = selector = stack = None
    if vector == 14 and context.cr2 is not None and error is not None:
        walk = _translate(session, context.cr2)
        if walk is not None:
            page_fault = explain_page_fault(
                error, context.cr2, walk, session.paging_mode(), rflags=context.rflags
            )
    elif error is not None and error.kind == "selector":
        try:
            code = session.read_virtual(context.rip, 15)
        except InspectorError:
            code = b""
        gdt = ldt = None
        gates = None
        try:
            gdt = session.gdt()
            ldt = session.ldt()
            gates = {entry.gate.vector: entry.gate for entry in session.idt().entries}
        except InspectorError:
            pass
        selector = explain_selector_fault(
            error, gdt=gdt, ldt=ldt, gates=gates, register=decode_segment_load(code)
        )
    elif vector == 8:
        stacks: dict[str, int] = {}
        try:
            for pointer in session.tss().stacks:
                stacks[pointer.name] = pointer.value
        except InspectorError:
            pass
        here = _translate(session, context.rsp)
        below = _translate(session, (context.rsp & ~0xFFF) - 0x1000)
        stack = explain_double_fault(
            context.rsp,
            stacks,
            rsp_mapped=bool(here and here.ok),
            below_mapped=bool(below and below.ok),
            cr2=context.cr2,
        )
        guard = None if stack.guard_start is None else _symbol(session, stack.guard_start)
        if guard:
            stack = replace(stack, text=stack.text.replace("(its guard page)", f"({guard})"))
    cr2_symbol = None
    if context.cr2 is not None and vector in (8, 14):
        cr2_symbol = _symbol(session, context.cr2)
    return FaultReport(
        context,
        error,
        _symbol(session, context.rip),
        cr2_symbol,
        walk,
        page_fault,
        selector,
        stack,
    )


def explain_fault(
    session: Session,
    *,
    frame: int | None = None,
    vector: int | None = None,
    qemu_log: str | None = None,
) -> FaultReport:
    """Explain the exception the CPU is in (see the module's docstring for where it is found).

    ``qemu_log`` is the text of QEMU's ``-d int`` log, when there is one.
    """
    events = parse_qemu_log(qemu_log) if qemu_log else ()
    context = None
    if frame is None:
        try:
            context = exception_at_stop(session)
        except InspectorError:
            context = None
    if context is None:
        context = _from_frame(session, frame, vector, events)
    if context is None:
        context = _from_log(events)
    if context is None:
        raise InspectorError(
            "no exception to explain: the CPU is not at an IDT handler's entry, the backtrace "
            "crosses no interrupt frame, and there is no QEMU exception log"
        )
    return explain_context(session, context)


@dataclass(frozen=True, slots=True)
class TripleFaultReport:
    """A triple fault: the chain from QEMU's log and why the last delivery failed."""

    chain: ExceptionChain
    first_symbol: str | None
    steps: tuple[str, ...]
    reason: str
    final_cr2: int | None

    def __str__(self) -> str:
        return "triple fault: " + "; ".join((*self.steps, self.reason))

    def to_dict(self) -> dict[str, Any]:
        return {
            "chain": self.chain.to_dict(),
            "first_symbol": self.first_symbol,
            "steps": list(self.steps),
            "reason": self.reason,
            "final_cr2": self.final_cr2,
            "text": str(self),
        }


def _locate(session: Session, address: int, rsp: int | None) -> str:
    """What a delivery reads or writes at ``address``: an IDT gate, a GDT entry, the TSS, a
    TSS stack, the interrupted stack (``rsp``); and why it cannot (the walk)."""
    what = f"at {address:#x}"
    if rsp is not None and rsp - 64 <= address < rsp:
        what = f"pushing the exception frame at {address:#x} (below RSP {rsp:#x})"
    try:
        system = session.system_registers()
    except InspectorError:
        system = None
    if system is not None:
        idtr, gdtr, tr = system.idtr, system.gdtr, system.tr
        if idtr.base <= address <= idtr.base + idtr.limit:
            what = (
                f"reading IDT gate {(address - idtr.base) // 16} at {address:#x} "
                f"(IDTR.base {idtr.base:#x})"
            )
        elif gdtr.base <= address <= gdtr.base + gdtr.limit:
            selector = (address - gdtr.base) & ~7
            what = (
                f"reading GDT entry {selector:#06x} at {address:#x} (GDTR.base {gdtr.base:#x}: "
                "the code segment of the gate)"
            )
        elif tr is not None and tr.base <= address <= tr.base + tr.limit:
            what = f"reading the TSS at {address:#x}"
        else:
            try:
                for pointer in session.tss().stacks:
                    if pointer.value and pointer.value - 0x1000 <= address < pointer.value:
                        what = f"pushing onto the {pointer.name} stack at {address:#x}"
            except InspectorError:
                pass
    walk = _translate(session, address)
    if walk is not None and walk.fault:
        steps = walk.steps
        if steps and not steps[-1].entry.present:
            last = steps[-1]
            return (
                f"{what} is not mapped: not present at level {last.level} ({last.level_name} "
                f"entry {last.index} at {last.entry_address:#x})"
            )
        return f"{what}: {walk.fault}"
    return f"{what} (mapped now)"


def _gate_reason(session: Session, vector: int) -> str:
    """What is wrong with the IDT gate of ``vector`` and its stack, decoded now."""
    try:
        gates = {entry.gate.vector: entry.gate for entry in session.idt().entries}
    except InspectorError as exc:
        return f"the IDT cannot be read: {exc}"
    try:
        gdt = session.gdt()
    except InspectorError:
        gdt = None
    gate = gates.get(vector)
    why = validate_gate(gate, gdt, levels=session.paging_mode().levels)
    if why is not None or gate is None:
        return why or f"IDT gate {vector} is missing"
    if gate.IST:
        try:
            stacks = {pointer.name: pointer for pointer in session.tss().stacks}
        except InspectorError as exc:
            return f"the TSS cannot be read: {exc}"
        pointer = stacks.get(f"IST{gate.IST}")
        if pointer is not None and not pointer.mapped:
            return f"IDT gate {vector} switches to IST{gate.IST} {pointer.value:#x}: not mapped"
    return f"IDT gate {vector} and its stack look valid now: {gate}"


def _short(vector: int) -> str:
    return vector_name(vector) or f"vector {vector:#x}"


def _fault_words(session: Session, vector: int, cr2: int | None, rsp: int | None) -> str:
    name = _short(vector)
    if vector == 14 and cr2 is not None:
        return f"{name} {_locate(session, cr2, rsp)}"
    return name


def explain_triple_fault(session: Session, qemu_log: str) -> TripleFaultReport:
    """The chain of the last triple fault in ``qemu_log`` and its reason, decoded from the
    paused machine (the IDT, GDT and stacks at that instant; CR2 of the final #PF)."""
    chain = exception_chain(parse_qemu_log(qemu_log))
    if chain is None:
        raise InspectorError("QEMU's log records no triple fault")
    deliveries = chain.deliveries
    steps: list[str] = []
    first_symbol = None
    if deliveries:
        first = deliveries[0]
        first_symbol = _symbol(session, first.rip)
        where = f" {first_symbol}" if first_symbol else ""
        what = describe_vector(first.vector)
        if first.vector == 14 and first.cr2 is not None:
            what += f" (CR2 {first.cr2:#x}, error {first.error_code:#x})"
        steps.append(f"{what} at RIP {first.rip:#x}{where}")
        seen: set[int] = set()

        def words(vector: int | None, cr2: int | None, rsp: int | None) -> str:
            if vector is None:
                return "a fault"
            if vector == 14 and cr2 is not None and cr2 in seen:
                return f"#PF at the same address ({cr2:#x})"
            if cr2 is not None:
                seen.add(cr2)
            return _fault_words(session, vector, cr2, rsp)

        for index in range(1, len(deliveries)):
            before, after = deliveries[index - 1], deliveries[index]
            raised = chain.raised[index] if index < len(chain.raised) else None
            if after.vector == 8 and raised != 8:
                # What made this #DF has no line of its own; a #PF's CR2 is in the dump.
                cause = words(
                    raised, after.registers.get("cr2") if raised == 14 else None, before.rsp
                )
                steps.append(f"while delivering the {_short(before.vector)}: {cause} -> #DF")
            else:
                cause = words(after.vector, after.cr2, before.rsp)
                steps.append(f"while delivering the {_short(before.vector)}: {cause}")
    registers: Mapping[str, int] = session.registers()
    final_cr2 = registers.get("cr2") if chain.final == 14 else None
    last = deliveries[-1].vector if deliveries else 8
    if chain.final is None:
        reason = f"the {_short(last)} could not be delivered"
    elif chain.final != 14:
        reason = (
            f"the {_short(last)} could not be delivered because of {_short(chain.final)}: "
            + _gate_reason(session, last)
        )
    else:
        rsp = deliveries[-1].rsp if deliveries else None
        reason = f"the {_short(last)} could not be delivered because of " + _fault_words(
            session, chain.final, final_cr2, rsp
        )
    return TripleFaultReport(chain, first_symbol, tuple(steps), reason, final_cr2)


@dataclass(frozen=True, slots=True)
class Catchpoint:
    """A breakpoint on the IDT handler of ``vector``: the CPU stops there before the handler
    runs, with the vector, error code and IRETQ frame on the stack (:func:`exception_at_stop`)."""

    vector: int
    handler: int
    breakpoint: int
    shared_with: tuple[int, ...]

    def __str__(self) -> str:
        shared = (
            f" (shared with vectors {', '.join(map(str, self.shared_with))}: it stops for them too)"
            if self.shared_with
            else ""
        )
        return (
            f"catchpoint {self.breakpoint}: {describe_vector(self.vector)} at its handler "
            f"{self.handler:#x}{shared}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "vector": self.vector,
            "handler": self.handler,
            "breakpoint": self.breakpoint,
            "shared_with": list(self.shared_with),
        }


def catch_exceptions(session: Session, vector: int | None) -> list[Catchpoint]:
    """Stop when the CPU delivers ``vector`` (None: every exception, vectors 0-31).

    Done with a breakpoint on the handler the IDT names now, so it costs nothing
    until the handler runs (QEMU checks breakpoints when it translates a block);
    a kernel that changes its IDT afterwards needs the catchpoint set again, and
    a handler shared by several vectors stops for each of them.
    """
    if vector is not None and not 0 <= vector <= 255:
        raise InspectorError(f"a vector is 0..255, not {vector}")
    gates = [entry.gate for entry in session.idt().entries if entry.gate.P]
    wanted = set(range(32)) if vector is None else {vector}
    by_handler: dict[int, list[int]] = {}
    for gate in gates:
        by_handler.setdefault(gate.offset, []).append(gate.vector)
    result: list[Catchpoint] = []
    done: set[int] = set()
    for gate in gates:
        if gate.vector not in wanted or gate.offset in done:
            continue
        done.add(gate.offset)
        number, _address = session.break_insert(f"{gate.offset:#x}")
        others = tuple(v for v in by_handler[gate.offset] if v != gate.vector)
        result.append(Catchpoint(gate.vector, gate.offset, number, others))
    if not result:
        raise InspectorError(
            "no present IDT gate for "
            + ("any exception vector" if vector is None else describe_vector(vector))
        )
    return result
